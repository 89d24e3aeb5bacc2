"""A fuzz campaign: workers, rounds of Hypothesis, the budget, signals, and the events that
reporters listen to.  ``blockfuzz run`` and ``blockfuzz diff`` are thin layers over
:func:`run_campaign`.

Layers::

    worker (one per process)                          parent (the blockfuzz process)
      Hypothesis rounds over a BlockGraphMachine        CampaignState (counts, findings)
      its Events bus -> Coverage, FindingWriter,  --->  its Events bus -> progress, JUnit,
                        Forwarder (messages)              JSON reporters (fuzz.reporters)

* **Workers.** ``workers`` processes (forked, so a test's monkeypatched model is theirs too),
  each with its own QEMU; one worker runs in the parent process itself.  They share the
  findings folder (``fuzz.findings`` writes it atomically, one folder per signature) and the
  example database.  Worker *i* of a seeded campaign uses seed ``seed + i``.
* **Rounds.** Hypothesis stops generating soon after a failure, and shrinks it.  A crash or a
  disagreement must never end a campaign, so each worker runs rounds until the budget is
  spent; only the first round replays the database (``Phase.reuse``).  A round also ends
  after ``ROUND_EXAMPLES`` valid examples: Hypothesis keeps what it learnt of every example
  of a run (its data tree, caches), so a night-long round would grow without bound.
* **The database key is ours** (``fuzz.database.CAMPAIGN_KEY``), not the sha384 of the state
  machine's source that Hypothesis would use, so an edit to a rule does not orphan the failures
  stored by last night's campaign.
* **Stops.** SIGINT and SIGTERM end the campaign within seconds: each example's teardown
  closes its QEMU, the parent kills what is left, and the temporary root (every work
  directory and image template of every worker lives under it) is removed.  A harness error
  (QEMU would not start) stops the campaign at once as a ``HarnessStop``: it is never shrunk
  and never reported as "no findings".
"""
from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import queue as queue_mod
import random
import shutil
import signal
import tempfile
import time
import unittest
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, seed as hyp_seed, settings
from hypothesis.stateful import get_state_machine_test

from .engine import Events
from .errors import BlockfuzzBug, CampaignStop, DatabaseError, Finding, HarnessStop, TimeUp
from .findings import FindingEvent, FindingWriter, KnownBugs
from .images import clear_templates
from .statemachine import ExampleFinished, MachineConfig, ReuseArtefact, machine_class

#: Hypothesis settings of every campaign: no deadline (QEMU's timing is not the test's), no
#: health checks (slow examples are what QEMU costs), our own failure output.
BASE_SETTINGS = dict(deadline=None, print_blob=False, report_multiple_bugs=True,
                     suppress_health_check=list(HealthCheck), derandomize=False)

_PHASES_FIRST = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
_PHASES_LATER = (Phase.explicit, Phase.generate, Phase.target, Phase.shrink)
_PHASES_REPRO = (Phase.explicit, Phase.reuse)

#: a round's ``max_examples``.  Hypothesis' engine keeps a record of every example it ran
#: (``DataTree``, its caches); a new round starts a new engine.  max_examples counts valid
#: examples only, and about a third of ours are not (overrun: past Hypothesis' choice limit,
#: their steps checked all the same; invalid: swarm testing disabled every rule the state
#: allows), so a round is some 1500 examples, three to four minutes.  Measured on one 11.1.3
#: worker (2026-12-03, seed 8, 330 s campaigns): RSS 718 MiB at the end and still growing by
#: 1.3 MiB/s without the cap; with it 510 MiB from 3.5 min on (538 at the end)
ROUND_EXAMPLES = 1000

#: how long the parent waits for workers after a stop before it kills them
STOP_GRACE = 1.5


# --------------------------------------------------------------------------------------------
# what a campaign is

@attrs.frozen
class CampaignSpec:
    """Everything a campaign needs; validated by the command line before it gets here."""

    binaries: Any
    out: str
    time: float | None = 60.0
    examples: int | None = None
    seed: int | None = None
    steps: int = 50
    timeout: float = 5.0
    strict: bool = False
    workers: int = 1
    database: str | None = None
    mode: str = "nightly"          # or "repro": only replay the database
    diff: tuple | None = None
    diff_profiles: tuple = (None, None)
    known: KnownBugs = attrs.field(factory=KnownBugs)
    replay_command: str = "blockfuzz replay"
    pool: bool = False
    #: per worker: extra listeners for its bus (diff's coverage and past-model keeper)
    listeners: Callable[[], list] | None = None
    db_key: bytes = b""


