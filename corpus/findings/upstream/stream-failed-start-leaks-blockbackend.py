#!/usr/bin/env python3
# Usage: python3 stream-failed-start-leaks-blockbackend.py /path/to/qemu-system-x86_64
#
# QEMU bug (7.2.22, 10.0.2 and 11.1.3; the 10.2.0 source has the same code):
# a block-stream that fails in stream_start() after it created the job's
# BlockBackend (s->blk, on the copy-on-read filter) leaks that BlockBackend.
# The error path (job_early_fail(), bdrv_cor_filter_drop()) never unrefs
# s->blk: only stream_clean() does, and a job that never started is not
# cleaned. The drop moves the leaked BlockBackend from the filter onto the
# streamed node, which keeps for good an unnamed parent holding
# CONSISTENT_READ and sharing no RESIZE (x-debug-query-block-graph shows a
# block-backend with name '' and a 'root' edge). Here the stream fails on its
# intermediate node (another writer, 'user', uses 'base'); after that nothing
# but the monitor uses 'top', yet block_resize of it fails ('resize' unshared
# by an unnamed block device) and blockdev-del of it fails with 'Node top is
# in use'. A blockdev-snapshot onto it fails ('The overlay is already in
# use'), and one with it as 'node' moves the leak to the overlay. Found by
# bench/speed_bench.py on 11.1.3 (2026-12-02, seed 11: a 75-step disagreement
# on 'The overlay is already in use', 10 steps after blockfuzz minimize);
# this trace is written by hand. The model predicts the leak
# (models.jobs.block_stream, Graph.leaked_blks), so campaigns agree with
# QEMU; the expectations here are what QEMU should answer.
#
# Affected QEMU versions (as observed): 7.2 (7.2.22), 10.0 (10.0.2), 11.1
# (11.1.3).
#
# Exported by blockfuzz from
# corpus/findings/stream-failed-start-leaks-blockbackend.json. Expected
# replies are the trace's written expectations, else what blockfuzz's
# reference model predicts for QEMU 11.1; this script exits 1 while the bug
# is there.
#
# Needs Python 3.8+ and the qemu.qmp package (pip install qemu.qmp), nothing else.
# qemu-img and qemu-io: --qemu-img/--qemu-io, else $QEMU_IMG_PROG/$QEMU_IO_PROG, else
# beside the emulator, else $PATH. Exit status: 0 QEMU answered every step as
# expected (the bug is fixed), 1 it did not (a different reply, a crash or a hang),
# 2 the reproducer could not run.

MACHINE = 'none'

# The disk images, created in order in an empty directory: qemu-img create -f FORMAT
# [-b BACKING -F BACKING_FORMAT] FILE [SIZE], then qemu-io -c 'write -P PATTERN OFFSET
# LENGTH' for each write
IMAGES = [
    {'file': 'hd0.img', 'format': 'qcow2', 'size': 512},
    {'file': 'hd1.img', 'format': 'qcow2', 'size': 512},
    {'file': 'hd2.img', 'format': 'qcow2', 'size': 512},
]

# The steps: a QMP command and what QEMU should answer ('stdout': the lines HMP qemu-io
# prints), or a check of query-named-block-nodes / query-jobs. '#block<N>' names the
# N-th anonymous node (QEMU appends two random digits to it)
STEPS = [
    {
        'qmp': 'blockdev-add',
        'args': {
            'driver': 'qcow2',
            'node-name': 'base',
            'file': {'driver': 'file', 'filename': 'hd0.img'},
        },
        'expect': {'return': {}},
    },
    {
        'qmp': 'blockdev-add',
        'args': {
            'driver': 'qcow2',
            'node-name': 'top',
            'file': {'driver': 'file', 'filename': 'hd1.img'},
            'backing': 'base',
        },
        'expect': {'return': {}},
    },
    {
        'qmp': 'blockdev-add',
        'args': {
            'driver': 'qcow2',
            'node-name': 'user',
            'file': {'driver': 'file', 'filename': 'hd2.img'},
        },
        'expect': {'return': {}},
    },
    {
        'qmp': 'blockdev-reopen',
        'args': {
            'options': [
                {'driver': 'qcow2', 'node-name': 'user', 'file': 'base'},
            ],
        },
        'expect': {'return': {}},
    },
    {
        'qmp': 'block-stream',
        'args': {'device': 'top', 'job-id': 's0'},
        'why': (
            "the stream's own checks refuse it: 'user' writes to 'base' "
            "(qcow2 storage child), which the stream's intermediate-node "
            'child does not share; the job goes created -> null'
        ),
        'expect': {
            'error': {
                'class': 'GenericError',
                'desc': (
                    "Permission conflict on node 'base': permissions 'write, "
                    "resize' are both required by node 'user' (uses node "
                    "'base' as 'file' child) and unshared by stream job 's0' "
                    "(uses node 'base' as 'intermediate node' child)."
                ),
            },
        },
    },
    {
        'qmp': 'blockdev-del',
        'args': {'node-name': 'user'},
        'why': "'user' was the only other user of the chain",
        'expect': {'return': {}},
    },
    {
        'qmp': 'block_resize',
        'args': {'node-name': 'top', 'size': 1024},
        'why': (
            'nothing but the monitor uses top now; QEMU refuses: the '
            "stream's leaked BlockBackend shares no resize"
        ),
        'expect': {'return': {}},
    },
    {
        'qmp': 'blockdev-del',
        'args': {'node-name': 'top'},
        'why': (
            "QEMU refuses: 'Node top is in use' (the leaked BlockBackend "
            'makes bdrv_has_blk() true)'
        ),
        'expect': {'return': {}},
    },
]

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    from qemu.qmp import ExecuteError, QMPClient
except ImportError:
    sys.exit("this reproducer needs the qemu.qmp package: pip install qemu.qmp")

