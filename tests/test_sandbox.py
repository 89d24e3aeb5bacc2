"""A trace cannot reach outside its work directory (fuzz.sandbox): the path check refuses
every hostile form and no legitimate one, and QEMU runs chrooted so that a path the check
missed still cannot reach the host.  Also: the QMP monitor without deprecated options."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import attrs
import pytest

from fuzz import sandbox
from fuzz import trace as T
from fuzz.images import make_images
from fuzz.qemu import (HarnessError, QemuProcess, UnsafeStep, check_step, qemu_features,
                       STDERR_LOG)
from models import ImageSpec

from conftest import qemu_binaries

ROOT = os.path.join(os.path.dirname(__file__), "..")
BLOCKFUZZ = [sys.executable, "-m", "fuzz.cli"]
CORPUS = sorted(glob.glob(os.path.join(ROOT, "corpus", "**", "*.json"), recursive=True))


def blockfuzz(*args, env=None):
    return subprocess.run([*BLOCKFUZZ, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


def file_node(filename: str, name: str = "v") -> dict:
    return {"driver": "raw", "node-name": name,
            "file": {"driver": "file", "node-name": name + "-file", "filename": filename}}


def json_filename(target: str) -> str:
    return "json:" + json.dumps({"driver": "raw", "file": {"driver": "file", "filename": target}})


# -- the check, without QEMU -----------------------------------------------------------------

HOSTILE = [
    # (command, args, the string the refusal names)
    ("blockdev-add", file_node("/tmp/victim.txt"), "/tmp/victim.txt"),
    ("blockdev-add", {"driver": "file", "node-name": "f", "filename": "/etc/passwd"}, "/etc/passwd"),
    ("blockdev-add", file_node("../victim.txt"), "../victim.txt"),
    ("blockdev-add", file_node("sub/../../victim.txt"), "sub/../../victim.txt"),
    ("blockdev-add", file_node(".."), ".."),
    ("blockdev-add", file_node("file:/etc/passwd"), "file:/etc/passwd"),
    ("blockdev-add", file_node("file:hd0.img"), "file:hd0.img"),
    ("blockdev-add", file_node("nbd:localhost:10809"), "nbd:localhost:10809"),
    ("blockdev-add", file_node("fat:rw:/etc"), "fat:rw:/etc"),
    ("blockdev-add", file_node("blkdebug:cfg:hd0.img"), "blkdebug:cfg:hd0.img"),
    # a header backing name may carry file: before a plain name, nothing else
    ("block-stream", {"device": "hd0", "base": "hd1.img", "backing-file": "file:/etc/passwd"}, "/etc/passwd"),
    ("block-commit", {"device": "hd0", "backing-file": "file:../x.img"}, "../x.img"),
    ("block-commit", {"device": "hd0", "backing-file": "file:nbd:localhost:1"}, "nbd:localhost:1"),
    ("blockdev-create", {"job-id": "c", "options": {"driver": "qcow2", "file": "f", "size": 512,
                                                   "backing-file": "nbd:localhost:1"}}, "nbd:localhost:1"),
    ("blockdev-add", {"driver": "file", "node-name": "f", "filename": "file:hd0.img",
                      "x-backing-file": "file:hd0.img"}, "file:hd0.img"),
    # json: filenames are parsed; their strings are checked like any other
    ("blockdev-add", file_node(json_filename("/etc/shadow")), "/etc/shadow"),
    ("blockdev-add", file_node(json_filename("../victim.txt")), "../victim.txt"),
    ("blockdev-add", file_node('json:{"file": {"filename": "..\\u002fvictim.txt"}}'), "../victim.txt"),
    ("blockdev-add", file_node("json:" + json.dumps({"driver": "qcow2", "file": {
        "driver": "file", "filename": "hd0.img"}, "backing": {"driver": "raw", "file": {
            "driver": "file", "filename": "/etc/passwd"}}})), "/etc/passwd"),
    ("blockdev-add", file_node("json:" + json.dumps({"driver": "qcow2", "file": "x", "data-file": {
        "driver": "file", "filename": "/var/x"}})), "/var/x"),
    ("blockdev-add", file_node("json:" + json.dumps({"driver": "raw", "file": {
        "driver": "file", "filename": json_filename("/nested")}})), "/nested"),
    ("blockdev-add", file_node("json:{'driver': 'file', 'filename': '/etc/passwd'}"),
     "json:{'driver': 'file', 'filename': '/etc/passwd'}"),   # QEMU parses single quotes
    # nested members of every kind, any command
    ("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": "hd0-file",
                      "backing": {"driver": "qcow2", "file": {"driver": "file",
                                                              "filename": "/b.img"}}}, "/b.img"),
    ("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": "hd0-file",
                      "data-file": {"driver": "file", "filename": "/d.img"}}, "/d.img"),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": "hd0",
                      "config": "/etc/blkdebug.conf"}, "/etc/blkdebug.conf"),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": "hd0",
                      "config": "../cfg"}, "../cfg"),
    ("blockdev-add", {"driver": "quorum", "node-name": "qu", "vote-threshold": 1,
                      "children": ["hd0", {"driver": "file", "filename": "/q.img"}]}, "/q.img"),
    ("blockdev-add", {"driver": "blkverify", "node-name": "bv", "test": "hd0",
                      "raw": {"driver": "file", "filename": "/r.img"}}, "/r.img"),
    ("blockdev-add", {"driver": "blklogwrites", "node-name": "l", "file": "hd0",
                      "log": {"driver": "file", "filename": "/log"}}, "/log"),
    ("blockdev-add", {"driver": "vvfat", "node-name": "vv", "dir": "/etc"}, "/etc"),
    ("blockdev-add", {"driver": "gluster", "node-name": "g", "volume": "v", "path": "p",
                      "server": [{"type": "unix", "path": "/run/g.sock"}],
                      "logfile": "/tmp/g.log"}, "/run/g.sock"),
    ("blockdev-add", {"driver": "nbd", "node-name": "n",
                      "server": {"type": "unix", "path": "/run/nbd.sock"}}, "/run/nbd.sock"),
    ("blockdev-add", {"driver": "rbd", "node-name": "r", "pool": "p", "image": "i",
                      "conf": "/etc/ceph/ceph.conf"}, "/etc/ceph/ceph.conf"),
    ("blockdev-add", {"driver": "host_device", "node-name": "h", "filename": "/dev/sda"}, "/dev/sda"),
    ("blockdev-add", {"driver": "file", "node-name": "f", "filename": "/dev/null"}, "/dev/null"),
    ("blockdev-add", {"driver": "ssh", "node-name": "s", "path": "/etc/shadow",
                      "server": {"host": "h", "port": "22"}}, "/etc/shadow"),
    ("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "hd0",
                                      "file": {"driver": "file", "node-name": "hd0-file",
                                               "filename": "/etc/passwd"}}]}, "/etc/passwd"),
    ("block-stream", {"job-id": "s", "device": "hd1", "backing-file": "/etc/passwd"}, "/etc/passwd"),
    ("blockdev-create", {"job-id": "c", "options": {"driver": "file", "filename": "/etc/x",
                                                     "size": 0}}, "/etc/x"),
    ("object-add", {"qom-type": "secret", "id": "s", "file": "/etc/shadow"}, "/etc/shadow"),
    ("object-add", {"qom-type": "tls-creds-x509", "id": "t", "dir": "/etc/pki"}, "/etc/pki"),
    ("object-add", {"qom-type": "memory-backend-file", "id": "m", "size": 4096,
                    "mem-path": "/dev/shm/x"}, "/dev/shm/x"),
    ("device_add", {"driver": "scsi-hd", "drive": "../hd0", "bus": "scsi0.0"}, "../hd0"),
    # HMP: qemu-io only, and no file argument outside the work directory
    ("human-monitor-command", {"command-line": 'qemu-io hd0 "write -s /etc/shadow 0 4k"'},
     "/etc/shadow"),
    ("human-monitor-command", {"command-line": 'qemu-io hd0 "write -s/etc/shadow 0 4k"'},
     "-s/etc/shadow"),
    ("human-monitor-command", {"command-line": 'qemu-io hd0 "write -qs ../v 0 4k"'}, "../v"),
    ("human-monitor-command", {"command-line": 'qemu-io hd0 "reopen -o backing=/x"'},
     "backing=/x"),
    ("human-monitor-command", {"command-line": 'migrate "exec:cat /etc/shadow > x"'}, "migrate"),
    ("human-monitor-command", {"command-line": "pmemsave 0 4096 /tmp/mem"}, "pmemsave"),
    ("human-monitor-command", {"command-line": "drive_add 0 file=/etc/passwd,if=none"},
     "drive_add"),
    ("human-monitor-command", {"command-line": "  qemu-io/x hd0 \"read 0 1\""}, "qemu-io/x"),
]


@pytest.mark.parametrize("cmd,args,offending", HOSTILE,
                         ids=[f"{i}-{h[0]}" for i, h in enumerate(HOSTILE)])
def test_hostile_forms_are_refused(cmd, args, offending):
    problem = sandbox.step_problem(cmd, args)
    assert problem is not None and problem.text == offending
    with pytest.raises(UnsafeStep) as info:
        check_step(cmd, args)
    msg = str(info.value)
    assert isinstance(info.value, HarnessError) and "\n" not in msg
    assert msg.startswith(f"refused {cmd}: ") and repr(offending) in msg
    assert info.value.command == cmd and info.value.path == offending


LEGITIMATE = [
    ("blockdev-add", file_node("hd0.img")),
    ("blockdev-add", file_node("sub/x.img")),   # inside the work dir (it just does not exist)
    ("blockdev-add", file_node("./hd0.img")),
    ("blockdev-add", file_node("sub/a:b.img")),  # ':' after a '/' is no protocol prefix
    ("block-commit", {"device": "hd0", "top": "hd1.img", "backing-file": "file:hd2.img"}),
    ("blockdev-create", {"job-id": "c", "options": {"driver": "qcow2", "file": "f", "size": 512,
                                                   "backing-file": "file:sub/hd2.img"}}),
    ("blockdev-add", file_node(json_filename("hd0.img"))),
    ("blockdev-add", file_node("null-co://")),
    ("blockdev-add", {"driver": "null-co", "node-name": "n", "size": 1024}),
    ("blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": "hd0",
                      "config": "/dev/null"}),
    ("blockdev-add", file_node("json:" + json.dumps({"driver": "blkdebug", "config": "/dev/null",
                                                     "image": {"driver": "null-co"}}))),
    ("blockdev-add", file_node('json:{"driver": "blkdebug", "image.config": "/dev/null"}')),
    # blkdebug reads config only on open; reopen compares it (iotest 245's /non/existent)
    ("blockdev-reopen", {"options": [{"driver": "blkdebug", "node-name": "bd", "image": "hd0",
                                      "config": "/non/existent"}]}),
    ("blockdev-del", {"node-name": "#block017"}),
    ("object-add", {"qom-type": "throttle-group", "id": "tg0", "limits": {"iops-total": 100}}),
    ("object-add", {"qom-type": "iothread", "id": "iothread0"}),
    ("device_add", {"driver": "virtio-scsi-pci", "id": "scsi0", "iothread": "iothread0"}),
    ("device_add", {"driver": "scsi-hd", "drive": "hd0", "bus": "scsi0.0"}),
    ("human-monitor-command", {"command-line": 'qemu-io hd0 "read -P 0xa0 0 1M"'}),
    ("human-monitor-command", {"command-line": 'qemu-io #block017 "write -z -u 0 128k"'}),
    ("human-monitor-command", {"command-line": 'qemu-io hd0 "write -s pattern.bin 0 4k"'}),
    ("query-named-block-nodes", None),
    ("query-jobs", {}),
]


@pytest.mark.parametrize("cmd,args", LEGITIMATE, ids=[f"{i}-{c}" for i, (c, _) in enumerate(LEGITIMATE)])
def test_legitimate_forms_pass(cmd, args):
    assert sandbox.step_problem(cmd, args) is None
    check_step(cmd, args)


def test_no_step_of_the_corpus_is_refused():
    assert len(CORPUS) >= 30
    steps = 0
    for path in CORPUS:
        tr = T.load(path)
        for i, step in enumerate(tr.steps):
            if "qmp" in step:
                steps += 1
                assert sandbox.step_problem(step["qmp"], step.get("args", {})) is None, (path, i)
        for spec in tr.images:
            assert sandbox.image_problem(spec) is None, (path, spec)
    assert steps > 300


def test_no_generated_step_is_refused(monkeypatch):
    """The state machine against the model alone (no QEMU): every step it draws passes."""
    from hypothesis.stateful import run_state_machine_as_test

    import fuzz.session
    from fuzz import statemachine as SM
    from helpers import campaign_settings
    from fuzz.engine import Runner
    from models import PROFILES, Model

    seen = {"steps": 0}

    class ModelOnly:
        def __init__(self, binaries, images, events=None, timeout=5.0, machine="none", **kw):
            for spec in images:
                assert sandbox.image_problem(spec) is None, spec
            self.runner = Runner(Model(PROFILES["10.0"], images, machine), None, events)
            real_run = self.runner.run

            def run(step):
                if "qmp" in step:
                    seen["steps"] += 1
                    assert sandbox.step_problem(step["qmp"], step.get("args", {})) is None, step
                return real_run(step)
            self.runner.run = run

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(fuzz.session, "Session", ModelOnly)
    # Fewer, longer examples: 80 x 30 drew ~2200 steps in 5 s, 20 x 60 ~1060 in 2 s, with the
    # same twelve commands drawn (and deeper graphs; a quarter of the model set-ups)
    run_state_machine_as_test(SM.machine_class(SM.MachineConfig(binaries=None)),
                              settings=campaign_settings(max_examples=20, stateful_step_count=60))
    assert seen["steps"] > 500, seen


def test_the_check_is_cheap():
    """A few microseconds per step (the bound is loose: shared machines are noisy)."""
    args = {"driver": "qcow2", "node-name": "hd1", "read-only": False, "backing": "hd0",
            "file": {"driver": "file", "node-name": "hd1-file", "filename": "hd1.img",
                     "locking": "on"}}
    n = 20000
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            sandbox.step_problem("blockdev-add", args)
        best = min(best, (time.perf_counter() - t0) / n)
    assert best < 50e-6, f"{best * 1e6:.1f} µs per blockdev-add"


@attrs.frozen
class FakeBinaries:
    system: str
    img: str
    io: str
    env: dict = attrs.field(factory=dict)


@pytest.mark.parametrize("name", ["/tmp/x.img", "../x.img", "sub/x.img", "nbd:localhost:10809",
                                  'json:{"driver":"file","filename":"\\u002fetc\\u002fx"}',
                                  "file:x.img", "file:nbd:localhost:10809", "file:..",
                                  "file:file:x.img"])
@pytest.mark.parametrize("as_backing", [False, True])
def test_image_specs_must_be_plain_names(tmp_path, name, as_backing):
    """Refused before any tool runs: by ImageSpec's validator (a ``/``), else by make_images
    (qemu-img would take ``nbd:`` or ``json:`` as a protocol and create the image there).  A
    header backing name may carry ``file:`` before a plain name (below), nothing else."""
    if as_backing and name == "file:x.img":
        return   # test_a_header_backing_name_may_carry_file_before_a_plain_name
    bins = FakeBinaries("/nonexistent/qemu", "/nonexistent/qemu-img", "/nonexistent/qemu-io")
    try:
        spec = (ImageSpec("top.img", "qcow2", 1 << 20, backing_file=name) if as_backing
                else ImageSpec(name, "raw", 1 << 20))
    except ValueError:
        assert "/" in name
        return
    with pytest.raises(UnsafeStep) as info:
        make_images([ImageSpec("hd0.img", "qcow2", 1 << 20), spec], tmp_path, bins, cache=False)
    msg = str(info.value)
    assert msg.startswith("refused image spec: ") and repr(name) in msg and "\n" not in msg
    assert os.listdir(tmp_path) == []


def test_a_header_backing_name_may_carry_file_before_a_plain_name():
    spec = ImageSpec("top.img", "qcow2", 1 << 20, backing_file="file:x.img", backing_format="qcow2")
    assert sandbox.image_problem(spec) is None
    problem = sandbox.image_problem(ImageSpec("x.img", "qcow2", 1 << 20, backing_file="file:file:x.img"))
    assert problem is not None and problem.text == "file:file:x.img"


def test_chroot_style_from_help_text():
    assert sandbox.chroot_style(
        "-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]\n") == "run-with"
    assert sandbox.chroot_style("-chroot dir     chroot to dir just before starting the VM\n") == "chroot"
    assert sandbox.chroot_style("-run-with [async-teardown=on|off]\n") is None
    assert sandbox.confinement("run-with", "/tmp/a,b")[1] == ["-run-with", "chroot=/tmp/a,,b"]
    assert sandbox.confinement("chroot", "/tmp/w")[1] == ["-chroot", "/tmp/w"]


def test_a_qemu_without_chroot_is_refused_unless_told(tmp_path, monkeypatch):
    """One line naming the escape hatch; with it, the binary runs (here: fails to, being fake)."""
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'usage: qemu [options]'\nexit 0\n")
    fake.chmod(0o755)
    bins = FakeBinaries(str(fake), "/bin/false", "/bin/false")
    monkeypatch.delenv(sandbox.NO_CHROOT_ENV, raising=False)
    with pytest.raises(HarnessError) as info:
        QemuProcess(bins, tmp_path).start()
    assert "\n" not in str(info.value) and sandbox.NO_CHROOT_ENV in str(info.value)
    monkeypatch.setenv(sandbox.NO_CHROOT_ENV, "1")
    with pytest.raises(HarnessError, match="did not become ready"):
        QemuProcess(bins, tmp_path, timeout=2).start()


# -- real QEMU -------------------------------------------------------------------------------

@pytest.fixture
def victim(tmp_path):
    """A host file outside any work directory, and a check that it is byte-for-byte intact."""
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    content = b"precious host data\n" * 8
    path.write_bytes(content)
    st = os.stat(path)

    def intact() -> bool:
        now = os.stat(path)
        return (path.read_bytes() == content and now.st_mtime_ns == st.st_mtime_ns
                and now.st_atime_ns == st.st_atime_ns)
    return path, intact


def hostile_trace(tmp_path, filename: str, images=None) -> str:
    tr = {"blockfuzz-trace": 1, "name": "hostile", "description": "reaches for a host file",
          "images": images or [{"file": "hd0.img", "format": "raw", "size": 1 << 20}],
          "steps": [
              {"qmp": "blockdev-add", "args": file_node(filename)},
              {"qmp": "human-monitor-command",
               "args": {"command-line": 'qemu-io v "write -P 0x41 0 64"'}},
          ]}
    p = tmp_path / "hostile.json"
    p.write_text(json.dumps(tr))
    return str(p)


def _from_session_workdir(target) -> str:
    """``..`` path from a Session's work directory (a mkdtemp in the temp dir) to ``target``."""
    return os.path.join("..", os.path.relpath(target, tempfile.gettempdir()))


