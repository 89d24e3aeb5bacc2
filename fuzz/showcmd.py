"""``blockfuzz show TRACE [--step N] [--qemu PATH] [-o OUT.html]``: draw a trace's block graph.

Replays the trace on a fresh QEMU and model up to step N (1-based; default: the first failing
step, else the last one) and writes ``report.html``-style HTML (``fuzz.report``): the step, the
text difference, and the graph as the model predicted it and as QEMU reported it, side by side,
what differs coloured.  Default output: ``<TRACE stem>.html`` in the current directory.
Prints the file written and one line on what the step showed.  Exit status: 0 written, 2 bad
input (a missing or corrupt trace, a bad ``--step``, a QEMU that is not one or will not start),
one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_show_parser(subparsers) -> None:
    p = subparsers.add_parser("show", help="draw a trace's block graph (model vs QEMU) as HTML",
                              description="Replay a trace up to a step and write HTML with the block graph as the model "
                                          "predicted it and as QEMU reported it, side by side, differences coloured.")
    p.add_argument("trace", metavar="TRACE", help="a trace file (JSON)")
    p.add_argument("--step", type=int, metavar="N",
                   help="the step to show, 1-based (default: the failing step, else the last)")
    p.add_argument("--qemu", metavar="PATH|VERSION", help="qemu-system-x86_64, or a fetched version (7.2, 10.0, 11.1) (default: $QEMU_PROG, then the fetched 11.1)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per-command timeout (default 5)")
    p.add_argument("-o", "--output", metavar="OUT.html", help="where to write (default: TRACE stem + .html)")
    p.set_defaults(handler=run_show)


def _fail(message: str) -> int:
    print(f"blockfuzz: {message}".splitlines()[0], file=sys.stderr)
    return 2


def run_show(args: argparse.Namespace) -> int:
    from . import report as R
    from . import trace as T
    from .errors import HarnessError, QemuNotFound, one_line
    from .qemufetch import resolve_qemu

    try:
        tr = T.load(args.trace)
    except T.TraceError as e:
        return _fail(str(e))
    if not tr.steps:
        return _fail(f"{args.trace}: the trace has no steps")
    step = None
    if args.step is not None:
        if not 1 <= args.step <= len(tr.steps):
            return _fail(f"--step {args.step}: {args.trace} has steps 1 to {len(tr.steps)}")
        step = args.step - 1
    try:
        binaries = resolve_qemu(args.qemu)
    except QemuNotFound as e:
        return _fail(str(e))
    out = args.output or os.path.splitext(os.path.basename(args.trace))[0] + ".html"
    try:
        rep = R.build_report(tr, binaries, step, args.timeout, source=args.trace)
    except (HarnessError, OSError) as e:
        return _fail(f"{args.trace}: {one_line(e)}")
    try:
        R.write_report(out, rep)
    except OSError as e:
        return _fail(f"{out}: {e.strerror or e}")
    what = one_line(rep.error) if rep.error is not None else "model and QEMU agree"
    print(f"{out}: step {rep.index + 1}: {what}"[:400])
    from .toolfetch import find_dot

    if find_dot() is None:
        print("blockfuzz: Graphviz's dot not found (python -m fuzz.toolfetch fetch graphviz): "
              "the report has DOT text instead of pictures", file=sys.stderr)
    return 0
