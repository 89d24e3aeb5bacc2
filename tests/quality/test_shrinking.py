"""Shrink quality: does the fuzzer catch a disagreement and shrink it to the minimal trace?

These tests are about blockfuzz's own search and shrinking (Hypothesis' shrinker driving
``fuzz.statemachine``, then the campaign's step deletion, ``fuzz.minimize``), not about QEMU,
so they live in a folder of their own, as Hypothesis keeps its ``tests/quality/``.  ``make
test`` runs them; ``make check`` (seconds) leaves the folder out: how long shrinking takes
depends on the first failing example Hypothesis happens on, which moves with any change to the
rules, the model, or the constants of any module loaded (Hypothesis draws those too).

The QEMU-free tests run against a second model with one planted fault standing in for QEMU:
the one place where something stands in for QEMU, as what is tested is the fuzzer, not QEMU.
The expected minimal trace follows from the planted fault, not from a run.  The real-QEMU
variant is kept short: caught as a campaign catches it, and minimized on QEMU.
"""
from __future__ import annotations

import glob
import os

import attrs
import pytest
from hypothesis.stateful import run_state_machine_as_test

from fuzz import statemachine as SM
from fuzz import trace as T
from fuzz.engine import Events, Runner
from fuzz.errors import ResultMismatch
from fuzz.findings import FindingWriter
from helpers import campaign_settings
from models import Model, Outcome, profile_for

PROFILE, _ = profile_for(10, 0, 2)
PLANTED = "planted fault: node cannot be deleted"


class Faithful(Model):
    """The reference model in QEMU's place, with what the Runner asks of a QEMU besides
    ``execute()`` and ``query_jobs()`` (the model's graph is already in the compared form, and
    projecting it again changes nothing)."""

    def query_nodes(self):
        return self.query_named_block_nodes()


class PlantedFault(Faithful):
    """The reference model with one wrong answer, standing in for QEMU: every ``blockdev-del``
    that succeeds is answered with an error instead (the node is still gone from its graph:
    only the reply is wrong, so the first disagreement is that reply)."""

    def execute(self, cmd, args):
        out = super().execute(cmd, args)
        if cmd == "blockdev-del" and out.error is None:
            return Outcome.failure(PLANTED)
        return out


@attrs.define
class ModelSession:
    """A ``fuzz.session.Session`` with ``target`` (a Model class) in QEMU's place."""

    images: tuple
    machine: str
    events: Events
    target: type = PlantedFault
    runner: Runner | None = None

    def __enter__(self) -> "ModelSession":
        self.runner = Runner(Model(PROFILE, self.images, self.machine),
                             self.target(PROFILE, self.images, self.machine), self.events)
        return self

    def __exit__(self, *exc) -> None:
        pass   # nothing to stop; the runner stays readable, as a Session's does


@pytest.fixture
def planted(monkeypatch):
    """Every ``fuzz.session.Session`` (the only way the state machine, replay and the minimizer
    reach QEMU) is a :class:`ModelSession` against a fresh :class:`PlantedFault`."""
    import fuzz.session

    monkeypatch.setattr(fuzz.session, "Session",
                        lambda binaries, images, events=None, machine="none", **kw:
                        ModelSession(tuple(images), machine, events))


def replay(tr: T.Trace, target: type) -> None:
    """Run ``tr`` on a fresh reference model against ``target``, as ``blockfuzz replay`` would
    on a fresh QEMU."""
    with ModelSession(tuple(tr.images), tr.machine, Events(), target) as s:
        for step in tr.steps:
            s.runner.run({k: v for k, v in step.items() if k != "observed"})


def check_minimal(tr: T.Trace) -> None:
    """``tr`` is the minimal trace of :class:`PlantedFault`: the fault fires on a blockdev-del
    that succeeds, which needs a node to delete, which takes a blockdev-add (an example starts
    with none).  So: those two steps, failing at the deletion, only against the fault."""
    steps = [{k: v for k, v in s.items() if k != "observed"} for s in tr.steps]
    assert [s["qmp"] for s in steps] == ["blockdev-add", "blockdev-del"], steps
    assert steps[1]["args"] == {"node-name": steps[0]["args"]["node-name"]}
    with pytest.raises(ResultMismatch) as info:
        replay(tr, PlantedFault)
    assert info.value.step_index == 1 and PLANTED in str(info.value)
    replay(tr, Faithful)
    # the deletion alone (no node to delete) finds nothing
    replay(attrs.evolve(tr, steps=tr.steps[1:]), PlantedFault)