@pytest.mark.qemu
@pytest.mark.parametrize("form", ["absolute", "dotdot", "json"])
def test_replay_refuses_a_hostile_trace(qemu10, tmp_path, victim, form):
    path, intact = victim
    filename = {"absolute": str(path), "dotdot": _from_session_workdir(path),
                "json": json_filename(str(path))}[form]
    r = blockfuzz("replay", hostile_trace(tmp_path, filename), "--qemu", qemu10.system)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR ") and "refused blockdev-add" in lines[0]
    assert repr(str(path) if form == "json" else filename) in lines[0]
    assert intact()


@pytest.mark.qemu
def test_replay_refuses_a_hostile_image_spec(qemu10, tmp_path, victim):
    path, intact = victim
    name = "json:" + json.dumps({"driver": "file", "filename": str(path)}).replace("/", "\\u002f")
    p = hostile_trace(tmp_path, "hd0.img", images=[{"file": name, "format": "raw", "size": 512}])
    r = blockfuzz("replay", p, "--qemu", qemu10.system)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "refused image" in lines[0], lines
    assert intact()


@pytest.mark.qemu
def test_hmp_qemu_io_cannot_read_a_host_file_into_an_image(qemu10, tmp_path, victim):
    """``write -s FILE`` copies a host file into the image: refused, by the check and (the
    check off) by the chroot."""
    path, intact = victim
    work = tmp_path / "work"
    work.mkdir()
    make_images([ImageSpec("hd0.img", "raw", 1 << 20)], work, qemu10)
    line = f'qemu-io hd0 "write -s {path} 0 64"'
    for check in (True, False):
        with QemuProcess(qemu10, work, check_paths=check, chroot=True) as q:
            q.execute("blockdev-add", file_node("hd0.img", "hd0"))
            if check:
                with pytest.raises(UnsafeStep, match="qemu-io argument"):
                    q.execute("human-monitor-command", {"command-line": line})
            else:
                out = q.execute("human-monitor-command", {"command-line": line})
                assert out.error is None and not any(l.startswith("wrote") for l in out.stdout)
    assert b"precious" not in (work / "hd0.img").read_bytes()
    assert "No such file or directory" in (work / STDERR_LOG).read_text()
    assert intact()


