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
import sys
from collections import Counter

from .errors import CliError, FetchError, generalise
from .runcmd import (add_campaign_options, campaign_numbers, prepare_out, prepare_report_path,
                     report_problems, reporting_bus)


def add_diff_parser(subparsers) -> None:
    p = subparsers.add_parser("diff", help="run a differential campaign on two QEMU builds",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--qemu", metavar="PATH|VERSION", action="append", default=[],
                   help="qemu-system-x86_64 of a build; given twice, A then B (A's model drives generation)")
    add_campaign_options(p)
    p.set_defaults(handler=run_diff)


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

        from . import trace as T
        from .diffengine import ExampleEnded

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
    from .qemufetch import resolve_qemu

    # bad input is a CliError (a UsageError is one): fuzz.cli.main prints its one line.  The
    # options are checked before the differential machinery (Hypothesis, the model) is imported.
    if len(args.qemu) != 2:
        raise CliError(f"diff needs --qemu twice (build A, then build B), got {len(args.qemu)}")
    pair = tuple(resolve_qemu(q) for q in args.qemu)
    numbers = campaign_numbers(args)
    prepare_out(args.out)
    prepare_report_path("--junit", args.junit)
    prepare_report_path("--json", args.json)
    from . import trace as T
    from .diffengine import (SetAside, build_label, diff_failure_of, labels_for, minimize_diff,
                             profile_set_aside)

    try:
        labels = labels_for(pair)
        for b in pair:
            build_label(b)
    except FetchError as e:
        raise CliError(str(e)) from None
    from .campaign import CampaignSpec, run_campaign
    from .database import CAMPAIGN_KEY

    print(f"diff: A = {labels[0]} ({pair[0].system}), B = {labels[1]} ({pair[1].system}); "
          f"generation follows A's model")
    aside = SetAside(profile_set_aside(*(_profile_of(b) for b in pair)))
    print("after a model declines a step, builds are compared without: "
          + ("; ".join(aside.describe()) or "nothing (same profile)"))
    sys.stdout.flush()
    pasts: list[PastModel] = []

    def listeners() -> list:
        pasts.append(PastModel(args.out))
        return pasts[-1:]

    spec = CampaignSpec(binaries=pair[0], out=args.out, workers=1, strict=args.strict,
                        diff=pair, listeners=listeners, db_key=CAMPAIGN_KEY + b":diff",
                        replay_command="blockfuzz replay " + " ".join(f"--qemu {q}" for q in args.qemu),
                        **numbers)
    state = run_campaign(spec, reporting_bus(args, spec))
    past = pasts[0] if pasts else PastModel(args.out)
    elapsed = state.elapsed
    examples = state.examples
    for f in (state.new() if state.stopped_by is None else []):
        if f.internal:
            continue
        folder, sig = f.folder, f.signature
        path = os.path.join(folder, "minimal.json")
        tr = T.load(path)
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
    from .reporters import coverage_table

    cov = state.merged_coverage()
    unknown = {b: sorted(p) for b, p in state.unknown_fields.items() if p}
    for build, paths in sorted(unknown.items()):
        print(f"QEMU {build} has no exact profile; fields left out of the comparison "
              f"(--strict compares them): {', '.join(paths)}")
    with open(os.path.join(args.out, "coverage.json"), "w") as fh:
        json.dump(dict(cov, examples=examples, seconds=elapsed,
                       builds=list(labels), **{"past-model": dict(past.kinds),
                                               "set-aside-fields": unknown}), fh, indent=1)
    if args.coverage:
        print(coverage_table(cov))
        print()
    el = max(elapsed, 1e-9)
    print(f"{examples} examples, {state.steps} steps in {elapsed:.1f} s "
          f"({examples / el:.2f} examples/s, {state.steps / el:.1f} steps/s); "
          f"{cov.get('declined-steps', 0)} steps declined by a model, "
          f"{cov.get('build-only-steps', 0)} compared build against build only")
    for kind, n in sorted(past.kinds.items()):
        print(f"{n} example(s) ended past the models' reach {kind} (alike, so no finding): "
              f"{past.kept[kind]}")
    if state.stopped_by:
        print(f"stopped by {state.stopped_by}")
    report_problems(state)
    status = state.exit_status()
    new = state.new()
    if new:
        print(f"{len(new)} finding(s):")
        for f in new:
            first = open(os.path.join(f.folder, "summary.txt")).readline().strip()
            print(f"  {f.folder}/minimal.json\n    {first[:300]}")
    elif status == 0:
        print("no findings")
    return status