# --------------------------------------------------------------------------------------------
# events on the parent's bus (reporters listen to these)

@attrs.frozen
class CampaignStarted:
    spec: CampaignSpec
    started: float


@attrs.frozen
class Progress:
    """After every example (of any worker): the campaign's running totals."""

    state: "CampaignState"


@attrs.frozen
class CampaignFinished:
    state: "CampaignState"


class CampaignState:
    """The parent's view: totals over all workers, findings by signature."""

    def __init__(self, spec: CampaignSpec):
        self.spec = spec
        self.started = time.monotonic()
        self.wall_started = time.time()
        self.ended: float | None = None
        self.examples = 0
        self.steps = 0
        self.drawn = 0
        self.outcomes: set[str] = set()
        #: signature -> the first FindingEvent of it; and how often each was seen
        self.findings: dict[str, FindingEvent] = {}
        self.hits: Counter = Counter()
        self.harness_errors: list[str] = []
        self.stopped_by: str | None = None      # "SIGINT", "SIGTERM"
        self.coverage: list[dict] = []          # per worker, from its Coverage.to_json()
        self.unknown_fields: dict[str, set] = {}
        self.builds: set[str] = set()
        self.workers_done = 0
        #: Hypothesis runs started, over all workers (a run ends some time after a failure)
        self.rounds = 0
        #: failures on a reused QEMU that a fresh QEMU did not confirm, by signature
        self.reuse_artefacts: Counter = Counter()

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def new(self) -> list[FindingEvent]:
        return [f for f in self.findings.values() if f.new]

    def known(self) -> list[FindingEvent]:
        return [f for f in self.findings.values() if f.known]

    def internal(self) -> list[FindingEvent]:
        return [f for f in self.findings.values() if f.internal]

    def exit_status(self) -> int:
        """0 no new finding; 1 new findings; 2 harness error, blockfuzz bug, or no step run."""
        if self.harness_errors or self.internal() or self.steps == 0:
            return 2
        return 1 if self.new() else 0

    def merged_coverage(self) -> dict:
        out: dict = {}
        for cov in self.coverage:
            for k, v in cov.items():
                if isinstance(v, dict):
                    acc = out.setdefault(k, Counter())
                    acc.update(v)
                elif isinstance(v, (int, float)):
                    out[k] = out.get(k, 0) + v
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# worker side

class _Forwarder:
    """Worker-side listener: turns the worker's events into small messages for the parent
    (``send``): one per example (counts and the outcome kinds not sent before), one per
    finding."""

    def __init__(self, send: Callable[[tuple], None], worker: int, coverage):
        self.send = send
        self.worker = worker
        self.coverage = coverage
        self.sent: set[str] = set()

    def __call__(self, event) -> None:
        if isinstance(event, ExampleFinished):
            keys = set(self.coverage.outcomes) - self.sent
            self.sent |= keys
            self.send(("example", self.worker, event.executed, event.drawn, sorted(keys),
                       event.build))
        elif isinstance(event, FindingEvent):
            self.send(("finding", self.worker, event))
        elif isinstance(event, ReuseArtefact):
            self.send(("artefact", self.worker, event.signature))


#: the collector's thresholds while a worker runs Hypothesis (gc.set_threshold; Python's
#: default is 700, 10, 10)
GC_THRESHOLD = (2000, 20, 50)


@contextlib.contextmanager
def gc_tuned():
    """Python's cyclic collector, made to run less often while a worker runs (and restored).

    A worker holds some 250 000 long-lived objects (Hypothesis' data tree, the modules,
    templates), and every full collection walks them all: with the default thresholds a
    bench run (``bench/speed_bench.py --examples 150 --seed 11``, 11.1.3) spent 1.67 s of
    its 17 s of CPU collecting, 1.06 s of it in 11 full collections of about 100 ms each.
    With these thresholds it spent 0.65 s, and the fuzzer's CPU per checked step went from
    1.56 to 1.44 ms.  Cycles are still collected: a full collection comes every 50 of the
    middle generation's, about every 40 s of a campaign."""
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def hypothesis_settings(database, phases, max_examples: int, steps: int) -> settings:
    """A round's settings.  Every value that matters is given explicitly: Hypothesis loads its
    ``ci`` profile (derandomized, no database) as the default whenever ``$CI`` is set, and a
    nightly CI job must still explore and keep its failures."""
    return settings(**BASE_SETTINGS, database=database, phases=phases,
                    max_examples=max_examples, stateful_step_count=steps)


