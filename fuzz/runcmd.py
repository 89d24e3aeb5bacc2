"""``blockfuzz run``: a fuzz campaign against one QEMU.

    blockfuzz run [--qemu PATH] [--time S | --examples N] [--seed N] [--out DIR] [--profile P]

Findings go to ``DIR/<signature>/``: ``first.json`` (the failing example as found, written the
moment it failed), ``minimal.json`` (after Hypothesis' shrinking), ``summary.txt``.  A coverage
table (rules run, outcomes seen: success and each distinct error text) is printed at the end and
written to ``DIR/coverage.json``.  Exit status: 0 no findings, 1 findings, 2 harness or usage
error.

Settings profiles are registered here explicitly and always passed explicitly, so Hypothesis'
auto-loaded ``ci`` profile (derandomized, no database whenever ``$CI`` is set) never applies.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
import traceback
from collections import Counter

from hypothesis import HealthCheck, Phase, seed as hyp_seed, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import run_state_machine_as_test

from . import trace as T
from .engine import Disagreement, Events, QemuCrash, StepDone, generalise

_BASE = dict(deadline=None, print_blob=False, report_multiple_bugs=True,
             suppress_health_check=list(HealthCheck), stateful_step_count=25)
PROFILES = {
    # the test suite: fixed seed, no database, few examples
    "tests": dict(_BASE, derandomize=True, database=None, max_examples=20),
    # nightly campaigns: random seeds, database of failures to replay first next time
    "nightly": dict(_BASE, derandomize=False, max_examples=10**9),
    # reproduce: only replay what the database has
    "repro": dict(_BASE, derandomize=False, max_examples=1, phases=[Phase.explicit, Phase.reuse]),
}
for _name, _kw in PROFILES.items():
    settings.register_profile(f"blockfuzz-{_name}", parent=settings.get_profile("default"),
                              **{k: v for k, v in _kw.items() if k != "database"},
                              **({"database": None} if "database" in _kw else {}))


def add_run_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a fuzz campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--qemu", metavar="PATH", help="qemu-system-x86_64 (default: $QEMU_PROG, then the fetched 11.1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--time", type=float, metavar="S", help="stop after S seconds (default 60)")
    g.add_argument("--examples", type=int, metavar="N", help="stop after N examples")
    p.add_argument("--seed", type=int, metavar="N", help="Hypothesis seed (default: random)")
    p.add_argument("--out", default="findings", metavar="DIR", help="where findings go (default ./findings)")
    p.add_argument("--steps", type=int, default=25, metavar="N", help="steps per example (default 25)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per-command QEMU timeout")
    p.add_argument("--profile", choices=["nightly", "repro"], default="nightly",
                   help="nightly: random seeds, failures kept in DIR/.hypothesis (default); "
                        "repro: only re-run the failures stored there by an earlier run")
    p.add_argument("--strict", action="store_true",
                   help="a build without an exact profile: compare the fields its profile does "
                        "not know too (default: name them once and leave them out)")
    p.set_defaults(handler=run_campaign)


class Coverage:
    """Behaviour coverage: how often each rule ran and each distinct outcome was produced."""

    def __init__(self) -> None:
        self.rules: Counter = Counter()
        self.outcomes: Counter = Counter()
        self.exact_errors: Counter = Counter()  # unfolded error texts, for exact look-ups
        self.steps = 0

    def __call__(self, event) -> None:
        if not isinstance(event, StepDone) or event.model is None:
            return
        self.steps += 1
        cmd = event.step["qmp"]
        if cmd == "human-monitor-command":
            cmd = "qemu-io " + event.step["args"]["command-line"].split('"')[1].split()[0]
        self.rules[cmd] += 1
        o = event.model
        if o.error is not None:
            self.exact_errors[f"{cmd}: {o.error.desc}"] += 1
            key = f"{cmd}: error: {generalise(o.error.desc)}"
        elif o.ret:
            key = f"{cmd}: {generalise(o.ret.strip())}"
        elif o.stdout:
            key = f"{cmd}: " + " / ".join(generalise(l) for l in o.stdout)
        else:
            key = f"{cmd}: success"
        self.outcomes[key] += 1

    def table(self) -> str:
        lines = [f"{'count':>8}  rule"]
        lines += [f"{n:8d}  {k}" for k, n in self.rules.most_common()]
        lines += ["", f"{'count':>8}  outcome"]
        lines += [f"{n:8d}  {k}" for k, n in sorted(self.outcomes.items())]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"steps": self.steps, "rules": dict(self.rules), "outcomes": dict(self.outcomes),
                "exact-errors": dict(self.exact_errors)}




class FindingWriter:
    """Writes each failing example to disk at once (atomically), and again on later runs of
    the same bug, so the last write is Hypothesis' minimal example."""

    def __init__(self, out: str):
        self.out = out
        self.seen: dict[str, str] = {}
        self.signatures: dict[str, str] = {}
        self.internal: set[str] = set()
        #: how summary.txt says to replay a finding (diff mode names both builds)
        self.replay_command = "blockfuzz replay"

    def __call__(self, machine, error: BaseException) -> None:
        internal = not isinstance(error, (Disagreement, QemuCrash))
        if internal:  # a blockfuzz bug: keep the trace, report it as such
            tb = traceback.extract_tb(error.__traceback__)[-1]
            sig = f"internal:{type(error).__name__}:{os.path.basename(tb.filename)}:{tb.lineno}"
        else:
            sig = error.signature()
        digest = hashlib.sha1(sig.encode()).hexdigest()[:12]
        kind = "internal-error" if internal else error.kind
        folder = os.path.join(self.out, f"{kind}-{digest}")
        tr = T.Trace(name=f"finding {digest}", images=list(machine.images), steps=machine.recorded_steps(),
                     description=f"{sig}\n{error}",
                     extra={} if machine.machine == "none" else {"machine": machine.machine})
        if digest not in self.seen:
            T.save(tr, os.path.join(folder, "first.json"))
        T.save(tr, os.path.join(folder, "minimal.json"))
        self.seen[digest] = folder
        self.signatures[folder] = sig
        if internal:
            self.internal.add(folder)
        detail = "".join(traceback.format_exception(error)) if internal else f"{error}\n"
        _atomic_text(os.path.join(folder, "summary.txt"), f"{detail}signature: {sig}\n"
                     f"replay: {self.replay_command} {os.path.join(folder, 'minimal.json')}\n")


