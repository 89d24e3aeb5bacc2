"""``blockfuzz export``: the command line of ``fuzz.export`` (a trace as an iotest or a script).

Kept apart from ``fuzz.export`` so that building the command line (every start of
``blockfuzz``) does not import the model that planning a trace needs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .errors import CliError, ExportError, QemuNotFound


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a trace as a QEMU iotest or a standalone reproducer script",
        description="Write TRACE as a Python iotest in QEMU's style (DIR/tests/<name> and "
        "<name>.out, DIR standing for tests/qemu-iotests) or as a standalone script that "
        "needs only qemu.qmp. Both check what QEMU should answer (the trace's expectations, "
        "else the model's prediction for the target QEMU) and fail while the bug is there.")
    p.add_argument("trace", metavar="TRACE", help="trace file (JSON)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--iotest", metavar="DIR", help="write DIR/tests/<name> and DIR/tests/<name>.out")
    g.add_argument("--script", metavar="FILE", help="write a standalone reproducer to FILE")
    p.add_argument("--qemu", metavar="PATH|VERSION", help="target QEMU: its version picks the model "
                   "profile (default: $QEMU_PROG, then the fetched 11.1)")
    p.add_argument("--name", help="iotest name (default: the trace file's name)")
    p.add_argument("--graph", action="store_true",
                   help="also check the whole query-named-block-nodes after every step")
    p.add_argument("--check", action="store_true",
                   help="then run the exported iotest under check of the fetched QEMU 10.0 "
                        "source tree against --qemu (exit status: check's)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    # the model and the renderers only now: building the command line must not import them
    from . import export as E
    from . import trace as T

    try:
        tr = T.load(args.trace)
    except T.TraceError as e:
        raise CliError(str(e)) from None
    try:
        profile = E.profile_of(args.qemu)
        plan = E.plan_trace(tr, profile, origin=args.trace, name=args.name, graph=args.graph)
    except (ExportError, QemuNotFound) as e:
        raise CliError(f"cannot export {args.trace}: {e}") from None
    if args.script:
        text = E.render_script(plan, os.path.basename(args.script))
        E.write_file(Path(args.script), text, 0o755)
        print(args.script)
        if args.check:
            raise CliError("--check runs iotests; run the script itself instead")
        return 0
    test, out = E.render_iotest(plan)
    path = Path(args.iotest) / "tests" / plan.name
    E.write_file(path, test, 0o755)
    E.write_file(path.with_name(plan.name + ".out"), out, 0o644)
    print(path)
    if not args.check:
        return 0
    from .qemufetch import resolve_qemu
    from .qemusource import fetch_source

    binaries = resolve_qemu(args.qemu)
    st = fetch_source("10.0")
    with tempfile.TemporaryDirectory(prefix="blockfuzz-check-") as scratch:
        p = E.run_check(path, binaries, st.tree, Path(scratch), fmt=plan.test_format)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    return p.returncode
