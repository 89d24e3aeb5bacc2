"""Stale edge permissions (``Graph.stale_perms``, ``models.perms.stale_after``).

``bdrv_set_backing_hd()`` (block.c) refreshes the permissions of the parent's subtree only.
A stream job's ``stream_prepare()`` takes the streamed node's backing away with it while the
job's "intermediate node" links still hold the old chain, so until the job is dismissed the
old backing node keeps asking for what it needed while the job read through it.  Found by an
11.1.3 campaign (2026-12-03, seed 7: ``blockdev-snapshot`` answered "The overlay is already in
use" for a node the model thought unused; 78 steps, 4 after shrinking).

The expected permissions are what ``x-debug-query-block-graph`` of QEMU 11.1.3 showed for the
same commands (the probe of 2026-12-03), written down by hand; the last test asks a real
11.1 for every edge.  (7.2 and 10.0 die of a known bug at the first query after such a
stream concludes: corpus/findings/stream-concluded-query-segv.json.)
"""
from __future__ import annotations

import time

import pytest

from models import PROFILES, ImageSpec, Model
from models import perms as P

MiB = 1 << 20
IMAGES = (ImageSpec("hd0.img", "qcow2", MiB),
          ImageSpec("hd1.img", "qcow2", None, "hd0.img", "qcow2"),
          ImageSpec("hd2.img", "qcow2", None, "hd1.img", "qcow2"),
          ImageSpec("hd3.img", "qcow2", MiB))


def qcow2(name: str, filename: str, **extra) -> dict:
    return {"driver": "qcow2", "node-name": name,
            "file": {"driver": "file", "node-name": name + "-f", "filename": filename}, **extra}


CHAIN = [("blockdev-add", qcow2("b0", "hd0.img")),
         ("blockdev-add", qcow2("b1", "hd1.img", backing="b0")),
         ("blockdev-add", qcow2("top", "hd2.img", backing="b1")),
         ("blockdev-add", qcow2("ov", "hd3.img", backing=None)),
         ("block-stream", {"job-id": "job0", "device": "top", "auto-dismiss": False})]
SNAPSHOT = ("blockdev-snapshot", {"node": "ov", "overlay": "b0"})
IN_USE = "The overlay is already in use"

CR, W, WU, RS = P.CONSISTENT_READ, P.WRITE, P.WRITE_UNCHANGED, P.RESIZE
#: 11.1.3 after the stream concluded: the old backing b1 still reads b0 consistently and
#: shares only what the job's link shared, though b1 has no reader left
STALE_B1_B0 = (CR, CR | WU)
#: 11.1.3 after job-dismiss: the job's links are gone and b1 was refreshed
FRESH_B1_B0 = (0, CR | W | WU | RS)


def model_after(steps) -> Model:
    m = Model(PROFILES["11.1"], IMAGES)
    for cmd, args in steps:
        out = m.execute(cmd, args)
        assert out.error is None, (cmd, out.error)
    return m


def edge_perms(m: Model, parent: str, child: str) -> tuple[int, int]:
    edge = m.graph.nodes[parent].child(child)
    assert edge is not None
    return P.Perms(m.graph, {}, {}).edge[id(edge)]


def test_concluded_stream_leaves_the_old_backing_edges_stale():
    m = model_after(CHAIN)
    assert m.graph.jobs["job0"].status == "concluded"
    assert edge_perms(m, "b1", "backing") == STALE_B1_B0
    out = m.execute(*SNAPSHOT)
    assert out.error is not None and out.error.desc == IN_USE


def test_dismiss_refreshes_what_the_job_let_go_of():
    m = model_after(CHAIN + [("job-dismiss", {"id": "job0"})])
    assert edge_perms(m, "b1", "backing") == FRESH_B1_B0
    assert not m.graph.stale_perms
    assert m.execute(*SNAPSHOT).error is None


def test_stale_edges_survive_a_failed_command_and_a_clone():
    """A command the model runs on a clone and throws away (a failed snapshot) keeps the
    stale edges, and a clone carries them."""
    m = model_after(CHAIN)
    assert m.execute(*SNAPSHOT).error is not None
    assert edge_perms(m, "b1", "backing") == STALE_B1_B0
    clone = m.graph.clone()
    assert clone.stale_perms == m.graph.stale_perms and clone.stale_perms is not m.graph.stale_perms


def test_a_stream_with_auto_dismiss_leaves_nothing_stale():
    m = model_after(CHAIN[:-1] + [("block-stream", {"job-id": "job0", "device": "top"})])
    assert "job0" not in m.graph.jobs
    assert not m.graph.stale_perms
    assert edge_perms(m, "b1", "backing") == FRESH_B1_B0


_NAMES = {"consistent-read": CR, "write": W, "write-unchanged": WU, "resize": RS}


def _bits(names: list[str]) -> int:
    return sum(_NAMES[n] for n in names)


@pytest.mark.qemu
def test_every_edge_matches_qemu_11_1(tmp_path):
    from fuzz.images import make_images
    from fuzz.qemu import QemuProcess

    from conftest import qemu_binaries

    binaries = qemu_binaries("11.1")
    make_images(IMAGES, tmp_path, binaries)
    m = Model(PROFILES["11.1"], IMAGES)
    compared = 0
    with QemuProcess(binaries, tmp_path) as q:
        for phase in (CHAIN, [SNAPSHOT, ("job-dismiss", {"id": "job0"})], [SNAPSHOT]):
            for cmd, args in phase:
                got, want = q.execute(cmd, args), m.execute(cmd, args)
                assert (cmd, got.error) == (cmd, want.error)
                if cmd == "block-stream":
                    deadline = time.monotonic() + 5
                    while q.execute("query-jobs").ret[0]["status"] != "concluded":
                        assert time.monotonic() < deadline, "the stream did not conclude"
                        time.sleep(0.01)
            graph = q.execute("x-debug-query-block-graph").ret
            names = {n["id"]: n["name"] for n in graph["nodes"]}
            perms = P.Perms(m.graph, {}, {})
            for e in graph["edges"]:
                parent = names[e["parent"]]
                if parent not in m.graph.nodes:
                    continue   # a job's link (the model's JobParent)
                edge = m.graph.nodes[parent].child(e["name"])
                assert edge is not None and edge.child == names[e["child"]]
                assert (parent, e["name"], perms.edge[id(edge)]) == \
                    (parent, e["name"], (_bits(e["perm"]), _bits(e["shared-perm"])))
                compared += 1
    assert compared >= 12


def test_dismiss_forgets_the_stale_edges_of_nodes_it_closes():
    """Unnamed intermediate nodes close at job-dismiss: nothing stale outlives them (the
    campaign's 4-step trace: the old chain was opened from the image headers)."""
    m = Model(PROFILES["11.1"], IMAGES)
    for cmd, args in [("blockdev-add", qcow2("top", "hd2.img")),
                      ("block-stream", {"job-id": "job0", "device": "top", "auto-dismiss": False})]:
        assert m.execute(cmd, args).error is None, cmd
    assert m.graph.stale_perms
    assert m.execute("job-dismiss", {"id": "job0"}).error is None
    assert not m.graph.stale_perms
