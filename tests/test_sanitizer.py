"""Sanitizer reports as an oracle (QEMU-free): what a report is, its signature, the finding
folder.  The reports below are written in the formats GCC's libasan/libubsan print (the
AddressSanitizer one is shaped like the report of corpus/findings/reopen-closes-queued-node-
segv.json on an ASan build of 10.2.2); tests/qemubuild/ checks the same against a real build."""
from __future__ import annotations

import os

import pytest

from fuzz import trace as T
from fuzz.errors import QemuCrash, sanitizer_parts, sanitizer_report
from fuzz.findings import FailureSeen, FindingWriter, distinct

STARTUP = ("==4711==WARNING: ASan doesn't fully support makecontext/swapcontext functions and "
           "may produce false positives in some cases!\n")

UAF = """=================================================================
==4711==ERROR: AddressSanitizer: heap-use-after-free on address 0x51d0000a1c38 at pc 0x55f2e1 bp 0x7ffd sp 0x7ffc
READ of size 8 at 0x51d0000a1c38 thread T0
    #0 0x55f2e1c0ffee in bdrv_reopen_multiple ../block.c:4659
    #1 0x55f2e1c1beef in qmp_blockdev_reopen ../blockdev.c:3485
    #2 0x7f3a2b5e2f1 in g_main_context_dispatch (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x5e2f1)

0x51d0000a1c38 is located 184 bytes inside of 2064-byte region [0x51d0000a1b80,0x51d0000a2390)
freed by thread T0 here:
    #0 0x7f3a2b8d5d in __interceptor_free ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:52
    #1 0x7f3a2b5a1 in g_free (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x5a1)
    #2 0x55f2e1c0aaaa in bdrv_delete ../block.c:5374

SUMMARY: AddressSanitizer: heap-use-after-free ../block.c:4659 in bdrv_reopen_multiple
Shadow bytes around the buggy address:
  0x51d0000a1b80: fd fd fd fd
==4711==ABORTING
"""

UBSAN = ("../block/qcow2-cluster.c:1234:17: runtime error: shift exponent 64 is too large for "
         "64-bit type 'long unsigned int'\n"
         "    #0 0x55f2e1c0 in qcow2_get_host_offset ../block/qcow2-cluster.c:1234\n"
         "    #1 0x55f2e1c1 in qcow2_co_preadv_part ../block/qcow2.c:2345\n\n"
         "SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior "
         "../block/qcow2-cluster.c:1234:17 in \n")


def test_startup_warnings_are_no_report():
    assert sanitizer_report(STARTUP + "qemu-system-x86_64: terminating on signal 15\n") == ""


def test_asan_report_is_cut_from_stderr_whole():
    stderr = STARTUP + UAF + "unrelated line after the report\n"
    report = sanitizer_report(stderr)
    assert report.startswith("==4711==ERROR: AddressSanitizer: heap-use-after-free")
    assert report.rstrip().endswith("==4711==ABORTING")
    assert "freed by thread T0 here:" in report and "unrelated line" not in report


def test_asan_signature_is_kind_and_first_own_frame():
    # the first frame is QEMU's own here; the free stack's interceptor and glib frames are
    # never taken for it
    assert sanitizer_parts(sanitizer_report(UAF)) == (
        "AddressSanitizer", "heap-use-after-free", "bdrv_reopen_multiple")
    crash = QemuCrash("blockdev-reopen", 1, "tail", sanitizer=sanitizer_report(UAF))
    assert crash.signature() == "asan:heap-use-after-free:bdrv_reopen_multiple"
    assert "AddressSanitizer: heap-use-after-free in bdrv_reopen_multiple" in str(crash)


def test_asan_skips_library_frames_to_qemus_own():
    report = UAF.replace("#0 0x55f2e1c0ffee in bdrv_reopen_multiple ../block.c:4659",
                         "#0 0x7f00 in __interceptor_memcpy ../../../../src/libsanitizer/x.inc:827\n"
                         "    #1 0x7f01 in g_hash_table_lookup (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x1)\n"
                         "    #2 0x55f2e1c0ffee in bdrv_reopen_multiple ../block.c:4659")
    assert sanitizer_parts(sanitizer_report(report))[2] == "bdrv_reopen_multiple"


def test_asan_segv_and_double_free_kinds():
    segv = UAF.replace("heap-use-after-free on address 0x51d0000a1c38 at pc",
                       "SEGV on unknown address 0x000000000010 (pc 0x55f2e1 bp 0x7ffd sp 0x7ffc T0)")
    assert sanitizer_parts(sanitizer_report(segv))[1] == "SEGV"
    double = UAF.replace("heap-use-after-free on address 0x51d0000a1c38 at pc 0x55f2e1 bp 0x7ffd sp 0x7ffc",
                         "attempting double-free on 0x51d0000a1c38 in thread T0:")
    assert sanitizer_parts(sanitizer_report(double))[1] == "attempting double-free"


