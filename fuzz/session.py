"""One example's world: a temporary work directory, its images, a QEMU and a model.

    with Session(binaries, images) as s:
        s.runner.run({"qmp": "blockdev-add", "args": {...}})

QEMU is killed and the directory removed on leaving the block, whatever happened.  The
model's version profile comes from QEMU's own ``query-version``; an unknown version gets the nearest profile and a warning.

Reuse (campaigns): starting QEMU is most of an example's set-up, so a :class:`QemuPool` keeps
one live QEMU per build and machine between examples::

    pool = QemuPool()
    with Session(binaries, images, events=ev, timeout=5.0, machine="none", pool=pool) as s:
        ...            # s.reused: this QEMU ran an earlier example (confirm findings fresh)
    pool.close()       # kills the QEMU, removes its work directory

Each session on a pooled QEMU first resets it (``QemuProcess.reset``: checked empty, auto
names counted from 0 again) and replaces the work directory's images.  A QEMU that failed
(crash, hang, failed reset) or a session left by an exception (or :meth:`Session.discard`) is
closed, and the next session starts a fresh one.  A ``-M pc`` QEMU is reused only after an
example that added no guest device (a PCI device cannot be unplugged from a guest that does
not run; :meth:`Session._reusable`), and ``QemuPool(prestart=True)`` boots the next fresh one
while an example runs.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable

from models import ImageSpec, Model, profile_for
from models.profiles import VersionProfile
from models.query import known_fields

from .engine import Events, FieldFilter, Runner
from .errors import ResetFailed
from .images import make_images, refill_images
from .qemu import STDERR_LOG, STDOUT_LOG, QemuProcess


class UnknownQemuVersion(UserWarning):
    pass


class UnknownQemuFields(UserWarning):
    pass


#: per emulator path: (profile, QEMU version, exact?)
_PROFILE_CACHE: dict[str, tuple[VersionProfile, tuple[int, int, int], bool]] = {}
#: per emulator path: the unknown-field filter of a build without an exact profile
_FIELD_FILTERS: dict[str, FieldFilter] = {}


def _warn_unknown_fields(event) -> None:
    from .engine import UnknownFields

    if isinstance(event, UnknownFields):
        warnings.warn(f"QEMU {event.build} reports fields its profile does not know, left out "
                      f"of the comparison (--strict compares them): {', '.join(event.paths)}",
                      UnknownQemuFields, stacklevel=2)


class Session:
    def __init__(self, binaries, images: Iterable[ImageSpec], events: Events | None = None,
                 timeout: float = 5.0, machine: str = "none", strict: bool = False, pool: "QemuPool | None" = None,
                 pipeline: bool = False, lazy: bool = False):
        self.binaries = binaries
        #: QEMU is acquired by start(), which the first step calls: a quarter to a third of a
        #: campaign's examples draw no step at all (Hypothesis' mutations replay a "stop"
        #: choice first), and they need no QEMU, no images and no reset.  Only once the
        #: version profile is known (the first session asks QEMU for it).
        self.lazy = lazy
        self.pipeline = pipeline   # Runner(pipeline=...): the campaign's
        self.images = tuple(images)
        self.events = events
        self.timeout = timeout
        self.machine = machine
        self.strict = strict
        self.workdir: str | None = None
        self.qemu: QemuProcess | None = None
        self.runner: Runner | None = None
        self.profile: VersionProfile | None = None
        self.pool = pool
        #: this example runs on a QEMU that ran an earlier one (set by __enter__)
        self.reused = False
        self._discard = False

    def __enter__(self) -> "Session":
        try:
            if not (self.lazy and str(self.binaries.system) in _PROFILE_CACHE):
                self._acquire()
            self.profile = self._profile()
            self.runner = Runner(Model(self.profile, self.images, self.machine), self.qemu,
                                 self.events, field_filter=self._field_filter(),
                                 pipeline=self.pipeline)
        except BaseException:
            self._discard = True
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def started(self) -> bool:
        """Whether this session has its QEMU (a ``lazy`` one gets it from :meth:`start`)."""
        return self.qemu is not None

    def start(self) -> None:
        """Give a ``lazy`` session its QEMU before its first step; a no-op once it has one.
        Raises what ``__enter__`` would (:class:`fuzz.errors.HarnessError`)."""
        if self.qemu is not None:
            return
        try:
            self._acquire()
        except BaseException:
            self._discard = True
            raise
        assert self.runner is not None
        self.runner.qemu = self.qemu

    def _acquire(self) -> None:
        if self.pool is not None:
            self.qemu, self.workdir, self.reused = self.pool.acquire(
                self.binaries, self.images, self.timeout, self.machine)
        else:
            self.workdir = tempfile.mkdtemp(prefix="blockfuzz-")
            make_images(self.images, self.workdir, self.binaries)
            self.qemu = QemuProcess(self.binaries, self.workdir, timeout=self.timeout,
                                    machine=self.machine).start()

    def _reusable(self) -> bool:
        """Whether a reset can bring this QEMU back to a fresh one's state.  ``-M none``: yes.
        ``-M pc``: only if the example added no guest device, not even one that failed with
        no id.  A virtio-scsi controller is a PCI device, whose unplug waits for a guest that
        never runs (``-S``), and qdev's counter of anonymous devices (``device[N]``) is never
        rolled back; both would make this QEMU differ from a fresh one (the model's
        ``Graph.devices`` / ``anon_devices`` say whether either happened).  The reset checks
        the device containers empty all the same (``QemuProcess.reset``)."""
        if self.machine == "none":
            return True
        g = self.runner.model.graph if self.runner is not None else None
        return g is not None and not g.devices and g.anon_devices == 0

    def discard(self) -> None:
        """Do not return this session's QEMU to the pool (say, the example failed: its state
        is not worth trusting even though a reset would check it)."""
        self._discard = True

    def _profile(self) -> VersionProfile:
        key = str(self.binaries.system)
        if key not in _PROFILE_CACHE:
            version = self.qemu.version()
            profile, exact = profile_for(*version)
            if not exact:
                warnings.warn(f"QEMU {'.'.join(map(str, version))} has no version profile; "
                              f"using the nearest older one ({profile.name})", UnknownQemuVersion,
                              stacklevel=2)
            _PROFILE_CACHE[key] = (profile, version, exact)
        return _PROFILE_CACHE[key][0]

    @property
    def exact_profile(self) -> bool:
        return _PROFILE_CACHE[str(self.binaries.system)][2]

    def _field_filter(self) -> FieldFilter | None:
        """Known versions are compared on every field; a build without an exact profile gets
        its unknown fields named once and set aside, unless ``strict``."""
        if self.strict or self.exact_profile:
            return None
        key = str(self.binaries.system)
        if key not in _FIELD_FILTERS:
            profile, version, _ = _PROFILE_CACHE[key]
            flt = _FIELD_FILTERS[key] = FieldFilter(".".join(map(str, version)),
                                                    known_fields(profile))
            warn = Events()
            warn.subscribe(_warn_unknown_fields)
            flt.listeners.append(warn)
        flt = _FIELD_FILTERS[key]
        if self.events is not None and self.events not in flt.listeners:
            flt.listeners.append(self.events)
        return flt

    @staticmethod
    def unknown_fields() -> dict[str, list[str]]:
        """Every field set aside so far in this process, per build (for reports)."""
        return {f.build: sorted(f.found) for f in _FIELD_FILTERS.values() if f.found}

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            if self.qemu is not None:
                ok = not self._discard and (not exc or exc[0] is None)
                self.pool.release(self.qemu, self.workdir, ok, reusable=self._reusable())
            elif self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.qemu = None
            return
        if self.qemu is not None:
            self.qemu.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


class QemuPool:
    """Live QEMUs kept between the examples of one process: one per build and machine.

    A ``-M none`` QEMU is kept after every example that went well; a ``-M pc`` one only if
    the example added no guest device (``Session._reusable``; about 40 % of them, measured on
    2026-12-02), since a start costs QEMU 55 to 65 ms of CPU against 35 for ``-M none``.
    ``prestart=True``: whenever a session needs a fresh QEMU (none idle of its kind), the pool
    launches the next one of that kind at once, so it boots while the example runs; the next
    session only waits for its QMP greeting.

    Not thread-safe; one per process (a pool inherited through fork() starts empty: its QEMUs
    belong to the parent).  ``stats`` counts fresh starts, prestarted ones used, reuses and
    failed resets.
    """

    def __init__(self, prestart: bool = False) -> None:
        self.prestart = prestart
        #: reusable QEMUs between examples, per (build, machine)
        self._idle: dict[tuple[str, str], tuple[QemuProcess, str]] = {}
        #: launched (not yet connected) QEMUs with empty work directories, per (build, machine)
        self._spare: dict[tuple[str, str], tuple[QemuProcess, str]] = {}
        self._owner = os.getpid()
        self.stats = {"started": 0, "prestarted": 0, "reused": 0, "reset-failed": 0,
                      "discarded": 0}
        #: the last ResetFailed, for whoever wants to look at it
        self.last_reset_failure: ResetFailed | None = None

    @staticmethod
    def _key(binaries) -> str:
        return os.fspath(binaries.system)

    def acquire(self, binaries, images: tuple, timeout: float, machine: str = "none") -> tuple[QemuProcess, str, bool]:
        """A QEMU for the next example, with ``images`` in its work directory: the idle one,
        reset, or a fresh one.  Returns (qemu, workdir, reused)."""
        self._check_owner()
        idle = self._idle.pop((self._key(binaries), machine), None)
        if idle is not None:
            qemu, workdir = idle
            qemu.timeout = timeout
            try:
                qemu.reset()
                refill_images(images, workdir, binaries, keep=(STDOUT_LOG, STDERR_LOG, "dev"))
            except ResetFailed as e:
                self.last_reset_failure = e
                self.stats["reset-failed"] += 1
                if os.environ.get("BLOCKFUZZ_DEBUG"):
                    print(f"blockfuzz: reset failed, starting a fresh QEMU: {e}", file=sys.stderr)
                _drop(qemu, workdir)
            except BaseException:
                _drop(qemu, workdir)
                raise
            else:
                self.stats["reused"] += 1
                return qemu, workdir, True
        qemu, workdir = self._fresh(binaries, images, timeout, machine)
        return qemu, workdir, False

    def _fresh(self, binaries, images, timeout, machine):
        spare = self._spare.pop((self._key(binaries), machine), None)
        if spare is not None:
            qemu, workdir = spare
            try:
                make_images(images, workdir, binaries)   # QEMU is chrooted there: it sees them
                qemu.timeout = timeout
                qemu.wait_ready()
            except BaseException:
                _drop(qemu, workdir)
                raise
            self.stats["prestarted"] += 1
        else:
            workdir = tempfile.mkdtemp(prefix="blockfuzz-")
            try:
                make_images(images, workdir, binaries)
                qemu = QemuProcess(binaries, workdir, timeout=timeout, machine=machine).start()
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            self.stats["started"] += 1
        if self.prestart:
            self._launch_spare(binaries, timeout, machine)
        return qemu, workdir

    def _launch_spare(self, binaries, timeout, machine) -> None:
        workdir = tempfile.mkdtemp(prefix="blockfuzz-")
        try:
            qemu = QemuProcess(binaries, workdir, timeout=timeout, machine=machine)
            qemu.start(wait=False)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            return   # no spare: the next session starts one itself (and says why)
        self._spare[(self._key(binaries), machine)] = (qemu, workdir)

    def release(self, qemu: QemuProcess, workdir: str, ok: bool, reusable: bool = True) -> None:
        """Take a session's QEMU back: kept if ``ok``, ``reusable`` (``Session._reusable``)
        and still usable, else closed."""
        key = (self._key(qemu.binaries), qemu.machine)
        usable = (ok and os.getpid() == self._owner and qemu._failure is None
                  and not qemu._closed and qemu._reset_failed is None
                  and qemu._proc is not None and qemu._proc.poll() is None)
        if not usable or not reusable or key in self._idle:
            self.stats["discarded"] += not usable
            _drop(qemu, workdir)
            return
        self._idle[key] = (qemu, workdir)

    def close(self) -> None:
        """Kill every idle and spare QEMU and remove its work directory. Idempotent."""
        if os.getpid() == self._owner:
            for qemu, workdir in [*self._idle.values(), *self._spare.values()]:
                _drop(qemu, workdir)
        self._idle.clear()
        self._spare.clear()

    def _check_owner(self) -> None:
        if os.getpid() != self._owner:
            self._idle.clear()
            self._spare.clear()
            self._owner = os.getpid()

    def __enter__(self) -> "QemuPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop(qemu: QemuProcess, workdir: str) -> None:
    qemu.close()
    shutil.rmtree(workdir, ignore_errors=True)
