"""blockdev-create without QEMU: qmp_blockdev_create()'s checks, the create job's events and
errors, and the file and qcow2 creates.  Expected values from block/create.c, block/file-posix.c
and block/qcow2.c of 10.2 as probed on 7.2.22, 10.0.2 and 11.1.3; the iotest 206 seeds replay
them on real QEMU."""
from __future__ import annotations

import pytest

from models import PROFILES, ImageSpec, Model, NotModeled

M = 1 << 20


def sc(status):
    return f"JOB_STATUS_CHANGE c {status}"


def create(m, **opts):
    return m.execute("blockdev-create", {"job-id": "c", "options": opts})


def test_command_checks_come_before_the_job():
    m = Model(PROFILES["11.1"], [])
    r = create(m, driver="raw", size=M)
    assert r.error.desc == "Parameter 'options.size' is unexpected"
    assert create(m, driver="null-co").error.desc == "Driver does not support blockdev-create"
    assert create(m, driver="nope").error.desc == "Parameter 'driver' does not accept value 'nope'"
    assert create(m, driver="file", filename="a.img").error.desc == "Parameter 'options.size' is missing"
    assert create(m, driver="file", filename="a.img", size="1").error.desc == "Parameter 'options.size' expects uint64"
    r = m.execute("blockdev-create", {"job-id": "1x", "options": {"driver": "file", "filename": "a", "size": 0}})
    assert r.error.desc == "Invalid job ID '1x'" and r.events == ()


def test_a_file_create_is_a_job_that_waits_for_dismiss():
    m = Model(PROFILES["10.0"], [])
    r = create(m, driver="file", filename="new.img", size=1000)
    assert r.ok and r.events == (sc("created"), sc("running"), sc("waiting"), sc("pending"), sc("concluded"))
    assert m.query_jobs() == [{"id": "c", "type": "create", "status": "concluded"}]
    # no block job: the block-job-* verbs do not find it
    assert m.execute("block-job-pause", {"device": "c"}).error.desc == "Block job 'c' not found"
    assert m.execute("job-dismiss", {"id": "c"}).events == (sc("null"),)
    assert m.execute("blockdev-add", {"driver": "file", "node-name": "f", "filename": "new.img"}).ok
    size = {n["node-name"]: n["image"]["virtual-size"] for n in m.query_named_block_nodes()}["f"]
    assert size == 1024   # 1000 bytes on disk, a whole sector for the node


def test_a_failing_create_fails_the_job_not_the_command():
    m = Model(PROFILES["11.1"], [])
    r = create(m, driver="file", filename="nodir/x.img", size=M)
    assert r.ok and r.events == (sc("created"), sc("running"), sc("aborting"), sc("concluded"))
    assert m.query_jobs() == [{"id": "c", "type": "create", "status": "concluded",
                               "error": "Could not create 'nodir/x.img': No such file or directory"}]


def test_qcow2_create_over_a_file_node():
    m = Model(PROFILES["11.1"], [ImageSpec("e.img", "raw", 0)])
    assert m.execute("blockdev-add", {"driver": "file", "node-name": "f", "filename": "e.img"}).ok
    assert create(m, driver="qcow2", file="f", size=1234).ok
    assert m.query_jobs()[0]["error"] == "Image size must be a multiple of 512 bytes"
    assert m.execute("job-dismiss", {"id": "c"}).ok
    assert create(m, driver="qcow2", file="f", size=M, **{"cluster-size": 1234}).ok
    assert m.query_jobs()[0]["error"] == "Cluster size must be a power of two between 512 and 2048k"
    assert m.execute("job-dismiss", {"id": "c"}).ok
    assert create(m, driver="qcow2", file="f", size=M).ok
    assert "error" not in m.query_jobs()[0]
    assert m.execute("job-dismiss", {"id": "c"}).ok
    # header, refcount table and block, and an 8-byte L1 table: 196616 bytes, a sector more
    sizes = {n["node-name"]: n["image"]["virtual-size"] for n in m.query_named_block_nodes()}
    assert sizes["f"] == 197120
    assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": "f"}).ok
    # the two temporary qcow2 nodes took #block0 and #block1: the next auto name is #block2
    assert m.execute("blockdev-add", {"driver": "raw", "node-name": "r", "file": {
        "driver": "file", "filename": "e.img", "locking": "off", "read-only": True}}).ok
    assert "#block2" in {n["node-name"] for n in m.query_named_block_nodes()}


def test_a_file_create_under_an_open_qcow2_header_is_declined():
    # found by a 60 s campaign on 11.1.3: after a reopen moved ov1's file child to hd2.img,
    # a file create truncated hd0.img; QEMU's ov1 keeps the 512-byte virtual size it read
    # from hd0.img's header, the model's qcow2 length came from the truncated file (0)
    m = Model(PROFILES["11.1"], [ImageSpec("hd0.img", "qcow2", 512), ImageSpec("hd2.img", "qcow2", 512)])
    assert m.execute("blockdev-add", {"driver": "raw", "node-name": "hd1",
                                      "file": {"driver": "file", "filename": "hd2.img"}}).ok
    assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": "ov1",
                                      "file": {"driver": "file", "filename": "hd0.img"}}).ok
    assert m.execute("blockdev-reopen", {"options": [
        {"driver": "qcow2", "node-name": "ov1", "file": "#block0"}]}).ok
    with pytest.raises(NotModeled, match="an open qcow2 node holds its header from"):
        create(m, driver="file", filename="hd0.img", size=0)
    # nothing changed: the decline came before the truncate
    size = {n["node-name"]: n["image"]["virtual-size"] for n in m.query_named_block_nodes()}["ov1"]
    assert size == 512
