"""Runner(pipeline=True), as campaigns run: a step returns once QEMU has it, and is checked at
the next step or flush(); what a check finds is the step's it belongs to.  Real QEMU."""
from __future__ import annotations

import pytest

from fuzz.errors import GraphMismatch, QemuCrash, ResultMismatch
from fuzz.session import Session
from fuzz.statemachine import SEED_IMAGES
from models import blockdev


def hd(i: int) -> dict:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": {"driver": "file", "filename": f"hd{i}.img"}}


@pytest.mark.qemu
def test_a_step_in_flight_is_checked_by_the_next_one(qemu10):
    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        assert "qemu" not in r.observed[0]          # sent, not yet checked
        r.run({"qmp": "blockdev-add", "args": {"driver": "null-co", "node-name": "n1"}})
        assert r.observed[0]["qemu"] == {"return": {}} and "qemu" not in r.observed[1]
        r.flush()
        assert r.observed[1]["qemu"] == {"return": {}}
        assert [n["node-name"] for n in r.qemu_graph()] == [
            n["node-name"] for n in r.model_graph()] and len(r.qemu_graph()) == 3
        r.flush()   # nothing in flight: a no-op


@pytest.mark.qemu
def test_a_disagreement_is_the_steps_it_belongs_to(qemu10, monkeypatch):
    # a planted model fault: blockdev-del of hd0 "fails" in the model only
    real = blockdev.blockdev_del

    def mutant(g, args):
        real(g, args)
        raise blockdev.QmpFailure("mutant")

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        monkeypatch.setattr(blockdev, "blockdev_del", mutant)
        r.run({"qmp": "blockdev-del", "args": {"node-name": "hd0"}})   # sent: no error yet
        with pytest.raises(ResultMismatch) as info:
            r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})
        assert info.value.step_index == 1 and info.value.step["qmp"] == "blockdev-del"
        assert len(r.done) == 2    # the step behind it never ran


@pytest.mark.qemu
def test_a_graph_difference_is_found_at_flush(qemu10, monkeypatch):
    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        r.flush()
        r.model.graph.nodes["hd0"].read_only = True   # the model's graph drifts
        r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})
        with pytest.raises(GraphMismatch) as info:
            r.flush()
        assert info.value.step_index == 1


@pytest.mark.qemu
def test_a_crash_in_flight_is_the_crashing_steps(qemu10):
    import os
    import signal

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        r.flush()
        os.kill(s.qemu.pid, signal.SIGKILL)
        try:
            r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})   # the send may already fail
            with pytest.raises(QemuCrash) as info:
                r.flush()
        except QemuCrash as e:
            info = pytest.ExceptionInfo.from_exception(e)
        assert info.value.signal == signal.SIGKILL and r.observed[1]["qemu"].startswith("crash")
        s.discard()
