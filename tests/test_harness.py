"""The QEMU harness: fuzz.qmpsync, fuzz.qemu, fuzz.images.

Tests marked ``qemu`` run a real QEMU: ``$QEMU_PROG`` (qemu-system-x86_64; qemu-img and qemu-io
are taken from the same directory) or the dev build under /tmp/qdev/10.0. The others are pure.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import attrs
import pytest

from fuzz.statemachine import SEED_IMAGES as _SEED
from fuzz.images import ImageSpec, Write, make_images
from fuzz.errors import HarnessError, QemuCrash, QemuHang, QmpGone, QmpTimeout
from fuzz.qemu import NodeNames, QemuProcess, _canon, binaries_env, stdout_lines
from fuzz.qmpsync import QmpSync
from models.values import Outcome, QmpError

# -- finding QEMU: the fetched 10.0 (conftest.qemu10); QEMU_PROG overrides, as everywhere ------

@attrs.frozen
class LocalBinaries:
    """A stand-in binaries value for the fake-QEMU tests below."""

    system: str
    img: str
    io: str
    env: dict


@pytest.fixture(scope="session")
def binaries(qemu10):
    return qemu10


@pytest.fixture
def qemu(binaries, tmp_path):
    with QemuProcess(binaries, tmp_path) as q:
        yield q


SEED_IMAGES = [i.to_json() for i in _SEED]  # iotest 245's setUp


def seed_specs() -> list[ImageSpec]:
    return [ImageSpec.from_json(d) for d in SEED_IMAGES]


def hd_opts(i: int, **extra) -> dict:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": {"driver": "file", "node-name": f"hd{i}-file", "filename": f"hd{i}.img"},
            **extra}


def qemu_io(q: QemuProcess, node: str, cmd: str) -> Outcome:
    return q.execute("human-monitor-command", {"command-line": f'qemu-io {node} "{cmd}"'})


# -- pure: output normalisation and name translation ----------------------------------------

@pytest.mark.parametrize("line", [
    "1 MiB, 1 ops; 00.00 sec (1.402 GiB/sec and 1435.6811 ops/sec)",
    "512 bytes, 1 ops; 00.00 sec (16.669 MiB/sec and 34137.8486 ops/sec)",
    "1.500000 KiB, 3 ops; 0:01:02.50 (45.807 KiB/sec and inf ops/sec)",
    "64 MiB, 1 ops; 00.08 sec (798.319 MiB/sec and 12.4737 ops/sec)",
    "512,1,0:00:00.00,11801313.818,23049.441",
])
def test_stats_lines_are_dropped(line):
    assert stdout_lines(f"read 512/512 bytes at offset 0\n{line}\n") == (
        "read 512/512 bytes at offset 0",)


def test_other_lines_are_kept():
    text = ("Pattern verification failed at offset 0, 1024 bytes\n"
            "read 1024/1024 bytes at offset 0\n"
            "1 KiB (0x400) bytes not allocated at offset 0 bytes (0x0)\n"
            "read failed: Input/output error\n")
    assert stdout_lines(text) == tuple(text.splitlines())
    assert stdout_lines("") == ()


def test_node_names_translate_args_and_hmp_device():
    names = NodeNames()
    names.learn([{"node-name": "#block147", "image": {"backing-image": {}}},
                 {"node-name": "hd1", "children": [{"node-name": "#block052"}]}])
    assert names.real == {"#block1": "#block147", "#block0": "#block052"}
    args = {"options": [{"driver": "qcow2", "node-name": "hd1", "backing": "#block1",
                         "file": {"driver": "file", "filename": "#block1"}}]}
    assert names.to_real("blockdev-reopen", args) == {
        "options": [{"driver": "qcow2", "node-name": "hd1", "backing": "#block147",
                     "file": {"driver": "file", "filename": "#block147"}}]}
    # Only the device token of an HMP line, never the qemu-io command text.
    line = {"command-line": 'qemu-io #block0 "write -P 0xa0 0 #block0"'}
    assert names.to_real("human-monitor-command", line) == {
        "command-line": 'qemu-io #block052 "write -P 0xa0 0 #block0"'}
    assert names.to_real("human-monitor-command", {"command-line": 'qemu-io -d #block1 "x"'}) \
        == {"command-line": 'qemu-io -d #block147 "x"'}
    # Unknown names pass through unchanged (QEMU then reports them as not found).
    assert names.to_real("blockdev-del", {"node-name": "#block7"}) == {"node-name": "#block7"}
    assert names.unknown("blockdev-del", {"node-name": "#block7"})
    assert not names.unknown("blockdev-del", {"node-name": "#block1"})
    assert names.unknown("human-monitor-command", {"command-line": 'qemu-io #block9 "read 0 1"'})


def test_canon_reaches_every_string():
    raw = [{"node-name": "#block130", "file": 'json:{"backing": "#block017", "x": 1}',
            "image": {"backing-image": {"filename": "#block2042"}}, "n": 5}]
    assert _canon(raw) == [{"node-name": "#block1", "file": 'json:{"backing": "#block0", "x": 1}',
                            "image": {"backing-image": {"filename": "#block20"}}, "n": 5}]


def test_names_are_learned_at_any_depth_and_only_from_node_name():
    names = NodeNames(offset=3)
    names.learn([{"node-name": "#block312", "children": [{"child": "file", "node-name": "#block407"}],
                  "image": {"filename": "#block512", "backing-image": {"node-name": "#block612"}}},
                 {"node-name": "own", "file": "#block700"}])
    # canonical -> real, with the offset taken off; "filename" and "file" are no node-name
    assert names.real == {"#block0": "#block312", "#block1": "#block407", "#block3": "#block612"}


def test_the_wire_is_compact_json_without_ids_or_newlines():
    # QEMU's monitor reads one byte per main-loop iteration: every byte sent costs it CPU
    # (fuzz.qmpsync.QmpSync.send), so no blanks, no ids, no newlines; replies are matched by
    # their order
    import threading

    a, b = socket.socketpair()
    got: list[bytes] = []

    def serve():
        b.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
        buf = b""
        for value in ({}, 5):
            while True:
                try:
                    _msg, end = json.JSONDecoder().raw_decode(buf.decode())
                    break
                except ValueError:
                    buf += b.recv(4096)
            got.append(buf[:end])
            buf = buf[end:]
            b.sendall(json.dumps({"return": value}).encode() + b"\r\n")
        got.append(buf)   # nothing after the last command

    t = threading.Thread(target=serve)
    t.start()
    with QmpSync() as qmp:
        qmp.connect(a, timeout=5)
        assert qmp.cmd("blockdev-del", {"node-name": "x", "n": [1, 2]}) == {"return": 5}
    t.join(5)
    b.close()
    assert got == [b'{"execute":"qmp_capabilities"}',
                   b'{"execute":"blockdev-del","arguments":{"node-name":"x","n":[1,2]}}', b""]


def test_image_spec_json_round_trip_and_validation():
    for d in SEED_IMAGES:
        assert ImageSpec.from_json(d).to_json() == d
    plain = {"file": "a.img", "format": "raw", "size": 1024}
    assert ImageSpec.from_json(plain).writes == ()
    assert ImageSpec.from_json(plain).to_json() == plain
    for bad in [
        {"file": "a.img", "format": "vmdk", "size": 1},
        {"file": "../a.img", "format": "raw", "size": 1},
        {"file": "-a.img", "format": "raw", "size": 1},
        {"file": "a.img", "format": "raw"},                                   # no size
        {"file": "a.img", "format": "raw", "size": 1, "backing-file": "b"},   # raw + backing
        {"file": "a.img", "format": "raw", "size": 1, "bogus": 1},
    ]:
        with pytest.raises(ValueError):
            ImageSpec.from_json(bad)
    with pytest.raises(ValueError):
        Write(256, 0, 1)


# -- real QEMU ------------------------------------------------------------------------------

@pytest.mark.qemu
def test_blockdev_add_and_query_round_trip(qemu, binaries, tmp_path):
    make_images(seed_specs()[:1], tmp_path, binaries)
    assert qemu.execute("blockdev-add", hd_opts(0)) == Outcome(ret={})
    nodes = qemu.query_nodes()
    assert [n["node-name"] for n in nodes] == ["hd0", "hd0-file"]
    assert nodes[0]["drv"] == "qcow2" and nodes[0]["file"] == "hd0.img"
    assert nodes[0]["image"]["virtual-size"] == 3145728
    assert qemu.version() >= (7, 2, 0)


@pytest.mark.qemu
def test_error_reply_is_exact(qemu):
    assert qemu.execute("blockdev-del", {"node-name": "nope"}) == Outcome(
        ret=None, error=QmpError("GenericError", "Failed to find node with node-name='nope'"))
    assert qemu.execute("no-such-command").error == QmpError(
        "CommandNotFound", "The command no-such-command has not been found")


@pytest.mark.qemu
def test_qemu_io_output_on_stdout_without_stats(qemu, binaries, tmp_path):
    make_images(seed_specs()[:1], tmp_path, binaries)
    qemu.execute("blockdev-add", hd_opts(0))
    assert qemu_io(qemu, "hd0", "read -P 0xa0 0 1k") == Outcome(
        ret="", stdout=("read 1024/1024 bytes at offset 0",))
    assert qemu_io(qemu, "hd0", "read -P 0xa1 0 1k") == Outcome(
        ret="", stdout=("Pattern verification failed at offset 0, 1024 bytes",
                        "read 1024/1024 bytes at offset 0"))
    # Lookup errors come back in the HMP return string, CRLF and all.
    assert qemu_io(qemu, "nope", "read 0 1k") == Outcome(
        ret="Error: Cannot find device='' nor node-name='nope'\r\n")


@pytest.mark.qemu
def test_auto_names_canonicalised_and_translated(qemu, binaries, tmp_path):
    make_images(seed_specs()[:2], tmp_path, binaries)
    qemu.execute("blockdev-add", hd_opts(1))   # header backing hd0.img opens as auto nodes
    nodes = qemu.query_nodes()
    assert [n["node-name"] for n in nodes] == ["#block1", "#block0", "hd1", "hd1-file"]
    assert nodes[0]["drv"] == "qcow2" and nodes[1]["drv"] == "file"
    # Canonical names going in are translated: QMP arguments ...
    assert qemu.execute("blockdev-reopen", {"options": [hd_opts(1, backing="#block1")]}) \
        == Outcome(ret={})
    assert qemu.execute("blockdev-del", {"node-name": "#block1"}).error == QmpError(
        "GenericError", "Node '#block1' is busy: node is used as backing hd of 'hd1'")
    assert qemu.execute("blockdev-del", {"node-name": "#block0"}).error == QmpError(
        "GenericError", "Node #block0 is not owned by the monitor")
    # ... and the device token of a qemu-io line.
    assert qemu_io(qemu, "#block1", "read -P 0xa0 0 1M") == Outcome(
        ret="", stdout=("read 1048576/1048576 bytes at offset 0",))
    # A node unknown to QEMU stays as written (and the error text shows it canonically).
    assert qemu.execute("blockdev-del", {"node-name": "#block7"}).error == QmpError(
        "GenericError", "Failed to find node with node-name='#block7'")


@pytest.mark.qemu
def test_names_learned_without_explicit_query(qemu, binaries, tmp_path):
    # The engine may use a canonical name before anyone ran query-named-block-nodes.
    make_images(seed_specs()[:2], tmp_path, binaries)
    qemu.execute("blockdev-add", hd_opts(1))
    assert qemu_io(qemu, "#block1", "read -P 0xa0 0 1k").stdout == (
        "read 1024/1024 bytes at offset 0",)


@pytest.mark.qemu
def test_events_are_collected(qemu):
    assert qemu.drain_events() == []
    qemu.execute("stop")
    assert [e["event"] for e in qemu.drain_events()] == ["STOP"]
    assert qemu.drain_events(wait=0.05) == []
    qemu.execute("cont")
    assert [e["event"] for e in qemu.drain_events(wait=1)] == ["RESUME"]


@pytest.mark.qemu
def test_qmpsync_over_a_listening_unix_socket(binaries, tmp_path):
    # The other way to reach QMP (QemuProcess uses a socketpair): -qmp unix:PATH,server=on,wait=off.
    path = tmp_path / "qmp.sock"
    p = subprocess.Popen([binaries.system, "-M", "none", "-nodefaults", "-display", "none",
                          "-qmp", f"unix:{path},server=on,wait=off"], env=binaries_env(binaries),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        # QEMU bind()s (the file appears) before it listen()s: until then a connect is refused,
        # so retry on "not there yet" (no file, refused) until QEMU listens or the deadline
        deadline = time.monotonic() + 5
        while True:
            qmp = QmpSync()
            try:
                qmp.connect(str(path), timeout=5)
                break
            except QmpGone as e:
                qmp.close()
                if (not isinstance(e.cause, (ConnectionRefusedError, FileNotFoundError))
                        or p.poll() is not None or time.monotonic() > deadline):
                    raise
                time.sleep(0.005)
        with qmp:
            assert "qemu" in qmp.cmd("query-version")["return"]
            assert qmp.cmd("blockdev-del", {"node-name": "nope"}) == {"error": {
                "class": "GenericError", "desc": "Failed to find node with node-name='nope'"}}
            p.kill()
            p.wait()
            with pytest.raises(QmpGone):
                qmp.cmd("query-version")
    finally:
        p.kill()
        p.wait()


def _qemu_on_socketpair(binaries, *extra: str):
    import socket
    a, b = socket.socketpair()
    p = subprocess.Popen([binaries.system, "-M", "none", "-nodefaults", "-display", "none",
                          "-chardev", f"socket,id=q,fd={b.fileno()}", *extra],
                         pass_fds=[b.fileno()], env=binaries_env(binaries),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    b.close()
    return a, p


@pytest.mark.qemu
def test_a_late_reply_is_dropped_and_the_next_command_gets_its_own(binaries):
    # replies carry ids: after a timeout the stale reply must not answer the next command
    a, p = _qemu_on_socketpair(binaries, "-mon", "q,mode=control")
    try:
        with QmpSync() as qmp:
            qmp.connect(a, timeout=5)
            os.kill(p.pid, signal.SIGSTOP)
            with pytest.raises(QmpTimeout):
                qmp.cmd("query-version", timeout=0.3)
            os.kill(p.pid, signal.SIGCONT)
            assert qmp.cmd("query-named-block-nodes") == {"return": []}
            got = qmp.cmds([("query-jobs", None), ("blockdev-del", {"node-name": "x"})])
            assert got == [{"return": []}, {"error": {
                "class": "GenericError", "desc": "Failed to find node with node-name='x'"}}]
    finally:
        p.kill()
        p.wait()


@pytest.mark.qemu
def test_a_memoised_reply_is_the_same_value_until_its_bytes_change(binaries):
    # QmpSync(memo=...): the graph query's reply is decoded once per distinct reply
    a, p = _qemu_on_socketpair(binaries, "-mon", "q,mode=control")
    try:
        with QmpSync(memo=("query-named-block-nodes",)) as qmp:
            qmp.connect(a, timeout=5)
            assert qmp.cmd("blockdev-add", {"driver": "null-co", "node-name": "n0"}) == {"return": {}}
            first = qmp.cmd("query-named-block-nodes")["return"]
            qmp.cmd("blockdev-del", {"node-name": "nope"})          # fails: nothing changes
            again = qmp.cmd("query-named-block-nodes")["return"]
            assert again is first and [n["node-name"] for n in again] == ["n0"]
            # other commands are never memoised, even with the same reply
            assert qmp.cmd("query-jobs")["return"] is not qmp.cmd("query-jobs")["return"]
            assert qmp.cmd("blockdev-add", {"driver": "null-co", "node-name": "n1"}) == {"return": {}}
            changed = qmp.cmd("query-named-block-nodes")["return"]
            assert changed is not first and [n["node-name"] for n in changed] == ["n1", "n0"]
            qmp.cmd("blockdev-del", {"node-name": "n1"})
            # back to an earlier graph: its value from then
            assert qmp.cmd("query-named-block-nodes")["return"] is first
    finally:
        p.kill()
        p.wait()


def test_a_command_past_qemus_json_token_limit_is_refused_before_it_goes_out():
    # QEMU's streamer would answer it more than once, and replies are matched by their order;
    # the check comes before anything is written (this QmpSync is not even connected)
    with QmpSync() as qmp:
        with pytest.raises(HarnessError, match=r"blockdev-add: a command of \d+ bytes may pass "
                                               "QEMU's JSON limit of 2097152 tokens; refused"):
            qmp.send([("blockdev-add", {"driver": "null-co", "x": [0] * (1 << 20)})])
        with pytest.raises(QmpGone):     # a smaller one goes on to the (missing) socket
            qmp.send([("blockdev-add", {"driver": "null-co", "x": [0] * 1000})])


@pytest.mark.qemu
def test_an_unchanged_graph_reply_is_canonicalised_once_and_a_change_is_seen(qemu):
    assert qemu.execute("blockdev-add", {"driver": "raw", "node-name": "r",
                                         "file": {"driver": "null-co"}}).ok    # #block0
    nodes = qemu.query_nodes()
    assert [n["node-name"] for n in nodes] == ["r", "#block0"]
    assert qemu.execute("blockdev-del", {"node-name": "nope"}).error is not None
    assert qemu.query_nodes() is nodes
    assert qemu.execute("blockdev-add", {"driver": "null-co", "node-name": "n1"}).ok
    assert [n["node-name"] for n in qemu.query_nodes()] == ["n1", "r", "#block0"]


@pytest.mark.qemu
def test_a_peer_that_is_no_qmp_monitor_is_qmp_gone(binaries):
    # the wrong socket (an HMP monitor greets with a text line): one clear error, no hang
    a, p = _qemu_on_socketpair(binaries, "-mon", "q,mode=readline")
    try:
        qmp = QmpSync()
        with pytest.raises(QmpGone, match="malformed QMP message"):
            qmp.connect(a, timeout=5)
        qmp.close()
    finally:
        p.kill()
        p.wait()


@pytest.mark.qemu
def test_sigkill_is_a_crash(qemu):
    qemu.execute("query-version")
    os.kill(qemu.pid, signal.SIGKILL)
    with pytest.raises(QemuCrash) as info:
        qemu.execute("query-version")
    assert info.value.signal == signal.SIGKILL and info.value.command == "query-version"
    with pytest.raises(HarnessError):     # the process is spent
        qemu.execute("query-version")


@pytest.mark.qemu
def test_sigstop_is_a_hang_and_close_cleans_up(binaries, tmp_path):
    fds_before = set(os.listdir("/proc/self/fd"))
    q = QemuProcess(binaries, tmp_path, timeout=0.5).start()
    pid = q.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(QemuHang) as info:
            q.execute("query-named-block-nodes")
        assert 0.5 <= time.monotonic() - t0 < 1.5
        assert info.value.timeout == 0.5
    finally:
        assert q.close() == -signal.SIGKILL
    with pytest.raises(ChildProcessError):   # reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert sorted(os.listdir(tmp_path)) == ["qemu.stderr.log", "qemu.stdout.log"]


@pytest.mark.qemu
def test_clean_close_quits(binaries, tmp_path):
    with QemuProcess(binaries, tmp_path) as q:
        q.execute("query-version")
    assert q.close() == 0


@pytest.mark.qemu
def test_launch_failure_is_a_harness_error(binaries, tmp_path):
    with pytest.raises(HarnessError, match="invalid option"):
        QemuProcess(binaries, tmp_path, extra_args=["-bogus-option"]).start()
    with pytest.raises(HarnessError, match="cannot launch"):
        QemuProcess(attrs.evolve(binaries, system=str(tmp_path / "missing")), tmp_path).start()


FAKE_QEMU = r"""
import json, os, re, socket, sys
# Just enough QMP to stand in for QEMU: the fd comes from -chardev socket,id=qmp,fd=N.
sock = socket.socket(fileno=int(re.search(r"fd=(\d+)", " ".join(sys.argv)).group(1)))
def send(obj):
    sock.sendall(json.dumps(obj).encode() + b"\n")
