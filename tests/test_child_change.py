"""x-blockdev-change without QEMU: the check order and quorum's child naming.

Expected values from qmp_x_blockdev_change() (blockdev.c), bdrv_add_child()/bdrv_del_child()
(block.c) and quorum_add_child()/quorum_del_child() (block/quorum.c) of 10.2, as probed on
7.2.22, 10.0.2 and 11.1.3 (the iotest 081 seeds in corpus/seeds replay them on real QEMU)."""
from __future__ import annotations

import json
import os

import pytest

from models import PROFILES, ImageSpec, KnownQemuBug, Model, Write

M = 1 << 20
IMAGES = tuple(ImageSpec(f"d{i}.img", "raw", M, writes=(Write(0x32 if i != 1 else 0x42, 0, M),))
               for i in range(4))


def raw(name, i):
    return {"driver": "raw", "node-name": name, "file": {"driver": "file", "filename": f"d{i}.img"}}


def _model(threshold=1, version="11.1"):
    m = Model(PROFILES[version], IMAGES)
    assert m.execute("blockdev-add", {"driver": "quorum", "node-name": "q", "vote-threshold": threshold,
                                      "children": [raw("a", 0), raw("b", 1), raw("c", 2)]}).ok
    return m


def xc(m, **args):
    return m.execute("x-blockdev-change", args)


def children(m, name="q"):
    node = next(n for n in m.query_named_block_nodes() if n["node-name"] == name)
    return [(c["child"], c["node-name"]) for c in node["children"]]


def test_the_parent_is_looked_up_before_the_members_are_checked():
    m = _model()
    assert xc(m, parent="nope").error.desc == "Cannot find device='nope' nor node-name='nope'"
    assert xc(m, parent="q").error.desc == "Either child or node must be specified"
    assert xc(m, parent="q", child="x", node="y").error.desc == "The parameters child and node are in conflict"


def test_a_child_is_an_edge_name_looked_up_before_the_driver():
    m = _model()
    assert xc(m, parent="q", child="a").error.desc == "Node 'q' does not have child 'a'"
    assert xc(m, parent="a", child="file").error.desc == "The node a does not support removing a child"
    assert xc(m, parent="a", node="nope").error.desc == "Node 'nope' not found"
    assert m.execute("blockdev-add", raw("x", 3)).ok
    assert xc(m, parent="a", node="x").error.desc == "The node a does not support adding a child"
    assert xc(m, parent="q", node="b").error.desc == "The node b already has a parent"


def test_removing_gives_back_only_the_top_index():
    m = _model()
    assert m.execute("blockdev-add", raw("x", 3)).ok
    assert xc(m, parent="q", child="children.1").ok          # not the top one: a gap
    assert xc(m, parent="q", node="x").ok
    # the new child is children.3, the newest edge, first in the 11.1 children list
    assert children(m) == [("children.3", "x"), ("children.2", "c"), ("children.0", "a")]
    assert xc(m, parent="q", child="children.3").ok           # the top one: 3 is free again
    assert xc(m, parent="q", node="x").ok
    assert children(m)[0] == ("children.3", "x")
    # the inline child went with its edge, the monitor-owned one stays
    names = {n["node-name"] for n in m.query_named_block_nodes()}
    assert "b" not in names and "x" in names


def test_the_vote_threshold_bounds_removal_and_reads_vote():
    m = _model(threshold=2)
    read = m.execute("human-monitor-command", {"command-line": 'qemu-io q "read -P 0x32 0 64k"'})
    assert read.stdout == ("read 65536/65536 bytes at offset 0",)   # a and c agree, b does not
    assert xc(m, parent="q", child="children.0").ok
    # c (0x32) against b (0x42): no version reaches 2 votes
    read = m.execute("human-monitor-command", {"command-line": 'qemu-io q "read 0 64k"'})
    assert read.stdout == ("read failed: Input/output error",)
    r = xc(m, parent="q", child="children.1")
    assert r.error.desc == "The number of children cannot be lower than the vote threshold 2"


def test_a_cycle_is_refused_and_its_index_given_back():
    m = _model()
    assert m.execute("blockdev-add", {"driver": "raw", "node-name": "top", "file": "q"}).ok
    assert xc(m, parent="q", child="children.2").ok
    m2 = Model(PROFILES["11.1"], IMAGES)
    assert m2.execute("blockdev-add", {"driver": "quorum", "node-name": "q", "vote-threshold": 1,
                                       "children": [raw("a", 0)]}).ok
    r = xc(m2, parent="q", node="q")
    assert r.error.desc == "Making 'q' a children.1 child of 'q' would create a cycle"
    assert m2.execute("blockdev-add", raw("x", 3)).ok
    assert xc(m2, parent="q", node="x").ok
    assert children(m2)[0] == ("children.1", "x")


def test_blkverify_mode_refuses_adds():
    m = Model(PROFILES["10.0"], IMAGES)
    q = {"driver": "quorum", "node-name": "q", "vote-threshold": 2, "blkverify": True,
         "children": [raw("a", 0), raw("c", 2)]}
    assert m.execute("blockdev-add", q).ok
    assert m.execute("blockdev-add", raw("x", 3)).ok
    assert xc(m, parent="q", node="x").error.desc == "Cannot add a child to a quorum in blkverify mode"
    bad = dict(q, **{"node-name": "q2", "vote-threshold": 1,
                     "children": [raw("a2", 0), raw("c2", 2)]})
    assert m.execute("blockdev-add", bad).error.desc == (
        "blkverify=on can only be set if there are exactly two files and vote-threshold is 2")


@pytest.mark.parametrize("version,known", [("7.2", True), ("10.0", False), ("11.1", False)])
def test_the_72_iothread_abort_is_guarded_in_campaigns(version, known):
    tr = json.load(open(os.path.join(os.path.dirname(__file__), "..", "corpus", "findings",
                                     "qemu72-quorum-iothread-child-change-abort.json")))
    m = Model(PROFILES[version], [ImageSpec(i["file"], i["format"], i["size"]) for i in tr["images"]],
              machine="pc")
    m.graph.guard_known_crashes = True
    steps = [s for s in tr["steps"] if "qmp" in s]
    for s in steps[:-1]:
        assert m.execute(s["qmp"], s["args"]).ok
    if known:
        with pytest.raises(KnownQemuBug):
            m.execute(steps[-1]["qmp"], steps[-1]["args"])
    else:
        assert m.execute(steps[-1]["qmp"], steps[-1]["args"]).ok
