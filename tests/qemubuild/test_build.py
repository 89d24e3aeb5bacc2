"""QEMU built from source, for real (``make test-build``, not part of ``make test``).

Builds Debian's QEMU 10.2.2 source in the smallest configuration with the sanitizers
(``blockfuzz qemu build 10.2 --minimal --asan``: -M none only; ~6 min on 2 cores the first
time, then reused) and checks that the rest of blockfuzz uses it like a fetched QEMU: listed,
selected by name, a seed replays, and a known use-after-free is reported as AddressSanitizer
reports it (QEMU 10.2.2's block.c frees the node a reopen queue entry still points to)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "10.2-min-asan"


def blockfuzz(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def built():
    p = blockfuzz("qemu", "build", "10.2", "--minimal", "--asan", timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    system = Path(p.stdout.strip())
    assert system.name == "qemu-system-x86_64" and system.parent.parent.name == NAME
    return system


def test_manifest_records_the_exact_build(built):
    m = json.loads((built.parent.parent / "manifest.json").read_text())
    assert m["qemu-version"].startswith("10.2.")
    assert m["source"]["kind"] == "debian" and m["source"]["package-version"].startswith("1:10.2.")
    assert {"--enable-asan", "--enable-ubsan", "--without-default-devices",
            "--target-list=x86_64-softmmu"} <= set(m["configure"])
    for prog in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        assert os.access(built.parent / prog, os.X_OK)


def test_a_complete_build_is_reused(built):
    t = time.monotonic()
    p = blockfuzz("qemu", "build", "10.2", "--minimal", "--asan")
    assert p.returncode == 0 and Path(p.stdout.strip()) == built
    assert time.monotonic() - t < 20


def test_listed_and_selected_by_name(built):
    p = blockfuzz("qemu", "list")
    row = next((line for line in p.stdout.splitlines() if line.startswith(NAME + " ")), None)
    assert row is not None, p.stdout
    assert "built 10.2." in row and "asan" in row and str(built) in row


def test_a_seed_replays_on_the_build(built):
    seed = ROOT / "corpus/seeds/test_backing_reference.json"
    p = blockfuzz("replay", str(seed), "--qemu", NAME)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("PASS test_backing_reference")


def test_use_after_free_is_reported_by_asan(built):
    finding = ROOT / "corpus/findings/reopen-closes-queued-node-segv.json"
    p = blockfuzz("replay", str(finding), "--qemu", NAME)
    assert p.returncode == 1, p.stdout + p.stderr
    line = p.stdout.strip().splitlines()[0]
    assert line.startswith("STILL FAILS")
    assert "AddressSanitizer: heap-use-after-free in bdrv_reopen_multiple" in line


def test_finding_folder_gets_the_whole_report(built, tmp_path):
    """A campaign's sanitizer finding: sanitizer.txt first holds the campaign's report (ASan's
    fast unwinder: the free stack stops at glib's g_free), then post-processing replaces it
    with the slow unwinder's, which goes down to the bdrv_unref() that freed the node."""
    import attrs

    from fuzz import trace as T
    from fuzz.errors import QemuCrash
    from fuzz.findings import FailureSeen, FindingWriter
    from fuzz.minimize import failure_of
    from fuzz.qemufetch import resolve_qemu
    from fuzz.runcmd import _full_sanitizer_report

    binaries = resolve_qemu(NAME)
    tr = T.load(str(ROOT / "corpus/findings/reopen-closes-queued-node-segv.json"))
    bare = attrs.evolve(tr, steps=[{k: v for k, v in s.items() if k not in ("expect", "observed")}
                                   for s in tr.steps if "qmp" in s])
    crash = failure_of(bare, binaries, 5.0)
    assert isinstance(crash, QemuCrash) and crash.sanitizer
    ev = FindingWriter(str(tmp_path)).record(FailureSeen(crash, bare, crash.signature(), "10.2"))
    fast = (Path(ev.folder) / "sanitizer.txt").read_text()
    _full_sanitizer_report(ev.folder, crash.signature(), binaries, 5.0)
    slow = (Path(ev.folder) / "sanitizer.txt").read_text()
    freed = slow.split("freed by thread")[1].split("previously allocated")[0]
    assert " in bdrv_unref " in freed and " in bdrv_reopen_multiple " in freed
    assert len(slow) > len(fast)


def _build_processes(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stopped_build_stops_its_compilers_and_says_so(built, sig):
    """Ctrl-C or SIGTERM while configure or ninja runs: exit 2 within seconds, one line, no
    configure/ninja/cc of the build left running, and no manifest (the next build of that
    name starts again)."""
    import shutil
    import signal

    name = f"stop-test-{sig.lower()}"
    where = ROOT / ".qemu" / name
    shutil.rmtree(where, ignore_errors=True)
    p = subprocess.Popen([sys.executable, "-m", "fuzz.cli", "qemu", "build", "10.2", "--minimal",
                          "--name", name], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        marker = f".qemu/{name}/"
        # wait until configure (or later ninja) of this build runs
        while time.monotonic() < deadline and not [
                q for q in _build_processes(marker) if q != p.pid]:
            assert p.poll() is None, p.communicate()
            time.sleep(0.2)
        time.sleep(2)
        t = time.monotonic()
        p.send_signal(getattr(signal, sig))
        out, err = p.communicate(timeout=30)
        assert time.monotonic() - t < 15
        assert p.returncode == 2, err
        # the progress lines (copying, configuring, building) and then the one error line
        lines = err.strip().splitlines()
        assert lines[-1] == \
            "blockfuzz: build stopped; it is incomplete and will be built again next time"
        assert all(line.startswith("blockfuzz: ") for line in lines), err
        time.sleep(1)
        assert _build_processes(marker) == []
        assert not (where / "manifest.json").exists()
    finally:
        if p.poll() is None:
            p.kill()
        shutil.rmtree(where, ignore_errors=True)
