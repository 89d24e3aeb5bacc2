"""How long a finding takes to shrink, and how short it gets (a benchmark, not a test).

    .venv/bin/python bench/shrink_bench.py [--qemu PATH] [--steps 50,100] [--seeds 1,2,3]
                                           [--seconds S]

A campaign (``fuzz.campaign.run_campaign``, one worker, real QEMU, pooled and prestarted as
``blockfuzz run`` runs it) against a model with one planted fault: ``blockdev-del`` of a node
with a ``backing`` child is answered with an error, as if the deletion were refused.  QEMU
deletes such a node, so the first disagreement is that reply; its minimal trace is two steps
(a blockdev-add of a qcow2 image with a backing file, its deletion).

Per ``--steps`` (the campaign's ``--steps``: examples of up to that many steps) and seed it
prints: when the fault was first seen, its first trace's length, how long Hypothesis' shrinking
took (first to last improvement written to the finding folder), the length it reached, and
then ``fuzz.minimize.minimize_finding`` (``blockfuzz run``'s step deletion afterwards): its time
and the final length.  The question it answers: what longer examples cost a finding.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fuzz import trace as T
from fuzz.campaign import CampaignSpec, run_campaign
from fuzz.engine import Events
from fuzz.findings import FindingEvent
from fuzz.minimize import QemuPredicate, minimize_finding
from fuzz.qemufetch import resolve_qemu
from models import blockdev

PLANTED = "planted fault: a node with a backing child cannot be deleted"


def plant() -> None:
    real = blockdev.blockdev_del

    def mutant(g, args):
        node = g.nodes.get(args.get("node-name")) if isinstance(args, dict) else None
        backed = node is not None and any(c.name == "backing" for c in node.children)
        real(g, args)
        if backed:
            raise blockdev.QmpFailure(PLANTED)

    blockdev.blockdev_del = mutant


def _watch(out: str, t0: float, seen: list, stop: threading.Event) -> None:
    """Record (seconds, steps) each time the planted fault's minimal.json changes: the
    finding writer rewrites it whenever Hypothesis' shrinker hands it a shorter example."""
    last: dict[str, float] = {}
    while not stop.wait(0.05):
        for p in glob.glob(os.path.join(out, "*", "minimal.json")):
            try:
                m = os.stat(p).st_mtime_ns
                if last.get(p) == m:
                    continue
                tr = T.load(p)
            except (OSError, ValueError):
                continue
            last[p] = m
            if PLANTED in tr.description:
                seen.append((time.monotonic() - t0, len(tr.steps), p))


def one(binaries, steps: int, seed: int, seconds: float) -> dict:
    out = tempfile.mkdtemp(prefix="shrink-bench-")
    seen: list[tuple[float, int, str]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    watcher = threading.Thread(target=_watch, args=(out, t0, seen, stop), daemon=True)
    watcher.start()
    first: list[tuple[float, int]] = []
    bus = Events()
    bus.subscribe(lambda e: first.append((time.monotonic() - t0, e.steps))
                  if isinstance(e, FindingEvent) and not first else None)
    try:
        state = run_campaign(CampaignSpec(binaries=binaries, out=out, time=seconds, seed=seed,
                                          steps=steps, workers=1, pool=True), bus)
        stop.set()
        watcher.join()
        row = {"steps": steps, "seed": seed, "examples": state.examples, "found": bool(seen)}
        if not seen or not first:
            return row
        # the first round's shrink: minimal.json only ever gets shorter; the last rewrite
        # is when Hypothesis' shrinker was done with it
        row.update(first_at=first[0][0], first_len=first[0][1],
                   shrink_s=seen[-1][0] - first[0][0], shrunk_len=seen[-1][1],
                   writes=len(seen))
        tr = T.load(seen[-1][2])
        err = QemuPredicate(binaries, timeout=5.0).check(tr)
        if err is None:
            row.update(minimize_s=0.0, final_len=-1)   # does not replay: shown as -1
            return row
        t = time.monotonic()
        small = minimize_finding(tr, binaries, err.signature(), timeout=5.0)
        row.update(minimize_s=time.monotonic() - t, final_len=len(small.steps))
        return row
    finally:
        stop.set()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu", default="11.1")
    ap.add_argument("--steps", default="50,100")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--seconds", type=float, default=240.0,
                    help="each campaign's budget (shrinking included)")
    a = ap.parse_args()
    binaries = resolve_qemu(a.qemu)
    plant()
    for steps in [int(s) for s in a.steps.split(",")]:
        for seed in [int(s) for s in a.seeds.split(",")]:
            r = one(binaries, steps, seed, a.seconds)
            if not r["found"]:
                print(f"--steps {steps:3} seed {seed}: not found in {a.seconds:.0f} s "
                      f"({r['examples']} examples)", flush=True)
                continue
            print(f"--steps {steps:3} seed {seed}: first seen at {r['first_at']:6.1f} s, "
                  f"{r['first_len']:3} steps; Hypothesis shrank it in {r['shrink_s']:6.1f} s "
                  f"to {r['shrunk_len']:2} steps ({r['writes']} writes); step deletion "
                  f"{r['minimize_s']:5.1f} s -> {r['final_len']} steps", flush=True)


if __name__ == "__main__":
    main()
