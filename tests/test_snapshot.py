"""blockdev-snapshot without QEMU: the check order of external_snapshot_action() and the
effects of bdrv_append().  Expected values from blockdev.c / block.c of 10.2 as probed on
7.2.22, 10.0.2 and 11.1.3; the iotest 085/228/273 seeds replay them on real QEMU."""
from __future__ import annotations

from models import PROFILES, ImageSpec, Model, Write

M = 1 << 20
IMAGES = (ImageSpec("hd0.img", "qcow2", 3 * M, writes=(Write(0xA0, 0, M),)),
          ImageSpec("ov.img", "qcow2", 3 * M), ImageSpec("ov2.img", "qcow2", 3 * M))


def qcow2(name, img, **extra):
    return dict({"driver": "qcow2", "node-name": name,
                 "file": {"driver": "file", "node-name": f"{name}-file", "filename": img}}, **extra)


def _model(version="11.1"):
    m = Model(PROFILES[version], IMAGES)
    assert m.execute("blockdev-add", qcow2("hd0", "hd0.img")).ok
    assert m.execute("blockdev-add", qcow2("ov", "ov.img", backing=None)).ok
    return m


def snap(m, node, overlay):
    return m.execute("blockdev-snapshot", {"node": node, "overlay": overlay})


def nodes(m):
    return {n["node-name"]: n for n in m.query_named_block_nodes()}


def test_overlay_checks_in_order():
    m = _model()
    assert snap(m, "nope", "ov").error.desc == "Cannot find device='nope' nor node-name='nope'"
    assert snap(m, "hd0", "nope").error.desc == "Cannot find device='nope' nor node-name='nope'"
    # a qcow2's file child is read by it: in use
    assert snap(m, "hd0", "ov-file").error.desc == "The overlay is already in use"
    assert m.execute("object-add", {"qom-type": "throttle-group", "id": "tg"}).ok
    assert m.execute("blockdev-add", {"driver": "throttle", "node-name": "t", "throttle-group": "tg",
                                      "file": qcow2("x", "ov2.img", backing=None)}).ok
    assert snap(m, "hd0", "t").error.desc == "Filters cannot be used as overlays"
    assert m.execute("blockdev-add", {"driver": "null-co", "node-name": "n"}).ok
    assert snap(m, "hd0", "n").error.desc == "The overlay does not support backing images"
    assert snap(m, "hd0", "hd0").error.desc == "Making 'hd0' a backing child of 'hd0' would create a cycle"


def test_success_moves_the_parents_and_makes_the_node_read_only():
    m = _model()
    assert m.execute("blockdev-add", {"driver": "raw", "node-name": "top", "file": "hd0"}).ok
    assert snap(m, "hd0", "ov").ok
    g = nodes(m)
    assert g["ov"]["backing_file"] == "hd0.img" and g["ov"]["backing_file_depth"] == 1
    assert g["hd0"]["ro"] is True and g["hd0-file"]["ro"] is True   # the inline file inherits
    assert [c["node-name"] for c in g["top"]["children"]] == ["ov"]
    # the header is not written
    assert "backing-filename" not in g["ov"]["image"]
    # the old top is now a backing node: blocked for another snapshot and for blockdev-del
    assert m.execute("blockdev-add", qcow2("ov2", "ov2.img", backing=None)).ok
    assert snap(m, "hd0", "ov2").error.desc == "Node 'hd0' is busy: node is used as backing hd of 'ov'"
    assert m.execute("blockdev-del", {"node-name": "hd0"}).error.desc == (
        "Node 'hd0' is busy: node is used as backing hd of 'ov'")
    # data of the old top shows through the overlay
    r = m.execute("human-monitor-command", {"command-line": 'qemu-io ov "read -P 0xa0 0 64k"'})
    assert r.stdout == ("read 65536/65536 bytes at offset 0",)


def test_an_overlay_with_a_backing_is_refused_after_the_in_use_check():
    m = _model("10.0")
    assert m.execute("blockdev-add", qcow2("ov2", "ov2.img", backing="ov")).ok
    # ov is ov2's backing, but nobody reads ov2: ov is not in use, and has no backing itself
    assert snap(m, "hd0", "ov2").error.desc == "The overlay already has a backing image"