@pytest.mark.qemu
def test_execute_is_the_choke_point(qemu10, tmp_path, victim):
    """Run, replay and diff all send through QemuProcess.execute: it refuses, QEMU is not asked,
    and the process stays usable.  replay_trace (the engine, model first) gets the same error."""
    from fuzz.replaycmd import replay_trace

    path, intact = victim
    with QemuProcess(qemu10, tmp_path) as q:
        with pytest.raises(UnsafeStep):
            q.execute("blockdev-add", file_node(str(path)))
        assert q.execute("query-named-block-nodes").ret == []
        assert q.execute("query-version").error is None
    with pytest.raises(UnsafeStep) as info:
        replay_trace(T.load(hostile_trace(tmp_path, str(path))), qemu10)
    assert info.value.path == str(path)
    assert intact()


@pytest.mark.qemu
def test_the_chroot_alone_keeps_qemu_in(any_qemu, tmp_path, victim):
    """The check switched off: QEMU itself cannot open the victim, by any route."""
    path, intact = victim
    b = any_qemu
    work = tmp_path / "work"
    work.mkdir()
    make_images([ImageSpec("hd0.img", "qcow2", 1 << 20)], work, b)
    # an image whose header names the victim as its backing file (qemu-img runs unconfined; the
    # harness never lets a trace do this, which is the point: the second layer must hold alone)
    subprocess.run([b.img, "create", "-q", "-f", "qcow2", "-u", "-b", json_filename(str(path)),
                    "-F", "raw", "top.qcow2", "1M"], cwd=work, check=True,
                   env={**os.environ, **b.env_for(b.img)})
    with QemuProcess(b, work, check_paths=False, chroot=True) as q:
        assert os.path.realpath(f"/proc/{q.pid}/root") == os.path.realpath(work)
        for filename in (str(path), os.path.join("..", "outside", "victim.txt"),
                         "../../../../../../" + str(path).lstrip("/")):
            out = q.execute("blockdev-add", file_node(filename))
            assert out.error is not None and out.error.desc == (
                f"Could not open '{filename}': No such file or directory")
        out = q.execute("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": {
            "driver": "file", "node-name": "top-file", "filename": "top.qcow2"}})
        assert out.error is not None and str(path) in out.error.desc
        assert "No such file or directory" in out.error.desc
        out = q.execute("human-monitor-command", {"command-line": 'qemu-io v "write -P 0x41 0 64"'})
        assert out.stdout == () and "Cannot find device" in out.ret
        # what the work directory offers still works: images, qemu-io, blkdebug's /dev/null
        assert q.execute("blockdev-add", {"driver": "qcow2", "node-name": "hd0", "file": {
            "driver": "file", "node-name": "hd0-file", "filename": "hd0.img"}}).error is None
        assert q.execute("human-monitor-command", {"command-line": 'qemu-io hd0 "write -P 0x41 0 4k"'}
                         ).stdout == ("wrote 4096/4096 bytes at offset 0",)
        assert q.execute("blockdev-add", {"driver": "blkdebug", "node-name": "bd",
                                          "config": "/dev/null", "image": "hd0"}).error is None
    assert intact()
    # the chroot's dev/null is gone with QEMU
    assert sorted(os.listdir(work)) == sorted(["hd0.img", "top.qcow2", STDERR_LOG, "qemu.stdout.log"])


