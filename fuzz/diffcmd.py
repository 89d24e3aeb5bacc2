"""``blockfuzz diff``: one campaign on two QEMU builds, each beside its own model.

    blockfuzz diff --qemu A --qemu B [--time S | --examples N] [--seed N] [--out DIR]
                   [--steps N] [--timeout S] [--coverage]

Every generated example runs step by step on build A, build B and a model per build (the
profile Session picks for it).  Builds may differ only where their profiles predict it; a step a
model declines still goes to both builds, which are then compared with each other for the rest
of the example (``fuzz.diffengine`` has the rules).  Rules draw from model A's state.

Findings are traces in run's format (``DIR/<kind>-<hash>/first.json``, ``minimal.json``,
``summary.txt``; kind ``build`` for a disagreement between the builds, otherwise run's kinds
with the build named in the message), replayable on either build with ``blockfuzz replay``, or
on both with ``blockfuzz replay --qemu A --qemu B``.  Exit status: 0 no findings, 1 findings,
2 harness or usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import Counter

from hypothesis import seed as hyp_seed, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import run_state_machine_as_test

from . import trace as T
from .engine import Events, StepDone
from .runcmd import PROFILES, Coverage, FindingWriter, _TimeUp


def add_diff_parser(subparsers) -> None:
    p = subparsers.add_parser("diff", help="run a differential campaign on two QEMU builds",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--qemu", metavar="PATH", action="append", default=[],
                   help="qemu-system-x86_64 of a build; given twice, A then B (A's model drives generation)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--time", type=float, metavar="S", help="stop after S seconds (default 60)")
    g.add_argument("--examples", type=int, metavar="N", help="stop after N examples")
    p.add_argument("--seed", type=int, metavar="N", help="Hypothesis seed (default: random)")
    p.add_argument("--out", default="findings", metavar="DIR", help="where findings go (default ./findings)")
    p.add_argument("--steps", type=int, default=25, metavar="N", help="steps per example (default 25)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per-command QEMU timeout")
    p.add_argument("--coverage", action="store_true", help="print the coverage table at the end")
    p.add_argument("--strict", action="store_true",
                   help="a build without an exact profile: compare the fields its profile does "
                        "not know too (default: name them once and leave them out)")
    p.set_defaults(handler=run_diff)


class DiffCoverage(Coverage):
    """Run's coverage (rules, outcomes: model A's prediction, build A's reply where the model
    declined), plus how far the models followed."""

    def __init__(self) -> None:
        super().__init__()
        self.declined = 0        # steps a model declined (sent to both builds all the same)
        self.builds_only = 0     # steps compared build against build only
        self.decline_reasons: Counter = Counter()

    def __call__(self, event) -> None:
        from .diffengine import DiffStepDone

        if not isinstance(event, DiffStepDone):
            return
        model_a, qemu_a = event.models[0], event.qemus[0]
        if not event.modelled:
            self.builds_only += 1
            if any(m is None for m in event.models):
                self.declined += 1
        outcome = model_a if model_a is not None else qemu_a
        if outcome is not None:
            super().__call__(StepDone(event.index, event.step, outcome, qemu_a))

    def to_json(self) -> dict:
        return dict(super().to_json(), **{"declined-steps": self.declined,
                                          "build-only-steps": self.builds_only})


class PastModel:
    """Examples that ended with both builds failing the same way where the models were out of
    the loop (no finding: the builds agree).  The first trace of each kind is kept in
    ``DIR/past-model/<hash>.json`` for a look: it may be a bug both builds share."""

    def __init__(self, out: str):
        self.dir = os.path.join(out, "past-model")
        self.kinds: Counter = Counter()
        self.kept: dict[str, str] = {}

    def __call__(self, event) -> None:
        import hashlib

        from .diffengine import ExampleEnded
        from .engine import generalise

        if not isinstance(event, ExampleEnded):
            return
        kind = generalise(re.sub(r"^step \d+ ", "", event.reason))   # "(cmd): both builds ..."
        self.kinds[kind] += 1
        if kind in self.kept:
            return
        path = os.path.join(self.dir, hashlib.sha1(kind.encode()).hexdigest()[:12] + ".json")
        T.save(T.Trace(name=f"past model: {kind}", images=list(event.images), steps=list(event.steps),
                       description=f"both builds failed the same way where the models were out "
                                   f"of the loop: {event.reason}",
                       extra={} if event.machine == "none" else {"machine": event.machine}), path)
        self.kept[kind] = path


def _profile_of(binaries):
    """The version profile Session picks for a build (``profile_for`` of its version)."""
    from models import profile_for

    from .diffengine import build_label

    return profile_for(*(int(x) for x in build_label(binaries).split(".")[:3]))[0]


def run_diff(args: argparse.Namespace) -> int:
    from . import statemachine as SM
    from .diffengine import (SetAside, build_label, diff_failure_of, labels_for, minimize_diff,
                             profile_set_aside)
    from .qemufetch import FetchError, resolve_qemu

    # one line and status 2, as cli.main does for a CliError (printed here: under
    # `python -m fuzz.cli` this module's fuzz.cli.CliError is not __main__'s)
    if len(args.qemu) != 2:
        print(f"blockfuzz: diff needs --qemu twice (build A, then build B), got {len(args.qemu)}",
              file=sys.stderr)
        return 2
    pair = tuple(resolve_qemu(q) for q in args.qemu)
    try:
        labels = labels_for(pair)
        for b in pair:
            build_label(b)
    except FetchError as e:
        print(f"blockfuzz: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    events = Events()
    coverage = DiffCoverage()
    events.subscribe(coverage)
    past = PastModel(args.out)
    events.subscribe(past)
    writer = FindingWriter(args.out)
    writer.replay_command = "blockfuzz replay " + " ".join(f"--qemu {q}" for q in args.qemu)
    examples = 0
    deadline = time.monotonic() + (args.time if args.time is not None else 60.0) if args.examples is None else None

    def on_start(machine):
        nonlocal examples
        examples += 1
        if deadline is not None and time.monotonic() > deadline:
            raise _TimeUp()

    print(f"diff: A = {labels[0]} ({pair[0].system}), B = {labels[1]} ({pair[1].system}); "
          f"generation follows A's model")
    aside = SetAside(profile_set_aside(*(_profile_of(b) for b in pair)))
    print("after a model declines a step, builds are compared without: "
          + ("; ".join(aside.describe()) or "nothing (same profile)"))
    sys.stdout.flush()
    SM.CONTEXT.update(binaries=pair[0], diff=pair, events=events, timeout=args.timeout,
                      strict=args.strict,
                      on_failure=writer, on_example_start=on_start)
    prof = dict(PROFILES["nightly"], stateful_step_count=args.steps,
                database=DirectoryBasedExampleDatabase(os.path.join(args.out, ".hypothesis")))
    if args.examples is not None:
        prof["max_examples"] = args.examples
    machine = SM.BlockGraphMachine
    if args.seed is not None:
        machine = hyp_seed(args.seed)(type("SeededDiffMachine", (SM.BlockGraphMachine,), {}))
    start = time.monotonic()
    if deadline is not None:
        def _alarm(signum, frame):
            raise _TimeUp()
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(deadline - time.monotonic()) + 60)
    try:
        run_state_machine_as_test(machine, settings=settings(
            parent=settings.get_profile("blockfuzz-nightly"), **prof))
    except (_TimeUp, SM.BlockfuzzBug):
        pass
    except BaseException as e:  # noqa: BLE001 - every failure is reported, then mapped to the exit code
        errors = list(getattr(e, "exceptions", [e]))
        if not writer.seen and not any(isinstance(x, _TimeUp) for x in errors):
            print(f"blockfuzz: harness error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    finally:
        signal.alarm(0)
        for key in ("diff", "diff_profiles"):
            SM.CONTEXT.pop(key, None)
    elapsed = time.monotonic() - start
    findings = sorted(writer.seen.values())
    for folder in findings:
        if folder in writer.internal:
            continue
        path = os.path.join(folder, "minimal.json")
        tr = T.load(path)
        sig = writer.signatures[folder]
        again = diff_failure_of(tr, pair, args.timeout)
        if again is None or again.signature() != sig:
            # past the model two builds can race (a job's copying after block-job-complete,
            # say): say so rather than minimize a failure that does not come back
            note = ("not reproduced by a replay of minimal.json" if again is None else
                    f"a replay of minimal.json fails differently: {again}")
            with open(os.path.join(folder, "summary.txt"), "a") as f:
                f.write(f"note: {note} (timing-dependent?)\n")
            print(f"{folder}: {note}")
            continue
        small = minimize_diff(tr, pair, sig, timeout=min(args.timeout, 2.0))
        if len(small.steps) < len(tr.steps):
            T.save(small, path)
            print(f"{folder}: minimized from {len(tr.steps)} to {len(small.steps)} steps")
        # the pictures replay on one build: report.html on B (the newer build, as a rule),
        # report-<A>.html on A; neither raises
        from .report import write_finding_report

        first = open(os.path.join(folder, "summary.txt")).readline().strip()
        write_finding_report(folder, pair[1], error=first, timeout=args.timeout)
        write_finding_report(folder, pair[0], error=first, timeout=args.timeout,
                             out=f"report-{labels[0]}.html")
        from .export import export_finding

        export_finding(folder, pair[1])   # past the model: a note why there is none
    from .session import report_unknown_fields

    unknown = report_unknown_fields()
    with open(os.path.join(args.out, "coverage.json"), "w") as f:
        json.dump(dict(coverage.to_json(), examples=examples, seconds=elapsed,
                       builds=list(labels), **{"past-model": dict(past.kinds),
                                               "set-aside-fields": unknown}), f, indent=1)
    if args.coverage:
        print(coverage.table())
        print()
    print(f"{examples} examples, {coverage.steps} steps in {elapsed:.1f} s "
          f"({examples / elapsed:.2f} examples/s, {coverage.steps / elapsed:.1f} steps/s); "
          f"{coverage.declined} steps declined by a model, {coverage.builds_only} compared "
          f"build against build only")
    for kind, n in sorted(past.kinds.items()):
        print(f"{n} example(s) ended past the models' reach {kind} (alike, so no finding): "
              f"{past.kept[kind]}")
    if writer.internal:
        print(f"blockfuzz: internal error (a blockfuzz bug), trace kept: "
              f"{sorted(writer.internal)[0]}/minimal.json", file=sys.stderr)
        return 2
    if findings:
        print(f"{len(findings)} finding(s):")
        for f in findings:
            first = open(os.path.join(f, "summary.txt")).readline().strip()
            print(f"  {f}/minimal.json\n    {first[:300]}")
        return 1
    print("no findings")
    return 0
