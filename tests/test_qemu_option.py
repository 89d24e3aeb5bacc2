"""``--qemu VERSION``: a fetched version by its name, as ``blockfuzz qemu list`` shows it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fuzz.errors import QemuNotFound
from fuzz.qemufetch import installed, resolve_qemu


def test_a_version_name_picks_the_fetched_tree(qemu10):
    # the fixture fetched 10.0; its tree's emulator is what --qemu 10.0 must mean
    expected = str(installed("10.0").binary("system"))
    assert resolve_qemu("10.0").system == expected


def test_a_version_not_fetched_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKFUZZ_QEMU_DIR", str(tmp_path))
    with pytest.raises(QemuNotFound, match=r"^--qemu '7\.2': not fetched: run `blockfuzz qemu fetch 7\.2`$"):
        resolve_qemu("7.2")
    seed = os.path.join(os.path.dirname(__file__), "..", "corpus", "seeds", "test_reopen.json")
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "replay", "--qemu", "7.2", seed],
                       capture_output=True, text=True, env={"BLOCKFUZZ_QEMU_DIR": str(tmp_path),
                                                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "blockfuzz: --qemu '7.2': not fetched: run `blockfuzz qemu fetch 7.2`"]
