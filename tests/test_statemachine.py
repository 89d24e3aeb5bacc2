"""The state machine against real QEMU: a short clean run, and a deliberately wrong model rule
that must be caught and shrunk to a short trace on disk."""
from __future__ import annotations

import glob
import json
import os

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from fuzz import runcmd, statemachine as SM
from fuzz.engine import ResultMismatch


def run_machine(binaries, out, max_examples, steps=12):
    writer = runcmd.FindingWriter(str(out))
    SM.CONTEXT.clear()
    SM.CONTEXT.update(binaries=binaries, on_failure=writer, timeout=5.0)
    s = settings(parent=settings.get_profile("blockfuzz-tests"), max_examples=max_examples,
                 stateful_step_count=steps)
    try:
        run_state_machine_as_test(SM.BlockGraphMachine, settings=s)
    finally:
        SM.CONTEXT.clear()
    return writer


@pytest.mark.qemu
def test_wrong_rule_is_caught_and_shrunk(qemu10, tmp_path, monkeypatch):
    from models import blockdev

    real = blockdev.blockdev_del

    def mutant(g, args):
        try:
            real(g, args)
        except blockdev.QmpFailure as e:
            if e.desc.startswith("Failed to find node"):
                raise blockdev.QmpFailure(e.desc.replace("Failed", "Unable")) from None
            raise

    monkeypatch.setattr(blockdev, "blockdev_del", mutant)
    with pytest.raises(ResultMismatch):
        run_machine(qemu10, tmp_path, max_examples=50)
    minimal = glob.glob(str(tmp_path / "result-*" / "minimal.json"))
    assert len(minimal) == 1
    steps = json.load(open(minimal[0]))["steps"]
    assert len(steps) <= 2, steps
    assert steps[-1]["qmp"] == "blockdev-del"
    assert os.path.exists(os.path.join(os.path.dirname(minimal[0]), "first.json"))
