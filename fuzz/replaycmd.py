"""``blockfuzz replay TRACE... [--qemu PATH]``: re-run traces against QEMU and the model.

No Hypothesis involved: every step of the trace runs on a fresh QEMU and a fresh model, and
each step is checked exactly as the fuzzer checks it (result, graph, qemu-io output) plus the
trace's written expectations.  Per trace: ``PASS``, ``FAIL <name>: step N ...`` or
``ERROR <name>: ...`` (cannot run: bad file, missing QEMU, something the model does not cover).
Exit status: 0 all passed, 1 some failed, 2 some could not run.

A *finding* trace (a campaign's ``minimal.json``/``first.json``, or a ``corpus/findings`` trace:
it records a ``signature`` or the versions it ``affects``) answers the question a developer
replays it for: ``STILL FAILS <name>: ...`` (with ``differently`` when the failure's signature
is not the recorded one) or ``FIXED <name>`` (this build does not show it).  A build that
answers a written expectation where the model predicts the bug for its version (a patched
build) is ``FIXED``, with the model's answer on the line.

With ``--qemu`` given more than once, every trace runs on each build (fresh QEMU and model
each, the same checks) and prints one line with a column per build::

    test_reopen  7.2.22:PASS  10.0.2:FAIL | 10.0.2: step 3 (blockdev-reopen): ...

so which builds a finding affects can be read off a corpus.  A column is ``PASS``, ``FAIL``,
``ERROR`` (cannot run) or ``UNMODELLED`` (the model declines a step, so it cannot judge the
build alone: a finding of ``blockfuzz diff`` made where the model was out of the loop).  A trace
with an ``UNMODELLED`` column is also run on the first build and each other build together, as
``blockfuzz diff`` compares them (``fuzz.diffengine``), and the line ends with ``builds:SAME`` or
``builds:DIFFER`` (with the first difference), ``builds:SAME`` also when both failed alike past
the model (``... | 7.2.22 and 10.0.2: step 2 (block-stream): both builds died of SIGSEGV``).
Exit status: the worst over all traces and builds (``UNMODELLED`` counts as what the build
comparison found).
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .errors import CliError, ExpectationMismatch, Finding, HarnessError, QemuNotFound
from .errors import one_line as _one_line

# traces and the model are imported by the handlers: building the command line must not pay
# for them (every subcommand's parser is built on every start)
if TYPE_CHECKING:
    from . import trace as T


def add_replay_parser(subparsers) -> None:
    p = subparsers.add_parser("replay", help="re-run traces against QEMU and the model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="+", metavar="TRACE",
                   help="trace files (JSON), or directories of them (corpus/seeds/)")
    p.add_argument("--qemu", metavar="PATH|VERSION", action="append", default=[],
                   help="qemu-system-x86_64 to use, or a fetched version (7.2, 10.0, 11.1) (default: $QEMU_PROG, then the fetched 11.1); "
                        "repeat it to replay on several builds, one column each")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per-command timeout (default 5)")
    p.add_argument("--strict", action="store_true",
                   help="a build without an exact profile: compare the fields its profile does "
                        "not know too (default: name them and leave them out)")
    p.add_argument("--coverage", metavar="DIR",
                   help="against a gcov build (qemu build --gcov): QEMU's line and branch "
                        "coverage of the block layer for these traces, HTML report in DIR")
    p.set_defaults(handler=run_replay)


def replay_trace(tr: T.Trace, binaries, timeout: float = 5.0, strict: bool = False) -> None:
    """Run one trace; raises its ``fuzz.errors.Finding`` on failure."""
    from .session import Session

    with Session(binaries, tr.images, timeout=timeout, machine=tr.machine, strict=strict) as s:
        for step in tr.steps:
            s.runner.run(step)


def _expand(paths: list[str]) -> list[str]:
    """A directory stands for its traces (``corpus/seeds/``: every ``*.json`` in it, sorted)."""
    import glob
    import os

    out: list[str] = []
    for p in paths:
        out += sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
    return out


def run_replay(args: argparse.Namespace) -> int:
    args.traces = _expand(args.traces)
    if len(args.qemu) > 1:
        if getattr(args, "coverage", None):
            print("blockfuzz: --coverage takes one --qemu (a gcov build)", file=sys.stderr)
            return 2
        return run_replay_builds(args)
    if getattr(args, "coverage", None):
        return _replay_with_coverage(args)
    return _replay(args)


def _replay_with_coverage(args: argparse.Namespace) -> int:
    """The replay, with a gcov build's counters of it collected and reported."""
    import os
    import shutil
    from pathlib import Path

    from .gcov import gcov_run_for, summary_text
    from .qemufetch import resolve_qemu

    try:
        binaries = resolve_qemu(args.qemu[0] if args.qemu else None)
        out = Path(args.coverage).absolute()
        data = out / "gcov-data"
        shutil.rmtree(data, ignore_errors=True)
        gcov = gcov_run_for(binaries.system, data)
    except (HarnessError, OSError) as e:
        print(f"blockfuzz: {_one_line(e)}", file=sys.stderr)
        return 2
    gcov.activate()
    try:
        status = _replay(args)
    finally:
        gcov.deactivate()
    try:
        summary = gcov.report(out)
    except HarnessError as e:
        print(f"blockfuzz: line coverage: {e}", file=sys.stderr)
        return 2
    print(summary_text(summary))
    print(f"line coverage report: {os.path.join(out, 'index.html')}")
    return status


