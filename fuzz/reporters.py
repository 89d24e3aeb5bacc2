"""Listeners: everything that reports on a campaign subscribes to an event bus.

Worker side (``fuzz.engine`` events): :class:`Coverage` (rules run, outcomes seen).
Parent side (``fuzz.campaign`` events): :class:`ProgressReporter` (rich live view on a
terminal, a plain line every 30 s otherwise), :class:`JUnitReporter` (``--junit``) and
:class:`JsonReporter` (``--json``).  The campaign does not know them; the command line picks.
"""
from __future__ import annotations

import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any, TextIO

import attrs

from . import trace as T
from .campaign import CampaignFinished, CampaignStarted, CampaignState, Progress
from .engine import StepDone, StepEffect
from .errors import generalise
from .findings import FindingEvent
from .statemachine import ExampleFinished, StepDeclined


# --------------------------------------------------------------------------------------------
# coverage (worker side)

class Coverage:
    """Behaviour coverage: how often each rule ran and each distinct outcome was produced."""

    def __init__(self) -> None:
        self.rules: Counter = Counter()
        self.outcomes: Counter = Counter()
        self.exact_errors: Counter = Counter()  # unfolded error texts, for exact look-ups
        self.steps = 0
        # depth (StepEffect, ExampleFinished): per command, steps that succeeded and that
        # changed the graph or the jobs; per example, steps drawn and executed, deep pattern
        # reads, and relinks followed by deletes
        self.succeeded: Counter = Counter()
        self.changed: Counter = Counter()
        self.examples = 0
        self.drawn = 0
        self.executed = 0
        self.deep_reads = 0                 # read -P through a backing chain 2+ deep
        self.examples_deep_read = 0
        self.examples_relink_delete = 0     # 2+ changing reopens, then a successful delete
        self._example = _ExampleDepth()
        #: declined steps by "command: reason" (names and numbers folded); guards apart
        self.declines: Counter = Counter()
        self.guarded: Counter = Counter()

    def __call__(self, event) -> None:
        if isinstance(event, StepEffect):
            self.effect(event)
        elif isinstance(event, StepDeclined):
            key = f"{_command(event.step)}: {generalise(event.reason)}"
            (self.guarded if event.guard else self.declines)[key] += 1
        elif isinstance(event, ExampleFinished):
            self.examples += 1
            self.drawn += event.drawn
            self.executed += event.executed
            self.examples_deep_read += self._example.deep_read
            self.examples_relink_delete += self._example.relinks_then_delete
            self._example = _ExampleDepth()
        elif isinstance(event, StepDone) and event.model is not None:
            self.count(event.step, event.model)

    def effect(self, e: StepEffect) -> None:
        cmd = _command(e.step)
        if e.ok:
            self.succeeded[cmd] += 1
            if e.changed:
                self.changed[cmd] += 1
        x = self._example
        if e.read_depth is not None and e.read_depth >= 2:
            self.deep_reads += 1
            x.deep_read = True
        if e.ok and e.changed and cmd == "blockdev-reopen":
            x.relinks += 1
        elif e.ok and cmd == "blockdev-del" and x.relinks >= 2:
            x.relinks_then_delete = True

    def count(self, step: dict, o) -> None:
        self.steps += 1
        cmd = _command(step)
        self.rules[cmd] += 1
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

    def to_json(self) -> dict:
        return {"steps": self.steps, "rules": dict(self.rules), "outcomes": dict(self.outcomes),
                "exact-errors": dict(self.exact_errors), "succeeded": dict(self.succeeded),
                "changed": dict(self.changed), "examples": self.examples, "drawn": self.drawn,
                "executed": self.executed, "deep-reads": self.deep_reads,
                "examples-deep-read": self.examples_deep_read,
                "examples-relink-delete": self.examples_relink_delete,
                "declines": dict(self.declines), "guarded": dict(self.guarded)}


@attrs.define
class _ExampleDepth:
    deep_read: bool = False
    relinks: int = 0
    relinks_then_delete: bool = False


def _command(step: dict) -> str:
    """The rule a step counts under: the QMP command, or ``qemu-io VERB``."""
    cmd = step["qmp"]
    if cmd == "human-monitor-command":
        cmd = "qemu-io " + step["args"]["command-line"].split('"')[1].split()[0]
    return cmd


