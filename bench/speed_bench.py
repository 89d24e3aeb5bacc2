"""Campaign speed with and without QEMU reuse (a benchmark, not a test).

    .venv/bin/python bench/speed_bench.py [--qemu PATH] [--seconds S | --examples N]
                                          [--seed N] [--mode fresh,pool,prestart] [--cprofile FILE]

Runs the campaign's state machine (``fuzz.statemachine.BlockGraphMachine``, every oracle on:
reply, qemu-io output, graph and jobs after each step) in this process with a fixed seed, once
with a fresh QEMU per example (``fresh``), once with a ``fuzz.session.QemuPool`` (``pool``) and
once with ``QemuPool(prestart=True)`` (``prestart``), and prints for each: checked steps/s, examples/s, drawn and executed steps per example, and the
share of wall time in

* set-up: ``Session.__enter__`` + ``__exit__`` (QEMU start or reset, images, model, teardown);
* QMP: ``QmpSync.send`` / ``receive`` inside steps (writes, and waits for QEMU's replies:
  QEMU's own work where the fuzzer did not overlap it);
* model: ``Model.execute`` / ``query_named_block_nodes`` / ``query_jobs``;
* engine: the rest of ``Runner.run`` and ``Runner.flush`` (comparison, projection,
  canonicalisation; a pipelined step is checked in the next step's flush);
* generation: everything outside set-up and those (Hypothesis and the rules' draws);

and the CPU time per checked step of this process and of QEMU (its reaped children): with one
core each, what bounds a worker's steps/s.

With the same seed both modes draw the same examples (draws depend on model state only).  A
finding does not stop the run: the example is rejected, counted and printed.

The machine is the campaign's (``machine_class(MachineConfig(..., pool=pool))``), subclassed
only to count findings instead of shrinking them.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import time
from collections import Counter, defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hypothesis import HealthCheck, Phase, seed as hyp_seed, settings
from hypothesis.stateful import run_state_machine_as_test

from fuzz import engine, session as S, statemachine as SM
from fuzz.campaign import gc_tuned
from fuzz.engine import Events, StepDone
from fuzz.qemufetch import resolve_qemu
from models import Model

# -- timing -------------------------------------------------------------------------------------

T: Counter = Counter()          # seconds per bucket
N: Counter = Counter()          # counts
BY_CMD: "defaultdict[str, list]" = defaultdict(lambda: [0, 0.0])   # command -> [calls, seconds]
_depth = {"setup": 0}


def _timed(bucket: str, fn, *, setup: bool = False):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        if setup:
            _depth["setup"] += 1
        try:
            return fn(*a, **kw)
        finally:
            if setup:
                _depth["setup"] -= 1
                T[f"{bucket} -M {a[0].machine}"] += time.perf_counter() - t
            T[bucket] += time.perf_counter() - t
    return wrapper


_LABELS: dict = {}   # QMP id -> the label its wait is counted under


def _label(name: str, args) -> str:
    if name == "human-monitor-command":   # 'qemu-io NODE "read -P 1 0 1k"' -> qemu-io read
        line = str((args or {}).get("command-line", ""))
        return "qemu-io " + (line.partition('"')[2].split() or ["?"])[0]
    return name


def _qmp_send(fn):
    """QmpSync.send: the write, and each command's label for the wait that follows."""
    def wrapper(self, calls):
        calls = list(calls)
        t = time.perf_counter()
        try:
            sent = fn(self, calls)
        finally:
            T["qmp (set-up)" if _depth["setup"] else "qmp"] += time.perf_counter() - t
        # a batch's wait is the first command's (the step's); a query behind it gets its own
        # line only when it is waited for on its own
        for (i, _name), (name, args) in zip(sent, calls):
            _LABELS[i] = _label(name, args)
        return sent
    return wrapper


def _qmp_receive(fn):
    """QmpSync.receive: the wait for QEMU (every command's, pipelined or not, goes through
    here: QemuProcess._call, begin()/finish(), the reset's batches)."""
    def wrapper(self, sent, timeout=None):
        t = time.perf_counter()
        try:
            return fn(self, sent, timeout)
        finally:
            dt = time.perf_counter() - t
            T["qmp (set-up)" if _depth["setup"] else "qmp"] += dt
            N["qmp waits"] += 1
            if not _depth["setup"] and sent:
                cmd = _LABELS.pop(sent[0][0], sent[0][1])
                BY_CMD[cmd][0] += 1
                BY_CMD[cmd][1] += dt
            for i, _name in sent:
                _LABELS.pop(i, None)
    return wrapper


