"""The model alone predicts every expected outcome of the seed traces (no QEMU involved).

Expectations in corpus/seeds were written from iotest 245, not recorded from QEMU, so these
tests check the model against the seed's facts."""
from __future__ import annotations

import glob
import os

import pytest

from fuzz import trace as T
from fuzz.engine import ExpectationMismatch, Runner
from models import PROFILES, Model

SEEDS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "corpus", "seeds", "*.json"))
               + glob.glob(os.path.join(os.path.dirname(__file__), "..", "corpus", "probes", "*.json")))


def test_all_issue_scenarios_present():
    names = {os.path.basename(p)[:-5] for p in SEEDS}
    assert {"test_incorrect_parameters_single_file", "test_incorrect_parameters_backing_file",
            "test_reopen", "test_reopen_raw", "test_reset_default_values",
            "test_io_with_graph_changes", "test_graph_cycles", "test_replace_file",
            "test_swap_files", "test_missing_backing_options_1", "test_missing_backing_options_2",
            "test_backing_reference"} <= names


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("path", SEEDS, ids=lambda p: os.path.basename(p)[:-5])
def test_model_predicts_seed(path, profile):
    tr = T.load(path)
    runner = Runner(Model(PROFILES[profile], tr.images, tr.machine))
    checked = 0
    for step in tr.steps:
        runner.run(step)
        checked += "expect" in step or "assert" in step
    assert checked > 0, "a seed trace without expectations checks nothing"


def test_wrong_expectation_is_caught():
    """The checker itself can fail: flip one written expectation and it must be reported."""
    tr = T.load([p for p in SEEDS if p.endswith("test_reopen.json")][0])
    steps = [dict(s) for s in tr.steps]
    for s in steps:
        if s.get("expect", {}).get("error"):
            s["expect"] = {"error": {"class": "GenericError", "desc": s["expect"]["error"]["desc"] + "!"}}
            break
    runner = Runner(Model(PROFILES["10.0"], tr.images))
    with pytest.raises(ExpectationMismatch):
        for s in steps:
            runner.run(s)
