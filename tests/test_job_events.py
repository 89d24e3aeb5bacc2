"""The job event oracle without QEMU: the model's predicted JOB_STATUS_CHANGE / BLOCK_JOB_*
sequences, the fold of drain pauses, and the disagreement they raise.

Expected sequences are written from job.c and blockjob.c (10.2.0): ``job_create()`` ->
created, ``job_start()`` -> running, ``job_completed_txn_success_locked()`` -> waiting, pending
(BLOCK_JOB_PENDING only without auto-finalize), ``job_finalize_single_locked()`` ->
BLOCK_JOB_COMPLETED / _CANCELLED, then ``job_conclude_locked()`` -> concluded (and null with
auto-dismiss); a forced cancel sets -ECANCELED, and ``job_update_rc_locked()`` -> aborting.
``corpus/probes/job-events.json`` holds the same sequences and is replayed on real QEMUs."""
from __future__ import annotations

import os

import pytest

from fuzz import trace
from fuzz.errors import EventMismatch
from models import PROFILES, ImageSpec, Model, Write
from models.values import fold_job_events

ROOT = os.path.join(os.path.dirname(__file__), "..")
MiB = 1 << 20
IMAGES = (ImageSpec("hd2.img", "qcow2", 3 * MiB),
          ImageSpec("hd1.img", "qcow2", None, "hd2.img", "qcow2", writes=(Write(0xA1, MiB, MiB),)),
          ImageSpec("hd0.img", "qcow2", 3 * MiB, writes=(Write(0xA0, 0, MiB),)))


def _node(i, backing):
    return {"driver": "qcow2", "node-name": f"hd{i}", "backing": backing,
            "file": {"driver": "file", "node-name": f"hd{i}-file", "filename": f"hd{i}.img"}}


def _model(version="10.0"):
    m = Model(PROFILES[version], IMAGES)
    assert m.execute("blockdev-add", _node(0, _node(1, _node(2, None)))).ok
    return m


def sc(job, status):
    return f"JOB_STATUS_CHANGE {job} {status}"


@pytest.mark.parametrize("version", ["7.2", "10.0", "11.1"])
def test_active_commit_ready_then_complete(version):
    m = _model(version)
    r = m.execute("block-commit", {"job-id": "j", "device": "hd0"})
    assert r.events == (sc("j", "created"), sc("j", "running"), sc("j", "ready"), "BLOCK_JOB_READY commit j")
    r = m.execute("block-job-complete", {"device": "j"})
    assert r.events == (sc("j", "waiting"), sc("j", "pending"), "BLOCK_JOB_COMPLETED commit j",
                        sc("j", "concluded"), sc("j", "null"))


def test_without_auto_finalize_the_job_waits_in_pending_with_its_event():
    m = _model()
    r = m.execute("block-stream", {"job-id": "s", "device": "hd0", "auto-finalize": False})
    assert r.events == (sc("s", "created"), sc("s", "running"), sc("s", "waiting"), sc("s", "pending"),
                        "BLOCK_JOB_PENDING stream s")
    assert m.execute("job-finalize", {"id": "s"}).events == (
        "BLOCK_JOB_COMPLETED stream s", sc("s", "concluded"), sc("s", "null"))


def test_cancel_goes_from_aborting_to_concluded_and_dismiss_is_null():
    m = _model()
    assert m.execute("block-commit", {"job-id": "j", "device": "hd0", "auto-dismiss": False}).ok
    r = m.execute("job-cancel", {"id": "j"})
    assert r.events == (sc("j", "aborting"), "BLOCK_JOB_CANCELLED commit j", sc("j", "concluded"))
    assert m.execute("job-dismiss", {"id": "j"}).events == (sc("j", "null"),)