def _step_timed(fn):
    """Runner.run and Runner.flush (a pipelined step is checked in the next flush): one
    bucket, not counted twice when run() flushes."""
    def wrapper(*a, **kw):
        if _depth.get("step"):
            return fn(*a, **kw)
        _depth["step"] = 1
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            _depth["step"] = 0
            T["step"] += time.perf_counter() - t
    return wrapper


def instrument() -> None:
    from fuzz.qmpsync import QmpSync

    S.Session.__enter__ = _timed("set-up", _counting_enter, setup=True)
    S.Session.start = _timed("set-up", _counting_start, setup=True)
    S.Session.__exit__ = _timed("set-up", S.Session.__exit__, setup=True)
    QmpSync.send = _qmp_send(QmpSync.send)
    QmpSync.receive = _qmp_receive(QmpSync.receive)
    for name in ("execute", "query_named_block_nodes", "query_jobs"):
        setattr(Model, name, _timed("model", getattr(Model, name)))
    engine.Runner.run = _step_timed(engine.Runner.run)
    engine.Runner.flush = _step_timed(engine.Runner.flush)


# -- the machine --------------------------------------------------------------------------------

CFG: dict = {}


class _TimeUp(KeyboardInterrupt):
    pass


def bench_machine(config: "SM.MachineConfig") -> type:
    """The campaign's machine bound to ``config``, counting examples, and ending an example
    quietly at a finding (counted, its QEMU discarded) so that one finding does not end the
    measurement."""
    base = SM.machine_class(config, "BenchMachine")

    class BenchMachine(base):
        def _failed(self, e):
            N["findings"] += 1
            CFG["findings"].append((self.session.reused, str(e).splitlines()[0]))
            self.session.discard()
            self.halted = True

    return BenchMachine


def _on_start(machine) -> None:
    if CFG["deadline"] is not None and time.perf_counter() > CFG["deadline"]:
        raise _TimeUp()


def _on_event(event) -> None:
    if isinstance(event, StepDone) and event.model is not None:
        N["checked steps"] += 1
    elif isinstance(event, SM.ExampleFinished):
        N["examples"] += 1
        N["drawn steps"] += event.drawn


_session_enter = S.Session.__enter__
_session_start = S.Session.start


def _counting_enter(self):
    out = _session_enter(self)
    N[f"examples -M {self.machine}"] += 1
    if self.started:
        N["examples with a QEMU"] += 1
        N["examples on a reused QEMU"] += self.reused
    return out


def _counting_start(self):
    """A lazy session's QEMU (Session.lazy: acquired at the example's first step)."""
    if self.started:
        return _session_start(self)
    out = _session_start(self)
    N["examples with a QEMU"] += 1
    N["examples on a reused QEMU"] += self.reused
    return out


