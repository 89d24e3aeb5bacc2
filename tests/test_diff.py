"""Differential mode (fuzz.diffengine, ``blockfuzz diff``, ``replay --qemu A --qemu B``).

The unit tests stand a model in for each build (``ModelBuild``: a model run as if it were QEMU),
so a divergence can be planted exactly; the QEMU tests run 7.2 against 10.0.  Expected values
come from the version profiles' documented flags, never from the output under test.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import qemu_binaries
from fuzz import trace as T
from fuzz.diffengine import (BuildMismatch, DiffRunner, DiffSession, SetAside, Side, build_label,
                             profile_set_aside, unpredicted)
from fuzz.engine import GraphMismatch, Runner
from fuzz.statemachine import SEED_IMAGES
from models import PROFILES, Model, NotModeled, Outcome
from models.query import project, query_named_block_nodes

ROOT = os.path.join(os.path.dirname(__file__), "..")
P72, P10 = PROFILES["7.2"], PROFILES["10.0"]


def hd(i, **kw):
    return dict({"driver": "qcow2", "node-name": f"hd{i}",
                 "file": {"driver": "file", "node-name": f"hd{i}-file", "filename": f"hd{i}.img"}}, **kw)


# --------------------------------------------------------------------------------------------
# the comparison, on plain values

def test_a_difference_the_models_predict_is_not_a_finding():
    qa, qb = {"ro": False}, {"ro": False, "active": True}
    assert unpredicted(qa, qb, dict(qa), dict(qb)) is None


def test_a_difference_the_models_do_not_predict_is_found():
    path, builds, models = unpredicted({"ro": False}, {"ro": True}, {"ro": False}, {"ro": False})
    assert path == ("ro",) and builds == ("false", "true") and models == ("false", "false")


def test_agreeing_builds_where_the_profiles_predict_a_difference_are_found():
    # a wrong profile flag: the models expect 10.0 to add a field that the build does not have
    hit = unpredicted({"ro": False}, {"ro": False}, {"ro": False}, {"ro": False, "active": True})
    assert hit is not None and hit[0] == ("active",)


def test_a_difference_of_the_wrong_value_is_found():
    # both differ at the same place, but not in the same way
    hit = unpredicted({"n": 1}, {"n": 2}, {"n": 1}, {"n": 3})
    assert hit is not None and hit[1] == ("1", "2")


def test_build_mismatch_signature_folds_names_and_numbers():
    def mm(node, size, aspect="graph"):
        return BuildMismatch(3, {"qmp": "blockdev-reopen"}, aspect, f"{node}/image/virtual-size",
                             ("7.2.22", "10.0.2"), (size, size + 512), "7.2.22")

    assert mm("hd1", 1024).signature() == mm("hd3", 65536).signature()
    assert mm("hd1", 1024).signature() != mm("hd1", 1024, "jobs").signature()
    unmodelled = BuildMismatch(3, {"qmp": "blockdev-reopen"}, "graph", "hd1/image/virtual-size",
                               ("7.2.22", "10.0.2"), (1, 2), None, declined="step 2 declined")
    assert unmodelled.signature() != mm("hd1", 1).signature()
    assert "7.2.22 agrees with its model" in str(mm("hd1", 1))
    assert "models out of the loop (step 2 declined)" in str(unmodelled)


def _rendered(model, profile):
    return project(query_named_block_nodes(model.graph, profile))


def _some_state(profile):
    m = Model(profile, SEED_IMAGES)
    for cmd, args in (("blockdev-add", hd(1, backing=hd(0))),
                      ("blockdev-add", {"driver": "raw", "node-name": "r1",
                                        "file": {"driver": "file", "filename": "hd2.img"}}),
                      ("object-add", {"qom-type": "throttle-group", "id": "group0"}),
                      ("blockdev-add", {"driver": "throttle", "node-name": "t0",
                                        "throttle-group": "group0", "file": "r1"})):
        assert m.execute(cmd, args).ok
    return m


@pytest.mark.parametrize("pa,pb", [(P72, P10), (P10, P72)])
def test_set_aside_covers_exactly_what_the_profiles_render_differently(pa, pb):
    aside = SetAside(profile_set_aside(pa, pb))
    ga, gb = _some_state(pa).query_named_block_nodes(), _some_state(pb).query_named_block_nodes()
    assert ga != gb   # the versions do report differently
    assert aside.apply(ga) == aside.apply(gb)
    # `active` is one of those fields because exactly one of the profiles has it
    assert pa.node_active_field != pb.node_active_field
    assert ("node", "*", ("active",)) in aside.patterns
    # a difference that is not the version's is still seen
    gb[0] = dict(gb[0], ro=not gb[0]["ro"])
    assert aside.apply(ga) != aside.apply(gb)


def test_same_profile_sets_nothing_aside():
    assert profile_set_aside(P10, P10) == frozenset()


def test_set_aside_applies_to_nested_images_by_format():
    # 10.0 shows format-specific on file nodes (file_format_specific), also as a filter's image
    assert P10.file_format_specific and not P72.file_format_specific
    aside = SetAside(profile_set_aside(P72, P10))
    fs = {"type": "file", "data": {}}
    node = {"node-name": "t0", "drv": "throttle", "image": {
        "format": "throttle", "backing-image": {"format": "file", "format-specific": fs}}}
    assert "format-specific" not in aside.apply([node])[0]["image"]["backing-image"]
    qcow2 = {"node-name": "hd0", "drv": "qcow2", "image": {"format": "qcow2", "format-specific": fs}}
    assert aside.apply([qcow2]) == [qcow2]


# --------------------------------------------------------------------------------------------
# the runner, with models standing in for the builds

class ModelBuild:
    """A stand-in for QEMU: a model, answering as a build of its profile would.  ``answers``
    gives a fixed reply for commands the model does not cover."""

    def __init__(self, profile, answers=None):
        self.model = Model(profile, SEED_IMAGES)
        self.answers = answers or {}

    def execute(self, cmd, args=None):
        if cmd in self.answers:
            return self.answers[cmd]
        return self.model.execute(cmd, args or {})

    def query_nodes(self):
        return query_named_block_nodes(self.model.graph, self.model.profile)

    def query_jobs(self):
        return self.model.query_jobs()


def diff_runner(model_profiles, builds):
    """Sides "A" and "B": a model of each profile beside its stand-in build."""
    sides = [Side(label, None, Runner(Model(p, SEED_IMAGES), b))
             for label, p, b in zip("AB", model_profiles, builds)]
    return DiffRunner(*sides)


STEPS = [{"qmp": "blockdev-add", "args": hd(1, backing=hd(0))},
         {"qmp": "blockdev-reopen", "args": {"options": [hd(1, backing=None, **{"read-only": True})]}},
         {"qmp": "human-monitor-command", "args": {"command-line": 'qemu-io hd1 "read -P 0xa1 1M 64k"'}},
         {"qmp": "blockdev-del", "args": {"node-name": "hd1"}}]


def test_builds_that_differ_as_their_profiles_say_pass():
    r = diff_runner((P72, P10), (ModelBuild(P72), ModelBuild(P10)))
    differed = 0
    for step in STEPS:
        r.run(step)
        a, b = (s.qemu.query_nodes() for s in r.sides)
        differed += a != b
    assert r.modelled
    assert differed   # they did differ (`active`), as predicted


def test_a_planted_profile_error_is_a_build_mismatch_naming_the_side_that_agrees():
    # build B is a 10.0, but its model is told it is a 7.2: B's `active` is not predicted
    r = diff_runner((P72, P72), (ModelBuild(P72), ModelBuild(P10)))
    with pytest.raises(BuildMismatch) as e:
        r.run(STEPS[0])
    assert e.value.aspect == "graph" and e.value.path.endswith("/active")
    assert e.value.agrees == "A" and e.value.role == "A"
    assert e.value.step_index == 0


def test_builds_agreeing_against_both_models_is_a_conformance_finding():
    # both models wrong the same way (both say 7.2, both builds are 10.0)
    r = diff_runner((P72, P72), (ModelBuild(P10), ModelBuild(P10)))
    with pytest.raises(GraphMismatch) as e:
        r.run(STEPS[0])
    assert str(e.value).startswith("A: ")


DEL = {"qmp": "device_del", "args": {"id": "disk0"}}


def test_a_declined_step_still_goes_to_both_builds_and_they_are_compared():
    with pytest.raises(NotModeled):
        Model(P72, SEED_IMAGES).execute(DEL["qmp"], DEL["args"])   # the model declines it
    err = Outcome.failure("Device 'disk0' not found", "DeviceNotFound")
    r = diff_runner((P72, P10), (ModelBuild(P72, {"device_del": err}),
                                 ModelBuild(P10, {"device_del": Outcome.success()})))
    r.run(STEPS[0])
    with pytest.raises(BuildMismatch) as e:
        r.run(DEL)
    assert e.value.aspect == "reply" and e.value.agrees is None and e.value.role == "unmodelled"
    assert e.value.expected == {"error": {"class": "DeviceNotFound", "desc": "Device 'disk0' not found"}}
    assert "declined" in e.value.declined and not r.modelled


def test_after_a_decline_version_fields_are_set_aside_and_the_rest_compared():
    same = Outcome.failure("Device 'disk0' not found", "DeviceNotFound")
    r = diff_runner((P72, P10), (ModelBuild(P72, {"device_del": same}),
                                 ModelBuild(P10, {"device_del": same})))
    r.run(DEL)
    assert not r.modelled
    r.run(STEPS[0])   # 10.0's `active` is no finding
    assert r.sides[0].qemu.query_nodes() != r.sides[1].qemu.query_nodes()
    # plant a real difference in build B: a read-only node
    planted = r.sides[1].qemu.model.execute(
        "blockdev-reopen", {"options": [hd(1, backing="hd0", **{"read-only": True})]})
    assert planted.ok
    with pytest.raises(BuildMismatch) as e:
        r.run({"qmp": "human-monitor-command", "args": {"command-line": 'qemu-io hd1 "read 0 512"'}})
    assert e.value.aspect == "graph" and e.value.path.endswith("/ro")


CANCELLED_COMMIT = (
    {"qmp": "blockdev-add", "args": {"driver": "qcow2", "node-name": "hd0",
                                     "file": {"driver": "file", "filename": "hd1.img"}}},
    {"qmp": "block-commit", "args": {"device": "hd0", "job-id": "job0", "auto-finalize": False}},
    {"qmp": "job-cancel", "args": {"id": "job0"}})


def _declined_then(model_profiles, steps):
    """A runner over a 7.2 and a 10.0 stand-in build, out of the loop after a declined step,
    that then runs ``steps``."""
    same = Outcome.failure("Device 'disk0' not found", "DeviceNotFound")
    builds = (ModelBuild(P72, {"device_del": same}), ModelBuild(P10, {"device_del": same}))
    r = diff_runner(model_profiles, builds)
    r.run(DEL)
    assert not r.modelled
    for step in steps:
        r.run(step)
    return r, builds


def test_after_a_decline_a_difference_both_models_predict_exactly_is_no_finding():
    """The models keep following the commands: 10.0 puts a cancelled active commit's base
    back to read-only, 7.2 leaves it read-write (active_commit_cancel_restores_ro)."""
    assert P10.active_commit_cancel_restores_ro and not P72.active_commit_cancel_restores_ro
    r, builds = _declined_then((P72, P10), CANCELLED_COMMIT)
    ro = [{n["node-name"]: n["ro"] for n in b.query_nodes()} for b in builds]
    assert ro[0] != ro[1]   # they did differ, as both models say


def test_after_a_decline_a_difference_the_models_predict_the_other_way_is_found():
    with pytest.raises(BuildMismatch) as e:
        _declined_then((P10, P72), CANCELLED_COMMIT)   # models swapped against the builds
    assert e.value.step_index == len(CANCELLED_COMMIT) and e.value.path.endswith("/ro")


class Dying(ModelBuild):
    """A stand-in build that dies of SIGSEGV on ``cmd``."""

    def __init__(self, profile, cmd, answers=None):
        super().__init__(profile, answers)
        self.cmd = cmd

    def execute(self, cmd, args=None):
        from fuzz.errors import QemuCrash

        if cmd == self.cmd:
            raise QemuCrash(cmd, -11)
        return super().execute(cmd, args)


def test_one_build_crashing_is_a_crash_finding_naming_it():
    from fuzz.errors import QemuCrash

    r = diff_runner((P72, P10), (ModelBuild(P72), Dying(P10, "blockdev-add")))
    with pytest.raises(QemuCrash) as e:
        r.run(STEPS[0])
    assert e.value.build == "B" and "(A did not)" in str(e.value)
    assert e.value.signature() == "crash:SIGSEGV:blockdev-add"   # as `run` names it


def test_both_builds_failing_alike_past_the_models_ends_the_example_without_a_finding():
    same = Outcome.failure("Device 'disk0' not found", "DeviceNotFound")
    r = diff_runner((P72, P10), (Dying(P72, "blockdev-add", {"device_del": same}),
                                 Dying(P10, "blockdev-add", {"device_del": same})))
    r.run(DEL)
    r.run(STEPS[0])
    assert "both builds died of SIGSEGV" in r.ended
    with pytest.raises(NotModeled):   # nothing more runs; the caller drops the step
        r.run(STEPS[1])
    # while the models are in the loop, the same double crash is a finding
    r = diff_runner((P72, P10), (Dying(P72, "blockdev-add"), Dying(P10, "blockdev-add")))
    with pytest.raises(AssertionError, match="SIGSEGV"):
        r.run(STEPS[0])


def test_a_known_bug_guard_of_model_b_drops_the_step_and_restores_model_a():
    """corpus/findings/qemu72-reopen-detached-entry-abort.json: 7.2 aborts on this reopen
    (VersionProfile.reopen_detached_entry_asserts), 10.0 answers it.  With A = 10.0, model A
    predicts the step before model B's guard refuses it; A must be put back."""
    assert P72.reopen_detached_entry_asserts and not P10.reopen_detached_entry_asserts
    tr = T.load(os.path.join(ROOT, "corpus", "findings", "qemu72-reopen-detached-entry-abort.json"))
    r = diff_runner((P10, P72), (ModelBuild(P10), ModelBuild(P72)))
    for m in r.models:
        m.graph.guard_known_crashes = True
    r.run(tr.steps[0])
    before = [(m.query_named_block_nodes(), set(m.graph.stuck)) for m in r.models]
    with pytest.raises(NotModeled, match="known QEMU"):
        r.run(tr.steps[1])
    assert [(m.query_named_block_nodes(), set(m.graph.stuck)) for m in r.models] == before
    assert r.modelled   # a guard is not a decline


