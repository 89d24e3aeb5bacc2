"""Runner(pipeline=True), as campaigns run: a step returns once QEMU has it, and is checked at
the next step or flush(); what a check finds is the step's it belongs to.  Real QEMU."""
from __future__ import annotations

import pytest

from fuzz.errors import GraphMismatch, QemuCrash, ResultMismatch
from fuzz.session import Session
from fuzz.statemachine import SEED_IMAGES
from models import blockdev


def hd(i: int) -> dict:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": {"driver": "file", "filename": f"hd{i}.img"}}


@pytest.mark.qemu
def test_a_step_in_flight_is_checked_by_the_next_one(qemu10):
    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        assert "qemu" not in r.observed[0]          # sent, not yet checked
        r.run({"qmp": "blockdev-add", "args": {"driver": "null-co", "node-name": "n1"}})
        assert r.observed[0]["qemu"] == {"return": {}} and "qemu" not in r.observed[1]
        r.flush()
        assert r.observed[1]["qemu"] == {"return": {}}
        assert [n["node-name"] for n in r.qemu_graph()] == [
            n["node-name"] for n in r.model_graph()] and len(r.qemu_graph()) == 3
        r.flush()   # nothing in flight: a no-op


@pytest.mark.qemu
def test_a_disagreement_is_the_steps_it_belongs_to(qemu10, monkeypatch):
    # a planted model fault: blockdev-del of hd0 "fails" in the model only
    real = blockdev.blockdev_del

    def mutant(g, args):
        real(g, args)
        raise blockdev.QmpFailure("mutant")

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        monkeypatch.setattr(blockdev, "blockdev_del", mutant)
        r.run({"qmp": "blockdev-del", "args": {"node-name": "hd0"}})   # sent: no error yet
        with pytest.raises(ResultMismatch) as info:
            r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})
        assert info.value.step_index == 1 and info.value.step["qmp"] == "blockdev-del"
        assert len(r.done) == 2    # the step behind it never ran


@pytest.mark.qemu
def test_a_graph_difference_is_found_at_flush(qemu10, monkeypatch):
    real = blockdev.blockdev_add

    def mutant(g, args, profile):
        real(g, args, profile)
        g.nodes["hd0"].read_only = True   # the model's graph drifts as the command succeeds

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        r.flush()
        monkeypatch.setattr(blockdev, "blockdev_add", mutant)
        r.run({"qmp": "blockdev-add", "args": {"driver": "null-co", "node-name": "n1"}})
        with pytest.raises(GraphMismatch) as info:
            r.flush()
        assert info.value.step_index == 1


@pytest.mark.qemu
@pytest.mark.parametrize("pipeline", [False, True])
def test_a_change_on_qemus_side_only_is_found_while_the_models_graph_is_unchanged(qemu10, pipeline):
    # both sides memoise an unchanged graph, and a pair found equal is not compared again:
    # QEMU's graph changing behind the model's back must still be a finding
    with Session(qemu10, SEED_IMAGES, pipeline=pipeline) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})
        r.flush()
        before = r.model_graph()
        s.qemu.execute("blockdev-add", {"driver": "null-co", "node-name": "n9"})   # QEMU only
        with pytest.raises(GraphMismatch) as info:
            r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})
            r.flush()      # (where a pipelined step is checked)
        assert info.value.step_index == 2 and r.model_graph() is before
        assert "n9" in str(info.value)


@pytest.mark.qemu
def test_a_crash_in_flight_is_the_crashing_steps(qemu10):
    import os
    import signal

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        r.flush()
        os.kill(s.qemu.pid, signal.SIGKILL)
        try:
            r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})   # the send may already fail
            with pytest.raises(QemuCrash) as info:
                r.flush()
        except QemuCrash as e:
            info = pytest.ExceptionInfo.from_exception(e)
        assert info.value.signal == signal.SIGKILL and r.observed[1]["qemu"].startswith("crash")
        s.discard()


