"""``blockfuzz run``: a fuzz campaign against one QEMU.

    blockfuzz run [--qemu PATH] [--time S | --examples N] [--workers N] [--seed N] [--out DIR]
                  [--database redis://HOST:PORT/N] [--junit FILE] [--json FILE] [--strict]

Findings go to ``DIR/<kind>-<hash>/`` (``fuzz.findings``): ``first.json`` (the failing example
as found, written the moment it failed), ``minimal.json`` (after Hypothesis' shrinking and
blockfuzz's own minimizer), ``summary.txt``, ``report.html``, ``reproducer.py``, ``iotest/``.
A bug already in ``corpus/findings/`` for this version is *known*: counted, written under
``DIR/known/``, and it does not fail the campaign.  A coverage table is written to
``DIR/coverage.json``.

Exit status: 0 no new finding; 1 new findings; 2 a harness or usage error, a blockfuzz bug, or
a campaign that executed no step.  SIGINT / SIGTERM stop the campaign within seconds (no
minimizing then); the status is what the findings so far call for.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DatabaseError, HarnessError, UsageError

# The campaign machinery (Hypothesis, the model, the harness) is imported only once the options
# are checked: a bad option must cost an import of argparse, not of Hypothesis.
if TYPE_CHECKING:
    from .campaign import CampaignState
    from .engine import Events
    from .findings import KnownBugs

#: the checkout's known QEMU bugs
CORPUS_FINDINGS = Path(__file__).resolve().parent.parent / "corpus" / "findings"


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def add_run_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a fuzz campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--qemu", metavar="PATH|VERSION", help="qemu-system-x86_64, or a fetched version (7.2, 10.0, 11.1) (default: $QEMU_PROG, then the fetched 11.1)")
    add_campaign_options(p)
    p.add_argument("--workers", type=str, metavar="N",
                   help=f"worker processes, each with its own QEMU (default: all cores, here {default_workers()})")
    p.add_argument("--database", metavar="URL",
                   help="example database shared by workers and machines: redis://HOST:PORT[/N] "
                        "(default: DIR/.hypothesis)")
    p.add_argument("--profile", choices=["nightly", "repro"], default="nightly",
                   help="nightly: random seeds, failures kept in the database (default); "
                        "repro: only re-run the failures stored there by an earlier run")
    p.add_argument("--known-bugs", metavar="DIR", default=str(CORPUS_FINDINGS),
                   help="finding traces of known QEMU bugs (default: the checkout's corpus/findings)")
    p.add_argument("--no-reuse", action="store_true",
                   help="a fresh QEMU for every example (default: -M none examples share one "
                        "QEMU behind a checked reset; findings are confirmed on a fresh one)")
    p.set_defaults(handler=run_command)


def add_campaign_options(p) -> None:
    """Options run and diff share.  Types are checked by :func:`campaign_numbers`, so a bad
    value gets our one line rather than argparse's usage text."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--time", metavar="S", help="stop after S seconds (default 60)")
    g.add_argument("--examples", metavar="N", help="stop after N examples")
    p.add_argument("--seed", metavar="N", help="Hypothesis seed (default: random)")
    p.add_argument("--out", default="findings", metavar="DIR", help="where findings go (default ./findings)")
    # 100, not Hypothesis' 25-ish: measured with the QEMU pool, 25 gave 12 executed steps per
    # example at 81 steps/s, 60 gave 32 at 107 steps/s (deeper states, set-up amortised);
    # 2026-12-02 (11.1.3, bench/speed_bench.py, 40 s): 50 drew 23.6 steps per example (a third
    # of the examples draw none) with set-up 11.6 % of the time, 100 drew 47.0 with 6.8 %
    p.add_argument("--steps", default="100", metavar="N", help="steps per example (default 100)")
    p.add_argument("--timeout", default="5", metavar="S", help="per-command QEMU timeout (default 5)")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (a testcase per finding)")
    p.add_argument("--json", metavar="FILE", help="write a JSON report of the campaign")
    p.add_argument("--strict", action="store_true",
                   help="a build without an exact profile: compare the fields its profile does "
                        "not know too (default: name them once and leave them out)")
    p.add_argument("--coverage", action="store_true",
                   help="print the behaviour coverage tables at the end; against a gcov build "
                        "(qemu build --gcov) also QEMU's line and branch coverage of the block "
                        "layer, with an HTML report in DIR/coverage/")


