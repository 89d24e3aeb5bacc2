"""A finished example's model is freed by reference counting alone.

A campaign's worker runs Python's cyclic collector seldom (``fuzz.campaign.gc_tuned``), so a
model that only the collector can free waits for it with its images, megabytes each.  Before
these checks, every ``models.perms.topological_dfs()`` call left its graph in a reference cycle
(a nested recursive function refers to itself through its closure), and a one-worker 11.1.3
campaign grew to 725 MiB in 135 s (2026-12-03); the state machine kept its runner and model
past teardown too, inside Hypothesis' own cycle (``BlockGraphMachine._close_session``)."""
from __future__ import annotations

import gc
import glob
import os
import weakref

import pytest

from fuzz import trace as T
from fuzz.engine import Runner
from models import PROFILES, Model
from models import perms as P

SEEDS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "corpus", "seeds", "*.json"))
               + glob.glob(os.path.join(os.path.dirname(__file__), "..", "corpus", "probes", "*.json")))


@pytest.fixture
def no_cyclic_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: os.path.basename(p)[:-5])
def test_a_seed_model_is_freed_without_the_collector(path, no_cyclic_gc):
    tr = T.load(path)
    runner = Runner(Model(PROFILES["11.1"], tr.images, tr.machine))
    for step in tr.steps:
        runner.run(step)
    graph = weakref.ref(runner.model.graph)
    images = [weakref.ref(img) for img in runner.model.graph.images.values()]
    del runner, step
    assert graph() is None
    assert [r() for r in images] == [None] * len(images)


def test_the_check_fails_on_a_cycle(no_cyclic_gc):
    """The weakref check can fail: a graph put in a cycle on purpose stays alive."""
    m = Model(PROFILES["11.1"], ())
    m.execute("blockdev-add", {"driver": "null-co", "node-name": "n"})
    cycle: list = [m.graph]
    cycle.append(cycle)
    graph = weakref.ref(m.graph)
    assert P.topological_dfs(m.graph, ["n"]) == ["n"]
    del m, cycle
    assert graph() is not None
    gc.collect()
    assert graph() is None
