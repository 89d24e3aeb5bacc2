"""Declines that the final campaigns of 2026-12-01 made necessary, each from the minimized
trace that showed QEMU doing what the model did not follow (QEMU-free: the model must decline,
not predict; replayed against QEMU each one disagreed)."""
from __future__ import annotations

import pytest

from models import PROFILES, ImageSpec, KnownQemuBug, Model, NotModeled, Write

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


def _shrunk_window(version: str) -> Model:
    m = Model(PROFILES[version], [ImageSpec("hd0.img", "raw", M, writes=(Write(0xa0, 0, 65536),))])
    _ok(m, "blockdev-add", {"driver": "file", "node-name": "f0", "filename": "hd0.img"})
    _ok(m, "blockdev-add", {"driver": "raw", "node-name": "r0", "file": "f0", "size": 65536})
    _ok(m, "blockdev-add", {"driver": "raw", "node-name": "p0", "file": "r0"})
    _ok(m, "blockdev-reopen", {"options": [{"driver": "raw", "node-name": "r0", "file": "f0", "size": 512}]})
    return m


def _io(m: Model, line: str):
    return m.execute("human-monitor-command", {"command-line": f'qemu-io {line}'})


def test_a_read_past_a_shrunk_child_is_zeros():
    # 11.1.3 campaign, 2026-12-02: the model read r0's file past r0's new end (0xa0); QEMU's
    # bdrv_aligned_preadv() pads with zeros past the child's length
    m = _shrunk_window("11.1")
    assert _io(m, 'p0 "read -P 0 512 512"').stdout == ("read 512/512 bytes at offset 512",)
    assert _io(m, 'p0 "read -P 0xa0 0 512"').stdout == ("read 512/512 bytes at offset 0",)


def test_a_write_past_a_shrunk_child_is_the_known_abort_in_a_campaign():
    m = _shrunk_window("11.1")
    m.graph.guard_known_crashes = True
    with pytest.raises(KnownQemuBug, match="write past the end of 'r0'"):
        _io(m, 'p0 "write -P 0xb0 1024 512"')
    with pytest.raises(KnownQemuBug, match="write past the end of 'r0'"):
        _io(m, 'p0 "write -z 1024 512"')
    assert _io(m, 'p0 "write -P 0xb0 0 512"').stdout == ("wrote 512/512 bytes at offset 0",)
    # 7.2 re-reads p0's length (512): qemu-io refuses the request before it reaches r0
    m = _shrunk_window("7.2")
    m.graph.guard_known_crashes = True
    assert _io(m, 'p0 "write -P 0xb0 1024 512"').stdout == ("write failed: Input/output error",)


@pytest.mark.parametrize("version", ["7.2", "10.0", "11.1"])
def test_a_write_through_a_filter_past_a_shrunk_child_is_the_known_abort(version):
    # the rule is the generic block layer's (bdrv_co_write_req_prepare() of any child), not
    # raw's: a throttle node over the shrunk window aborts QEMU the same way, 7.2 included
    # (seen 2026-12-02 on 7.2.22 and 11.1.3)
    m = Model(PROFILES[version], [ImageSpec("hd0.img", "raw", M)])
    _ok(m, "blockdev-add", {"driver": "file", "node-name": "f0", "filename": "hd0.img"})
    _ok(m, "blockdev-add", {"driver": "raw", "node-name": "r0", "file": "f0", "size": 65536})
    _ok(m, "object-add", {"qom-type": "throttle-group", "id": "tg0"})
    _ok(m, "blockdev-add", {"driver": "throttle", "node-name": "t0", "throttle-group": "tg0",
                            "file": "r0"})
    _ok(m, "blockdev-reopen", {"options": [{"driver": "raw", "node-name": "r0", "file": "f0",
                                            "size": 512}]})
    m.graph.guard_known_crashes = True
    with pytest.raises(KnownQemuBug, match="write past the end of 'r0' through 't0'"):
        _io(m, 't0 "write -P 0xb0 1024 512"')
