"""``blockfuzz replay TRACE... [--qemu PATH]``: re-run traces against QEMU and the model.

No Hypothesis involved: every step of the trace runs on a fresh QEMU and a fresh model, and
each step is checked exactly as the fuzzer checks it (result, graph, qemu-io output) plus the
trace's written expectations.  Per trace: ``PASS``, ``FAIL <name>: step N ...`` or
``ERROR <name>: ...`` (cannot run: bad file, missing QEMU, something the model does not cover).
Exit status: 0 all passed, 1 some failed, 2 some could not run.
"""
from __future__ import annotations

import argparse
import sys

from models import NotModeled

from . import trace as T
from .engine import Disagreement, QemuCrash
from .qemu import HarnessError


def add_replay_parser(subparsers) -> None:
    p = subparsers.add_parser("replay", help="re-run traces against QEMU and the model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="+", metavar="TRACE", help="trace files (JSON)")
    p.add_argument("--qemu", metavar="PATH", help="qemu-system-x86_64 to use (default: $QEMU_PROG, then the fetched 10.0)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per-command timeout (default 5)")
    p.set_defaults(handler=run_replay)


def replay_trace(tr: T.Trace, binaries, timeout: float = 5.0) -> None:
    """Run one trace; raises a Disagreement/QemuCrash on failure."""
    from .session import Session

    with Session(binaries, tr.images, timeout=timeout, machine=tr.machine) as s:
        for step in tr.steps:
            s.runner.run(step)


def run_replay(args: argparse.Namespace) -> int:
    from .qemufetch import resolve_qemu

    binaries = resolve_qemu(args.qemu)
    status = 0
    for path in args.traces:
        try:
            tr = T.load(path)
            replay_trace(tr, binaries, args.timeout)
        except T.TraceError as e:
            print(f"ERROR {path}: {e.message}")
            status = max(status, 2)
        except (Disagreement, QemuCrash) as e:
            # one line per trace: a crash's stderr tail is folded onto it
            print(f"FAIL {tr.name}: " + " | ".join(l for l in str(e).splitlines() if l.strip()))
            status = max(status, 1) if status != 2 else 2
        except NotModeled as e:
            print(f"ERROR {tr.name}: not covered by the model: {e}")
            status = 2
        except (HarnessError, OSError) as e:
            print(f"ERROR {path}: {e}")
            status = 2
        else:
            print(f"PASS {tr.name}")
        sys.stdout.flush()
    return status