def _replay(args: argparse.Namespace) -> int:
    from models import NotModeled

    from . import trace as T
    from .qemufetch import resolve_qemu

    binaries = None
    status = 0
    for path in args.traces:
        try:
            tr = T.load(path)
            # the QEMU is looked for once a trace needs it: a bad trace is reported as such
            # even where no QEMU is installed
            if binaries is None:
                binaries = resolve_qemu(args.qemu[0] if args.qemu else None)
            replay_trace(tr, binaries, args.timeout, args.strict)
        except T.TraceError as e:
            print(f"ERROR {path}: {e.message}")
            status = max(status, 2)
        except Finding as e:
            # one line per trace: a crash's stderr tail is folded onto it
            line = _one_line(e)
            if model_predicts_fixed_bug(tr, e):
                print(f"FIXED {tr.name} (QEMU answers as the trace expects; the model still "
                      f"predicts the bug for this version: {line})")
            elif is_finding(tr):
                wanted = recorded_signatures(tr)
                # a written expectation failing is the trace's own check of the bug
                how = "" if not wanted or e.kind == "expectation" or e.signature() in wanted \
                    else f" (differently: {e.signature()})"
                print(f"STILL FAILS {tr.name}{how}: {line}")
            else:
                print(f"FAIL {tr.name}: {line}")
            status = max(status, 1) if status != 2 else 2
        except NotModeled as e:
            print(f"ERROR {tr.name}: not covered by the model: {e}")
            status = 2
        except (HarnessError, OSError) as e:
            print(f"ERROR {path}: {_one_line(e)}")   # a tool's stderr folded onto the line
            status = 2
        except (QemuNotFound, CliError):
            raise   # no QEMU to replay on: the command's own one line (cli.main)
        except Exception as e:  # noqa: BLE001 - one line, never a traceback
            print(f"ERROR {path}: internal error (a blockfuzz bug): {type(e).__name__}: {e}")
            status = 2
        else:
            print(f"FIXED {tr.name}" if is_finding(tr) else f"PASS {tr.name}")
        sys.stdout.flush()
    return status