@pytest.mark.qemu
def test_while_a_job_may_run_the_first_poll_goes_out_with_the_command(qemu10, monkeypatch):
    # QemuProcess.begin(): where a job may be running, query-jobs (the settle loop's first
    # poll) is written together with the command, and the graph query follows once the jobs
    # have settled; where none can be, the graph query goes with the command
    from fuzz.qmpsync import QmpSync

    writes: list[list[str]] = []
    real_send = QmpSync.send

    def send(self, calls):
        calls = list(calls)
        writes.append([name for name, _args in calls])
        return real_send(self, calls)

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": {"driver": "qcow2", "node-name": "hd1",
                                               "file": {"driver": "file", "filename": "hd1.img"}}})
        r.flush()
        monkeypatch.setattr(QmpSync, "send", send)
        # a job that waits in "pending" (settled) until it is finalized
        r.run({"qmp": "block-stream", "args": {"job-id": "s", "device": "hd1",
                                               "auto-finalize": False}})
        r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})   # fails; the job stays
        r.run({"qmp": "job-finalize", "args": {"id": "s"}})
        r.run({"qmp": "job-dismiss", "args": {"id": "s"}})
        r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})   # no job any more
        r.flush()
        assert [j["status"] for j in r.model.query_jobs()] == []
    steps = [w for w in writes if w[0] not in ("query-jobs", "query-named-block-nodes", "quit")]
    assert [w[0] for w in steps] == ["block-stream", "blockdev-del", "job-finalize", "job-dismiss",
                                     "blockdev-del"]
    # a job command: the poll behind it; any other command while a job exists: the poll and
    # the graph query behind it (the job was settled, so the graph query counts)
    assert [w[1:] for w in steps[:4]] == [["query-jobs"], ["query-jobs", "query-named-block-nodes"],
                                          ["query-jobs"], ["query-jobs"]]
    assert steps[4][1:] == ["query-named-block-nodes"]
    # each job command's graph query went on its own, after the jobs settled
    alone = [w for w in writes if w == ["query-named-block-nodes"]]
    assert len(alone) == 3


@pytest.mark.qemu
def test_a_graph_query_behind_a_poll_that_did_not_settle_is_dropped(qemu10, monkeypatch):
    # QemuProcess.begin(): behind a command that is no job command, with a job about, go the
    # settle loop's first poll and the graph query.  Where that poll finds a job unsettled
    # (planted here: its reply says "running"), QEMU ran the graph query at a moment that
    # depends on timing; it must not count, and the graph query goes again once the jobs
    # have settled.
    from fuzz.qmpsync import QmpSync

    writes: list[list[str]] = []
    real_send, real_receive = QmpSync.send, QmpSync.receive

    def send(self, calls):
        calls = list(calls)
        writes.append([name for name, _args in calls])
        return real_send(self, calls)

    def receive(self, sent, timeout=None):
        replies = real_receive(self, sent, timeout)
        if [name for _i, name in sent] == ["blockdev-del", "query-jobs", "query-named-block-nodes"]:
            poll = replies[1]
            replies[1] = {"return": [dict(j, status="running") for j in poll["return"]]}
            replies[2] = {"return": []}   # planted too: were it used, the graphs would differ
        return replies

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": {"driver": "qcow2", "node-name": "hd1",
                                               "file": {"driver": "file", "filename": "hd1.img"}}})
        r.run({"qmp": "block-stream", "args": {"job-id": "s", "device": "hd1",
                                               "auto-finalize": False}})
        r.flush()
        monkeypatch.setattr(QmpSync, "send", send)
        monkeypatch.setattr(QmpSync, "receive", receive)
        r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})
        r.flush()   # no GraphMismatch: the planted empty graph was dropped
        assert r.qemu_graph() == r.model_graph() != []
    assert writes[0] == ["blockdev-del", "query-jobs", "query-named-block-nodes"]
    assert writes[1:3] == [["query-jobs"], ["query-named-block-nodes"]]


