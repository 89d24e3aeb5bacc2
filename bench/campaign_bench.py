"""Throughput of a fuzz campaign: examples/s and steps/s (a benchmark, not a test).

    .venv/bin/python bench/campaign_bench.py [--qemu PATH] [--examples N] [--seed N]

Runs ``blockfuzz run`` with a fixed seed into a temporary directory and prints its figures
with a breakdown: QEMU start-up, QMP round trips and the model's share of a step, measured on
the same machine right before.
"""
from __future__ import annotations

import argparse
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu")
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    binaries = resolve_qemu(a.qemu)
    for k, v in {**qmp_figures(binaries), **model_figures()}.items():
        print(f"{k:55s} {v:8.2f}")
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fuzz.cli", "run", "--examples", str(a.examples), "--seed", str(a.seed),
               "--workers", "1", "--out", out, "--qemu", binaries.system]
        r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"(\d+) examples, (\d+) steps in ([\d.]+) s \(([\d.]+) examples/s, ([\d.]+) steps/s\)", r.stdout)
    if not m:
        print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"{'campaign examples/s':55s} {float(m.group(4)):8.2f}")
    print(f"{'campaign steps/s':55s} {float(m.group(5)):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