@pytest.mark.qemu
def test_chroot_option_detected_per_version(any_qemu):
    features = qemu_features(any_qemu)
    version = subprocess.run([any_qemu.system, "--version"], capture_output=True, text=True,
                             env={**os.environ, **any_qemu.env}).stdout.split()[3]
    assert features.chroot == ("chroot" if version.startswith("7.") else "run-with")


@pytest.mark.qemu
def test_non_root_is_chrooted_through_a_user_namespace(qemu10):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to become an unprivileged user) and setpriv")
    if subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "unshare", "--user", "--map-root-user", "true"]).returncode != 0:
        pytest.skip("unprivileged user namespaces are disabled here")
    base = tempfile.mkdtemp(prefix="blockfuzz-userns-")
    try:
        os.chmod(base, 0o755)
        work = os.path.join(base, "work")
        os.mkdir(work)
        with open(os.path.join(work, "x.img"), "wb") as f:
            f.truncate(1 << 16)
        secret = os.path.join(base, "secret.txt")
        with open(secret, "w") as f:
            f.write("root's\n")
        os.chmod(secret, 0o666)     # even a file the user could write stays out of reach
        shutil.chown(work, 65534, 65534)
        shutil.chown(os.path.join(work, "x.img"), 65534, 65534)
        script = f"""
import json, sys
sys.path.insert(0, {os.path.abspath(ROOT)!r})
from fuzz.qemu import QemuProcess
from fuzz.qemufetch import QemuBinaries
b = QemuBinaries(**{json.dumps(attrs.asdict(qemu10))})
with QemuProcess(b, {work!r}, check_paths=False, chroot=True) as q:
    r = [q.execute("blockdev-add", {{"driver": "file", "node-name": "x", "filename": "x.img"}}),
         q.execute("human-monitor-command", {{"command-line": 'qemu-io x "write -P 0x41 0 4k"'}}),
         q.execute("blockdev-add", {{"driver": "file", "node-name": "s", "filename": {secret!r}}})]
    print(json.dumps([o.to_json() for o in r]))
"""
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", script], capture_output=True, text=True,
                           cwd="/", timeout=120)
        assert p.returncode == 0, p.stderr
        added, wrote, secret_add = json.loads(p.stdout)
        assert added == {"return": {}} and wrote["stdout"] == ["wrote 4096/4096 bytes at offset 0"]
        assert "No such file or directory" in secret_add["error"]["desc"]
        assert open(secret).read() == "root's\n"
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- Task B: the QMP monitor -----------------------------------------------------------------

