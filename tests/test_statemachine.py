"""The state machine against real QEMU: a short clean run, and a deliberately wrong model rule
that must be caught and shrunk to a short trace on disk."""
from __future__ import annotations

import glob
import json
import os

import pytest
from hypothesis.stateful import run_state_machine_as_test

from fuzz import statemachine as SM
from helpers import campaign_settings
from fuzz.engine import Events, ResultMismatch
from fuzz.findings import FindingWriter




def run_machine(binaries, out, max_examples, steps=12, pool=None):
    bus = Events()
    writer = FindingWriter(str(out), bus)
    bus.subscribe(writer)
    cls = SM.machine_class(SM.MachineConfig(binaries=binaries, events=bus, timeout=5.0, pool=pool))
    run_state_machine_as_test(cls, settings=campaign_settings(max_examples=max_examples,
                                                          stateful_step_count=steps))
    return writer


@pytest.mark.qemu
def test_wrong_rule_is_caught_and_shrunk(qemu10, tmp_path, monkeypatch):
    from models import blockdev

    real = blockdev.blockdev_del

    def mutant(g, args):  # a wrong rule: the model refuses every deletion QEMU allows
        real(g, args)
        raise blockdev.QmpFailure("mutant: node cannot be deleted")

    monkeypatch.setattr(blockdev, "blockdev_del", mutant)
    # as a campaign runs: pooled QEMUs, each failure confirmed on a fresh one
    from fuzz.session import QemuPool

    with QemuPool(prestart=True) as pool, pytest.raises(ResultMismatch):
        run_machine(qemu10, tmp_path, max_examples=100, steps=6, pool=pool)
    minimal = glob.glob(str(tmp_path / "result-*" / "minimal.json"))
    assert len(minimal) == 1
    assert os.path.exists(os.path.join(os.path.dirname(minimal[0]), "first.json"))
    # Hypothesis' shrinker, then the campaign's step-deletion pass (as `blockfuzz run` does)
    from fuzz import trace as T
    from fuzz.minimize import failure_of, minimize
    tr = T.load(minimal[0])
    err = failure_of(tr, qemu10, 2.0)
    assert isinstance(err, ResultMismatch), err
    steps = minimize(tr, qemu10, err.signature(), 2.0).steps
    assert len(steps) <= 2, steps
    assert steps[-1]["qmp"] == "blockdev-del"


@pytest.mark.qemu
def test_minimize_deletes_irrelevant_steps(qemu10, monkeypatch):
    from fuzz import trace as T
    from fuzz.minimize import failure_of, minimize
    from models import blockdev
    from fuzz.statemachine import SEED_IMAGES

    real = blockdev.blockdev_del

    def mutant(g, args):  # a wrong rule: the model misnames the error for a busy backing node
        try:
            real(g, args)
        except blockdev.QmpFailure as e:
            raise blockdev.QmpFailure(e.desc.replace("busy", "taken")) from None

    monkeypatch.setattr(blockdev, "blockdev_del", mutant)
    hd = lambda i: {"driver": "qcow2", "node-name": f"hd{i}",
                    "file": {"driver": "file", "node-name": f"hd{i}-file", "filename": f"hd{i}.img"}}
    noise = {"qmp": "human-monitor-command", "args": {"command-line": 'qemu-io hd2 "read 0 512"'}}
    steps = [{"qmp": "blockdev-add", "args": hd(2)}, noise, {"qmp": "blockdev-add", "args": hd(1)}, noise,
             {"qmp": "blockdev-del", "args": {"node-name": "nope"}}, noise,
             {"qmp": "blockdev-del", "args": {"node-name": "#block1"}}]
    tr = T.Trace("t", list(SEED_IMAGES), steps)
    err = failure_of(tr, qemu10, 2.0)
    assert isinstance(err, ResultMismatch) and "busy" in str(err)
    small = minimize(tr, qemu10, err.signature(), 2.0)
    assert [s["qmp"] for s in small.steps] == ["blockdev-add", "blockdev-del"]
    assert small.steps[-1]["args"] == {"node-name": "#block1"}
    assert "observed" in small.steps[-1]


@pytest.mark.qemu
def test_blockfuzz_bug_keeps_its_trace_and_exits_2(qemu10, tmp_path, monkeypatch, capsys):
    """An exception that is neither a disagreement nor a crash is a bug in blockfuzz: the
    campaign keeps the trace and the traceback, and exits 2, not 1."""
    from fuzz.cli import main
    from models import blockdev

    def broken(g, args):
        raise RuntimeError("model bug")

    monkeypatch.setattr(blockdev, "blockdev_del", broken)
    rc = main(["run", "--examples", "30", "--seed", "1", "--out", str(tmp_path), "--qemu", qemu10.system])
    assert rc == 2
    folders = glob.glob(str(tmp_path / "internal-error-*"))
    assert len(folders) == 1
    assert "RuntimeError: model bug" in open(os.path.join(folders[0], "summary.txt")).read()
    steps = json.load(open(os.path.join(folders[0], "minimal.json")))["steps"]
    assert steps[-1]["qmp"] == "blockdev-del"
    assert "internal error" in capsys.readouterr().err