def _number(name: str, text: str | None, kind, minimum, inclusive: bool = True):
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{name} {text!r}: not a{'n integer' if kind is int else ' number'}") from None
    if value != value or value in (float("inf"), float("-inf")) or \
            (value < minimum if inclusive else value <= minimum):
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise UsageError(f"{name} {text}: must be {bound}")
    return value


def campaign_numbers(args) -> dict:
    """The numeric options, checked: each bad value is one line and exit status 2."""
    out = {
        "time": _number("--time", args.time, float, 0, inclusive=False),
        "examples": _number("--examples", args.examples, int, 1),
        "seed": _number("--seed", args.seed, int, 0),
        "steps": _number("--steps", args.steps, int, 1),
        "timeout": _number("--timeout", args.timeout, float, 0, inclusive=False),
    }
    if out["time"] is None and out["examples"] is None:
        out["time"] = 60.0
    return out


def prepare_out(path: str) -> str:
    """Create ``--out`` and make sure findings can be written there, or one line."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out {path}: cannot write findings there: {e.strerror or e}") from None
    return path


def prepare_report_path(flag: str, path: str | None) -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: directory {parent} is not writable")


def require_qemu(binaries) -> str:
    """The build's version line, or one line saying the program is not a QEMU."""
    from .qemu import binaries_env

    try:
        out = subprocess.run([os.fspath(binaries.system), "-version"], env=binaries_env(binaries),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"--qemu {binaries.system}: cannot run it: {e}") from None
    first = (out.stdout.splitlines() or [""])[0]
    if "QEMU emulator version" not in first:
        raise UsageError(f"{binaries.system} is not a QEMU system emulator "
                         f"(its -version printed {first[:80]!r}, not 'QEMU emulator version ...')")
    return first


def check_database(spec: str | None, out: str) -> None:
    from .database import open_database

    try:
        db = open_database(spec, out)
    except DatabaseError as e:
        raise UsageError(str(e)) from None
    close = getattr(db, "close", None)
    if callable(close):
        close()


def known_bugs(folder: str) -> KnownBugs:
    """The known-bug table, or one line: a missing folder or a corrupt trace is the user's
    to fix, not a campaign that silently reports every known bug as new."""
    from . import trace as T
    from .findings import KnownBugs

    if not os.path.isdir(folder):
        raise UsageError(f"--known-bugs {folder}: not a directory")
    try:
        return KnownBugs.from_corpus(folder)
    except T.TraceError as e:
        raise UsageError(f"--known-bugs: {e}") from None


