"""``blockfuzz minimize TRACE [--qemu PATH] [-o OUT] [--timeout S]``: the smallest trace that
still fails the same way.

The trace is replayed on a fresh QEMU and model; its failure (the finding's signature, and for a
crash how QEMU died) is the target.  Then ``fuzz.minimize`` deletes steps, images, image
writes, argument keys, reopen elements and qemu-io flags, turns inline children into references
to nodes that already exist and brings numbers down, keeping each change whose replay still
fails with the target.  Every improvement prints one line on stderr; Ctrl-C or SIGTERM stops
the search once the replay under way is over (a second one at once) and writes the best trace
so far.  The output (default ``<input stem>.min.json``
beside the input) is written atomically and carries, per step, what each side answered in the
replay that showed it fails.

Exit status: 0 a minimized trace was written (the input did fail); 1 the input does not fail
(nothing to minimize); 2 usage or harness error (one line on stderr).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from .errors import CliError, HarnessError, QemuNotFound
from .errors import one_line as _one_line


def add_minimize_parser(subparsers) -> None:
    p = subparsers.add_parser("minimize", help="minimize a failing trace (delta debugging on QEMU)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("trace", metavar="TRACE", help="a failing trace (JSON)")
    p.add_argument("--qemu", metavar="PATH|VERSION",
                   help="qemu-system-x86_64, or a fetched version (7.2, 10.0, 11.1) (default: $QEMU_PROG, then the fetched 11.1)")
    p.add_argument("-o", "--out", metavar="OUT",
                   help="where the minimized trace goes (default: <input stem>.min.json beside it)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="per-command QEMU timeout (default 5; a hang costs this much per replay)")
    p.add_argument("--time", type=float, metavar="S",
                   help="stop improving after S seconds and write the best so far (default: no limit)")
    p.add_argument("--tries", type=int, default=1, metavar="N",
                   help="replays per candidate before it counts as not failing (for an "
                        "intermittent bug; default 1)")
    p.add_argument("--strict", action="store_true",
                   help="a build without an exact profile: compare the fields its profile does "
                        "not know too")
    p.set_defaults(handler=run_minimize)


def default_output(path: str) -> str:
    """``dir/name.json`` -> ``dir/name.min.json``."""
    root, ext = os.path.splitext(path)
    return f"{root}.min{ext or '.json'}"


class _Interrupts:
    """SIGINT and SIGTERM ask the search to stop: the replay under way finishes (QEMU's I/O is
    never cut in the middle), then the best trace so far is written.  A second signal stops at
    once (still writing the best trace)."""

    def __init__(self) -> None:
        self.requested = False
        self.writing = False
        self._old: dict = {}

    def __enter__(self) -> "_Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handler(self, signum, frame) -> None:
        if self.writing:
            return
        if self.requested:
            raise KeyboardInterrupt()
        self.requested = True
        _say("stopping after this replay (again to stop now)")

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop was asked for (between replays)."""
        if self.requested:
            raise KeyboardInterrupt()


def _say(msg: str) -> None:
    print(f"minimize: {msg}", file=sys.stderr, flush=True)


def _fail(msg: str, status: int = 2) -> CliError:
    return CliError(msg, status)



def run_minimize(args: argparse.Namespace) -> int:
    try:
        return _run_minimize(args)
    except (CliError, QemuNotFound) as e:
        print(f"blockfuzz: {e}", file=sys.stderr)
        return getattr(e, "status", 2)


def _run_minimize(args: argparse.Namespace) -> int:
    if args.tries < 1:
        raise _fail("--tries must be at least 1")
    # the model and the minimizer only once the options are valid (a bad one costs no import)
    from models import NotModeled

    from . import minimize as M
    from . import trace as T
    from .qemufetch import resolve_qemu

    try:
        tr = T.load(args.trace)
    except T.TraceError as e:
        raise _fail(str(e)) from None
    out = args.out or default_output(args.trace)
    binaries = resolve_qemu(args.qemu)
    start = time.monotonic()
    pred = M.QemuPredicate(binaries, timeout=args.timeout, tries=args.tries, strict=args.strict)
    with _Interrupts() as irq:
        try:
            err = pred.check(tr)
        except KeyboardInterrupt:
            raise _fail("interrupted before the input was seen to fail; nothing written") from None
        except NotModeled as e:
            raise _fail(f"{args.trace}: cannot run: not covered by the model: {e}") from None
        except (HarnessError, OSError, ValueError) as e:
            raise _fail(f"{args.trace}: cannot run: {_one_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - the model tripped over the input: say so, once
            raise _fail(f"{args.trace}: cannot run: {type(e).__name__}: {_one_line(e)}") from None
        if err is None:
            print(f"blockfuzz: {args.trace} does not fail on {binaries.system} (nothing to minimize)",
                  file=sys.stderr)
            return 1
        first = M.Size.of(tr)
        _say(f"{args.trace} fails at step {err.step_index + 1}: {pred.target}")
        _say(f"start: {first}")
        stats = M.Stats(started=start)

        def improved(best: T.Trace, st: M.Stats) -> None:
            _say(f"{M.Size.of(best)}, {st.elapsed:.1f} s (run {st.runs}, {st.pass_name})")

        def still_fails(candidate: T.Trace) -> bool:
            irq.check()
            return pred(candidate)

        deadline = None if args.time is None else start + args.time
        try:
            irq.check()
            best = M.minimize(tr, still_fails, on_improvement=improved, deadline=deadline, stats=stats)
            how = "time budget reached; " if stats.stopped == "budget" else ""
        except M.MinimizeInterrupted as e:
            best, how = e.best, "interrupted; "
        except KeyboardInterrupt:       # before the search started: the input is the best
            best, how = tr, "interrupted; "
        irq.writing = True
        final = pred.with_observed(best)
        try:
            T.save(final, out)
        except OSError as e:
            raise _fail(f"cannot write {out}: {e}") from None
        size = M.Size.of(final)
        _say(f"{how}wrote {out}: {first.steps} -> {size.steps} steps, {first.images} -> "
             f"{size.images} images, {first.trace_bytes} -> {size.trace_bytes} B in "
             f"{time.monotonic() - start:.1f} s ({pred.runs} replays)")
        print(out)
        sys.stdout.flush()
    return 0