def _budget(spec: CampaignSpec, index: int) -> int | None:
    if spec.examples is None:
        return None
    share, extra = divmod(spec.examples, spec.workers)
    return share + (index < extra)


def worker_main(spec: CampaignSpec, index: int, send: Callable[[tuple], None],
                deadline: float | None, stop: Callable[[], bool]) -> None:
    """One worker: rounds of Hypothesis until the budget is spent or ``stop()``."""
    from .database import open_database
    from .reporters import Coverage, DiffCoverage
    from .session import Session

    events = Events()
    coverage = DiffCoverage() if spec.diff is not None else Coverage()
    events.subscribe(coverage)
    for listener in (spec.listeners() if spec.listeners else []):
        events.subscribe(listener)
    from .qemubuild import describe_qemu
    writer = FindingWriter(spec.out, events, spec.known, spec.replay_command,
                           qemu_build=describe_qemu(getattr(spec.binaries, "system", "")))
    events.subscribe(writer)
    events.subscribe(_Forwarder(send, index, coverage))
    budget = _budget(spec, index)
    examples = 0

    def on_start(machine) -> None:
        nonlocal examples
        if stop():
            raise CampaignStop()
        if deadline is not None and time.monotonic() > deadline:
            raise TimeUp()
        if budget is not None and examples >= budget:
            raise TimeUp()
        examples += 1

    pool = None
    if spec.pool and spec.diff is None:
        from .session import QemuPool
        # the next QEMU boots while the current example runs (measured: bench/speed_bench.py)
        pool = QemuPool(prestart=True)
    config = MachineConfig(binaries=spec.binaries, events=events, timeout=spec.timeout,
                           strict=spec.strict, diff=spec.diff, diff_profiles=spec.diff_profiles,
                           known=spec.known, on_example_start=on_start, pool=pool,
                           should_stop=stop)
    try:
        database = open_database(spec.database, spec.out)
    except DatabaseError as e:
        send(("harness", index, str(e)))
        return
    rounds = 0
    rng = random.Random()
    try:
        while not stop():
            cls = machine_class(config)
            if spec.seed is not None:
                cls = hyp_seed(spec.seed + index + 1000 * rounds)(cls)
            else:
                cls = hyp_seed(rng.getrandbits(64))(cls)
            phases = (_PHASES_REPRO if spec.mode == "repro" else
                      _PHASES_FIRST if rounds == 0 else _PHASES_LATER)
            remaining = ROUND_EXAMPLES if budget is None \
                else min(ROUND_EXAMPLES, max(1, budget - examples))
            test = get_state_machine_test(cls, settings=hypothesis_settings(
                database, phases, 1 if spec.mode == "repro" else remaining, spec.steps))
            test._hypothesis_internal_database_key = spec.db_key   # type: ignore[attr-defined]
            rounds += 1
            try:
                with gc_tuned():
                    test()
            except HarnessStop as e:
                send(("harness", index, str(e)))
                break
            except (TimeUp, BlockfuzzBug):
                break   # a blockfuzz bug's trace is written; the finding event says so
            except CampaignStop:
                break
            except unittest.SkipTest:
                break   # repro with an empty database: Hypothesis had nothing to run
            except BaseException as e:  # noqa: BLE001 - findings: written already; on to the next round
                if isinstance(e, (SystemExit, GeneratorExit)):
                    raise
                if not _only_findings(e):
                    import traceback
                    if os.environ.get("BLOCKFUZZ_DEBUG"):
                        traceback.print_exception(e)
                    bad = _first_non_finding(e)
                    send(("harness", index, f"{type(bad).__name__}: {bad}".splitlines()[0]))
                    break
            if spec.mode == "repro":
                break
            if budget is not None and examples >= budget:
                break
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        if pool is not None:
            pool.close()
        send(("done", index, coverage.to_json(), Session.unknown_fields(), examples, rounds))