seen = set()
def handle(msg):
    tag = {"id": msg["id"]} if "id" in msg else {}
    reply = {"return": {}, **tag}
    seen.add(msg["execute"])
    if msg["execute"] == "block-stream":   # a job command refused
        reply = {"error": {"class": "GenericError", "desc": "no"}, **tag}
    if msg["execute"] == "query-jobs" and "block-stream" in seen:   # dies in the query behind
        os._exit(4)
    if msg["execute"] == "assert":     # a glibc assertion message, but keep running
        sys.stderr.write("qemu-system-x86_64: ../block.c:42: f: Assertion `x' failed.\n")
        sys.stderr.flush()
    send(reply)
    if msg["execute"] == "exit":       # reply, then die
        os._exit(3)
send({"QMP": {"version": {"qemu": {"major": 0, "minor": 0, "micro": 0}, "package": ""},
              "capabilities": []}})
buf, decoder = "", json.JSONDecoder()
while data := sock.recv(65536):        # QMP messages need not end with a newline
    buf += data.decode()
    while buf.strip():
        try:
            msg, end = decoder.raw_decode(buf.lstrip())
        except ValueError:
            break
        buf = buf.lstrip()[end:]
        handle(msg)
"""


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch) -> LocalBinaries:
    # the fake answers no `-help`, so it has no chroot option: run it unconfined
    monkeypatch.setenv("BLOCKFUZZ_NO_CHROOT", "1")
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    script.chmod(0o755)
    return LocalBinaries(str(script), "/bin/false", "/bin/false", {})


def test_assertion_text_on_stderr_is_a_crash(fake_qemu, tmp_path):
    with QemuProcess(fake_qemu, tmp_path, timeout=2) as q:
        assert q.execute("ping") == Outcome(ret={})
        with pytest.raises(QemuCrash) as info:
            q.execute("assert")
        assert "Assertion `x' failed." in info.value.stderr_tail
        assert info.value.command == "assert"


def test_a_crash_in_the_poll_behind_a_refused_job_command_is_the_polls(fake_qemu, tmp_path):
    # QemuProcess.begin() sends query-jobs behind a job command; the command is refused (no
    # job, so no settle loop), and QEMU dies in that query-jobs: the crash is the query's,
    # not the refused command's
    with QemuProcess(fake_qemu, tmp_path, timeout=2) as q:
        pending = q.begin("block-stream", {"device": "x"})
        assert pending is not None and pending.behind == "query-jobs"
        with pytest.raises(QemuCrash) as info:
            q.finish(pending)
        assert info.value.command == "query-jobs" and info.value.returncode == 4


def test_exit_right_after_reply_is_a_crash(fake_qemu, tmp_path):
    with QemuProcess(fake_qemu, tmp_path, timeout=2) as q:
        with pytest.raises(QemuCrash) as info:
            q.execute("exit")     # caught here if the exit beats our check (a race) ...
            time.sleep(0.2)
            q.execute("ping")     # ... else before the next command is sent
        assert info.value.returncode == 3 and info.value.signal is None


@pytest.mark.qemu
def test_images_backing_and_patterns_read_back(qemu, binaries, tmp_path):
    make_images(seed_specs(), tmp_path, binaries)
    qemu.execute("blockdev-add", hd_opts(1))
    nodes = {n["node-name"]: n for n in qemu.query_nodes()}
    assert nodes["hd1"]["backing_file"] == "hd0.img"            # relative name in the header
    assert nodes["hd1"]["image"]["virtual-size"] == 3145728     # inherited from the backing file
    for pattern, offset in [(0xa0, "0"), (0xa1, "1M"), (0x00, "2M")]:
        out = qemu_io(qemu, "hd1", f"read -P {pattern:#x} {offset} 1M")
        assert out.stdout == (f"read 1048576/1048576 bytes at offset {_bytes(offset)}",)


def _bytes(s: str) -> int:
    return int(s[:-1]) << 20 if s.endswith("M") else int(s)


@pytest.mark.qemu
def test_template_cache_hit_gives_identical_files(binaries, tmp_path, monkeypatch):
    raw = {"file": "r.img", "format": "raw", "size": 8 << 20,
           "writes": [{"pattern": 7, "offset": 4 << 20, "length": 4096}]}
    specs = seed_specs() + [ImageSpec.from_json(raw)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    make_images(specs, tmp_path / "a", binaries)
    # A hit runs no qemu-img / qemu-io: every tool run goes through images._run, so count those
    # (not the wall time, which depends on the machine's load)
    import fuzz.images as images_mod

    real_run, ran = images_mod._run, []
    monkeypatch.setattr(images_mod, "_run", lambda argv, *a: ran.append(argv) or real_run(argv, *a))
    make_images(specs, tmp_path / "b", binaries)
    assert ran == []
    for s in specs:
        a, b = tmp_path / "a" / s.file, tmp_path / "b" / s.file
        assert a.read_bytes() == b.read_bytes(), s.file
        assert os.stat(a).st_blocks == os.stat(b).st_blocks, f"{s.file}: holes not kept"


@pytest.mark.qemu
def test_bad_image_write_is_a_harness_error(binaries, tmp_path):
    spec = ImageSpec("x.img", "raw", 4096, writes=(Write(1, 4096, 512),))
    with pytest.raises(HarnessError):
        make_images([spec], tmp_path, binaries, cache=False)


@pytest.mark.qemu
def test_a_failure_after_the_commands_reply_is_the_pipelined_querys(binaries, tmp_path):
    """execute(..., then_query_nodes=True) sends the graph query behind the command.  HMP
    `quit` answers and then QEMU exits: the command's reply stands (no crash raised by
    execute), and whatever happened to the query is raised by query_nodes() as the query's,
    as two separate calls would have it."""
    # (the sandbox refuses HMP other than qemu-io; this test needs `quit`)
    with QemuProcess(binaries, tmp_path, check_paths=False) as qemu:
        out = qemu.execute("human-monitor-command", {"command-line": "quit"},
                           then_query_nodes=True)
        assert out.ok
        with pytest.raises(QemuCrash) as info:
            qemu.query_nodes()
            qemu.execute("query-version")   # QEMU answered the query before it went
        assert info.value.command in ("query-named-block-nodes", "query-version")