@pytest.mark.qemu
@pytest.mark.parametrize("version", ["11.1", "10.0"])
def test_qmp_monitor_without_deprecated_options(version, tmp_path):
    b = qemu_binaries(version)
    features = qemu_features(b)
    assert features.monitor_object == (version == "11.1")
    with QemuProcess(b, tmp_path) as q:
        assert q.version()[:2] == tuple(int(x) for x in version.split("."))
        argv = open(f"/proc/{q.pid}/cmdline").read().split("\0")
        assert ("monitor-qmp,id=qmp-monitor,chardev=qmp" in argv) == features.monitor_object
        assert ("-mon" in argv) != features.monitor_object
    stderr = (tmp_path / STDERR_LOG).read_text()
    assert "deprecated" not in stderr, stderr


@pytest.mark.qemu
def test_qemu_runs_in_a_network_namespace_of_its_own(any_qemu, tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        with QemuProcess(any_qemu, tmp_path, timeout=5) as q:
            assert os.readlink(f"/proc/{q.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            # nbd is built in (no module to load): past the path check it would connect
            out = q.execute("blockdev-add", {"driver": "nbd", "node-name": "n", "export": "x",
                                             "server": {"type": "inet", "host": "127.0.0.1",
                                                        "port": str(port)}})
            assert out.error is not None
        with pytest.raises(socket.timeout):
            listener.accept()   # nothing ever reached the host's loopback
    finally:
        listener.close()