JOB_COMMANDS = {"block-commit", "block-job-cancel", "block-job-complete", "block-job-pause", "block-job-resume", "block-stream", "blockdev-create", "blockdev-mirror", "job-cancel", "job-complete", "job-dismiss", "job-finalize", "job-pause", "job-resume"}
SETTLED = {"pending", "ready", "concluded"}
STATS = re.compile(r"\S+ (bytes|[KMGTPE]iB), \d+ ops; .* ops/sec\)"
                   r"|\d+,\d+,[\d:.]+,[\d.einfa]+,[\d.einfa]+")
REAL_AUTO = re.compile(r"#block(\d+)\d\d(?!\d)")
CANONICAL_AUTO = re.compile(r"#block\d+")


class Failed(Exception):
    """QEMU died or hung: no further step can run."""


def canonical(value):
    if isinstance(value, str):
        return REAL_AUTO.sub(r"#block\1", value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def projected(nodes):
    """query-named-block-nodes as compared: canonical names, no image/actual-size"""
    def image(info):
        info = {k: v for k, v in info.items() if k != "actual-size"}
        if "backing-image" in info:
            info["backing-image"] = image(info["backing-image"])
        return info
    return canonical([dict(n, image=image(n["image"])) if "image" in n else n for n in nodes])


def dictpath(d, path):
    for part in path.split("/"):
        if not isinstance(d, dict) or part not in d:
            return False, None
        d = d[part]
    return True, d


def show(value):
    return json.dumps(value, sort_keys=True)


def tool(name, explicit, env, qemu):
    if explicit:
        return explicit
    if os.environ.get(env):
        return os.environ[env]
    beside = os.path.join(os.path.dirname(os.path.abspath(qemu)), name)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found: pass --{name} PATH or set ${env}")
    return found


def make_images(workdir, qemu_img, qemu_io):
    for spec in IMAGES:
        argv = [qemu_img, "create", "-q", "-f", spec["format"]]
        if spec.get("backing-file"):
            argv += ["-b", spec["backing-file"]]
            if spec.get("backing-format"):
                argv += ["-F", spec["backing-format"]]
        argv.append(spec["file"])
        if spec.get("size") is not None:
            argv.append(str(spec["size"]))
        run_tool(argv, workdir)
        if spec.get("writes"):
            argv = [qemu_io, "-f", spec["format"]]
            for w in spec["writes"]:
                argv += ["-c", f"write -P 0x{w['pattern']:02x} {w['offset']} {w['length']}"]
            run_tool(argv + [spec["file"]], workdir)


def run_tool(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"cannot create the images: {' '.join(argv)}: {p.stdout}{p.stderr}", file=sys.stderr)
        sys.exit(2)


class Qemu:
    def __init__(self, binary, workdir, timeout):
        self.binary, self.workdir, self.timeout = binary, workdir, timeout
        self.sockdir = tempfile.mkdtemp(prefix="qmp-")
        self.sock = os.path.join(self.sockdir, "qmp.sock")
        self.stdout_path = os.path.join(workdir, "qemu.stdout.log")
        self.stderr_path = os.path.join(workdir, "qemu.stderr.log")
        self.names = {}        # canonical -> real auto node names
        self.jobs_possible = False
        self.hung = False
        self.proc = None
        self.qmp = QMPClient("reproducer")

    def argv(self):
        argv = [self.binary, "-M", MACHINE, "-nodefaults", "-display", "none",
                "-qmp", f"unix:{self.sock},server=on,wait=off"]
        if MACHINE != "none":
            # the guest never runs; a relocated installation's firmware is in ../share
            argv += ["-accel", "tcg", "-S"]
            share = os.path.join(os.path.dirname(os.path.abspath(self.binary)), "..", "share")
            for data in ("seabios", "qemu"):
                if os.path.isdir(os.path.join(share, data)):
                    argv += ["-L", os.path.normpath(os.path.join(share, data))]
        return argv

    async def start(self):
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                print(f"QEMU did not start (exit status {self.proc.returncode}):\n"
                      f"{self.stderr_tail()}", file=sys.stderr)
                sys.exit(2)
            try:
                await self.qmp.connect(self.sock)
                return
            except Exception:
                if time.monotonic() > deadline:
                    print("QEMU's QMP socket never answered", file=sys.stderr)
                    sys.exit(2)
                await asyncio.sleep(0.02)

    def stderr_tail(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def died(self, during):
        try:
            rc = self.proc.wait(1)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is not None and rc < 0:
            try:
                how = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                how = f"killed by signal {-rc}"
        else:
            how = f"exited with status {rc}" if rc is not None else "closed its QMP socket"
        tail = self.stderr_tail().strip()
        return Failed(f"QEMU {how} during {during}" + (f"\n  stderr: {tail}" if tail else ""))

    async def raw(self, cmd, args=None):
        """The reply as QMP sends it: {"return": ...} or {"error": {...}}"""
        try:
            ret = await asyncio.wait_for(self.qmp.execute(cmd, args), self.timeout)
            reply = {"return": ret}
        except ExecuteError as e:
            reply = {"error": {"class": e.received["error"]["class"],
                               "desc": e.received["error"]["desc"]}}
        except asyncio.TimeoutError:
            self.hung = True
            raise Failed(f"QEMU did not answer {cmd} within {self.timeout:g} s (hang)") from None
        except Exception:
            raise self.died(cmd) from None
        if self.proc.poll() is not None and cmd != "quit":
            raise self.died(cmd)
        return reply

    def to_real(self, value):
        if isinstance(value, str):
            return self.names.get(value, value)
        if isinstance(value, dict):
            return {k: self.to_real(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.to_real(v) for v in value]
        return value

    def mentions(self, value):
        if isinstance(value, str):
            return [value] if CANONICAL_AUTO.fullmatch(value) else []
        if isinstance(value, dict):
            return [m for v in value.values() for m in self.mentions(v)]
        if isinstance(value, list):
            return [m for v in value for m in self.mentions(v)]
        return []

    async def nodes(self, during):
        """The projected graph, or None (printed) if QEMU cannot report it"""
        reply = await self.raw("query-named-block-nodes")
        if "return" not in reply:
            print(f"{during}: query-named-block-nodes failed: {show(canonical(reply))}: DIFFERENT")
            return None
        for node in reply["return"]:
            name = node.get("node-name", "")
            if canonical(name) != name:
                self.names[canonical(name)] = name
        return projected(reply["return"])

    async def command(self, cmd, args):
        """Run one step's command: (canonical reply, qemu-io lines)"""
        hmp = cmd == "human-monitor-command"
        line = args.get("command-line", "") if hmp else ""
        head, quote, rest = line.partition('"')
        wanted = self.mentions(args) + (CANONICAL_AUTO.findall(head) if hmp else [])
        if any(n not in self.names for n in wanted):
            await self.nodes(f"the names for {cmd}")
        wire = self.to_real(args)
        if hmp:
            head = CANONICAL_AUTO.sub(lambda m: self.names.get(m[0], m[0]), head)
            wire = dict(wire, **{"command-line": head + quote + rest})
        before = os.path.getsize(self.stdout_path)
        reply = await self.raw(cmd, wire or None)
        if cmd in JOB_COMMANDS and "return" in reply:
            self.jobs_possible = True
        if self.jobs_possible:
            await self.settle(cmd)
        with open(self.stdout_path, "rb") as f:
            f.seek(before)
            text = f.read().decode("utf-8", "replace")
        lines = [l for l in text.split("\n")[:-1] if not STATS.fullmatch(l)] if text else []
        return canonical(reply), canonical(lines)

    async def settle(self, cmd):
        """Wait until each block job is pending, ready or concluded, or gone"""
        deadline = time.monotonic() + self.timeout
        while True:
            jobs = (await self.raw("query-jobs")).get("return", [])
            if not jobs:
                self.jobs_possible = False
                return
            if all(j.get("status") in SETTLED for j in jobs):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{j.get('id')}={j.get('status')}" for j in jobs)
                self.hung = True
                raise Failed(f"block jobs never settled after {cmd} (hang): {states}")
            await asyncio.sleep(0.005)

    async def stop(self):
        """quit; a crash on the way out is a failure too"""
        failure = None
        if self.proc.poll() is None and not self.hung:
            try:
                await asyncio.wait_for(self.qmp.execute("quit"), self.timeout)
            except Exception:
                pass
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                failure = Failed("QEMU did not exit after quit")
        if self.proc.poll() is not None and self.proc.returncode < 0 and failure is None:
            failure = self.died("quit")
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            await self.qmp.disconnect()
        except Exception:
            pass
        shutil.rmtree(self.sockdir, ignore_errors=True)
        return failure


async def run_steps(qemu):
    """Run every step; returns the number of differences"""
    differences = 0
    snapshots = {}
    await qemu.start()
    try:
        for number, step in enumerate(STEPS, 1):
            if "qmp" in step:
                cmd = step["qmp"]
                what = f"step {number} ({cmd})"
                want = {k: v for k, v in step["expect"].items() if k in ("return", "error")}
                if "stdout" in step["expect"]:
                    want["stdout"] = step["expect"]["stdout"]
                try:
                    reply, lines = await qemu.command(cmd, step.get("args", {}))
                except Failed as e:
                    print(f"{what}: expected {show(want)}, got: {e}")
                    raise
                got = dict(reply)
                if "stdout" in want:
                    got["stdout"] = lines
                print(f"{what}: expected {show(want)}, got {show(got)}: "
                      f"{'ok' if got == want else 'DIFFERENT'}")
                # as the fuzzer does: the graph query belongs to the step
                graph = await qemu.nodes(what)
                same = got == want and graph is not None
                if "graph" in step:
                    same_graph = graph == step["graph"]
                    print(f"{what}: query-named-block-nodes "
                          f"{'as expected' if same_graph else 'DIFFERENT: ' + show(graph)}")
                    same = same and same_graph
                differences += not same
                continue
            what = f"step {number}"
            if "snapshot" in step:
                snapshots[step["snapshot"]] = await qemu.nodes(what)
                print(f"{what}: remember the graph as {step['snapshot']!r}")
                continue
            kind = step["assert"]
            if kind == "job":
                jobs = (await qemu.raw("query-jobs")).get("return", [])
                job = next((j for j in jobs if j.get("id") == step["id"]), None)
                got = None if job is None else job.get("status")
                want = None if step.get("absent") else step["status"]
                label = f"job {step['id']} status"
            elif kind == "graph-equals":
                got = await qemu.nodes(what)
                want = snapshots.get(step["snapshot"])
                label = f"graph equals {step['snapshot']!r}"
            else:
                nodes = await qemu.nodes(what) or []
                node = next((n for n in nodes if n.get("node-name") == step["node"]), None)
                if "path" not in step:
                    got = "absent" if node is None else "present"
                    want = "absent" if step.get("absent") else "present"
                    label = f"node {step['node']}"
                else:
                    present, value = dictpath(node, step["path"]) if node else (False, None)
                    got = value if present else "<absent>"
                    want = "<absent>" if step.get("absent") else step["equals"]
                    label = f"node {step['node']} {step['path']}"
            same = got == want and type(got) is type(want)
            shown = (lambda v: "(the snapshot)") if kind == "graph-equals" else show
            print(f"{what}: {label}: expected {shown(want)}, got {shown(got) if not same else shown(want)}: "
                  f"{'ok' if same else 'DIFFERENT'}")
            differences += not same
    finally:
        failure = await qemu.stop()
    if failure is not None:
        raise failure
    return differences


def main():
    p = argparse.ArgumentParser(description=__doc__ or "blockfuzz reproducer")
    p.add_argument("qemu", help="the qemu-system-x86_64 to test")
    p.add_argument("--qemu-img", help="qemu-img (default: $QEMU_IMG_PROG, beside QEMU, $PATH)")
    p.add_argument("--qemu-io", help="qemu-io (default: $QEMU_IO_PROG, beside QEMU, $PATH)")
    p.add_argument("--timeout", type=float, default=10.0, help="per command (default 10 s)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (images, logs)")
    args = p.parse_args()
    if os.sep not in args.qemu:
        args.qemu = shutil.which(args.qemu) or args.qemu
    if not os.access(args.qemu, os.X_OK):
        sys.exit(f"{args.qemu}: not an executable")
    args.qemu = os.path.abspath(args.qemu)   # QEMU and the tools run in the work directory
    qemu_img = os.path.abspath(tool("qemu-img", args.qemu_img, "QEMU_IMG_PROG", args.qemu))
    qemu_io = os.path.abspath(tool("qemu-io", args.qemu_io, "QEMU_IO_PROG", args.qemu))
    workdir = tempfile.mkdtemp(prefix="blockfuzz-repro-")
    status = 2
    try:
        make_images(workdir, qemu_img, qemu_io)
        try:
            differences = asyncio.run(run_steps(Qemu(args.qemu, workdir, args.timeout)))
        except Failed as e:
            print(f"FAILED: {str(e).splitlines()[0]}")
            status = 1
        else:
            if differences:
                print(f"FAILED: {differences} step(s) not as expected: the bug is there")
                status = 1
            else:
                print("PASSED: every step as expected")
                status = 0
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