def _atomic_text(path: str, text: str) -> None:
    T.write_atomically(path, text)


def run_campaign(args: argparse.Namespace) -> int:
    from . import statemachine as SM
    from .qemufetch import resolve_qemu

    binaries = resolve_qemu(args.qemu)
    os.makedirs(args.out, exist_ok=True)
    events = Events()
    coverage = Coverage()
    events.subscribe(coverage)
    writer = FindingWriter(args.out)
    examples = 0
    deadline = time.monotonic() + (args.time if args.time is not None else 60.0) if args.examples is None else None

    def on_start(machine):
        nonlocal examples
        examples += 1
        if deadline is not None and time.monotonic() > deadline:
            raise _TimeUp()

    SM.CONTEXT.update(binaries=binaries, events=events, timeout=args.timeout, strict=args.strict,
                      on_failure=writer, on_example_start=on_start)
    prof = dict(PROFILES[args.profile], stateful_step_count=args.steps,
                database=DirectoryBasedExampleDatabase(os.path.join(args.out, ".hypothesis")))
    if args.examples is not None and args.profile != "repro":
        prof["max_examples"] = args.examples
    machine = SM.BlockGraphMachine
    if args.seed is not None:
        machine = hyp_seed(args.seed)(type("SeededMachine", (SM.BlockGraphMachine,), {}))
    start = time.monotonic()
    findings: list[str] = []
    if deadline is not None:
        # Examples check the deadline when they start; this catches a long shrink or a stuck
        # example.  Leaving via _TimeUp still runs each example's teardown (QEMU is killed).
        def _alarm(signum, frame):
            raise _TimeUp()
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(deadline - time.monotonic()) + 60)
    try:
        run_state_machine_as_test(machine, settings=settings(
            parent=settings.get_profile(f"blockfuzz-{args.profile}"), **prof))
    except (_TimeUp, SM.BlockfuzzBug):
        pass  # time is up / a blockfuzz bug: its trace is saved, reported below
    except BaseException as e:  # noqa: BLE001 - every failure is reported, then mapped to the exit code
        errors = list(getattr(e, "exceptions", [e]))
        if any(isinstance(x, _TimeUp) for x in errors) and not writer.seen:
            pass
        elif not writer.seen:
            print(f"blockfuzz: harness error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    finally:
        signal.alarm(0)
    elapsed = time.monotonic() - start
    findings = sorted(writer.seen.values())
    from .export import export_finding
    from .report import write_finding_report

    for folder in findings:
        if folder not in writer.internal:
            _minimize_finding(folder, writer.signatures[folder], binaries, args.timeout)
            # after minimizing, so the picture and reproducers are of the short trace; never
            # raise
            write_finding_report(folder, binaries, timeout=args.timeout)
            export_finding(folder, binaries)
    from .session import report_unknown_fields

    print(coverage.table())
    unknown = report_unknown_fields()
    with open(os.path.join(args.out, "coverage.json"), "w") as f:
        json.dump(dict(coverage.to_json(), examples=examples, seconds=elapsed,
                       **{"set-aside-fields": unknown}), f, indent=1)
    print(f"\n{examples} examples, {coverage.steps} steps in {elapsed:.1f} s "
          f"({examples / elapsed:.2f} examples/s, {coverage.steps / elapsed:.1f} steps/s)")
    if writer.internal:
        print(f"blockfuzz: internal error (a blockfuzz bug), trace kept: "
              f"{sorted(writer.internal)[0]}/minimal.json", file=sys.stderr)
        return 2
    if findings:
        print(f"{len(findings)} finding(s):")
        for f in findings:
            print(f"  {f}/minimal.json")
        return 1
    print("no findings")
    return 0


def _minimize_finding(folder: str, signature: str, binaries, timeout: float) -> None:
    """Shorten and simplify Hypothesis' minimal example (fuzz.minimize: steps, images,
    arguments, references, qemu-io; bounded in time and replays)."""
    from .minimize import minimize_finding

    path = os.path.join(folder, "minimal.json")
    tr = T.load(path)
    before = len(tr.steps)
    small = minimize_finding(tr, binaries, signature, timeout=timeout)
    if small is not tr:   # arguments and images may shrink with the step count unchanged
        T.save(small, path)
        print(f"{folder}: minimized from {before} to {len(small.steps)} steps")


class _TimeUp(KeyboardInterrupt):
    """Raised at the start of an example once the time budget is spent."""
