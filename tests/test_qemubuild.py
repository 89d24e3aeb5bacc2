"""`blockfuzz qemu build` and the coverage summary without building anything (QEMU-free):
names, bad input (one line, exit 2), the dependency check, gcovr JSON to the summary.
tests/qemubuild/ (make test-build) builds for real."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import qemubuild as B
from fuzz.gcov import summary_of, summary_text


def blockfuzz(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_default_names_say_what_was_built(tmp_path):
    assert B.BuildSpec(version="10.2").default_name() == "10.2"
    assert B.BuildSpec(version="10.2", asan=True).default_name() == "10.2-asan"
    assert B.BuildSpec(version="10.2", asan=True, minimal=True).default_name() == "10.2-min-asan"
    assert B.BuildSpec(version="10.2", gcov=True).default_name() == "10.2-gcov"
    # a source build never takes the name of a fetched tree
    assert B.BuildSpec(version="11.1").default_name() == "11.1-src"
    patch = tmp_path / "fix.patch"
    patch.write_text("--- a/block.c\n+++ b/block.c\n")
    named = B.BuildSpec(version="10.2", asan=True, patches=(patch,)).default_name()
    assert named.startswith("10.2-asan-p") and len(named) == len("10.2-asan-p") + 8
    patch.write_text("--- a/block.c\n+++ b/block.c\n@@\n")
    assert B.BuildSpec(version="10.2", asan=True, patches=(patch,)).default_name() != named
    src = tmp_path / "my qemu"
    src.mkdir()
    assert B.BuildSpec(src=src, asan=True).default_name() == "src-my_qemu-asan"


def test_configure_lines():
    base = B.BuildSpec(version="10.2").configure_args()
    assert "--target-list=x86_64-softmmu" in base and "--enable-tools" in base
    assert "--without-default-devices" not in base
    asan = B.BuildSpec(version="10.2", asan=True, minimal=True).configure_args()
    assert {"--enable-asan", "--enable-ubsan", "--without-default-devices"} <= set(asan)
    assert "--enable-gcov" in B.BuildSpec(version="10.2", gcov=True).configure_args()


@pytest.mark.parametrize("argv, words", [
    (["qemu", "build", "9.9"], "no QEMU source known for '9.9'"),
    (["qemu", "build"], "give a VERSION or --src DIR"),
    (["qemu", "build", "10.2", "--src", "/"], "give a VERSION or --src DIR"),
    (["qemu", "build", "--src", "/nonexistent-dir"], "not a QEMU source tree"),
    (["qemu", "build", "10.2", "--patch", "/nonexistent.patch"], "--patch /nonexistent.patch: no such file"),
    (["qemu", "build", "10.2", "--name", "../x"], "not a usable build name"),
    (["qemu", "build", "10.2", "--name", "10.0"], "not a usable build name"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, tmp_path):
    import os
    p = blockfuzz(*argv, env={**os.environ, "BLOCKFUZZ_QEMU_DIR": str(tmp_path)})
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert list(tmp_path.iterdir()) == []   # nothing built, nothing fetched


def test_missing_dependencies_are_named(monkeypatch):
    monkeypatch.setattr(B.shutil, "which", lambda tool: None if tool in ("flex", "dtc") else "/bin/x")
    missing = B.missing_dependencies()
    assert "flex" in missing and "device-tree-compiler" in missing
    assert "bison" not in missing


def test_an_incomplete_build_is_not_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKFUZZ_QEMU_DIR", str(tmp_path))
    (tmp_path / "10.2-asan" / "build").mkdir(parents=True)   # a build that was interrupted
    assert B.installed_builds() == [] and B.build_installed("10.2-asan") is None
    from fuzz.errors import QemuNotFound
    from fuzz.qemufetch import resolve_qemu
    with pytest.raises(QemuNotFound, match="no such file|not found"):
        resolve_qemu("10.2-asan")


def _gcovr_file(name, lines):
    return {"file": name, "lines": [
        {"line_number": n, "count": c, "function_name": f,
         "branches": [{"count": b} for b in br]} for n, c, f, br in lines]}


def test_coverage_summary_counts_block_files_and_the_reopen_path():
    data = {"files": [
        _gcovr_file("block.c", [(10, 3, "bdrv_reopen_multiple", [1, 0]),
                                (11, 0, "bdrv_reopen_multiple", []),
                                (20, 0, "bdrv_reopen_abort", [0, 0]),
                                (30, 5, "bdrv_open", [])]),
        _gcovr_file("block/qcow2.c", [(1, 1, "qcow2_reopen_prepare", [1]),
                                      (2, 0, "qcow2_co_preadv", [])]),
        _gcovr_file("util/async.c", [(1, 9, "aio_bh_poll", [1, 1])]),   # not the block layer
    ]}
    s = summary_of(data)
    assert s["total"] == {"lines": 6, "lines-covered": 3, "branches": 5, "branches-covered": 2}
    assert s["reopen-path"]["lines"] == 4 and s["reopen-path"]["lines-covered"] == 2
    assert s["reopen-path"]["functions"]["block.c:bdrv_reopen_abort"] == [0, 1]
    assert "block.c:bdrv_open" not in s["reopen-path"]["functions"]
    text = summary_text(s)
    assert "lines 3/6 (50.0 %)" in text and "never reached: bdrv_reopen_abort" in text


def test_coverage_against_a_build_without_gcov_is_one_line(tmp_path):
    import os
    env = {**os.environ, "QEMU_IMG_PROG": "/bin/true", "QEMU_IO_PROG": "/bin/true"}
    p = blockfuzz("replay", str(Path(__file__).parent.parent / "corpus/seeds/test_backing_reference.json"),
                  "--qemu", "/bin/true", "--coverage", str(tmp_path / "cov"), env=env)
    assert p.returncode == 2
    assert "not a gcov build" in p.stderr and len(p.stderr.strip().splitlines()) == 1