def depth_table(cov: dict) -> str:
    """Per command: steps, the share that succeeded and the share that changed the graph or
    the jobs; then executed/drawn steps and the example-level depth figures."""
    rules, ok, changed = (Counter(cov.get(k, {})) for k in ("rules", "succeeded", "changed"))
    lines = [f"{'steps':>8} {'ok':>6} {'changed':>8}  command"]
    for cmd, n in rules.most_common():
        lines.append(f"{n:8d} {100 * ok[cmd] / n:5.1f}% {100 * changed[cmd] / n:7.1f}%  {cmd}")
    drawn, executed, examples = cov.get("drawn", 0), cov.get("executed", 0), cov.get("examples", 0)
    if drawn:
        lines.append(f"executed {executed} of {drawn} drawn steps ({100 * executed / drawn:.1f}%; "
                     f"declined {100 * (drawn - executed) / drawn:.1f}%)")
    for title, key in (("declined (the model cannot predict)", "declines"),
                       ("refused by a known-QEMU-bug guard", "guarded")):
        counts = Counter(cov.get(key, {}))
        if counts:
            lines.append(f"{title}:")
            lines += [f"{n:8d}  {k}" for k, n in counts.most_common(12)]
    if examples:
        lines.append(f"examples: {examples}; with a pattern read through a chain 2+ deep: "
                     f"{100 * cov.get('examples-deep-read', 0) / examples:.1f}% "
                     f"({cov.get('deep-reads', 0)} reads); with 2+ relinks then a delete: "
                     f"{100 * cov.get('examples-relink-delete', 0) / examples:.1f}%")
    return "\n".join(lines)


class DiffCoverage(Coverage):
    """Run's coverage (rules, outcomes: model A's prediction, build A's reply where the model
    declined), plus how far the models followed."""

    def __init__(self) -> None:
        super().__init__()
        self.declined = 0        # steps a model declined (sent to both builds all the same)
        self.builds_only = 0     # steps compared build against build only

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
            self.count(event.step, outcome)

    def to_json(self) -> dict:
        return dict(super().to_json(), **{"declined-steps": self.declined,
                                          "build-only-steps": self.builds_only})


def coverage_table(cov: dict) -> str:
    lines = [f"{'count':>8}  rule"]
    lines += [f"{n:8d}  {k}" for k, n in Counter(cov.get("rules", {})).most_common()]
    lines += ["", f"{'count':>8}  outcome"]
    lines += [f"{n:8d}  {k}" for k, n in sorted(cov.get("outcomes", {}).items())]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# progress (parent side)

def _counts(state: CampaignState) -> dict:
    el = max(state.elapsed, 1e-9)
    return {"elapsed": el, "examples": state.examples, "steps": state.steps,
            "steps/s": state.steps / el, "new": len(state.new()), "known": len(state.known()),
            "outcomes": len(state.outcomes)}


class ProgressReporter:
    """Live progress: a rich view on a terminal, else one plain line every ``every`` seconds
    (CI logs).  Elapsed and remaining time, examples, steps/s, new and known findings,
    distinct outcomes seen; each new finding is printed as it happens."""

    def __init__(self, stream: TextIO | None = None, every: float = 30.0,
                 live: bool | None = None):
        self.stream = stream or sys.stdout
        self.every = every
        self.live_wanted = self.stream.isatty() if live is None else live
        self.budget: float | None = None
        self.examples_budget: int | None = None
        self._live: Any = None
        self._next = 0.0

    def __call__(self, event) -> None:
        if isinstance(event, CampaignStarted):
            self.budget = event.spec.time
            self.examples_budget = event.spec.examples
            self._next = time.monotonic() + self.every
            if self.live_wanted:
                from rich.console import Console
                from rich.live import Live

                self._live = Live(self._render(None), console=Console(file=self.stream),
                                  refresh_per_second=2, transient=False)
                self._live.start()
        elif isinstance(event, Progress):
            if self._live is not None:
                self._live.update(self._render(event.state))
            elif time.monotonic() >= self._next:
                self._next = time.monotonic() + self.every
                print(self.line(event.state), file=self.stream, flush=True)
        elif isinstance(event, FindingEvent):
            what = "known" if event.known else "internal error" if event.internal else \
                "regression" if event.regression else "new"
            msg = f"finding ({what}): {event.folder}: {event.summary[:200]}"
            if self._live is not None:
                self._live.console.print(msg, markup=False, highlight=False)
            else:
                print(msg, file=self.stream, flush=True)
        elif isinstance(event, CampaignFinished):
            if self._live is not None:
                self._live.update(self._render(event.state))
                self._live.stop()
                self._live = None

    def remaining(self, state: CampaignState) -> str:
        if self.budget is not None:
            return f"{max(0.0, self.budget - state.elapsed):.0f} s left"
        if self.examples_budget is not None:
            return f"{max(0, self.examples_budget - state.examples)} examples left"
        return ""

    def line(self, state: CampaignState) -> str:
        c = _counts(state)
        return (f"[{c['elapsed']:.0f} s, {self.remaining(state)}] {c['examples']} examples, "
                f"{c['steps']} steps ({c['steps/s']:.1f}/s), {c['new']} new and "
                f"{c['known']} known findings, {c['outcomes']} distinct outcomes")

    def _render(self, state: CampaignState | None):
        from rich.table import Table

        t = Table(title="blockfuzz campaign", show_header=False, box=None)
        if state is None:
            t.add_row("starting", "")
            return t
        c = _counts(state)
        t.add_row("elapsed", f"{c['elapsed']:.0f} s ({self.remaining(state)})")
        t.add_row("examples", str(c["examples"]))
        t.add_row("steps", f"{c['steps']} ({c['steps/s']:.1f}/s)")
        t.add_row("findings", f"{c['new']} new, {c['known']} known")
        t.add_row("outcomes", f"{c['outcomes']} distinct")
        return t


