"""Campaigns as a nightly job runs them: honest exit codes, clean stops, workers, a shared
Redis database, signatures that tell bugs apart, and known bugs reported as known.

Campaigns run as subprocesses (``blockfuzz run``) where signals, exit codes and left-over
processes are what is tested; a planted model bug (a "mutant", installed by a small driver
script before ``fuzz.cli.main`` runs) gives them something to find on a real QEMU."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest

from fuzz import trace as T
from fuzz.engine import Events
from fuzz.errors import QemuCrash, abort_text
from fuzz.findings import FailureSeen, FindingWriter, KnownBugs, distinct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

#: a driver that plants a wrong model rule (every successful blockdev-del is refused by the
#: model) and then runs the command line; QEMU is real
MUTANT_DRIVER = textwrap.dedent("""
    import sys
    from models import blockdev
    real = blockdev.blockdev_del
    def mutant(g, args):
        real(g, args)
        raise blockdev.QmpFailure("mutant: node cannot be deleted")
    if sys.argv[1] == "mutant":
        blockdev.blockdev_del = mutant
    from fuzz.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def driver(tmp_path) -> str:
    path = tmp_path / "driver.py"
    path.write_text(MUTANT_DRIVER)
    return str(path)


def env_for(tmp_path) -> dict:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=ROOT)


