"""What one QMP request costs QEMU, by its size (a benchmark, not a test).

    .venv/bin/python bench/qmp_cost_bench.py [--qemu PATH] [--rounds N]

Starts one ``-M none`` QEMU, sends each probe ``--rounds`` times (one request, wait for its
reply) and prints QEMU's CPU time per request (utime + stime of the process, from
``/proc/PID/stat``) and the wall time per round trip:

* ``query-jobs`` and ``query-version``: the floor of one request;
* ``query-jobs`` padded with 100 and 400 blanks: the cost of a request byte.  QEMU's QMP
  monitor reads one byte per main-loop iteration (``monitor_can_read()`` returns 1), so every
  byte of a request is a wake-up of the monitor's iothread;
* ``query-named-block-nodes`` over six nodes (a filter chain of depth 3), nested and with
  ``flat: true``: what the step's graph query costs, and whether ``flat`` would save any.

Measured 2026-12-02 on QEMU 11.1.3 here: about 4 µs of QEMU CPU per request byte (query-jobs
0.22 ms, +400 blanks 1.84 ms); the graph query 0.41 ms nested, 0.49 ms flat (its 26 bytes
of arguments cost more than the nesting it saves).  A campaign step sends about 225 bytes
(speed_bench, seed 11: blockdev-add 76, the graph query 48, query-jobs 17 per checked step),
so reading its requests is about 0.85 ms of QEMU's 1.3 to 1.6 ms CPU per checked step.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fuzz.qemu import binaries_env
from fuzz.qemufetch import resolve_qemu
from fuzz.qmpsync import QmpSync


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qemu", help="qemu-system binary or version (default: as blockfuzz run)")
    ap.add_argument("--rounds", type=int, default=1500)
    a = ap.parse_args()
    binaries = resolve_qemu(a.qemu)
    with tempfile.TemporaryDirectory(prefix="blockfuzz-bench-") as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        proc = subprocess.Popen([os.fspath(binaries.system), "-M", "none", "-nodefaults",
                                 "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"],
                                stdout=subprocess.DEVNULL, env=binaries_env(binaries))
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(f"bench: QEMU did not start (exit {proc.poll()})", file=sys.stderr)
                    return 2
                time.sleep(0.02)
            qmp = QmpSync()
            qmp.connect(sock)

            def probe(label: str, wire: bytes) -> None:
                c0, t0 = _cpu(proc.pid), time.perf_counter()
                for _ in range(a.rounds):
                    # (sent by hand, to send exactly these bytes: QmpSync numbers its
                    # commands and takes the n-th reply for the n-th)
                    number = next(qmp._ids)
                    qmp._send(wire, label)
                    qmp._reply(number, label, {}, time.monotonic() + 10, 10)
                c1, t1 = _cpu(proc.pid), time.perf_counter()
                print(f"  {label:42s} {len(wire):5d} B   QEMU CPU {1e3 * (c1 - c0) / a.rounds:6.3f} ms"
                      f"   wall {1e3 * (t1 - t0) / a.rounds:6.3f} ms")

            print(f"{binaries.system}: {a.rounds} rounds each")
            probe("query-jobs", b'{"execute":"query-jobs"}')
            probe("query-version", b'{"execute":"query-version"}')
            probe("query-jobs + 100 blanks", b'{"execute":"query-jobs"' + b" " * 100 + b"}")
            probe("query-jobs + 400 blanks", b'{"execute":"query-jobs"' + b" " * 400 + b"}")
            for args in ({"driver": "null-co", "node-name": "n0", "size": 1 << 20},
                         {"driver": "raw", "node-name": "r0", "file": "n0"},
                         {"driver": "copy-on-read", "node-name": "c0", "file": "r0"},
                         {"driver": "raw", "node-name": "r1", "file": "c0"},
                         {"driver": "null-co", "node-name": "n1", "size": 1 << 20},
                         {"driver": "null-co", "node-name": "n2", "size": 1 << 20}):
                reply = qmp.cmd("blockdev-add", args)
                if "error" in reply:
                    print(f"bench: blockdev-add {args}: {reply['error']}", file=sys.stderr)
                    return 2
            probe("query-named-block-nodes (6 nodes)", b'{"execute":"query-named-block-nodes"}')
            probe("query-named-block-nodes flat (6 nodes)",
                  b'{"execute":"query-named-block-nodes","arguments":{"flat":true}}')
            qmp.close()
        finally:
            proc.terminate()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