# --------------------------------------------------------------------------------------------
# reports written at the end (parent side)

def _replay_line(spec, f: FindingEvent) -> str:
    return f"{spec.replay_command} {os.path.join(f.folder, 'minimal.json')}"


class JUnitReporter:
    """``--junit FILE``: one testcase per finding signature (its summary and replay command as
    the failure; a known bug is a passing testcase with its name in system-out), one passing
    testcase for a campaign without findings.  A harness error is an ``error`` testcase."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, event) -> None:
        if isinstance(event, CampaignFinished):
            T.write_atomically(self.path, self.render(event.state))

    def render(self, state: CampaignState) -> str:
        spec = state.spec
        suite = ET.Element("testsuite", name="blockfuzz", time=f"{state.elapsed:.3f}",
                           timestamp=time.strftime("%Y-%m-%dT%H:%M:%S",
                                                   time.gmtime(state.wall_started)))
        failures = errors = 0
        cases = 0
        for f in sorted(state.findings.values(), key=lambda f: f.signature):
            case = ET.SubElement(suite, "testcase", classname=f"blockfuzz.{f.kind}",
                                 name=f.signature[:200])
            cases += 1
            text = f"{f.summary}\nfolder: {f.folder}\nreplay: {_replay_line(spec, f)}"
            if f.known:
                ET.SubElement(case, "system-out").text = f"known QEMU bug ({f.known})\n{text}"
            elif f.internal:
                errors += 1
                ET.SubElement(case, "error", message=f.summary[:300], type="internal").text = text
            else:
                failures += 1
                ET.SubElement(case, "failure", message=f.summary[:300],
                              type="regression" if f.regression else f.kind).text = text
        for msg in state.harness_errors[:1]:
            case = ET.SubElement(suite, "testcase", classname="blockfuzz.harness", name="campaign")
            ET.SubElement(case, "error", message=msg[:300], type="harness").text = msg
            errors += 1
            cases += 1
        if not state.new() and not state.harness_errors and not state.internal():
            case = ET.SubElement(suite, "testcase", classname="blockfuzz.campaign",
                                 name="no new findings")
            cases += 1
            if state.steps == 0:
                errors += 1
                ET.SubElement(case, "error", message="the campaign executed no step",
                              type="harness")
            else:
                ET.SubElement(case, "system-out").text = (
                    f"{state.examples} examples, {state.steps} steps in {state.elapsed:.1f} s")
        suite.set("tests", str(cases))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
        ET.indent(suite)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


class JsonReporter:
    """``--json FILE``: versions, seed, workers, duration, counts, coverage, and the findings
    with signature, kind, folder and whether each is known."""

    def __init__(self, path: str, extra: dict | None = None):
        self.path = path
        self.extra = extra or {}

    def __call__(self, event) -> None:
        if isinstance(event, CampaignFinished):
            T.write_atomically(self.path, json.dumps(self.render(event.state), indent=1) + "\n")

    def render(self, state: CampaignState) -> dict:
        spec = state.spec
        return {
            "blockfuzz-report": 1,
            "builds": sorted(state.builds),
            "qemu": [str(b.system) for b in (spec.diff or (spec.binaries,))],
            **self.extra,
            "seed": spec.seed,
            "workers": spec.workers,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.wall_started)),
            "seconds": round(state.elapsed, 3),
            "stopped-by": state.stopped_by,
            "exit-status": state.exit_status(),
            "counts": {"examples": state.examples, "steps": state.steps, "drawn": state.drawn,
                       "rounds": state.rounds,
                       "findings": len(state.findings), "new": len(state.new()),
                       "known": len(state.known()), "harness-errors": len(state.harness_errors)},
            "harness-errors": state.harness_errors,
            "reuse-artefacts": dict(state.reuse_artefacts),
            "coverage": state.merged_coverage(),
            "findings": [dict(f.to_json(), new=f.new, hits=state.hits[f.signature])
                         for f in sorted(state.findings.values(), key=lambda f: f.signature)],
        }