def test_a_refused_verb_and_a_command_without_jobs_emit_nothing():
    m = _model()
    assert m.execute("block-commit", {"job-id": "j", "device": "hd0"}).ok
    r = m.execute("job-finalize", {"id": "j"})
    assert r.error.desc == "Job 'j' in state 'ready' cannot accept command verb 'finalize'"
    assert r.events == ()
    assert m.execute("blockdev-add", {"driver": "null-co", "node-name": "n"}).events == ()


def test_a_job_start_that_fails_after_job_create_frees_its_job():
    # block_job_create() -> job_create() emits created; the start then fails and
    # job_early_fail() dismisses: null.  The events are what QEMU 7.2, 10.0 and 11.1 emitted
    # for the probe's block-commit (written into its expectation)
    tr = trace.load(os.path.join(ROOT, "corpus", "probes", "failed-commit-start-frees-its-job.json"))
    step = next(s for s in tr.steps if s.get("qmp") == "block-commit")
    assert step["expect"]["events"] == [sc("job0", "created"), sc("job0", "null")]
    m = Model(PROFILES["11.1"], tr.images)
    for s in tr.steps[:tr.steps.index(step)]:
        if "qmp" in s:
            m.execute(s["qmp"], s.get("args", {}))
    r = m.execute("block-commit", step["args"])
    assert r.error is not None
    assert list(r.events) == step["expect"]["events"]
    assert m.query_jobs() == []


def test_an_invalid_job_id_fails_before_the_job_exists():
    m = _model()
    r = m.execute("block-stream", {"job-id": "1bad", "device": "hd0"})
    assert r.error.desc == "Invalid job ID '1bad'"
    assert r.events == ()


def test_fold_drops_each_drain_pause_and_keeps_a_lasting_one():
    lines = [sc("a", "ready"), sc("a", "standby"), sc("b", "running"), sc("a", "ready"),
             sc("b", "paused"), sc("b", "running"), sc("a", "standby"), sc("c", "paused")]
    assert fold_job_events(lines) == (sc("a", "ready"), sc("b", "running"), sc("a", "standby"),
                                      sc("c", "paused"))
    # a pause that ends in another state is no drain's: both stay
    assert fold_job_events([sc("a", "paused"), sc("a", "aborting")]) == (sc("a", "paused"), sc("a", "aborting"))


def test_event_disagreements_are_told_apart_by_the_first_differing_event():
    step = {"qmp": "job-cancel", "args": {"id": "j"}}
    same = [sc("j", "aborting")]
    one = EventMismatch(3, step, same + ["BLOCK_JOB_CANCELLED commit j"], same + ["BLOCK_JOB_COMPLETED commit j"])
    two = EventMismatch(3, step, same + ["BLOCK_JOB_CANCELLED commit j"], same)
    assert one.signature() == "events:job-cancel:BLOCK_JOB_CANCELLED commit X|BLOCK_JOB_COMPLETED commit X"
    assert two.signature() == "events:job-cancel:BLOCK_JOB_CANCELLED commit X|<none>"
    # another job's id is the same bug
    other = EventMismatch(3, step, [sc("k", "aborting"), "BLOCK_JOB_CANCELLED commit k"],
                          [sc("k", "aborting"), "BLOCK_JOB_COMPLETED commit k"])
    assert other.signature() == one.signature()



def test_a_state_query_that_fails_is_a_finding_with_its_own_signature():
    # 7.2.22 once answered query-named-block-nodes with "Block device r0 is ejected" in a
    # campaign: a QEMU failure (kind "query"), not a harness error
    from fuzz.errors import Finding, HarnessError, QemuQueryFailed

    e = QemuQueryFailed("query-named-block-nodes", "Block device r0 is ejected")
    assert isinstance(e, Finding) and not isinstance(e, HarnessError)
    e.at_step(4, {"qmp": "blockdev-reopen"})
    assert str(e) == ("step 5 (blockdev-reopen): QEMU failed a state query: "
                      "query-named-block-nodes answered Block device r0 is ejected")
    assert e.signature() == QemuQueryFailed("query-named-block-nodes", "Block device r9 is ejected").signature()