def _first_non_finding(e: BaseException) -> BaseException:
    """The exception that made a group more than findings (named in the one-line error, not
    the group: "Hypothesis found 4 distinct failures" says nothing about what broke)."""
    if isinstance(e, BaseExceptionGroup):
        return next(_first_non_finding(x) for x in e.exceptions if not _only_findings(x))
    return e


def _only_findings(e: BaseException) -> bool:
    """Whether Hypothesis' exception is made of findings only (failures the FindingWriter has
    written), not of something else going wrong."""
    from hypothesis.errors import Flaky, FlakyFailure

    if isinstance(e, BaseExceptionGroup):
        return all(_only_findings(x) for x in e.exceptions)
    # a failure that did not come back on Hypothesis' final replay (a timing-dependent hang):
    # its folder is written; Hypothesis calls that flaky
    return isinstance(e, (Finding, Flaky, FlakyFailure))


# --------------------------------------------------------------------------------------------
# parent side

class _Stopper:
    """SIGINT / SIGTERM handling for the process that runs it.  The first signal sets the flag
    and, where ``raise_in`` is set, raises ``CampaignStop`` in the main thread (so a running
    example unwinds through its teardown); later signals only set the flag."""

    def __init__(self, raise_in_main: bool, on_signal: Callable[[int], None] | None = None):
        self.raise_in_main = raise_in_main
        self.on_signal = on_signal
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "_Stopper":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum if first else self.signum
        if self.on_signal is not None:
            self.on_signal(signum)
        if first and self.raise_in_main and not _in_finalizer(frame):
            raise CampaignStop()

    def __call__(self) -> bool:
        return self.signum is not None


def _in_finalizer(frame) -> bool:
    """Whether the signal landed in a weakref callback or ``__del__``, where Python would
    swallow the exception; the flag alone then stops the example at its next step."""
    for _ in range(4):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.endswith(("weakref.py", "_weakrefset.py")):
            return True
        frame = frame.f_back
    return False


#: the least free space a tmpfs must have to hold a campaign's images (a container's /dev/shm
#: is often 64 MiB; a full one would turn every write into an ENOSPC disagreement)
SCRATCH_MIN_FREE = 2 << 30