def test_planted_fault_is_caught_and_shrunk_to_the_minimal_trace(tmp_path, planted):
    from fuzz.minimize import failure_of, minimize

    bus = Events()
    writer = FindingWriter(str(tmp_path), bus)
    bus.subscribe(writer)
    cls = SM.machine_class(SM.MachineConfig(binaries=None, events=bus))
    with pytest.raises(ResultMismatch):
        # 6 steps, as the real-QEMU variant: the shrinker's work (hundreds of runs) grows with
        # the length of the first failing example
        run_state_machine_as_test(cls, settings=campaign_settings(max_examples=200,
                                                                  stateful_step_count=6))
    minimal = glob.glob(str(tmp_path / "result-*" / "minimal.json"))
    assert len(minimal) == 1, minimal           # one fault, one finding
    assert os.path.exists(os.path.join(os.path.dirname(minimal[0]), "first.json"))
    shrunk = T.load(minimal[0])
    # Hypothesis' minimal example, then the campaign's step deletion (as `blockfuzz run` does
    # after it: Hypothesis alone has been seen to keep a third step, a failing blockdev-add)
    err = failure_of(shrunk, None, 2.0)
    assert isinstance(err, ResultMismatch) and PLANTED in str(err), err
    check_minimal(minimize(shrunk, None, err.signature(), 2.0))


def test_step_deletion_leaves_the_minimal_trace_of_a_noisy_one(planted):
    """The campaign's step deletion from a long trace, whatever Hypothesis hands it: noise
    (reads, a failing deletion, a node nobody deletes) around the two steps that matter."""
    from fuzz.minimize import failure_of, minimize

    def hd(i):
        return {"driver": "qcow2", "node-name": f"hd{i}",
                "file": {"driver": "file", "node-name": f"hd{i}-file", "filename": f"hd{i}.img"}}

    def read(node):
        return {"qmp": "human-monitor-command",
                "args": {"command-line": f'qemu-io {node} "read 0 512"'}}

    steps = [{"qmp": "blockdev-add", "args": hd(2)}, read("hd2"),
             {"qmp": "blockdev-add", "args": hd(0)}, read("hd0"),
             {"qmp": "blockdev-del", "args": {"node-name": "nope"}}, read("hd2"),
             {"qmp": "blockdev-del", "args": {"node-name": "hd0"}}]
    tr = T.Trace("noisy", list(SM.SEED_IMAGES), steps)
    err = failure_of(tr, None, 2.0)
    assert isinstance(err, ResultMismatch) and err.step_index == 6, err
    small = minimize(tr, None, err.signature(), 2.0)
    check_minimal(small)
    assert small.steps[0]["args"] == hd(0)


@pytest.mark.qemu
def test_wrong_rule_is_caught_and_minimized_on_real_qemu(qemu10, tmp_path, monkeypatch):
    """The same kind of fault, planted in the model this time, against a real QEMU as a
    campaign runs (pooled QEMUs, each failure confirmed on a fresh one).  Short: no Hypothesis
    shrinking here (its quality is the test above's), only the campaign's step deletion on real
    QEMU."""
    from hypothesis import Phase

    from fuzz.minimize import failure_of, minimize
    from fuzz.session import QemuPool
    from models import blockdev

    real = blockdev.blockdev_del

    def mutant(g, args):  # a wrong rule: the model refuses every deletion QEMU allows
        real(g, args)
        raise blockdev.QmpFailure("mutant: node cannot be deleted")

    monkeypatch.setattr(blockdev, "blockdev_del", mutant)
    bus = Events()
    writer = FindingWriter(str(tmp_path), bus)
    bus.subscribe(writer)
    with QemuPool(prestart=True) as pool, pytest.raises(ResultMismatch):
        cls = SM.machine_class(SM.MachineConfig(binaries=qemu10, events=bus, timeout=5.0,
                                                pool=pool))
        run_state_machine_as_test(cls, settings=campaign_settings(
            max_examples=100, stateful_step_count=6, phases=(Phase.generate,)))
    minimal = glob.glob(str(tmp_path / "result-*" / "minimal.json"))
    assert len(minimal) == 1
    assert os.path.exists(os.path.join(os.path.dirname(minimal[0]), "first.json"))
    tr = T.load(minimal[0])
    err = failure_of(tr, qemu10, 2.0)          # on a fresh QEMU, as `blockfuzz replay` runs it
    assert isinstance(err, ResultMismatch) and "mutant" in str(err), err
    steps = minimize(tr, qemu10, err.signature(), 2.0).steps
    # as above: the deletion QEMU allows, and the blockdev-add it needs
    assert [s["qmp"] for s in steps] == ["blockdev-add", "blockdev-del"], steps
    assert steps[1]["args"] == {"node-name": steps[0]["args"]["node-name"]}
