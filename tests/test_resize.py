"""block_resize without QEMU: qmp_block_resize()'s check order and bdrv_co_truncate() through
drivers and filters, with the parents' lengths per version.  Expected values from blockdev.c,
block/io.c, block/raw-format.c and block/qcow2.c of 10.2 as probed on 7.2.22, 10.0.2 and
11.1.3; the resize-below-raw/-filter seeds replay them on real QEMU."""
from __future__ import annotations

import pytest

from models import PROFILES, ImageSpec, Model, NotModeled, Write

M = 1 << 20
IMAGES = (ImageSpec("hd0.img", "qcow2", 3 * M, writes=(Write(0xA0, 0, M),)),
          ImageSpec("r0.img", "raw", M, writes=(Write(0x11, 0, M),)))


def _model(version="11.1"):
    m = Model(PROFILES[version], IMAGES)
    assert m.execute("blockdev-add", {"driver": "raw", "node-name": "r0", "file": {
        "driver": "file", "node-name": "r0-file", "filename": "r0.img"}}).ok
    return m


def resize(m, size, **args):
    return m.execute("block_resize", dict(args, size=size))


def sizes(m):
    return {n["node-name"]: n["image"]["virtual-size"] for n in m.query_named_block_nodes()}


def test_lookup_and_size_come_first():
    m = _model()
    assert resize(m, 1).error.desc == "Cannot find device='' nor node-name=''"
    assert resize(m, 1, device="r0").error.desc == "Cannot find device='r0' nor node-name=''"
    assert resize(m, -1, **{"node-name": "r0"}).error.desc == "Parameter 'size' expects a >0 size"
    assert m.execute("block_resize", {"node-name": "r0"}).error.desc == "Parameter 'size' is missing"


@pytest.mark.parametrize("version,raw_follows", [("7.2", True), ("10.0", False), ("11.1", True)])
def test_a_file_resized_under_raw(version, raw_follows):
    m = _model(version)
    assert resize(m, 2 * M, **{"node-name": "r0-file"}).ok
    got = sizes(m)
    assert got["r0-file"] == 2 * M
    assert got["r0"] == (2 * M if raw_follows else M)
    # a file's length rounds up to a sector
    assert resize(m, 1000, **{"node-name": "r0-file"}).ok
    assert sizes(m)["r0-file"] == 1024
    # the data past the old end reads as zeros after a grow through raw, and raw followed
    m2 = _model(version)
    assert resize(m2, 2 * M, **{"node-name": "r0"}).ok
    r = m2.execute("human-monitor-command", {"command-line": 'qemu-io r0 "read -P 0 1M 64k"'})
    assert r.stdout == ("read 65536/65536 bytes at offset 1048576",)


def test_driver_answers():
    m = _model()
    assert m.execute("blockdev-add", {"driver": "raw", "node-name": "w", "size": 4096, "file": {
        "driver": "file", "filename": "r0.img", "locking": "off"}}).ok
    assert resize(m, 8192, **{"node-name": "w"}).error.desc == "Cannot resize fixed-size raw disks"
    assert m.execute("blockdev-add", {"driver": "null-co", "node-name": "n"}).ok
    assert resize(m, 8192, **{"node-name": "n"}).error.desc == "Image format driver does not support resize"
    assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {
        "driver": "file", "node-name": "q-file", "filename": "hd0.img"}}).ok
    assert resize(m, 4 * M + 1000, **{"node-name": "q"}).error.desc == "The new size must be a multiple of 512"
    # the qcow2 node does not share RESIZE on its file
    assert resize(m, 4 * M, **{"node-name": "q-file"}).error.desc == (
        "Permission conflict on node 'q-file': permissions 'resize' are both required by an unnamed "
        "block device (uses node 'q-file' as 'root' child) and unshared by node 'q' (uses node "
        "'q-file' as 'file' child).")
    assert resize(m, 4 * M, **{"node-name": "q"}).ok
    assert sizes(m)["q"] == 4 * M
    with pytest.raises(NotModeled):
        resize(m, 2 * M, **{"node-name": "q"})   # a shrink


@pytest.mark.parametrize("version,desc", [
    ("7.2", "Device '(null)' is in use"),
    ("10.0", "Node 'hd1' is busy: node is used as backing hd of 'top'")])
def test_a_backing_node_is_blocked(version, desc):
    m = Model(PROFILES[version], IMAGES)
    assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": {
        "driver": "file", "filename": "hd0.img"}, "backing": {"driver": "raw", "node-name": "hd1",
        "file": {"driver": "file", "filename": "r0.img"}}}).ok
    assert resize(m, 2 * M, **{"node-name": "hd1"}).error.desc == desc


def test_read_only_comes_before_the_driver():
    m = Model(PROFILES["10.0"], IMAGES)
    assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": "q", "read-only": True, "file": {
        "driver": "file", "filename": "hd0.img"}}).ok
    assert resize(m, 1001, **{"node-name": "q"}).error.desc == "Image is read-only"


def test_a_file_holding_qcow2_grows_and_may_be_cut_only_down_to_its_metadata():
    # hd0.img: 3 MiB, its first MiB written: header, refcount table and block, L1, one L2
    # table and 16 data clusters = 21 clusters in use
    m = _model()
    assert m.execute("blockdev-add", {"driver": "file", "node-name": "f", "filename": "hd0.img"}).ok
    in_use = 21 * 65536
    assert sizes(m)["f"] == in_use
    assert resize(m, 2 * M + 1, **{"node-name": "f"}).ok
    assert sizes(m)["f"] == 2 * M + 512
    assert resize(m, in_use, **{"node-name": "f"}).ok
    assert sizes(m)["f"] == in_use
    with pytest.raises(NotModeled, match="cut below the clusters in use"):
        resize(m, in_use - 512, **{"node-name": "f"})