@pytest.mark.qemu
def test_the_step_behind_is_predicted_first_and_a_decline_leaves_the_one_in_flight(qemu10, monkeypatch):
    # Runner.run(): a QMP step behind one in flight is predicted (model only) before the one
    # in flight is checked; a decline drops it and the one in flight stays in flight
    from models.errors import NotModeled

    order: list[str] = []
    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner
        real_execute, real_finish = r.model.execute, s.qemu.finish

        def execute(cmd, args):
            order.append(f"predict {cmd}")
            if cmd == "x-blockdev-change":
                raise NotModeled("planted")
            return real_execute(cmd, args)

        def finish(p):
            order.append(f"check {p.cmd}")
            return real_finish(p)

        monkeypatch.setattr(r.model, "execute", execute)
        monkeypatch.setattr(s.qemu, "finish", finish)
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        with pytest.raises(NotModeled):
            r.run({"qmp": "x-blockdev-change", "args": {"parent": "hd0"}})
        r.done.pop(), r.observed.pop()   # as the state machine drops a declined step
        assert "qemu" not in r.observed[0]   # still in flight
        r.run({"qmp": "blockdev-del", "args": {"node-name": "hd0"}})
        r.flush()
    assert order == ["predict blockdev-add", "predict x-blockdev-change", "predict blockdev-del",
                     "check blockdev-add", "check blockdev-del"]
    assert [o["qemu"] for o in r.observed] == [{"return": {}}, {"return": {}}]


@pytest.mark.qemu
def test_a_hang_in_flight_names_the_jobs_after_its_own_step(qemu10):
    # the model has run the step behind (a block-stream: a job) when the hang of the step in
    # flight comes out; the hang's jobs are those after its own step: none
    import os
    import signal

    from fuzz.errors import QemuHang

    with Session(qemu10, SEED_IMAGES, pipeline=True, timeout=1.0) as s:
        r = s.runner
        r.run({"qmp": "blockdev-add", "args": {"driver": "qcow2", "node-name": "hd1",
                                               "file": {"driver": "file", "filename": "hd1.img"}}})
        r.flush()
        os.kill(s.qemu.pid, signal.SIGSTOP)
        try:
            r.run({"qmp": "blockdev-del", "args": {"node-name": "nope"}})
            with pytest.raises(QemuHang) as info:
                r.run({"qmp": "block-stream", "args": {"job-id": "s", "device": "hd1",
                                                       "auto-finalize": False}})
            assert r.model.query_jobs() != []        # the model ran the stream
            assert info.value.step_index == 1 and info.value.jobs == ()
            assert len(r.done) == 2                  # the stream never went out
        finally:
            os.kill(s.qemu.pid, signal.SIGKILL)
            s.discard()


@pytest.mark.qemu
def test_a_crash_in_the_graph_query_comes_before_the_models_decline(qemu10):
    # corpus/findings/stream-concluded-query-segv (7.2, 10.0): after the stream, QEMU dies in
    # query-named-block-nodes, and the model declines to project that graph (a job filter
    # without its child).  Pipelined, the model's graph is worked out before QEMU answers;
    # its decline still waits until QEMU's query has run, so the crash is what is found.
    import os
    import signal

    from fuzz import trace as T

    ROOT = os.path.join(os.path.dirname(__file__), "..")
    tr = T.load(os.path.join(ROOT, "corpus", "findings", "stream-concluded-query-segv.json"))
    steps = [{k: v for k, v in s.items() if k not in ("expect", "observed")}
             for s in tr.steps if "qmp" in s]
    with Session(qemu10, tr.images, pipeline=True) as s:
        r = s.runner
        with pytest.raises(QemuCrash) as info:
            for step in steps:
                r.run(step)
            r.flush()
        assert info.value.signal == signal.SIGSEGV and info.value.step_index == 1
        s.discard()


@pytest.mark.qemu
def test_a_graph_the_model_cannot_project_after_qemu_ran_the_step_is_its_own_decline(qemu10, monkeypatch):
    # the model predicted the step, QEMU ran it, then the model declines to project its graph:
    # not an ordinary decline (that step would be dropped as if never run), but
    # DeclinedAfterQemu, still a NotModeled, with the model's decline as its cause; the step
    # stays in the trace
    from fuzz.engine import DeclinedAfterQemu
    from models.errors import NotModeled

    with Session(qemu10, SEED_IMAGES, pipeline=True) as s:
        r = s.runner

        def declines():
            raise NotModeled("planted: this graph")

        monkeypatch.setattr(r.model, "query_named_block_nodes", declines)
        r.run({"qmp": "blockdev-add", "args": hd(0)})
        with pytest.raises(DeclinedAfterQemu) as info:
            r.flush()
        assert isinstance(info.value, NotModeled) and str(info.value) == "planted: this graph"
        assert isinstance(info.value.__cause__, NotModeled)
        assert len(r.done) == 1 and r.observed[0]["qemu"] == {"return": {}}