# --------------------------------------------------------------------------------------------
# real QEMU: 7.2 against 10.0

@pytest.fixture(scope="module")
def pair():
    return qemu_binaries("7.2"), qemu_binaries("10.0")


def blockfuzz(*args):
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


@pytest.mark.qemu
def test_short_diff_campaign_is_clean(pair, tmp_path):
    r = blockfuzz("diff", "--qemu", pair[0].system, "--qemu", pair[1].system, "--examples", "5",
                  "--steps", "8", "--seed", "3", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    cov = json.load(open(tmp_path / "coverage.json"))
    assert cov["steps"] > 5 and cov["examples"] >= 5
    assert cov["builds"] == [build_label(pair[0]), build_label(pair[1])]
    assert "no findings" in r.stdout and "steps/s" in r.stdout


@pytest.mark.qemu
def test_planted_profile_divergence_is_caught_in_a_campaign(pair, tmp_path):
    """Build B (10.0) is given 7.2's profile: the first graph it shows differs from A's where
    its model does not expect it.  The finding replays clean on both builds with their real
    profiles, and the two-build replay prints a column each."""
    from hypothesis import Phase
    from hypothesis.stateful import run_state_machine_as_test

    from fuzz import statemachine as SM
    from fuzz.engine import Events
    from fuzz.findings import FindingWriter
    from helpers import campaign_settings

    bus = Events()
    bus.subscribe(FindingWriter(str(tmp_path), bus))
    cls = SM.machine_class(SM.MachineConfig(binaries=pair[0], diff=pair, diff_profiles=(None, P72),
                                            events=bus, timeout=5.0))
    with pytest.raises(BuildMismatch) as e:
        run_state_machine_as_test(cls, settings=campaign_settings(
            max_examples=5, stateful_step_count=4,
            phases=[Phase.generate], report_multiple_bugs=False))   # no shrinking: seconds
    assert e.value.agrees == build_label(pair[0])
    minimal = glob.glob(str(tmp_path / "build-*" / "minimal.json"))
    assert len(minimal) == 1
    r = blockfuzz("replay", "--qemu", pair[0].system, "--qemu", pair[1].system, minimal[0])
    assert r.returncode == 0, r.stdout + r.stderr
    line = r.stdout.strip()
    assert line.split()[-2:] == [f"{build_label(pair[0])}:PASS", f"{build_label(pair[1])}:PASS"]


def stream_then_disk():
    """A stream job on a node of a -M pc example (declined by the model: a ``speed``
    argument), then a disk on that node.  profiles.dataplane_op_blocker: 7.2 checks the node's op
    blockers when a scsi-hd is plugged (the job blocks it), 10.0 does not."""
    return T.Trace("stream-then-disk", list(SEED_IMAGES), [
        {"qmp": "blockdev-add", "args": hd(1, backing=hd(0))},
        {"qmp": "device_add", "args": {"driver": "virtio-scsi", "id": "scsi0"}},
        {"qmp": "block-stream", "args": {"device": "hd1", "job-id": "job0", "auto-finalize": False,
                                         "speed": 0}},
        {"qmp": "device_add", "args": {"driver": "scsi-hd", "drive": "hd1", "bus": "scsi0.0",
                                       "share-rw": True}},
    ], extra={"machine": "pc"})


@pytest.mark.qemu
def test_builds_answering_a_declined_step_differently_are_found_and_replay_in_columns(pair, tmp_path):
    assert P72.dataplane_op_blocker and not P10.dataplane_op_blocker
    tr = stream_then_disk()
    with DiffSession(pair, tr.images, machine=tr.machine) as d:
        with pytest.raises(BuildMismatch) as e:
            for step in tr.steps:
                d.runner.run(step)
    err = e.value
    assert err.step_index == 3 and err.aspect == "reply" and err.agrees is None
    assert d.runner.declined_at == 2   # the stream
    assert "busy" in err.expected["error"]["desc"] and err.actual == {"return": {}}
    path = tmp_path / "t.json"
    T.save(tr, str(path))
    # one build: the model cannot judge the trace alone (as today)
    one = blockfuzz("replay", "--qemu", pair[0].system, str(path))
    assert one.returncode == 2 and one.stdout.startswith("ERROR stream-then-disk: not covered by the model")
    both = blockfuzz("replay", "--qemu", pair[0].system, "--qemu", pair[1].system, str(path))
    assert both.returncode == 1, both.stdout + both.stderr
    cols = both.stdout.split(" | ")[0].split()
    assert cols == ["stream-then-disk", f"{build_label(pair[0])}:UNMODELLED",
                    f"{build_label(pair[1])}:UNMODELLED", "builds:DIFFER"]


@pytest.mark.qemu
def test_replay_columns_show_which_builds_a_known_bug_affects(pair):
    """The known bugs that one of the two versions has and the other not (their trace's
    ``affects``): one line each, FAIL in the affected build's column, PASS in the other."""
    labels = [build_label(b) for b in pair]
    short = ['.'.join(l.split('.')[:2]) for l in labels]
    findings = {}
    for p in sorted(glob.glob(os.path.join(ROOT, "corpus", "findings", "*.json"))):
        tr = json.load(open(p))
        if len(set(short) & set(tr["affects"])) == 1:
            findings[p] = tr
    assert len(findings) >= 2
    r = blockfuzz("replay", "--qemu", pair[0].system, "--qemu", pair[1].system, "--timeout", "1", *findings)
    lines = {l.split()[0]: l.split(" | ")[0].split()[1:] for l in r.stdout.strip().splitlines()}
    assert len(lines) == len(findings), r.stdout
    for tr in findings.values():
        want = [f"{l}:{'FAIL' if s in tr['affects'] else 'PASS'}" for l, s in zip(labels, short)]
        assert lines[tr["name"]] == want, (tr["name"], lines[tr["name"]])
    assert r.returncode == 1


def test_diff_needs_two_builds(tmp_path):
    r = blockfuzz("diff", "--qemu", "/nonexistent", "--examples", "1", "--out", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
