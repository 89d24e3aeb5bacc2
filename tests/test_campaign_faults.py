"""Declines that the final campaigns of 2026-12-01 made necessary, each from the minimized
trace that showed QEMU doing what the model did not follow (QEMU-free: the model must decline,
not predict; replayed against QEMU each one disagreed)."""
from __future__ import annotations

import pytest

from models import PROFILES, ImageSpec, Model, NotModeled

M = 1 << 20
IMAGES = [ImageSpec("hd2.img", "qcow2", 3 * M), ImageSpec("hd3.img", "qcow2", M),
          ImageSpec("r0.img", "raw", 65536)]


def _ok(m: Model, cmd: str, args: dict) -> None:
    out = m.execute(cmd, args)
    assert out.error is None, (cmd, args, out)


def test_a_resize_of_a_qcow2_node_whose_file_a_reopen_moved_is_declined():
    # 11.1.3 wrote the new size into r0.img's first cluster (a later read there failed)
    m = Model(PROFILES["11.1"], IMAGES)
    _ok(m, "blockdev-add", {"driver": "qcow2", "node-name": "hd0",
                            "file": {"driver": "file", "node-name": "hd0-file", "filename": "hd2.img"}})
    _ok(m, "object-add", {"qom-type": "throttle-group", "id": "group0"})
    _ok(m, "blockdev-add", {"driver": "throttle", "node-name": "bv", "throttle-group": "group0",
                            "file": {"driver": "file", "node-name": "bv-f", "filename": "r0.img"}})
    _ok(m, "blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "hd0", "file": "bv"}]})
    with pytest.raises(NotModeled, match="file child holds another image"):
        m.execute("block_resize", {"node-name": "hd0", "size": 3 * M + 65536})


def test_a_qcow2_create_a_guest_disk_refuses_halfway_is_declined():
    # 11.1.3 left 192 KiB written (header, refcount table and block) where the model said 64
    m = Model(PROFILES["11.1"], IMAGES, machine="pc")
    _ok(m, "device_add", {"driver": "virtio-scsi", "id": "scsi0"})
    _ok(m, "blockdev-add", {"driver": "file", "node-name": "hd4", "filename": "r0.img"})
    _ok(m, "device_add", {"driver": "scsi-hd", "drive": "hd4", "bus": "scsi0.0", "share-rw": True})
    with pytest.raises(NotModeled, match="temporary qcow2 node"):
        m.execute("blockdev-create", {"job-id": "c1", "options": {"driver": "qcow2", "file": "hd4",
                                                                   "size": M}})


def test_a_mirror_into_null_co_from_a_blkverify_is_declined():
    # 7.2.22 read the source anyway and exited: "blkverify: ... contents mismatch"
    m = Model(PROFILES["7.2"], IMAGES)
    _ok(m, "blockdev-add", {"driver": "null-co", "node-name": "q0"})
    _ok(m, "blockdev-add", {"driver": "blkverify", "node-name": "n0", "test": "q0",
                            "raw": {"driver": "qcow2", "file": {"driver": "file", "filename": "hd3.img"}}})
    _ok(m, "blockdev-add", {"driver": "null-co", "node-name": "c0"})   # as long as q0
    with pytest.raises(NotModeled, match="do more than read"):
        m.execute("blockdev-mirror", {"device": "n0", "target": "c0", "sync": "full", "job-id": "job0"})