def run_command(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as e:
        print(f"blockfuzz: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from .qemufetch import resolve_qemu

    numbers = campaign_numbers(args)
    workers = _number("--workers", args.workers, int, 1) or default_workers()
    # the cheap checks of the user's options first, then the QEMU
    prepare_out(args.out)
    prepare_report_path("--junit", args.junit)
    prepare_report_path("--json", args.json)
    check_database(args.database, args.out)
    known = known_bugs(args.known_bugs)
    binaries = resolve_qemu(args.qemu)
    version = require_qemu(binaries)
    from .campaign import CampaignSpec, run_campaign
    from .database import CAMPAIGN_KEY
    # what the end of the campaign (minimization, export, reports) imports, now: a checkout
    # edited or pulled under a running campaign must not give one process old and new modules
    # (seen 2026-12-02: a Runner of the old engine.py given a keyword of the new session.py)
    from . import export, minimize, report, session, statemachine  # noqa: F401

    spec = CampaignSpec(binaries=binaries, out=args.out, workers=workers, strict=args.strict,
                        database=args.database, mode=args.profile, known=known,
                        pool=not args.no_reuse, db_key=CAMPAIGN_KEY, **numbers)
    print(f"blockfuzz run: {version} ({binaries.system}), {workers} worker(s), "
          + (f"{numbers['time']:g} s" if numbers["time"] is not None else f"{numbers['examples']} examples")
          + f", findings in {args.out}", flush=True)
    gcov = line_coverage(args, binaries)
    if gcov is not None:
        gcov.activate()
    try:
        state = run_campaign(spec, reporting_bus(args, spec))
    finally:
        if gcov is not None:
            gcov.deactivate()
    return finish(state, args, binaries, gcov)


def line_coverage(args, binaries):
    """The gcov collection of a ``--coverage`` run against a gcov build, else None."""
    if not getattr(args, "coverage", False):
        return None
    from .gcov import gcov_run_for
    from .qemubuild import build_of

    b = build_of(binaries.system)
    if b is None or not b.gcov:
        print("blockfuzz run: --coverage: behaviour coverage only (QEMU's line coverage needs "
              "a gcov build: `blockfuzz qemu build VERSION --gcov`)", flush=True)
        return None
    data = os.path.join(os.path.abspath(args.out), "gcov-data")
    shutil.rmtree(data, ignore_errors=True)   # this run's counters only
    return gcov_run_for(binaries.system, Path(data))


def reporting_bus(args, spec) -> Events:
    """The parent's listeners: progress, then the report files asked for."""
    from .engine import Events
    from .reporters import JsonReporter, JUnitReporter, ProgressReporter

    bus = Events()
    bus.subscribe(ProgressReporter())
    if args.junit:
        bus.subscribe(JUnitReporter(args.junit))
    if args.json:
        bus.subscribe(JsonReporter(args.json))
    return bus


def finish(state: CampaignState, args, binaries, gcov=None) -> int:
    """Post-processing of new findings (minimize, report, reproducers) unless stopped by a
    signal, the summary, and the exit status."""
    from .reporters import coverage_table, depth_table

    if state.stopped_by is None:
        _post_process_all(state, binaries, float(args.timeout))
    cov = state.merged_coverage()
    unknown = {b: sorted(p) for b, p in state.unknown_fields.items() if p}
    with open(os.path.join(args.out, "coverage.json"), "w") as fh:
        json.dump(dict(cov, examples=state.examples, seconds=state.elapsed,
                       **{"set-aside-fields": unknown}), fh, indent=1)
    if args.coverage:
        print(coverage_table(cov))
        print()
        print(depth_table(cov))
    line_status = 0
    if gcov is not None:
        from .gcov import summary_text
        try:
            summary = gcov.report(Path(args.out) / "coverage")
        except HarnessError as e:
            print(f"blockfuzz: line coverage: {e}", file=sys.stderr)
            line_status = 2
        else:
            print()
            print(summary_text(summary))
            print(f"line coverage report: {os.path.join(args.out, 'coverage', 'index.html')}")
    for build, paths in sorted(unknown.items()):
        print(f"QEMU {build} has no exact profile; fields left out of the comparison "
              f"(--strict compares them): {', '.join(paths)}")
    el = max(state.elapsed, 1e-9)
    print(f"\n{state.examples} examples, {state.steps} steps in {state.elapsed:.1f} s "
          f"({state.examples / el:.2f} examples/s, {state.steps / el:.1f} steps/s)")
    if state.stopped_by:
        print(f"stopped by {state.stopped_by}")
    if state.reuse_artefacts:
        print(f"{sum(state.reuse_artefacts.values())} failure(s) on a reused QEMU did not come "
              f"back on a fresh one (not findings): {', '.join(sorted(state.reuse_artefacts))}")
    known = state.known()
    if known:
        print(f"{len(known)} known QEMU bug(s), not counted as new:")
        for f in known:
            print(f"  {f.known}: {f.folder}")
    status = state.exit_status()
    report_problems(state)
    new = state.new()
    if new:
        print(f"{len(new)} new finding(s):")
        for f in new:
            tag = f" (regression: {f.regression})" if f.regression else ""
            print(f"  {f.folder}/minimal.json{tag}\n    {f.summary[:300]}")
    elif status == 0:
        print("no new findings")
    return status or line_status


def report_problems(state: CampaignState) -> None:
    """The one stderr line of a campaign that could not do its job (exit status 2)."""
    for msg in state.harness_errors[:1]:
        print(f"blockfuzz: harness error: {msg}", file=sys.stderr)
    for f in state.internal()[:1]:
        print(f"blockfuzz: internal error (a blockfuzz bug), trace kept: "
              f"{f.folder}/minimal.json", file=sys.stderr)
    if not state.harness_errors and state.steps == 0:
        print("blockfuzz: the campaign executed no step (nothing was checked)", file=sys.stderr)


def _post_process_all(state: CampaignState, binaries, timeout: float) -> None:
    """``_post_process`` for each new finding, until SIGINT or SIGTERM: the first one stops it
    within seconds as it stops a campaign (what runs unwinds, so its QEMU and work directory
    go; a minimization keeps its best trace so far), and the findings stay as written."""
    import signal

    from .campaign import _Stopper

    stopper = _Stopper(raise_in_main=True)
    try:
        with stopper:
            for f in state.new():
                if stopper():
                    break
                if not f.internal:
                    _post_process(f.folder, f.signature, binaries, timeout, stopper)
    except KeyboardInterrupt:
        if stopper.signum is None:
            raise
    if stopper.signum is not None:
        state.stopped_by = signal.Signals(stopper.signum).name
        print(f"post-processing stopped by {state.stopped_by}: the findings are on disk, "
              "not all minimized or reported", flush=True)


def _post_process(folder: str, signature: str, binaries, timeout: float,
                  stopped=lambda: False) -> None:
    """Shorten the trace (fuzz.minimize), then the report and the reproducers of the short
    trace (not once ``stopped()``).  None of these raise but a stop (KeyboardInterrupt)."""
    from . import trace as T
    from .export import export_finding
    from .minimize import minimize_finding
    from .report import write_finding_report

    path = os.path.join(folder, "minimal.json")
    try:
        tr = T.load(path)
        small = minimize_finding(tr, binaries, signature, timeout=timeout,
                                 why_not=lambda why: print(f"{folder}: not minimized: {why}"))
        if small is not tr:
            T.save(small, path)
            print(f"{folder}: minimized from {len(tr.steps)} to {len(small.steps)} steps")
    except T.TraceError as e:
        print(f"{folder}: not minimized: {e}")
    if stopped():
        return
    _full_sanitizer_report(folder, signature, binaries, timeout)
    write_finding_report(folder, binaries, timeout=timeout)
    export_finding(folder, binaries)


def _full_sanitizer_report(folder: str, signature: str, binaries, timeout: float) -> None:
    """A sanitizer finding's report again, with whole allocation and free stacks.

    Campaigns run ASan's fast unwinder, which stops at the first frame without a frame
    pointer (glib's g_free), so "freed by" shows two frames; the slow one costs 2.5x per
    example (seed replay on 10.2.2: 25 s instead of 10 s).  So the minimal trace is replayed
    once with ``fast_unwind_on_malloc=0``, and its report replaces ``sanitizer.txt`` if it
    is the same bug.  Never raises."""
    from . import trace as T
    from .errors import QemuCrash
    from .replaycmd import replay_trace

    path = os.path.join(folder, "sanitizer.txt")
    if not os.path.exists(path):
        return
    saved = os.environ.get("ASAN_OPTIONS")
    os.environ["ASAN_OPTIONS"] = (saved + ":" if saved else "detect_leaks=0:") \
        + "fast_unwind_on_malloc=0"
    try:
        replay_trace(T.load(os.path.join(folder, "minimal.json")), binaries, timeout)
    except QemuCrash as e:
        if e.sanitizer and e.signature() == signature:
            T.write_atomically(path, e.sanitizer)
    except Exception:  # noqa: BLE001 - the fast report stays
        pass
    finally:
        if saved is None:
            os.environ.pop("ASAN_OPTIONS", None)
        else:
            os.environ["ASAN_OPTIONS"] = saved
