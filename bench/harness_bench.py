"""Micro-benchmark of the QEMU harness (not a test).

    .venv/bin/python bench/harness_bench.py                       # the fetched QEMUs (make qemu)
    .venv/bin/python bench/harness_bench.py /path/to/qemu-system-x86_64 ...

For each QEMU it prints median and 90th percentile of:

* start -> QMP ready (QemuProcess.start), and close (quit + reap);
* round trips of a trivial command (query-version) and of query-named-block-nodes on the
  iotest-245 graph (hd1 over hd0 via its header + hd2: 6 nodes), three ways: a bare blocking
  socket (the floor), QmpSync, and QemuProcess.execute (adds name translation, stdout/stderr
  bookkeeping, crash checks and canonicalisation);
* an HMP qemu-io read (includes stdout capture);
* creating the seed image set: cold (qemu-img + qemu-io) vs from the template cache.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.statemachine import SEED_IMAGES as _SEED
from fuzz.images import ImageSpec, make_images  # noqa: E402
from fuzz.qemu import QemuProcess, binaries_env  # noqa: E402

def _default_qemus() -> list[str]:
    from fuzz.qemufetch import installed
    return [str(i.binary("system")) for v in ("7.2", "10.0") if (i := installed(v)) is not None]


DEFAULT_QEMUS = _default_qemus()

SEED_IMAGES = [i.to_json() for i in _SEED]  # iotest 245's setUp


def binaries_for(system: str):
    from fuzz.qemufetch import resolve_qemu
    return resolve_qemu(system)


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def report(label: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"  {label:<44} median {statistics.median(ms):8.3f} ms   p90 {p90:8.3f} ms   (n={len(ms)})")


def hd(i: int) -> dict:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": {"driver": "file", "node-name": f"hd{i}-file", "filename": f"hd{i}.img"}}


def raw_socket_rtt(b, workdir: str, n: int) -> dict[str, list[float]]:
    """The floor: same QEMU command line, a blocking socket and json, nothing else."""
    ours, theirs = socket.socketpair()
    argv = [b.system, "-no-user-config", "-nodefaults", "-display", "none", "-M", "none",
            "-chardev", f"socket,id=qmp,fd={theirs.fileno()}", "-mon", "chardev=qmp,mode=control"]
    p = subprocess.Popen(argv, cwd=workdir, env=binaries_env(b), pass_fds=[theirs.fileno()],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    theirs.close()
    f = ours.makefile("rb")

    def call(cmd: str, args: dict | None = None) -> dict:
        msg = {"execute": cmd, **({"arguments": args} if args else {})}
        ours.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = json.loads(f.readline())
            if "event" not in reply:
                return reply

    try:
        f.readline()
        call("qmp_capabilities")
        call("blockdev-add", hd(1))
        call("blockdev-add", hd(2))
        return {"query-version": timed(lambda: call("query-version"), n),
                "query-named-block-nodes": timed(lambda: call("query-named-block-nodes"), n)}
    finally:
        call("quit")
        p.wait()
        f.close()
        ours.close()


def bench(system: str, n_start: int, n_rtt: int, n_img: int) -> None:
    b = binaries_for(system)
    specs = [ImageSpec.from_json(d) for d in SEED_IMAGES]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        # start / close
        starts, closes = [], []
        version = None
        for _ in range(n_start):
            q = QemuProcess(b, tmp)
            t0 = time.perf_counter()
            q.start()
            t1 = time.perf_counter()
            version = version or q.version()
            t2 = time.perf_counter()
            q.close()
            starts.append((t1 - t0) * 1000)
            closes.append((time.perf_counter() - t2) * 1000)
        print(f"QEMU {'.'.join(map(str, version))}  ({system})")
        report("start -> QMP ready", starts)
        report("close (quit + reap)", closes)

        # image sets
        cold = []
        for i in range(n_img):
            d = os.path.join(tmp, f"cold{i}")
            os.mkdir(d)
            t0 = time.perf_counter()
            make_images(specs, d, b, cache=False)
            cold.append((time.perf_counter() - t0) * 1000)
        report("seed image set, cold (3x qemu-img, 3x qemu-io)", cold)
        make_images(specs, tmp, b)            # primes the cache (and is the set used below)
        cached = []
        for i in range(n_img * 5):
            d = os.path.join(tmp, f"hot{i}")
            os.mkdir(d)
            t0 = time.perf_counter()
            make_images(specs, d, b)
            cached.append((time.perf_counter() - t0) * 1000)
        report("seed image set, template cache hit", cached)

        # round trips
        raw = raw_socket_rtt(b, tmp, n_rtt)
        with QemuProcess(b, tmp) as q:
            q.execute("blockdev-add", hd(1))
            q.execute("blockdev-add", hd(2))
            qmp = q._qmp  # noqa: SLF001 - benchmark peeks at the facade underneath
            nodes = len(q.query_nodes())
            for cmd in ("query-version", "query-named-block-nodes"):
                what = cmd + (f" ({nodes} nodes)" if cmd.startswith("query-named") else "")
                print(f"  {what}")
                report("  raw blocking socket", raw[cmd])
                report("  QmpSync.cmd", timed(lambda: qmp.cmd(cmd), n_rtt))
                report("  QemuProcess.execute", timed(lambda: q.execute(cmd), n_rtt))
            hmp = {"command-line": 'qemu-io #block1 "read -P 0xa0 0 4k"'}
            report("HMP qemu-io read 4k (execute)", timed(lambda: q.execute(
                "human-monitor-command", hmp), n_rtt // 4))
        print()


def main(argv: list[str]) -> None:
    for system in argv or DEFAULT_QEMUS:
        bench(system, n_start=30, n_rtt=2000, n_img=10)


if __name__ == "__main__":
    main(sys.argv[1:])
