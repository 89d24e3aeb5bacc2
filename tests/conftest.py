"""Shared fixtures.  QEMU tests use the fetched QEMUs (``make test`` fetches them first); a
missing QEMU is a failure, never a skip: a suite that silently skips its real-QEMU half would
pass without testing anything."""
from __future__ import annotations

import pytest

from fuzz.qemufetch import installed, resolve_qemu


def qemu_binaries(version: str):
    inst = installed(version)
    if inst is None:
        pytest.fail(f"QEMU {version} is not fetched: run `blockfuzz qemu fetch {version}` (make test does)")
    return resolve_qemu(str(inst.binary("system")))


@pytest.fixture(scope="session", params=["10.0", "7.2", "11.1"])
def any_qemu(request):
    return qemu_binaries(request.param)


@pytest.fixture(scope="session")
def qemu10():
    return qemu_binaries("10.0")