def run_cli(tmp_path, *args, mutant=False, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, driver(tmp_path), "mutant" if mutant else "plain", *args],
                          cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip() and "Warning" not in l
             and not l.startswith("  warnings.warn")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("blockfuzz: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2 (the table of the nightly-campaigns issue)

@pytest.mark.parametrize("args, says", [
    (["--timeout", "0", "--time", "3"], "--timeout 0: must be > 0"),
    (["--time", "-1"], "--time -1: must be > 0"),
    (["--time", "soon"], "--time 'soon': not a number"),
    (["--examples", "0"], "--examples 0: must be >= 1"),
    (["--steps", "0", "--time", "3"], "--steps 0: must be >= 1"),
    (["--workers", "0", "--time", "3"], "--workers 0: must be >= 1"),
    (["--out", "/proc/forbidden", "--time", "3"], "--out /proc/forbidden: cannot write findings there"),
    (["--junit", "/proc/nope/x.xml", "--time", "3"], "--junit /proc/nope/x.xml: directory"),
    (["--database", "redis://127.0.0.1:1/0", "--time", "3"], "cannot reach Redis at 127.0.0.1:1"),
    (["--database", "mysql://x", "--time", "3"], "bad --database 'mysql://x'"),
    (["--known-bugs", "/nonexistent", "--time", "3"], "--known-bugs /nonexistent: not a directory"),
])
def test_bad_option_is_one_line_and_exit_2(tmp_path, args, says):
    r = run_cli(tmp_path, "run", "--out", str(tmp_path / "out"), *args, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert says in one_error_line(r)
    assert "no findings" not in r.stdout


@pytest.mark.qemu   # the fetched qemu-img beside it
def test_not_a_qemu_is_one_line_and_exit_2(tmp_path):
    r = run_cli(tmp_path, "run", "--qemu", "/bin/ls", "--time", "3", "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "/bin/ls is not a QEMU system emulator" in one_error_line(r)


@pytest.mark.qemu
def test_qemu_that_never_starts_is_a_harness_error_not_a_green_run(qemu10, tmp_path):
    """The false green: a QEMU that answers -version but dies at start-up used to become "no
    findings".  Every example fails to start: exit 2, one line, no shrinking."""
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text(f"#!/bin/sh\ncase \"$1\" in -version|-help|-object) exec {qemu10.system} \"$@\";; esac\n"
                    "echo 'qemu: could not load PC BIOS' >&2; exit 1\n")
    fake.chmod(0o755)
    t = time.monotonic()
    r = run_cli(tmp_path, "run", "--qemu", str(fake), "--time", "20", "--workers", "1",
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "harness error: QEMU did not become ready" in one_error_line(r)
    assert time.monotonic() - t < 15    # stopped at once, not at the end of --time
    assert "no findings" not in r.stdout


@pytest.mark.qemu
def test_campaign_that_runs_no_step_is_exit_2(qemu10, tmp_path):
    """Every step declined by the model (a planted decline): nothing was checked."""
    drv = tmp_path / "decline.py"
    drv.write_text(textwrap.dedent("""
        import sys
        import models.model as M
        from models.errors import NotModeled
        def declined(self, cmd, args=None):
            raise NotModeled("planted: every step declined")
        M.Model.execute = declined
        from fuzz.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    r = subprocess.run([PY, str(drv), "run", "--qemu", qemu10.system, "--examples", "5",
                        "--workers", "1", "--out", str(tmp_path / "o")],
                       cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "executed no step" in one_error_line(r)


# --------------------------------------------------------------------------------------------
# signals: stop within 2 s, leave nothing behind, keep findings and reports

def qemu_pids_under(root: str) -> set[int]:
    """QEMU processes whose working directory is under ``root`` (every work directory of a
    campaign is, through $TMPDIR)."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if cwd.startswith(root) and b"qemu-system" in cmd:
            found.add(int(pid))
    return found


#: the mutant driver, with the post-processing held in its first replay's session (its QEMU
#: and work directory exist) until the test signals
SLOW_POST_DRIVER = MUTANT_DRIVER.replace("from fuzz.cli import main", textwrap.dedent("""
    import os, time
    from fuzz import runcmd, session
    real_post, real_enter = runcmd._post_process, session.Session.__enter__
    post = []
    def slow_post(*a, **kw):
        post.append(1)
        return real_post(*a, **kw)
    def enter(self):
        out = real_enter(self)
        if post:   # as if in the session's with-body, which the stop unwinds
            open(os.environ["MARKER"], "w").close()
            try:
                time.sleep(60)
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return out
    runcmd._post_process, session.Session.__enter__ = slow_post, enter
    from fuzz.cli import main"""))


@pytest.mark.qemu
def test_sigterm_during_post_processing_stops_it_cleanly(qemu10, tmp_path):
    """A scheduler's SIGTERM after the campaign, while a finding is minimized: it stops within
    seconds, the status is what the findings call for, and no QEMU and no temp dir is left
    (before, the post-processing had no handler: SIGTERM killed it where it stood)."""
    (tmp_path / "slow.py").write_text(SLOW_POST_DRIVER)
    env = dict(env_for(tmp_path), MARKER=str(tmp_path / "marker"))
    tmp = env["TMPDIR"]
    p = subprocess.Popen([PY, str(tmp_path / "slow.py"), "mutant", "run", "--qemu", qemu10.system,
                          "--examples", "40", "--workers", "1", "--seed", "5",
                          "--out", str(tmp_path / "out")],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(env["MARKER"]) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.path.exists(env["MARKER"]), p.communicate(timeout=30)
    assert qemu_pids_under(tmp), "the replay's QEMU should be running"
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=30)
    assert time.monotonic() - t < 2.0, (stdout, stderr)
    assert p.returncode == 1, (p.returncode, stdout, stderr)    # the mutant's finding is new
    assert "post-processing stopped by SIGTERM" in stdout and "stopped by SIGTERM" in stdout
    assert glob.glob(str(tmp_path / "out" / "result-*" / "minimal.json"))
    assert qemu_pids_under(tmp) == set()
    assert os.listdir(tmp) == [], os.listdir(tmp)


@pytest.mark.qemu
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_signal_stops_a_two_worker_campaign_cleanly(qemu10, tmp_path, how):
    out = tmp_path / "out"
    env = env_for(tmp_path)
    tmp = env["TMPDIR"]
    p = subprocess.Popen([PY, driver(tmp_path), "mutant", "run", "--qemu", qemu10.system,
                          "--time", "120", "--workers", "2", "--seed", "1", "--out", str(out),
                          "--junit", str(tmp_path / "r.xml"), "--json", str(tmp_path / "r.json")],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    # wait until both workers run QEMU and the mutant has been found
    while time.monotonic() < deadline:
        seen |= qemu_pids_under(tmp)
        if len(seen) >= 2 and glob.glob(str(out / "result-*" / "first.json")):
            break
        time.sleep(0.2)
    assert glob.glob(str(out / "result-*" / "first.json")), "the mutant was not found in time"
    time.sleep(1.0)
    seen |= qemu_pids_under(tmp)
    t = time.monotonic()
    if how == "SIGINT":    # Ctrl-C: the terminal signals the whole foreground process group
        os.killpg(p.pid, signal.SIGINT)
    else:                  # a scheduler's kill: the campaign process only
        p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=30)
    took = time.monotonic() - t
    assert took < 2.0, (took, stdout, stderr)
    assert p.returncode == 1, (p.returncode, stdout, stderr)    # the findings so far call for 1
    assert f"stopped by {how}" in stdout
    assert not [pid for pid in seen if os.path.exists(f"/proc/{pid}")
                and b"qemu-system" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert qemu_pids_under(tmp) == set()
    assert os.listdir(tmp) == [], os.listdir(tmp)        # no temp dir or file left
    assert not [f for f in glob.glob(str(out / "**"), recursive=True) if ".tmp-" in f]
    report = json.load(open(tmp_path / "r.json"))
    assert report["stopped-by"] == how and report["workers"] == 2
    assert report["counts"]["new"] >= 1 and report["exit-status"] == 1
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert int(suite.get("failures")) == report["counts"]["new"]
    for f in report["findings"]:
        assert os.path.exists(os.path.join(f["folder"], "minimal.json"))


# --------------------------------------------------------------------------------------------
# workers and a shared Redis database

@pytest.mark.qemu
def test_two_workers_and_redis_share_failures(qemu10, tmp_path, redis_server):
    """Two workers find the planted bug once (one folder, one signature); a second campaign on
    the same Redis that only replays the database (--profile repro) finds it too, and one on
    an empty Redis database executes nothing (exit 2)."""
    r = run_cli(tmp_path, "run", "--qemu", qemu10.system, "--examples", "60", "--workers", "2",
                "--seed", "5", "--out", str(tmp_path / "a"), "--database", redis_server,
                "--json", str(tmp_path / "a.json"), mutant=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    report = json.load(open(tmp_path / "a.json"))
    assert report["workers"] == 2 and report["counts"]["examples"] >= 2
    sigs = [f["signature"] for f in report["findings"]]
    assert len(sigs) == len(set(sigs)) >= 1
    assert len(glob.glob(str(tmp_path / "a" / "result-*"))) == len(sigs)
    again = run_cli(tmp_path, "run", "--qemu", qemu10.system, "--profile", "repro",
                    "--workers", "1", "--out", str(tmp_path / "b"), "--database", redis_server,
                    "--json", str(tmp_path / "b.json"), mutant=True)
    assert again.returncode == 1, (again.stdout, again.stderr)
    replayed = json.load(open(tmp_path / "b.json"))
    assert {f["signature"] for f in replayed["findings"]} & set(sigs)
    empty = redis_server.rsplit("/", 1)[0] + "/5"
    none = run_cli(tmp_path, "run", "--qemu", qemu10.system, "--profile", "repro",
                   "--workers", "1", "--out", str(tmp_path / "c"), "--database", empty, mutant=True)
    assert none.returncode == 2, (none.stdout, none.stderr)
    assert "executed no step" in one_error_line(none)


# --------------------------------------------------------------------------------------------
# signatures and known bugs

def corpus(name: str) -> T.Trace:
    return T.load(os.path.join(ROOT, "corpus", "findings", name + ".json"))


def failure(tr: T.Trace, binaries) -> BaseException:
    from fuzz.minimize import failure_of

    bare = T.Trace(tr.name, tr.images, [{k: v for k, v in s.items() if k not in ("expect", "observed")}
                                        for s in tr.steps if "qmp" in s], "", dict(tr.extra))
    # the timeout the signatures were recorded with (bench/finding_signatures.py): a shorter one
    # under a loaded machine turns a slow command into a hang at the wrong step
    err = failure_of(bare, binaries, 5.0)
    assert err is not None, tr.name
    return err


@pytest.mark.qemu
def test_two_real_crashes_of_one_command_are_two_findings(tmp_path):
    """On 7.2 blockdev-reopen dies two ways (corpus/findings): SIGSEGV and an assertion.  They
    get two signatures, two folders, and two exception types for Hypothesis."""
    from conftest import qemu_binaries
    from hypothesis.internal.escalation import InterestingOrigin

    q72 = qemu_binaries("7.2")
    segv = failure(corpus("reopen-closes-queued-node-segv"), q72)
    abort = failure(corpus("qemu72-reopen-detached-entry-abort"), q72)
    assert segv.step["qmp"] == abort.step["qmp"] == "blockdev-reopen"
    assert isinstance(segv, QemuCrash) and isinstance(abort, QemuCrash)
    assert segv.signature() != abort.signature()
    assert "SIGSEGV" in segv.signature() and "SIGABRT" in abort.signature()
    assert "quiesce_counter > 0" in abort.signature() and ":4" not in abort.signature()
    writer = FindingWriter(str(tmp_path), Events())
    folders = {writer.record(FailureSeen(e, T.Trace("x", [], []), e.signature(), "7.2")).folder
               for e in (segv, abort)}
    assert len(folders) == 2
    origins = set()
    for e in (segv, abort):
        try:
            raise distinct(e, e.signature())
        except QemuCrash as raised:
            origins.add(InterestingOrigin.from_exception(raised))
    assert len(origins) == 2


@pytest.mark.qemu
def test_recorded_signatures_are_what_a_campaign_sees(any_qemu):
    """Each corpus finding records, per affected version, the signature its replay shows
    without its written expectations: the known-bug table is only as good as these."""
    from fuzz.session import Session

    with Session(any_qemu, ()) as s:
        version = s.profile.name
    checked = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "corpus", "findings", "*.json"))):
        tr = T.load(path)
        recorded = tr.extra.get("signature", {}).get(version)
        if recorded is None or version in tr.extra.get("intermittent", ()):
            continue
        seen = failure(tr, any_qemu).signature()
        assert seen == recorded, f"{tr.name}: {seen}"
        checked += 1
    assert checked >= 3


def test_known_bug_table_knows_listed_versions_and_flags_regressions(tmp_path):
    tr = T.Trace("bug", [], [], "", {"affects": ["10.0"], "signature": {"10.0": "crash:SIGSEGV:x"}})
    T.save(tr, str(tmp_path / "bug.json"))
    known = KnownBugs.from_corpus(str(tmp_path))
    assert known.lookup("crash:SIGSEGV:x", "10.0") == ("bug", None)
    assert known.lookup("crash:SIGSEGV:x", "11.1") == (None, "bug")
    assert known.lookup("crash:SIGSEGV:y", "10.0") == (None, None)
    # an intermittent bug records both of its ways on a version
    T.save(T.Trace("race", [], [], "", {"affects": ["10.0"], "intermittent": ["10.0"],
                                        "signature": {"10.0": ["hang:x", "crash:SIGABRT:y"]}}),
           str(tmp_path / "race.json"))
    known = KnownBugs.from_corpus(str(tmp_path))
    assert known.lookup("hang:x", "10.0") == known.lookup("crash:SIGABRT:y", "10.0") == ("race", None)


def test_a_graph_signature_folds_node_names_and_backing_image_chains():
    """One model fault, four places it showed in a 10.0.2 campaign: one signature.  Another
    field, another command or a different node list is another signature."""
    from fuzz.errors import GraphMismatch

    step = {"qmp": "human-monitor-command", "args": {}}

    def sig(detail, s=step):
        return GraphMismatch(3, s, [], [], detail).signature()

    four = {sig(d + ": 1441792 vs 1376256") for d in (
        "cor0/image/virtual-size", "hd4/image/backing-image/virtual-size",
        "bd/image/backing-image/virtual-size", "t1/image/backing-image/backing-image/virtual-size")}
    assert four == {"graph:human-monitor-command:NODE/image/virtual-size"}
    assert sig("cor0/image/actual-size: 1 vs 2") != sig("cor0/image/virtual-size: 1 vs 2")
    assert sig("cor0/ro: True vs False", {"qmp": "blockdev-reopen"}) == \
        "graph:blockdev-reopen:NODE/ro"
    assert sig("node list ['hd0'] vs []") == "graph:human-monitor-command:node list ['X'] vs []"
    assert sig("query-jobs") == "graph:human-monitor-command:query-jobs"


def test_abort_text_drops_paths_line_numbers_and_addresses():
    a = abort_text("warning: x\nqemu-system-x86_64: ../../block.c:4659: bdrv_reopen_multiple: "
                   "Assertion `bs->x > 0' failed.\n")
    b = abort_text("/usr/bin/qemu-system-x86_64: ../block.c:4702: bdrv_reopen_multiple: "
                   "Assertion `bs->x > 0' failed.\n")
    assert a == b == "block.c: bdrv_reopen_multiple: Assertion `bs->x > 0' failed."
    assert abort_text("ERROR:../util/a.c:12:f: code should not be reached at 0x7f00ab") == \
        "ERROR:util/a.c:f: code should not be reached at 0xN"
    assert abort_text("just a warning\n") == ""


@pytest.mark.qemu
def test_known_bug_is_known_on_its_version_and_a_regression_elsewhere(qemu10, tmp_path):
    """The planted bug's finding, listed as a known bug of 10.0: the campaign counts it as
    known and exits 0; listed for 7.2 only, it is a regression on 10.0 and exits 1."""
    # 6 steps an example (the planted bug needs 2): a third less shrinking than the default
    first = run_cli(tmp_path, "run", "--qemu", qemu10.system, "--examples", "150", "--steps", "6",
                    "--workers", "1", "--seed", "2", "--out", str(tmp_path / "a"), mutant=True)
    assert first.returncode == 1, (first.stdout, first.stderr)
    [minimal] = glob.glob(str(tmp_path / "a" / "result-*" / "minimal.json"))
    sig = T.load(minimal).description.splitlines()[0]
    for affects, status, word in ((["10.0"], 0, "known"), (["7.2"], 1, "regression")):
        bugs = tmp_path / f"known-{status}"
        bugs.mkdir()
        tr = T.load(minimal)
        T.save(T.Trace("planted-mutant", tr.images, tr.steps, "",
                       {"affects": affects, "signature": {v: sig for v in affects}}),
               str(bugs / "planted-mutant.json"))
        r = run_cli(tmp_path, "run", "--qemu", qemu10.system, "--examples", "150", "--steps", "6",
                    "--workers", "1", "--seed", "2", "--out", str(tmp_path / f"o{status}"),
                    "--known-bugs", str(bugs), "--junit", str(tmp_path / f"{status}.xml"),
                    mutant=True)
        assert r.returncode == status, (word, r.stdout, r.stderr)
        assert f"finding ({word})" in r.stdout
        suite = ET.parse(tmp_path / f"{status}.xml").getroot()
        assert int(suite.get("failures")) == status
        if status == 0:
            assert "1 known QEMU bug(s)" in r.stdout and "planted-mutant" in r.stdout
            assert glob.glob(str(tmp_path / "o0" / "known" / "result-*" / "first.json"))


@pytest.mark.qemu
def test_a_one_worker_campaigns_finding_is_minimized_and_reported(qemu10, tmp_path):
    """With one worker the campaign runs in blockfuzz's own process, and the findings'
    post-processing (minimization, report, reproducers) runs there afterwards: it must not
    use the image templates of the campaign's removed temporary directory (it once did: the
    finding stayed as Hypothesis left it and report.html said "could not be made")."""
    r = run_cli(tmp_path, "run", "--qemu", qemu10.system, "--examples", "150", "--steps", "30",
                "--workers", "1", "--seed", "2", "--out", str(tmp_path / "a"), mutant=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    [folder] = glob.glob(str(tmp_path / "a" / "result-*"))
    steps = T.load(os.path.join(folder, "minimal.json")).steps
    assert [s["qmp"] for s in steps] == ["blockdev-add", "blockdev-del"], steps
    report = open(os.path.join(folder, "report.html")).read()
    assert "could not be made" not in report and "mutant: node cannot be deleted" in report
    assert glob.glob(os.path.join(folder, "iotest", "tests", "*"))


@pytest.mark.qemu
def test_replay_of_a_finding_says_still_fails_or_fixed(tmp_path):
    from conftest import qemu_binaries

    path = os.path.join(ROOT, "corpus", "findings", "qemu72-reopen-detached-entry-abort.json")
    for version, word in (("7.2", "STILL FAILS"), ("10.0", "FIXED")):
        b = qemu_binaries(version)
        r = run_cli(tmp_path, "replay", "--qemu", str(b.system), "--timeout", "2", path)
        assert r.stdout.startswith(f"{word} qemu72-reopen-detached-entry-abort"), r.stdout
        assert r.returncode == (1 if word == "STILL FAILS" else 0)


def test_plain_progress_line_names_the_counts():
    """Not a terminal: a plain line at most every ``every`` seconds with the campaign's
    running totals."""
    import io

    from fuzz.campaign import CampaignSpec, CampaignStarted, CampaignState, Progress
    from fuzz.findings import FindingEvent
    from fuzz.reporters import ProgressReporter

    spec = CampaignSpec(binaries=None, out="x", time=100.0)
    state = CampaignState(spec)
    state.examples, state.steps, state.outcomes = 12, 340, {"a", "b", "c"}
    state.findings["s"] = FindingEvent("s", "result", "f", "summary", 3, "10.0", True)
    state.findings["k"] = FindingEvent("k", "crash", "g", "summary", 3, "10.0", True, known="bug")
    out = io.StringIO()
    rep = ProgressReporter(out, every=0.0, live=False)
    rep(CampaignStarted(spec, 0.0))
    rep(Progress(state))
    line = out.getvalue().strip()
    assert "12 examples, 340 steps" in line and "1 new and 1 known findings" in line
    assert "3 distinct outcomes" in line and "s left" in line
    quiet = ProgressReporter(io.StringIO(), every=3600.0, live=False)
    quiet(CampaignStarted(spec, 0.0))
    quiet(Progress(state))
    assert quiet.stream.getvalue() == ""


#: a driver that makes QEMU really die (SIGKILL from outside) whenever a blockdev-del of one
#: of the format nodes ``hd0`` ... ``hd4`` is sent: a crash finding on a real QEMU, on demand
#: (any of them, so that every seed's draws reach it within seconds)
KILLER_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from fuzz import qemu
    real = qemu.QemuProcess._prepare   # what execute() and begin() do before sending
    def prepare(self, cmd, args):
        if cmd == "blockdev-del" and str((args or {}).get("node-name")).startswith("hd"):
            os.kill(self.pid, signal.SIGKILL)
        return real(self, cmd, args)
    qemu.QemuProcess._prepare = prepare
    from fuzz.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.qemu
def test_a_crash_never_ends_the_campaign(qemu10, tmp_path):
    """QEMU killed during a command is a crash finding; the campaign goes on with a fresh QEMU
    until its time is up, and the crash is one finding however often it recurs."""
    drv = tmp_path / "killer.py"
    drv.write_text(KILLER_DRIVER)
    t = time.monotonic()
    r = subprocess.run([PY, str(drv), "run", "--qemu", qemu10.system, "--time", "15",
                        "--workers", "1", "--seed", "3", "--out", str(tmp_path / "o"),
                        "--json", str(tmp_path / "r.json")],
                       cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, (r.stdout, r.stderr)
    report = json.load(open(tmp_path / "r.json"))
    crashes = [f for f in report["findings"] if f["kind"] == "crash"]
    assert [f["signature"] for f in crashes] == ["crash:SIGKILL:blockdev-del"], report["findings"]
    assert crashes[0]["hits"] >= 2     # seen again, each time on a fresh QEMU (shrinking, later examples)
    assert report["seconds"] >= 14.0 and time.monotonic() - t >= 14.0
    assert report["counts"]["examples"] > 20


def test_live_progress_on_a_terminal_shows_the_counts():
    """On a terminal the progress is a rich live view; a finding is printed above it."""
    import io

    from fuzz.campaign import CampaignFinished, CampaignSpec, CampaignStarted, CampaignState, Progress
    from fuzz.findings import FindingEvent
    from fuzz.reporters import ProgressReporter

    spec = CampaignSpec(binaries=None, out="x", time=None, examples=50)
    state = CampaignState(spec)
    state.examples, state.steps = 7, 90
    out = io.StringIO()
    rep = ProgressReporter(out, live=True)
    rep(CampaignStarted(spec, 0.0))
    rep(Progress(state))
    rep(FindingEvent("sig", "crash", "out/crash-1", "QEMU killed by SIGSEGV", 2, "11.1", True))
    state.findings["sig"] = FindingEvent("sig", "crash", "out/crash-1", "x", 2, "11.1", True)
    rep(CampaignFinished(state))
    text = out.getvalue()
    assert "finding (new): out/crash-1: QEMU killed by SIGSEGV" in text
    assert "43 examples left" in text and "1 new, 0 known" in text


def test_a_worker_runs_with_the_tuned_collector_and_restores_it():
    import gc

    from fuzz.campaign import GC_THRESHOLD, gc_tuned
    before = gc.get_threshold()
    assert before != GC_THRESHOLD
    with pytest.raises(RuntimeError):
        with gc_tuned():
            assert gc.get_threshold() == GC_THRESHOLD
            raise RuntimeError("a finding")
    assert gc.get_threshold() == before


def test_an_internal_error_without_a_message_is_still_named(tmp_path):
    # (a 7.2.22 campaign printed "finding (internal error): FOLDER: " for models.iodata.IoFailed)
    from fuzz.findings import internal_signature
    from models.iodata import IoFailed

    writer = FindingWriter(str(tmp_path), Events())
    try:
        raise IoFailed()
    except IoFailed as e:
        err = e
    out = writer.record(FailureSeen(err, T.Trace("x", [], []), internal_signature(err), "7.2",
                                    internal=True))
    assert out.summary == "IoFailed" and out.internal
    try:
        raise KeyError("gone")
    except KeyError as e:
        err2 = e
    out = writer.record(FailureSeen(err2, T.Trace("y", [], []), internal_signature(err2), "7.2",
                                    internal=True))
    assert out.summary == "KeyError: 'gone'"


# --------------------------------------------------------------------------------------------
# where a campaign's images live (fuzz.campaign.scratch_dir)

def _mounts(tmp_path, fstype: str, where) -> str:
    p = tmp_path / "mounts"
    p.write_text(f"/dev/vda / ext4 rw 0 0\nnone {where} {fstype} rw,nosuid 0 0\n")
    return str(p)


def test_scratch_is_a_roomy_tmpfs_unless_tmpdir_is_set(tmp_path, monkeypatch):
    from fuzz import campaign as C
    shm = tmp_path / "shm"
    shm.mkdir()
    roomy = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize >= C.SCRATCH_MIN_FREE
    if not roomy:   # the rule under test needs room; make the threshold fit this machine
        monkeypatch.setattr(C, "SCRATCH_MIN_FREE", 1)
    tmpfs = _mounts(tmp_path, "tmpfs", shm)
    assert C.scratch_dir({}, shm=str(shm), mounts=tmpfs) == str(shm)
    # the user's $TMPDIR wins (and the tests' leftover checks rely on it)
    assert C.scratch_dir({"TMPDIR": "/elsewhere"}, shm=str(shm), mounts=tmpfs) is None
    # not a tmpfs, or not mounted: Python's default
    assert C.scratch_dir({}, shm=str(shm), mounts=_mounts(tmp_path, "ext4", shm)) is None
    assert C.scratch_dir({}, shm=str(tmp_path / "none"), mounts=tmpfs) is None
    assert C.scratch_dir({}, shm=str(shm), mounts=str(tmp_path / "no-proc")) is None


def test_scratch_skips_a_small_tmpfs(tmp_path, monkeypatch):
    """A container's 64 MiB /dev/shm would fill up and make every write an ENOSPC."""
    from fuzz import campaign as C
    shm = tmp_path / "shm"
    shm.mkdir()
    st = os.statvfs(shm)
    monkeypatch.setattr(C, "SCRATCH_MIN_FREE", st.f_bavail * st.f_frsize + (1 << 30))
    assert C.scratch_dir({}, shm=str(shm), mounts=_mounts(tmp_path, "tmpfs", shm)) is None


ROUND_CAP_DRIVER = textwrap.dedent("""
    import sys
    from fuzz import campaign
    campaign.ROUND_EXAMPLES = 2
    from fuzz.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.qemu
def test_a_round_ends_after_round_examples(qemu10, tmp_path):
    """A worker starts a new Hypothesis run (a new engine, its memory freed) every
    ``ROUND_EXAMPLES`` valid examples, and the campaign's budget still holds across rounds."""
    drv = tmp_path / "cap.py"
    drv.write_text(ROUND_CAP_DRIVER)
    r = subprocess.run([PY, str(drv), "run", "--qemu", qemu10.system, "--examples", "30",
                        "--workers", "1", "--seed", "3", "--out", str(tmp_path / "o"),
                        "--json", str(tmp_path / "r.json")],
                       cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    counts = json.load(open(tmp_path / "r.json"))["counts"]
    assert counts["examples"] == 30
    assert counts["rounds"] >= 3, counts     # one round without the cap
