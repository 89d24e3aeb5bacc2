"""BlockBackend parents that are not nodes, without QEMU: a guest disk's order after
bdrv_replace_node(), and the BlockBackend a failed block-stream leaks (a QEMU bug the model
predicts).  Expected values as probed on 7.2.22, 10.0.2 and 11.1.3 (2026-12-02; the traces
corpus/probes/snapshot-moves-disks-in-reverse.json and
corpus/probes/failed-stream-start-leaks-its-blockbackend.json replay them on real QEMU)."""
from __future__ import annotations

import pytest

from models import PROFILES, ImageSpec, Model

IMAGES = (ImageSpec("hd0.img", "qcow2", 512), ImageSpec("hd1.img", "qcow2", 512),
          ImageSpec("hd2.img", "qcow2", 512))


def qcow2(name, img, **extra):
    return dict({"driver": "qcow2", "node-name": name,
                 "file": {"driver": "file", "filename": img}}, **extra)


def conflict_names(desc: str) -> tuple[str, str]:
    """(requirer, unsharer) of a permission-conflict message."""
    required = desc.split("are both required by ", 1)[1].split(" (uses", 1)[0]
    unshared = desc.split("unshared by ", 1)[1].split(" (uses", 1)[0]
    return required, unshared


@pytest.mark.parametrize("version", ["7.2", "10.0", "11.1"])
def test_snapshot_moves_two_disks_in_reverse(version):
    m = Model(PROFILES[version], IMAGES, machine="pc")
    assert m.execute("blockdev-add", qcow2("hd0", "hd0.img")).ok
    assert m.execute("device_add", {"driver": "virtio-scsi", "id": "scsi1"}).ok
    for _ in range(2):
        assert m.execute("device_add", {"driver": "scsi-hd", "drive": "hd0", "bus": "scsi1.0",
                                        "share-rw": True}).ok
    # before the snapshot the newest disk (device[1]) is named first
    r = m.execute("blockdev-add", qcow2("w", "hd1.img", file="hd0"))
    assert conflict_names(r.error.desc)[0] == "block device '/machine/peripheral-anon/device[1]'"
    assert m.execute("blockdev-add", qcow2("ov1", "hd2.img")).ok
    assert m.execute("blockdev-snapshot", {"node": "hd0", "overlay": "ov1"}).ok
    r = m.execute("blockdev-add", qcow2("hd4", "hd1.img", file="ov1"))
    assert conflict_names(r.error.desc) == ("block device '/machine/peripheral-anon/device[0]'",
                                            "node 'hd4'")


def _failed_stream(version):
    m = Model(PROFILES[version], IMAGES)
    assert m.execute("blockdev-add", qcow2("base", "hd0.img")).ok
    assert m.execute("blockdev-add", qcow2("top", "hd1.img", backing="base")).ok
    assert m.execute("blockdev-add", qcow2("user", "hd2.img")).ok
    assert m.execute("blockdev-reopen", {"options": [
        {"driver": "qcow2", "node-name": "user", "file": "base"}]}).ok
    r = m.execute("block-stream", {"device": "top", "job-id": "s0"})
    assert r.error.desc.startswith("Permission conflict on node 'base'")
    assert m.query_jobs() == []
    assert m.execute("blockdev-del", {"node-name": "user"}).ok
    return m


@pytest.mark.parametrize("version", ["7.2", "10.0", "11.1"])
def test_failed_stream_leaks_its_blockbackend_onto_the_node(version):
    m = _failed_stream(version)
    r = m.execute("block_resize", {"node-name": "top", "size": 1024})
    assert conflict_names(r.error.desc) == ("an unnamed block device", "an unnamed block device")
    assert "permissions 'resize'" in r.error.desc
    assert m.execute("blockdev-del", {"node-name": "top"}).error.desc == "Node top is in use"
    assert m.execute("blockdev-add", qcow2("ov", "hd2.img", backing=None)).ok
    # the in-use check comes before "The overlay already has a backing image"
    r = m.execute("blockdev-snapshot", {"node": "ov", "overlay": "top"})
    assert r.error.desc == "The overlay is already in use"


def test_the_leak_follows_its_node_under_a_snapshot():
    """bdrv_append() moves every BlockBackend parent, the leaked one too: the overlay is now
    the node in use, and the old top is only busy as a backing node."""
    m = _failed_stream("11.1")
    assert m.execute("blockdev-add", qcow2("ov", "hd2.img", backing=None)).ok
    assert m.execute("blockdev-snapshot", {"node": "top", "overlay": "ov"}).ok
    assert m.execute("blockdev-del", {"node-name": "top"}).error.desc == \
        "Node 'top' is busy: node is used as backing hd of 'ov'"
    assert m.execute("blockdev-del", {"node-name": "ov"}).error.desc == "Node ov is in use"


