"""Reusing one QEMU across examples: QemuProcess.reset(), the auto-name offset, QemuPool, and
QEMU dying with its parent (PR_SET_PDEATHSIG).  Real QEMU throughout."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fuzz import trace as T
from fuzz.qemu import NodeNames, QemuProcess, ResetFailed, _canon, _canon_text
from fuzz.session import QemuPool, Session
from fuzz.statemachine import SEED_IMAGES

ROOT = os.path.join(os.path.dirname(__file__), "..")
SEEDS = sorted(glob.glob(os.path.join(ROOT, "corpus", "seeds", "*.json")))


def hd(i: int, **extra) -> dict:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": {"driver": "file", "filename": f"hd{i}.img"}, **extra}


def run(s: Session, cmd: str, args: dict | None = None):
    return s.runner.run({"qmp": cmd, "args": args or {}})


def raw(q: QemuProcess, cmd: str, args: dict | None = None):
    """A command straight to QEMU (no canonicalisation), for looking at the real state."""
    reply = q._call(cmd, args, None)
    assert "return" in reply, reply
    return reply["return"]


def user_objects(q: QemuProcess) -> list[str]:
    reply = q._call("qom-list", {"path": "/objects"}, None)
    if "error" in reply:   # 7.2: no /objects container before the first object
        assert reply["error"]["class"] == "DeviceNotFound"
        return []
    return [o["name"] for o in reply["return"]
            if o["type"].startswith("child<") and o["name"] != "qmp-monitor"]


# -- pure -------------------------------------------------------------------------------------

def test_offset_canonicalisation():
    assert _canon_text("#block1234 and #block517", 10) == "#block2 and #block517"  # 5 < 10: as is
    assert _canon({"a": ["#block1099"]}, 10) == {"a": ["#block0"]}
    names = NodeNames(offset=10)
    names.learn([{"node-name": "#block1042"}, {"node-name": "#block312"}, {"node-name": "hd1"}])
    assert names.real == {"#block0": "#block1042"}
    assert names.to_real("blockdev-del", {"node-name": "#block0"}) == {"node-name": "#block1042"}


# -- reset --------------------------------------------------------------------------------------

@pytest.mark.qemu
def test_reset_empties_qemu_and_auto_names_restart(any_qemu):
    with QemuPool() as pool:
        with Session(any_qemu, SEED_IMAGES, pool=pool) as s1:
            assert not s1.reused
            q = s1.qemu
            run(s1, "object-add", {"qom-type": "throttle-group", "id": "group0"})
            # hd1's header names hd0.img: auto-named backing and file nodes
            run(s1, "blockdev-add", hd(1))
            run(s1, "blockdev-add", {"driver": "throttle", "node-name": "t0",
                                     "throttle-group": "group0", "file": "hd1"})
            first = sorted(n["node-name"] for n in q.query_nodes())
            assert {"#block0", "#block1", "t0"} <= set(first)
            run(s1, "block-stream", {"device": "hd1", "job-id": "job0", "auto-finalize": False})
            assert [j["status"] for j in q.query_jobs()] == ["pending"]
            assert user_objects(q) == ["group0"]
            pid = q.pid

        with Session(any_qemu, SEED_IMAGES, pool=pool) as s2:
            q = s2.qemu
            assert s2.reused and q.pid == pid
            assert raw(q, "query-named-block-nodes") == []
            assert raw(q, "query-jobs") == []
            assert user_objects(q) == []
            assert q.name_offset > 0
            # the same example again: the model (fresh, counter from 0) must agree step by step
            run(s2, "object-add", {"qom-type": "throttle-group", "id": "group0"})
            run(s2, "blockdev-add", hd(1))
            run(s2, "blockdev-add", {"driver": "throttle", "node-name": "t0",
                                     "throttle-group": "group0", "file": "hd1"})
            assert sorted(n["node-name"] for n in q.query_nodes()) == first
            real = {n["node-name"] for n in raw(q, "query-named-block-nodes")}
            # QEMU's counter really moved on: canonical #block0 is a later real name
            assert q._names.real["#block0"] in real
            assert int(q._names.real["#block0"][len("#block"):-2]) == q.name_offset
            # and names go in translated: qemu-io on hd1's auto-named backing reads hd0's data
            g = s2.runner.model.graph
            backing = next(n for n, node in g.nodes.items() if node.auto_named and node.drv == "qcow2")
            out = run(s2, "human-monitor-command",
                      {"command-line": f'qemu-io {backing} "read -P 0xa0 0 64k"'})
            assert out.stdout == ("read 65536/65536 bytes at offset 0",)


@pytest.mark.qemu
def test_a_reset_after_an_example_without_jobs_or_objects_plans_from_its_last_graph(any_qemu, monkeypatch):
    batches: list[list[str]] = []
    real_batch = QemuProcess._batch

    def batch(self, calls):
        batches.append([c for c, _a in calls])
        return real_batch(self, calls)

    monkeypatch.setattr(QemuProcess, "_batch", batch)
    with QemuPool() as pool:
        with Session(any_qemu, SEED_IMAGES, pool=pool) as s1:
            run(s1, "blockdev-add", hd(1))            # with auto-named children
            run(s1, "blockdev-add", {"driver": "raw", "node-name": "r", "file": "hd1"})
            run(s1, "blockdev-del", {"node-name": "nope"})
        batches.clear()
        with Session(any_qemu, SEED_IMAGES, pool=pool) as s2:
            q = s2.qemu
            assert s2.reused
            # one batch, no first look; it ends with the looks that check the result
            assert len(batches) == 1 and batches[0][0] == "blockdev-del"
            assert batches[0][-3:] == ["query-named-block-nodes", "qom-list", "query-jobs"]
            assert raw(q, "query-named-block-nodes") == [] and raw(q, "query-jobs") == []
            # a node QEMU got behind the harness's back after the last graph reply: the plan
            # misses it, the final look sees it, and the reset goes step by step
            run(s2, "blockdev-add", hd(0))
            assert q._qmp.cmd("blockdev-add", {"driver": "null-co", "node-name": "extra"}) == {"return": {}}
        with Session(any_qemu, SEED_IMAGES, pool=pool) as s3:
            q = s3.qemu
            assert s3.reused
            assert raw(q, "query-named-block-nodes") == []


@pytest.mark.qemu
def test_images_are_replaced_between_examples(qemu10):
    with QemuPool() as pool:
        with Session(qemu10, SEED_IMAGES, pool=pool) as s1:
            run(s1, "blockdev-add", hd(0))
            run(s1, "human-monitor-command",
                {"command-line": 'qemu-io hd0 "write -P 0x55 0 64k"'})
            workdir = s1.workdir
        with Session(qemu10, SEED_IMAGES, pool=pool) as s2:
            assert s2.reused and s2.workdir == workdir
            run(s2, "blockdev-add", hd(0))
            # the write of the first example is gone: hd0 has the seed's pattern again
            out = run(s2, "human-monitor-command",
                      {"command-line": 'qemu-io hd0 "read -P 0xa0 0 64k"'})
            assert out.stdout == ("read 65536/65536 bytes at offset 0",)


@pytest.mark.qemu
def test_a_reset_that_cannot_empty_qemu_fails_and_the_pool_starts_afresh(any_qemu):
    with QemuPool() as pool:
        with Session(any_qemu, SEED_IMAGES, pool=pool) as s1:
            # a legacy drive: its node belongs to a BlockBackend, blockdev-del cannot take it
            raw(s1.qemu, "human-monitor-command",
                {"command-line": "drive_add 0 if=none,id=d0,driver=null-co"})
            q1, pid = s1.qemu, s1.qemu.pid
        with pytest.raises(ResetFailed, match="cannot empty"):
            q1.reset()
        with pytest.raises(Exception, match="could not be reset"):
            q1.execute("query-version")
        with Session(any_qemu, SEED_IMAGES, pool=pool) as s2:
            # the pool's reset failed the same way: a fresh QEMU, and the old one is gone
            assert not s2.reused and s2.qemu.pid != pid
            assert pool.stats["reset-failed"] == 1
            assert raw(s2.qemu, "query-named-block-nodes") == []
            assert s2.qemu.name_offset == 0
        assert q1._closed and q1._proc.poll() is not None


@pytest.mark.qemu
def test_a_failed_session_is_not_reused(qemu10):
    with QemuPool() as pool:
        with pytest.raises(RuntimeError):
            with Session(qemu10, SEED_IMAGES, pool=pool) as s1:
                pid = s1.qemu.pid
                raise RuntimeError("example failed")
        with Session(qemu10, SEED_IMAGES, pool=pool) as s2:
            assert not s2.reused and s2.qemu.pid != pid


def _replay(tr, binaries, pool) -> Session:
    with Session(binaries, tr.images, timeout=5.0, machine=tr.machine, pool=pool) as s:
        for step in tr.steps:
            s.runner.run(step)
    return s


@pytest.mark.qemu
def test_seed_corpus_replays_twice_on_one_pooled_qemu(any_qemu):
    traces = [t for t in map(T.load, SEEDS) if t.machine == "none"]
    assert len(traces) >= 15
    with QemuPool() as pool:
        for _ in range(2):
            for tr in traces:
                _replay(tr, any_qemu, pool)   # raises on any disagreement
        assert pool.stats["started"] == 1 and pool.stats["reset-failed"] == 0
        assert pool.stats["reused"] == 2 * len(traces) - 1


@pytest.mark.qemu
def test_prestart_boots_the_next_qemu_while_an_example_runs(qemu10):
    tr = T.load(next(p for p in SEEDS if p.endswith("test_iothreads_switch_backing.json")))
    assert tr.machine == "pc"
    with QemuPool(prestart=True) as pool:
        for _ in range(2):
            _replay(tr, qemu10, pool)
        assert pool.stats["started"] == 1 and pool.stats["prestarted"] == 1
        spare = next(iter(pool._spare.values()))[0]
    assert spare._proc.poll() is not None   # close() killed the spare too


@pytest.mark.qemu
def test_a_pc_qemu_is_reused_only_after_an_example_without_devices(any_qemu):
    with QemuPool(prestart=True) as pool:
        # 1: blockdev and an iothread only -> kept, reset, reused
        with Session(any_qemu, SEED_IMAGES, machine="pc", pool=pool) as s1:
            run(s1, "blockdev-add", hd(0))
            run(s1, "object-add", {"qom-type": "iothread", "id": "io0"})
            pid = s1.qemu.pid
        with Session(any_qemu, SEED_IMAGES, machine="pc", pool=pool) as s2:
            assert s2.reused and s2.qemu.pid == pid
            assert raw(s2.qemu, "query-named-block-nodes") == []
            assert user_objects(s2.qemu) == ["pc.ram"]   # the iothread went, the machine's RAM stays
            # 2: a virtio-scsi controller (a PCI device: its unplug waits for the guest) ->
            # dropped, although the example went well
            run(s2, "device_add", {"driver": "virtio-scsi", "id": "scsi0"})
        with Session(any_qemu, SEED_IMAGES, machine="pc", pool=pool) as s3:
            assert not s3.reused and s3.qemu.pid != pid
            # 3: a controller that failed (no such iothread) left no device -> kept
            out = run(s3, "device_add", {"driver": "virtio-scsi", "id": "scsi0", "iothread": "nope"})
            assert out.error is not None and not s3.runner.model.graph.devices
            pid3 = s3.qemu.pid
        with Session(any_qemu, SEED_IMAGES, machine="pc", pool=pool) as s4:
            assert s4.reused and s4.qemu.pid == pid3
            # the same controller id works again: nothing of the failed one is left
            assert run(s4, "device_add", {"driver": "virtio-scsi", "id": "scsi0"}).error is None
        assert pool.stats["reused"] == 2 and pool.stats["discarded"] == 0


@pytest.mark.qemu
def test_the_reset_refuses_a_qemu_with_a_guest_device(qemu10, tmp_path):
    # Session._reusable keeps such a QEMU out of the pool; the reset checks it all the same
    with QemuProcess(qemu10, tmp_path, machine="pc") as q:
        raw(q, "device_add", {"driver": "virtio-scsi"})
        with pytest.raises(ResetFailed, match=r"guest devices .*: device\[0\]"):
            q.reset()


@pytest.mark.qemu
def test_a_lazy_session_gets_its_qemu_at_its_first_step(qemu10):
    # Session(lazy=True), as the campaign's examples: an example that draws no step (a
    # quarter to a third of them) costs no QEMU, no images and no reset
    with QemuPool() as pool:
        with Session(qemu10, SEED_IMAGES, pool=pool) as first:   # asks QEMU for the profile
            pid = first.qemu.pid
        with Session(qemu10, SEED_IMAGES, pool=pool, lazy=True) as idle:
            assert not idle.started and idle.runner.qemu is None and idle.workdir is None
            assert idle.runner.model.profile.name == "10.0"
        assert pool.stats["reused"] == 0          # the idle example did not take the QEMU
        with Session(qemu10, SEED_IMAGES, pool=pool, lazy=True) as s:
            assert not s.started
            s.start()
            assert s.started and s.runner.qemu is s.qemu and s.reused and s.qemu.pid == pid
            assert run(s, "blockdev-add", hd(0)).error is None
            s.start()                             # idempotent
            assert s.qemu.pid == pid
        assert pool.stats["reused"] == 1


# -- dying with the parent ----------------------------------------------------------------------

@pytest.mark.qemu
def test_qemu_dies_when_its_parent_is_killed(qemu10, tmp_path):
    child = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from fuzz.qemufetch import resolve_qemu
        from fuzz.qemu import QemuProcess
        q = QemuProcess(resolve_qemu({str(qemu10.system)!r}), {str(tmp_path)!r}).start()
        print(q.pid, flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline())
    try:
        # the pid is QEMU's own (wrapper, unshare and ld.so all exec)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"qemu-system-x86_64" in f.read()
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