def scratch_dir(environ=os.environ, shm: str = "/dev/shm", mounts: str = "/proc/mounts") -> str | None:
    """Where a campaign's work directories and images live: ``$TMPDIR`` when it is set (the
    user's choice), else ``/dev/shm`` when it is a writable tmpfs with room, else Python's
    default (``None``: /tmp).

    Why tmpfs: QEMU flushes the images it writes (``bdrv_flush()`` on reopen, del, job
    completion), and on a disk every ``fdatasync`` waits for it, as long as the disk is busy.
    Measured 2026-12-02 against 11.1.3, 2 workers, seed 11, on this VM's virtio disk: while the
    disk was busy, 424 checked steps/s with the images in /tmp against 716 in /dev/shm (1 worker:
    353 against 462); on a quiet disk, 644 and 646 in /tmp against 607 and 712 in /dev/shm
    (CPU use 180 % against 188 %).  Nothing lost on a quiet disk, 40 % kept on a busy one."""
    if environ.get("TMPDIR"):
        return None
    try:
        with open(mounts) as f:
            tmpfs = any(len(fields) > 2 and fields[1] == shm and fields[2] == "tmpfs"
                        for fields in (line.split() for line in f))
        st = os.statvfs(shm)
    except OSError:
        return None
    if tmpfs and st.f_bavail * st.f_frsize >= SCRATCH_MIN_FREE and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def run_campaign(spec: CampaignSpec, bus: Events | None = None) -> CampaignState:
    """Run ``spec``'s campaign; every listener of ``bus`` sees ``CampaignStarted``, a
    ``Progress`` per example, each ``FindingEvent`` and ``CampaignFinished``."""
    bus = bus or Events()
    state = CampaignState(spec)
    deadline = None if spec.time is None else time.monotonic() + spec.time
    root = tempfile.mkdtemp(prefix="blockfuzz-run-", dir=scratch_dir())
    old_tempdir = tempfile.tempdir
    # every work directory and image template of every worker lives under root, so one
    # rmtree at the end leaves nothing behind, whatever a worker was doing when it stopped
    tempfile.tempdir = root
    bus.emit(CampaignStarted(spec, state.wall_started))

    def dispatch(msg: tuple) -> None:
        kind = msg[0]
        if kind == "example":
            _, _, executed, drawn, keys, build = msg
            state.examples += 1
            state.steps += executed
            state.drawn += drawn
            state.outcomes.update(keys)
            state.builds.add(build)
            bus.emit(Progress(state))
        elif kind == "finding":
            event: FindingEvent = msg[2]
            state.hits[event.signature] += 1
            if event.signature not in state.findings:
                state.findings[event.signature] = event
                bus.emit(event)
        elif kind == "harness":
            state.harness_errors.append(msg[2])
        elif kind == "artefact":
            state.reuse_artefacts[msg[2]] += 1
        elif kind == "done":
            state.coverage.append(msg[2])
            for build, paths in msg[3].items():
                state.unknown_fields.setdefault(build, set()).update(paths)
            state.workers_done += 1
            state.rounds += msg[5]

    try:
        if spec.workers <= 1:
            with _Stopper(raise_in_main=True) as stopper:
                try:
                    _alarm_backstop(deadline)
                    worker_main(spec, 0, dispatch, deadline, stopper)
                except CampaignStop:
                    pass
                finally:
                    signal.alarm(0)
                if stopper.signum is not None:
                    state.stopped_by = signal.Signals(stopper.signum).name
        else:
            _run_workers(spec, dispatch, deadline, state)
    finally:
        tempfile.tempdir = old_tempdir
        clear_templates()   # the in-process worker's image templates live under root
        shutil.rmtree(root, ignore_errors=True)
        state.ended = time.monotonic()
    bus.emit(CampaignFinished(state))
    return state


def _alarm_backstop(deadline: float | None) -> None:
    """Examples check the deadline when they start; this ends a stuck example or a long
    shrink a minute past it (the example's teardown still runs)."""
    if deadline is None:
        return

    def _alarm(signum, frame):
        raise TimeUp()

    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(max(0.0, deadline - time.monotonic())) + 60)


def _worker_process(spec: CampaignSpec, index: int, q, deadline: float | None) -> None:
    """The body of a forked worker."""
    with _Stopper(raise_in_main=True) as stopper:
        try:
            _alarm_backstop(deadline)
            worker_main(spec, index, q.put, deadline, stopper)
        except CampaignStop:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the parent, never lost
            q.put(("harness", index, f"worker {index}: {type(e).__name__}: {e}".splitlines()[0]))
        finally:
            signal.alarm(0)
    q.close()
    q.join_thread()


def _run_workers(spec: CampaignSpec, dispatch, deadline: float | None, state: CampaignState) -> None:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker_process, args=(spec, i, q, deadline),
                         name=f"blockfuzz-worker-{i}", daemon=False) for i in range(spec.workers)]

    def forward(signum: int) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    with _Stopper(raise_in_main=False, on_signal=forward) as stopper:
        for p in procs:
            p.start()
        stop_at: float | None = None
        hard_deadline = None if deadline is None else deadline + 90.0
        while True:
            try:
                dispatch(q.get(timeout=0.1))
                continue
            except queue_mod.Empty:
                pass
            if all(not p.is_alive() for p in procs):
                break
            now = time.monotonic()
            if stopper.signum is not None and stop_at is None:
                stop_at = now + STOP_GRACE
            if hard_deadline is not None and now > hard_deadline and stop_at is None:
                forward(signal.SIGTERM)
                stop_at = now + STOP_GRACE
            if stop_at is not None and now > stop_at:
                break
        for p in procs:
            if p.is_alive():
                p.kill()      # its QEMUs die with it (PR_SET_PDEATHSIG)
            p.join(5)
        while True:   # what the workers sent before they went
            try:
                dispatch(q.get_nowait())
            except (queue_mod.Empty, OSError, EOFError):
                break
        if stopper.signum is not None:
            state.stopped_by = signal.Signals(stopper.signum).name
    q.close()