def test_ubsan_signature_folds_numbers():
    parts = sanitizer_parts(sanitizer_report(STARTUP + UBSAN))
    assert parts == ("UndefinedBehaviorSanitizer",
                     "shift exponent N is too large for N-bit type 'long unsigned int'",
                     "qcow2_get_host_offset")
    crash = QemuCrash("human-monitor-command", None, "", sanitizer=sanitizer_report(UBSAN))
    assert crash.signature().startswith("ubsan:shift exponent N is too large")
    # without a stack trace the file names the place
    bare = UBSAN.splitlines()[0] + "\n"
    assert sanitizer_parts(sanitizer_report(bare))[2] == "block/qcow2-cluster.c"


def test_two_sanitizer_bugs_are_two_failures_to_hypothesis():
    a = QemuCrash("blockdev-reopen", 1, "", sanitizer=sanitizer_report(UAF))
    b = QemuCrash("blockdev-reopen", 1, "", sanitizer=sanitizer_report(
        UAF.replace("in bdrv_reopen_multiple ../block.c:4659", "in bdrv_reopen_commit ../block.c:5000")))
    assert a.signature() != b.signature()
    assert type(distinct(a, a.signature())) is not type(distinct(b, b.signature()))


def test_finding_folder_keeps_the_report(tmp_path):
    crash = QemuCrash("blockdev-reopen", 1, UAF[-300:], sanitizer=sanitizer_report(STARTUP + UAF))
    crash.at_step(0, {"qmp": "blockdev-reopen", "args": {"options": []}})
    tr = T.Trace(name="x", description="", images=(), steps=[crash.step])
    writer = FindingWriter(str(tmp_path), qemu_build="QEMU 10.2.2 from Debian 1:10.2.2+ds-1 (asan+ubsan)")
    ev = writer.record(FailureSeen(crash, tr, crash.signature(), "10.2"))
    with open(os.path.join(ev.folder, "sanitizer.txt")) as f:
        assert f.read() == sanitizer_report(UAF)
    with open(os.path.join(ev.folder, "summary.txt")) as f:
        summary = f.read()
    assert "signature: asan:heap-use-after-free:bdrv_reopen_multiple" in summary
    assert "qemu: QEMU 10.2.2 from Debian 1:10.2.2+ds-1 (asan+ubsan)" in summary
    assert "freed by thread T0 here:" in summary


@pytest.mark.parametrize("tail", ["", "qemu-system-x86_64: ../block.c:1: f: Assertion `x' failed.\n"])
def test_no_report_keeps_the_old_signatures(tail):
    crash = QemuCrash("blockdev-del", -6 if tail else -11, tail)
    assert not crash.signature().startswith(("asan", "ubsan"))


@pytest.mark.parametrize("printed", [
    "qemu-system-x86_64: ../block/io.c:521: bdrv_drain_all_end: Assertion `qemu_in_main_thread()' failed.",
    # a build from a copy of the tree (qemu build: .qemu/<name>/src, built in .qemu/<name>/build)
    "qemu-system-x86_64: ../src/block/io.c:530: bdrv_drain_all_end: Assertion `qemu_in_main_thread()' failed.",
    # a developer's checkout built elsewhere, relative and absolute
    "qemu-system-x86_64: ../../../../home/dev/qemu/block/io.c:530: bdrv_drain_all_end: Assertion `qemu_in_main_thread()' failed.",
    "qemu-system-x86_64: /home/dev/qemu/block/io.c:530: bdrv_drain_all_end: Assertion `qemu_in_main_thread()' failed.",
])
def test_an_assertion_reads_the_same_from_every_build(printed):
    from fuzz.errors import abort_text
    assert abort_text(printed) == \
        "block/io.c: bdrv_drain_all_end: Assertion `qemu_in_main_thread()' failed."


def test_ubsan_without_its_own_stack_is_named_by_its_file():
    """UBSan's line, then ASan's SEGV report with its stack (throttle-over-iothread-node-segv
    on 10.2.2): the SEGV's frames are not UBSan's, so the file names the place."""
    both = ("../src/block/throttle-groups.c:625:25: runtime error: applying non-zero offset "
            "18446744073709551512 to null pointer\n"
            "AddressSanitizer:DEADLYSIGNAL\n"
            + UAF.replace("heap-use-after-free on address 0x51d0000a1c38 at pc",
                          "SEGV on unknown address (pc"))
    assert sanitizer_parts(sanitizer_report(both)) == (
        "UndefinedBehaviorSanitizer", "applying non-zero offset N to null pointer",
        "block/throttle-groups.c")