def model_predicts_fixed_bug(tr: T.Trace, e: Finding) -> bool:
    """A finding trace whose written expectation QEMU met at a step where the model did not:
    the model predicts the bug there (a version profile, ``Graph.leaked_blks``, ...) and this
    build does not have it, as a patched or newer build of a known version.  The side that
    contradicts an expectation is checked QEMU first (``fuzz.engine.Runner._check``), so QEMU
    answered every step so far as the trace expects.  Replay cannot go on, since the model has
    parted from the build; the verdict is ``FIXED``, with what the model said."""
    return is_finding(tr) and isinstance(e, ExpectationMismatch) \
        and e.detail.split(":", 1)[0] == "model"


def is_finding(tr: T.Trace) -> bool:
    """A trace of a QEMU bug rather than a conformance scenario (see the module docstring)."""
    return "signature" in tr.extra or "affects" in tr.extra or tr.name.startswith("finding ")


def recorded_signatures(tr: T.Trace) -> set[str]:
    """The signatures a finding trace records: a corpus trace's ``signature``
    (``fuzz.findings.recorded_signatures``), a campaign's in the first line of its
    description."""
    from . import findings

    found = set(findings.recorded_signatures(tr.extra.get("signature")))
    if tr.name.startswith("finding ") and tr.description:
        found.add(tr.description.splitlines()[0])
    return found



def _verdict(tr: T.Trace, binaries, timeout: float, strict: bool = False
             ) -> tuple[str, str, int]:
    """(column, detail, status) of one trace on one build."""
    from models import NotModeled

    try:
        replay_trace(tr, binaries, timeout, strict)
    except Finding as e:
        if model_predicts_fixed_bug(tr, e):
            return "PASS", "", 0
        return "FAIL", _one_line(e), 1
    except NotModeled as e:
        return "UNMODELLED", f"not covered by the model: {e}", 0
    except (HarnessError, OSError) as e:
        return "ERROR", _one_line(e), 2
    return "PASS", "", 0


def run_replay_builds(args: argparse.Namespace) -> int:
    """``replay --qemu A --qemu B ...``: a column per build (module docstring)."""
    from . import trace as T
    from .diffengine import build_label, diff_failure_of
    from .errors import FetchError
    from .qemufetch import resolve_qemu

    builds = [resolve_qemu(q) for q in args.qemu]
    try:
        labels = [build_label(b) for b in builds]
    except FetchError as e:
        print(f"blockfuzz: {e}", file=sys.stderr)
        return 2
    if len(set(labels)) < len(labels):
        labels = [f"{l}/{i + 1}" for i, l in enumerate(labels)]
    status = 0
    for path in args.traces:
        try:
            tr = T.load(path)
        except T.TraceError as e:
            print(f"ERROR {path}: {e.message}")
            status = 2
            sys.stdout.flush()
            continue
        results = [_verdict(tr, b, args.timeout, args.strict) for b in builds]
        line = tr.name + "".join(f"  {l}:{r[0]}" for l, r in zip(labels, results))
        worst = max(r[2] for r in results)
        if any(r[0] == "UNMODELLED" for r in results):
            # the model cannot judge alone: compare each build with the first, as diff does
            differ, alike = [], []
            for b, l in zip(builds[1:], labels[1:]):
                info: dict = {}
                try:
                    err = diff_failure_of(tr, (builds[0], b), args.timeout, info=info)
                except (HarnessError, OSError) as e:
                    differ.append(f"{labels[0]} vs {l}: {_one_line(e)}")
                    worst = 2
                    continue
                if err is not None:
                    differ.append(f"{labels[0]} vs {l}: {_one_line(err)}")
                elif info.get("ended"):
                    alike.append(f"{labels[0]} and {l}: {info['ended']}")
            line += "  builds:DIFFER" if differ else "  builds:SAME"
            if differ:
                worst = max(worst, 1)
            details = [f"{l}: {r[1]}" for l, r in zip(labels, results) if r[0] in ("FAIL", "ERROR")]
            details += differ + alike
        else:
            details = [f"{l}: {r[1]}" for l, r in zip(labels, results) if r[1]]
        if details:
            line += " | " + " | ".join(details)
        print(line)
        status = max(status, worst)
        sys.stdout.flush()
    return status
