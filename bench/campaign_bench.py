"""Throughput of a fuzz campaign: examples/s and steps/s (a benchmark, not a test).

    .venv/bin/python bench/campaign_bench.py [--qemu PATH] [--examples N] [--seed N]
    .venv/bin/python bench/campaign_bench.py --scaling [--qemu PATH] [--time S] [--repeat R] [--seed N]

The first form runs ``blockfuzz run`` with a fixed seed into a temporary directory and prints
its figures with a breakdown: QEMU start-up, QMP round trips and the model's share of a step,
measured on the same machine right before.

``--scaling`` measures what a second worker buys (issue 8: "2 workers at least 1.7x one"): it
runs time-boxed ``blockfuzz run --workers 1`` and ``--workers 2`` campaigns alternately,
``--repeat`` pairs of them, and prints each run's checked steps/s, each pair's ratio and the
median ratio.  Pairs alternate so that a slow spell of this VM (its speed varies by 40 % from
hour to hour) lands on both sides of a ratio rather than on one.

Measured 2026-12-03 on QEMU 11.1.3 here (2 CPUs), seed 20, 60 s each: 1 worker 303.0 / 387.8 /
364.6 steps/s, 2 workers 546.1 / 550.6 / 508.8, ratios 1.80 / 1.42 / 1.40, median 1.42.  Two
workers keep both CPUs busy, so the ratio is 2 / u, where u is the CPUs one worker keeps busy
(its Python and its QEMU overlap: the graph query is pipelined behind each command and the
next QEMU boots during the example).  speed_bench the same hour: 1.76 ms of fuzzer and 1.88 ms
of QEMU CPU per checked step at 371.8 steps/s, u = 1.35, so 2 / u = 1.48.  Making a step cheaper
on either side does not move the ratio; only a worker that overlaps less would, and it would
be slower.  1.7x needs u <= 1.18.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from fuzz.qemufetch import resolve_qemu
from fuzz.session import Session
from fuzz.statemachine import SEED_IMAGES
from models import Model, PROFILES


def qmp_figures(binaries) -> dict:
    starts, rtts = [], []
    for _ in range(20):
        t = time.perf_counter()
        with Session(binaries, SEED_IMAGES) as s:
            starts.append(time.perf_counter() - t)
            for _ in range(50):
                t = time.perf_counter()
                s.qemu.query_nodes()
                rtts.append(time.perf_counter() - t)
    return {"session start (images cached + QEMU + profile) ms": 1000 * statistics.median(starts),
            "query-named-block-nodes round trip ms": 1000 * statistics.median(rtts)}


def model_figures() -> dict:
    hd = {"driver": "qcow2", "node-name": "hd1", "file": {"driver": "file", "node-name": "hd1-file", "filename": "hd1.img"}}
    m = Model(PROFILES["10.0"], SEED_IMAGES)
    m.execute("blockdev-add", hd)
    n = 300
    t = time.perf_counter()
    for _ in range(n):
        m.execute("blockdev-reopen", {"options": [dict(hd, backing="#block1")]})
        m.query_named_block_nodes()
    return {"model reopen + query ms": 1000 * (time.perf_counter() - t) / n}


_SUMMARY = re.compile(r"(\d+) examples, (\d+) steps in ([\d.]+) s "
                      r"\(([\d.]+) examples/s, ([\d.]+) steps/s\)")


def campaign(binaries, workers: int, seed: int, *, seconds: float | None = None,
             examples: int | None = None) -> dict:
    """One ``blockfuzz run`` in a temporary directory; its summary line's figures."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fuzz.cli", "run", "--seed", str(seed),
               "--workers", str(workers), "--out", out, "--qemu", binaries.system]
        cmd += ["--time", str(seconds)] if seconds is not None else ["--examples", str(examples)]
        r = subprocess.run(cmd, capture_output=True, text=True)
    m = _SUMMARY.search(r.stdout)
    if r.returncode not in (0, 1) or not m:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"campaign_bench: blockfuzz run --workers {workers} exited {r.returncode}: "
              f"{last[0]}", file=sys.stderr)
        raise SystemExit(2)
    return {"examples": int(m.group(1)), "steps": int(m.group(2)), "seconds": float(m.group(3)),
            "examples/s": float(m.group(4)), "steps/s": float(m.group(5))}


def scaling(binaries, seconds: float, repeat: int, seed: int) -> int:
    ratios = []
    print(f"{binaries.system}: {repeat} pairs of {seconds:g} s campaigns, seed {seed}, "
          f"{os.cpu_count()} CPUs")
    for i in range(repeat):
        one = campaign(binaries, 1, seed + i, seconds=seconds)
        two = campaign(binaries, 2, seed + i, seconds=seconds)
        ratios.append(two["steps/s"] / one["steps/s"])
        print(f"  pair {i + 1}: 1 worker {one['steps/s']:7.1f} steps/s, "
              f"2 workers {two['steps/s']:7.1f} steps/s, ratio {ratios[-1]:.2f}", flush=True)
    print(f"median ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu")
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scaling", action="store_true",
                    help="compare --workers 1 and 2 campaigns instead")
    ap.add_argument("--time", type=float, default=60.0, help="seconds per campaign (--scaling)")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of campaigns (--scaling)")
    a = ap.parse_args()
    if a.time <= 0 or a.repeat < 1:
        ap.error("--time must be positive and --repeat at least 1")
    binaries = resolve_qemu(a.qemu)
    if a.scaling:
        return scaling(binaries, a.time, a.repeat, a.seed)
    for k, v in {**qmp_figures(binaries), **model_figures()}.items():
        print(f"{k:55s} {v:8.2f}")
    r = campaign(binaries, 1, a.seed, examples=a.examples)
    print(f"{'campaign examples/s':55s} {r['examples/s']:8.2f}")
    print(f"{'campaign steps/s':55s} {r['steps/s']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
