"""The state machine and the minimizer against real QEMU: a wrong model rule's trace minimized,
and a bug in blockfuzz itself kept with its trace.  (Whether the fuzzer catches a wrong rule
and shrinks it to the minimal trace is tests/quality/test_shrinking.py's.)"""
from __future__ import annotations

import glob
import json
import os

import pytest

from fuzz.engine import ResultMismatch


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