def test_a_stream_that_fails_before_its_blockbackend_leaks_nothing():
    """A bad job ID fails in block_job_create(), before s->blk exists."""
    m = Model(PROFILES["11.1"], IMAGES)
    assert m.execute("blockdev-add", qcow2("base", "hd0.img")).ok
    assert m.execute("blockdev-add", qcow2("top", "hd1.img", backing="base")).ok
    assert m.execute("block-stream", {"device": "top", "job-id": "1bad"}).error is not None
    assert m.execute("block_resize", {"node-name": "top", "size": 1024}).ok
    assert m.execute("blockdev-del", {"node-name": "top"}).ok


@pytest.mark.parametrize("version,fails", [("7.2", True), ("10.0", False), ("11.1", True)])
def test_qemu_io_attach_checks_the_node_before_a_read(version, fails):
    """hmp_qemu_io(): the temporary BlockBackend's attach refreshes the node's permissions
    (bdrv_root_attach_child()), so a read fails where a graph already breaks a check: a
    scsi-hd writes to a compress node (alignment: the cluster size) that holds no 'resize',
    and a block_resize below it made its length unaligned, which 7.2 (variable length) and
    11.1 (a child's resize refreshes its parents) see and 10.0 (stale length) does not
    (corpus/probes/qemu-io-attach-checks-an-unaligned-compress-node.json, 2026-12-02)."""
    m = Model(PROFILES[version], (ImageSpec("hd0.img", "qcow2", 3 << 20),), machine="pc")
    assert m.execute("blockdev-add", {"driver": "compress", "node-name": "t1", "file": {
        "driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "hd0.img"}}}).ok
    assert m.execute("device_add", {"driver": "virtio-scsi", "id": "scsi1"}).ok
    assert m.execute("device_add", {"driver": "scsi-hd", "drive": "t1", "bus": "scsi1.0"}).ok
    assert m.execute("block_resize", {"node-name": "q", "size": (3 << 20) + 512}).ok
    m.query_named_block_nodes()   # 7.2: the length is read when asked for
    r = m.execute("human-monitor-command", {"command-line": 'qemu-io t1 "read 0 120"'})
    if fails:
        assert r.ret == ("Error: Cannot get 'write' permission without 'resize': "
                         "Image size is not a multiple of request alignment\r\n")
        assert r.stdout == ()
    else:
        assert r.ret == "" and r.stdout == ("read 120/120 bytes at offset 0",)


def test_a_patched_build_that_meets_the_expectation_is_fixed():
    """A finding trace whose QEMU side met the written expectation where the model (which
    predicts the bug for that version) did not: the build is fixed (a patched 10.0.13 build
    meets stream-failed-start-leaks-blockbackend's expectations, 2026-12-02)."""
    from fuzz import trace as T
    from fuzz.errors import ExpectationMismatch, ResultMismatch
    from fuzz.replaycmd import model_predicts_fixed_bug

    step = {"qmp": "block_resize", "args": {"node-name": "top", "size": 1024},
            "expect": {"return": {}}}
    finding = T.Trace("leak", [], [step], extra={"affects": ["10.0"]})
    plain = T.Trace("probe", [], [step])
    got = {"error": {"class": "GenericError", "desc": "Node top is in use"}}
    at_model = ExpectationMismatch(0, step, step["expect"], got, "model")
    at_qemu = ExpectationMismatch(0, step, step["expect"], got, "qemu")
    assert model_predicts_fixed_bug(finding, at_model)
    assert not model_predicts_fixed_bug(finding, at_qemu)     # the bug is there
    assert not model_predicts_fixed_bug(plain, at_model)      # a probe: the model is wrong
    assert not model_predicts_fixed_bug(finding, ResultMismatch(0, step, got, {"return": {}}, "reply"))


@pytest.mark.parametrize("version,guarded", [("7.2", True), ("10.0", False), ("11.1", False)])
def test_read_only_qcow2_open_over_an_iothread_node_is_guarded_on_7_2(version, guarded):
    """7.2.22 aborts on a read-only qcow2 open over a node in an iothread, even one that
    succeeds; read-write is fine (probed 2026-12-02)."""
    from models import KnownQemuBug

    for read_only in (True, False):
        m = Model(PROFILES[version], (ImageSpec("hd2.img", "qcow2", 512),), machine="pc")
        m.graph.guard_known_crashes = True
        assert m.execute("object-add", {"qom-type": "iothread", "id": "iothread1"}).ok
        assert m.execute("device_add", {"driver": "virtio-scsi", "id": "scsi0",
                                        "iothread": "iothread1"}).ok
        assert m.execute("blockdev-add", {"driver": "file", "node-name": "t0",
                                          "read-only": read_only, "filename": "hd2.img"}).ok
        assert m.execute("device_add", {"driver": "scsi-hd", "drive": "t0", "bus": "scsi0.0",
                                        "share-rw": True}).ok
        args = {"driver": "qcow2", "node-name": "r1", "file": "t0", "read-only": read_only}
        if guarded and read_only:
            with pytest.raises(KnownQemuBug):
                m.execute("blockdev-add", args)
        else:
            # read-write: no guard; the disk's write makes it a permission conflict
            r = m.execute("blockdev-add", args)
            assert r.ok if read_only else r.error.desc.startswith("Permission conflict on node 't0'")