def warm_templates(binaries) -> None:
    """Build every image set the machine draws into the template cache first: a campaign pays
    that once (~18 sets, ~3 s), and it must not land in whichever mode runs first."""
    import tempfile

    from hypothesis import given

    from fuzz.images import make_images

    seen: set = set()
    with tempfile.TemporaryDirectory() as d:
        @settings(max_examples=300, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(SM.image_sets())
        def build(images):
            if images not in seen:
                seen.add(images)
                make_images(images, d, binaries)
        build()


def run(binaries, mode: str, seconds: float | None, examples: int | None, seed: int,
        steps: int, prof: cProfile.Profile | None) -> dict:
    T.clear()
    N.clear()
    BY_CMD.clear()
    events = Events()
    events.subscribe(_on_event)
    pool = S.QemuPool(prestart=mode == "prestart") if mode != "fresh" else None
    CFG.update(findings=[], deadline=None if seconds is None else time.perf_counter() + seconds)
    config = SM.MachineConfig(binaries, events=events, timeout=5.0, pool=pool,
                              on_example_start=_on_start)
    machine = hyp_seed(seed)(bench_machine(config))
    cfg = settings(deadline=None, database=None, phases=[Phase.generate], print_blob=False,
                   suppress_health_check=list(HealthCheck), stateful_step_count=steps,
                   max_examples=examples if examples is not None else 10**9)
    r_self, r_kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    try:
        with gc_tuned():   # as a campaign's worker runs it
            run_state_machine_as_test(machine, settings=cfg)
    except _TimeUp:
        pass
    finally:
        if prof:
            prof.disable()
        wall = time.perf_counter() - t0
        if pool is not None:
            t = time.perf_counter()
            pool.close()
            T["set-up"] += time.perf_counter() - t
    # CPU seconds of this process (Hypothesis, model, engine, QMP client) and of the children
    # reaped meanwhile (the QEMUs: a pooled one is reaped at pool.close(); qemu-img)
    e_self, e_kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {"cpu python": e_self.ru_utime + e_self.ru_stime - r_self.ru_utime - r_self.ru_stime,
           "cpu qemu": e_kids.ru_utime + e_kids.ru_stime - r_kids.ru_utime - r_kids.ru_stime}
    out = {"mode": mode, "wall": wall, **T, **N, **cpu, "findings-list": CFG["findings"],
           "by-command": {k: tuple(v) for k, v in BY_CMD.items()}}
    if pool is not None:
        out["pool"] = dict(pool.stats)
    return out


def report(r: dict) -> None:
    wall, ex = r["wall"], max(1, r.get("examples", 0))
    setup, step = r.get("set-up", 0.0), r.get("step", 0.0)
    qmp, model = r.get("qmp", 0.0), r.get("model", 0.0)
    print(f"== {r['mode']}: {r.get('examples', 0)} examples "
          f"({r.get('examples -M none', 0)} -M none, {r.get('examples -M pc', 0)} -M pc; "
          f"{r.get('examples with a QEMU', 0)} with a QEMU, "
          f"{r.get('examples on a reused QEMU', 0)} of them on a reused one) in {wall:.1f} s")
    print(f"   checked steps/s          {r.get('checked steps', 0) / wall:8.1f}")
    print(f"   examples/s               {r.get('examples', 0) / wall:8.2f}")
    print(f"   steps/example drawn      {r.get('drawn steps', 0) / ex:8.2f}")
    print(f"   steps/example executed   {r.get('checked steps', 0) / ex:8.2f}")
    print(f"   set-up share             {100 * setup / wall:7.1f} %  "
          f"({1000 * setup / ex:.1f} ms/example, of which QMP {1000 * r.get('qmp (set-up)', 0) / ex:.1f} ms)")
    for m in ("none", "pc"):
        if r.get(f"examples -M {m}"):
            print(f"   set-up per -M {m:4s} example {1000 * r.get(f'set-up -M {m}', 0) / r[f'examples -M {m}']:7.1f} ms")
    print(f"   QMP share (steps)        {100 * qmp / wall:7.1f} %")
    print(f"   model share              {100 * model / wall:7.1f} %")
    print(f"   engine share             {100 * (step - qmp - model) / wall:7.1f} %")
    print(f"   generation share         {100 * (wall - setup - step) / wall:7.1f} %")
    steps_n = max(1, r.get("checked steps", 0))
    print(f"   CPU per checked step     {1000 * r['cpu python'] / steps_n:7.2f} ms this process, "
          f"{1000 * r['cpu qemu'] / steps_n:.2f} ms QEMU (children)")
    if r.get("by-command"):
        print("   QMP wait per command (steps only):   waits   ms/wait   ms/checked step")
        steps = max(1, r.get("checked steps", 0))
        for cmd, (n, secs) in sorted(r["by-command"].items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"     {cmd:32s} {n:7d} {1000 * secs / n:9.3f} {1000 * secs / steps:9.3f}")
    if "pool" in r:
        print(f"   pool                     {r['pool']}")
    if r.get("findings"):
        print(f"   findings                 {r['findings']} (reused QEMU, first line):")
        for reused, line in r["findings-list"][:10]:
            print(f"     {'reused' if reused else 'fresh '} {line[:150]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qemu")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=float)
    g.add_argument("--examples", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100, help="stateful_step_count (campaign: 100)")
    ap.add_argument("--mode", default="fresh,pool,prestart",
                    help="comma-separated: fresh (a QEMU per example, as before), pool "
                         "(QemuPool), prestart (QemuPool(prestart=True)); default all three")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="profile the (last) run; FILE.<mode> gets the stats, top 25 printed")
    a = ap.parse_args()
    if a.seconds is None and a.examples is None:
        a.seconds = 30.0
    binaries = resolve_qemu(a.qemu)
    warm_templates(binaries)
    instrument()
    for mode in a.mode.split(","):
        prof = cProfile.Profile() if a.cprofile else None
        r = run(binaries, mode, a.seconds, a.examples, a.seed, a.steps, prof)
        report(r)
        if prof:
            prof.dump_stats(f"{a.cprofile}.{mode}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
