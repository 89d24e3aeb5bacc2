"""The QEMU side of a step: one ``qemu-system-x86_64`` process driven over QMP.

Usage::

    with QemuProcess(binaries, workdir) as qemu:          # launched and QMP-ready (~16 ms)
        qemu.execute("blockdev-add", {"driver": "qcow2", "node-name": "hd1", "file": {
            "driver": "file", "node-name": "hd1-file", "filename": "hd1.img"}})
        # hd1.img's header names hd0.img as backing: QEMU opens it as two auto-named nodes
        [n["node-name"] for n in qemu.query_nodes()]   # ['#block1', '#block0', 'hd1', 'hd1-file']
        qemu.execute("human-monitor-command",
                     {"command-line": 'qemu-io #block1 "read -P 0xa0 0 1k"'})
        # -> Outcome(ret='', error=None, stdout=('read 1024/1024 bytes at offset 0',))
    # leaving the block: QEMU is quit (or killed) and reaped, whatever happened inside

``execute`` returns a :class:`models.values.Outcome`, the same value the model predicts, so the
engine compares with ``==``. Everything QEMU-specific that is not a command result is
normalised here:

* **Node names.** QEMU's auto names carry two random digits (``#block017``). Every string coming
  out (replies, error texts, qemu-io output, events) is canonicalised (``#block0``); every string
  going in that equals a canonical auto name is translated back to the real one, using the map
  learned from ``query-named-block-nodes``. If a command names an auto node the map does not
  know yet, the harness queries first, so callers never need to care.
* **qemu-io output.** HMP ``qemu-io`` prints to QEMU's *stdout*, line by line and before the QMP
  reply is sent, so the bytes appended to the stdout log during a command are its output. The
  timing statistics lines are dropped (they differ on every run).
* **Crashes and hangs** are exceptions, not outcomes: :class:`fuzz.errors.QemuCrash` and
  :class:`fuzz.errors.QemuHang` are *findings* (QEMU misbehaved; the engine attaches the step);
  :class:`fuzz.errors.HarnessError` means we could not do our job (binary missing, QEMU would
  not start) and says nothing about QEMU's correctness (the tree: ``fuzz.errors``).

QEMU runs with ``cwd=workdir`` (images are addressed by relative names) and writes its stdout and
stderr to ``qemu.stdout.log`` / ``qemu.stderr.log`` there; the logs stay for the caller (findings).
The QMP channel is a ``socketpair`` handed to QEMU as ``-chardev socket,fd=N``: no socket file,
no polling for it, no path-length limit, and if QEMU dies during start-up we see EOF at once.
It becomes the monitor with ``-object monitor-qmp`` where the binary has it (11.1 deprecates
``-mon``), else ``-mon``.

**Sandbox** (``fuzz.sandbox``): ``execute()`` refuses a command naming a file outside the work
directory (:class:`UnsafeStep`), and QEMU runs chrooted into the work directory
(``$BLOCKFUZZ_NO_CHROOT=1`` turns the chroot off; not root: through
``unshare --user --map-root-user``).  What a binary supports is probed once per path
(:func:`qemu_features`).
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Mapping, NoReturn, Protocol, Sequence

import attrs

from fuzz import sandbox
from fuzz.errors import (HarnessError, QemuCrash, QemuFailure, QemuHang, QemuQueryFailed, QmpGone,
                         QmpTimeout, QmpTransportError, ResetFailed, UnsafeStep, sanitizer_report)
from fuzz.qmpsync import DEFAULT_TIMEOUT, QmpSync
from models.values import (JOB_COMMANDS, JOB_COMPLETE_COMMANDS, JOB_EVENTS, JOB_PAUSE_COMMANDS,
                           JOB_UNPAUSE_COMMANDS, Outcome, QmpError, canonicalize_text,
                           fold_job_events, job_event_text)

__all__ = [
    "QemuBinaries", "QemuProcess", "binaries_env",
    "QemuFeatures", "qemu_features", "check_step",
    "NodeNames", "stdout_lines", "STDOUT_LOG", "STDERR_LOG",
]

STDOUT_LOG = "qemu.stdout.log"
STDERR_LOG = "qemu.stderr.log"

# Grace periods for shutdown and for a dying process to be reaped after its socket closed.
_QUIT_GRACE = 1.0
_EXIT_GRACE = 1.0
_TAIL_BYTES = 4096


class QemuBinaries(Protocol):
    """What we need to run QEMU: the three programs and extra environment (LD_LIBRARY_PATH, ...).

    ``fuzz.qemufetch.QemuBinaries`` fits; so does any object with these four attributes.
    """

    @property
    def system(self) -> str | os.PathLike[str]: ...
    @property
    def img(self) -> str | os.PathLike[str]: ...
    @property
    def io(self) -> str | os.PathLike[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...


def binaries_env(binaries: QemuBinaries, program: str | os.PathLike[str] | None = None
                 ) -> dict[str, str]:
    """The environment to run ``program`` (default: ``binaries.system``) in: ours plus theirs.

    If the binaries value has an ``env_for(program)`` method (qemu-img / qemu-io may come from
    another installation than the emulator), it is asked instead of ``env``.
    """
    env_for = getattr(binaries, "env_for", None)
    if program is not None and callable(env_for):
        return {**SANITIZER_ENV, **os.environ, **env_for(os.fspath(program))}
    return {**SANITIZER_ENV, **os.environ, **binaries.env}


#: Defaults for a sanitizer build (ignored by any other; the user's own settings win).
#: Leaks are not reported: QEMU leaves much allocated on purpose when it quits (``quit``
#: exits without tearing the block graph down), so LeakSanitizer would fail every clean exit
#: of every example, and a leak at exit is not the lifetime bug a fuzzer is after
#: (use-after-free, double free, overflow).  UBSan prints a stack, so its report names a
#: function, and goes on running: the harness sees the report after the step.
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


def check_step(cmd: str, args: Any) -> None:
    """Raise :class:`UnsafeStep` if QMP command ``cmd`` may not be sent (``fuzz.sandbox``)."""
    problem = sandbox.step_problem(cmd, args)
    if problem is not None:
        raise _unsafe(cmd, problem)


def _unsafe(what: str, problem: sandbox.Problem) -> UnsafeStep:
    return UnsafeStep(f"refused {what}: {problem.describe()} (a trace may only name files "
                      "inside its work directory)", command=what, path=problem.text)


# -- output normalisation -------------------------------------------------------------------

# qemu-io's print_report(): "1 MiB, 1 ops; 00.00 sec (1.402 GiB/sec and 1435.6811 ops/sec)",
# and with -C the CSV form "512,1,0:00:00.00,11801313.818,23049.441". Numbers are deliberately
# loose (\S+: "inf", h:mm:ss forms); the fixed words make the shape unambiguous.
_UNIT = r"(?:bytes|[KMGTPE]iB)"
_STATS_LINE = re.compile(
    rf"\S+ {_UNIT}, \d+ ops; \S+(?: sec)? \(\S+ {_UNIT}/sec and \S+ ops/sec\)"
    r"|\d+,\d+,[\d:.]+,[\d.einfa]+,[\d.einfa]+"
)
# Text QEMU (glibc assert, glib g_assert, abort) leaves on stderr when it is going down.
#: job states the harness waits for after each command (see QemuProcess._settle_jobs)
SETTLED_JOB_STATES = frozenset({"ready", "pending", "concluded"})
#: ... and a job the user paused (block-job-pause, job-pause): at its pause point.  With an
#: iothread it gets there after the command's reply (probed: within ~2 ms)
USER_PAUSED_JOB_STATES = frozenset({"standby", "paused"})
#: ... and a job told to complete: once it has left ``ready`` (block-job-complete's reply can
#: come before the job wakes)
COMPLETING_JOB_STATES = frozenset({"pending", "concluded"})
# ... and a sanitizer build's reports (ASan, UBSan): UBSan's QEMU goes on running, ASan's exits
# with status 1; both are crashes (fuzz.errors.sanitizer_report)
_FATAL_STDERR = re.compile(r"Assertion|assertion failed|code should not be reached|Aborted|core dumped"
                           r"|==\d+==ERROR: \w+Sanitizer|: runtime error: ")


def stdout_lines(text: str) -> tuple[str, ...]:
    """Split captured stdout into lines, dropping qemu-io's timing statistics."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return tuple(line for line in lines if not _STATS_LINE.fullmatch(line))


# models.values's pattern: "#block" + counter + two random digits (id_generate()).
_AUTO_NAME = re.compile(r"#block(\d+)(\d\d)(?!\d)")


def _canon_text(text: str, offset: int = 0) -> str:
    """``canonicalize_text`` with the counter shifted down by ``offset`` (the auto names an
    earlier example on this process used up; see :meth:`QemuProcess.reset`).  A name older
    than the offset stays as QEMU wrote it, so it can never pass for the model's."""
    if not offset:
        return canonicalize_text(text)

    def sub(m: re.Match) -> str:
        n = int(m.group(1)) - offset
        return f"#block{n}" if n >= 0 else m.group(0)
    return _AUTO_NAME.sub(sub, text)


def _canon(value: Any, offset: int = 0) -> Any:
    """Canonicalise auto node names in every string of a JSON value.

    It runs on every graph reply (a 6 kB one for six nodes), hence exact type tests, no call
    for a scalar and no regex for a string without ``#block``: 85 µs a reply instead of 155."""
    t = type(value)
    if t is str:
        return _canon_text(value, offset) if "#block" in value else value
    if t is dict:
        return {k: _canon(v, offset) if type(v) in _NESTED else v for k, v in value.items()}
    if t is list:
        return [_canon(v, offset) if type(v) in _NESTED else v for v in value]
    return value


#: what _canon() has to look into (JSON decodes to exactly these types)
_NESTED = frozenset({str, dict, list})
_CONTAINERS = frozenset({dict, list})


# Any name a caller may use for an auto node: "#block" + counter (canonical form).
_CANONICAL_AUTO = re.compile(r"#block\d+")
# The device token(s) of an HMP line, i.e. whole words before the quoted qemu-io command.
_HMP_WORD = re.compile(r"(?<!\S)#block\d+(?!\S)")


def _auto_names_in(v: Any, found: list[str]) -> None:
    """Append every canonical auto name (``#block<N>``) in ``v``, depth first.  Module-level:
    a nested recursive function is a reference cycle that only the cyclic collector frees."""
    if isinstance(v, str):
        if _CANONICAL_AUTO.fullmatch(v):
            found.append(v)
    elif isinstance(v, dict):
        for x in v.values():
            _auto_names_in(x, found)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _auto_names_in(x, found)


class NodeNames:
    """Canonical -> real auto node names of one QEMU process.

    Auto names are unique per process and never reused, so the map only grows until
    :meth:`clear` (a reset: the old nodes are gone and ``offset`` moves on).
    """

    def __init__(self, offset: int = 0) -> None:
        self.real: dict[str, str] = {}
        #: the counter value canonical ``#block0`` stands for
        self.offset = offset

    def clear(self, offset: int) -> None:
        self.real.clear()
        self.offset = offset

    def learn(self, value: Any) -> None:
        """Record every ``node-name`` found anywhere in a (raw, uncanonicalised) reply."""
        t = type(value)
        if t is dict:
            for k, v in value.items():
                if k == "node-name" and type(v) is str:
                    if "#block" in v:
                        canonical = _canon_text(v, self.offset)
                        if canonical != v:
                            self.real[canonical] = v
                elif type(v) in _CONTAINERS:
                    self.learn(v)
        elif t is list:
            for v in value:
                if type(v) in _CONTAINERS:
                    self.learn(v)

    def unknown(self, cmd: str, args: Any) -> bool:
        """Does the command name an auto node we cannot translate yet?"""
        return any(n not in self.real for n in self._mentions(cmd, args))

    def to_real(self, cmd: str, args: Any) -> Any:
        """Translate canonical auto names in arguments (and in an HMP line's device token)."""
        out = self._translate(args)
        if cmd == "human-monitor-command" and isinstance(out, dict) \
                and isinstance(out.get("command-line"), str):
            head, quote, rest = out["command-line"].partition('"')
            head = _HMP_WORD.sub(lambda m: self.real.get(m[0], m[0]), head)
            out = {**out, "command-line": head + quote + rest}
        return out

    def _translate(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.real.get(value, value)
        if isinstance(value, dict):
            return {k: self._translate(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._translate(v) for v in value]
        return value

    def _mentions(self, cmd: str, args: Any) -> list[str]:
        found: list[str] = []
        _auto_names_in(args, found)
        if cmd == "human-monitor-command" and isinstance(args, dict) \
                and isinstance(args.get("command-line"), str):
            found += _HMP_WORD.findall(args["command-line"].partition('"')[0])
        return found


# -- what a binary supports -----------------------------------------------------------------

@attrs.frozen
class QemuFeatures:
    """What a ``qemu-system-*`` binary supports, from ``-help`` and ``-object help``."""

    #: ``"run-with"`` (``-run-with chroot=``, 8.1+), ``"chroot"`` (``-chroot``, 7.2) or None
    chroot: str | None
    #: ``-object monitor-qmp`` exists (11.1; there ``-mon`` is deprecated)
    monitor_object: bool


_FEATURES: dict[str, QemuFeatures] = {}
_PROBE_TIMEOUT = 30.0


def qemu_features(binaries: QemuBinaries) -> QemuFeatures:
    """Probe (two short runs of the binary, ~20 ms) once per binary path and process."""
    key = os.fspath(binaries.system)
    features = _FEATURES.get(key)
    if features is None:
        help_text, objects = _probe([[key, "-help"], [key, "-object", "help"]],
                                    binaries_env(binaries))
        features = QemuFeatures(
            chroot=sandbox.chroot_style(help_text),
            monitor_object="monitor-qmp" in (line.strip() for line in objects.splitlines()))
        if "usage:" in help_text:   # a real answer: keep it (a failed probe is retried)
            _FEATURES[key] = features
    return features


def _probe(argvs: list[list[str]], env: dict[str, str]) -> list[str]:
    """The stdout of each command, run side by side."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True, errors="replace"))
        return [p.communicate(timeout=_PROBE_TIMEOUT)[0] for p in procs]
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"cannot launch {argvs[0][0]}: {e}") from e
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- dying with the parent -----------------------------------------------------------------

_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)   # loaded before any fork
except OSError:
    _LIBC = None


def _pdeathsig_preexec():
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (SIGKILL of the
    fuzzer included, where no clean-up runs).  The setting survives ``execve`` of the wrapper
    script, ``unshare`` and ld.so (they all exec, none is set-uid), so it reaches QEMU itself.

    The kernel sends it when the *thread* that forked exits, so QEMU must be started from a
    thread that lives as long as it (the main thread).  If the parent already died between
    fork and prctl, the getppid() check exits at once."""
    if _LIBC is None or threading.current_thread() is not threading.main_thread():
        # a thread that ends before QEMU (fuzz.diffengine starts two builds side by side)
        # would take QEMU with it: no PDEATHSIG there; close() and the campaign still clean up
        return None
    parent = os.getpid()

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    """util-linux's ``setpriv`` if it has ``--pdeathsig`` (2.33+; Debian's essential
    util-linux), else None."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in out else None


def _pdeathsig() -> tuple[list[str], Any]:
    """How QEMU gets PR_SET_PDEATHSIG: an argv prefix (``setpriv --pdeathsig KILL``) or, where
    there is no such setpriv, a ``preexec_fn`` (``_pdeathsig_preexec``).

    The prefix, because a ``preexec_fn`` makes subprocess fork() the whole fuzzer instead of
    vfork()ing it: measured with a 300 MB heap (a campaign worker's size), 26 ms a start
    against 3 ms through setpriv, and a campaign starts a QEMU every second or so.  The
    setting is the same: setpriv sets it in the child, then execs (the thread rule of
    ``_pdeathsig_preexec`` holds: only the main thread asks for it)."""
    if threading.current_thread() is not threading.main_thread():
        return [], None
    setpriv = _setpriv()
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL"], None
    return [], _pdeathsig_preexec()


# -- the process ----------------------------------------------------------------------------

class QemuProcess:
    """One QEMU process with its QMP connection. Use as a context manager.

    ``timeout`` bounds every command (and start-up); exceeding it raises :class:`QemuHang`.
    ``machine`` and ``extra_args`` are passed through (``-M none`` has no buses: enough for
    blockdev-* and qemu-io, not for devices).  ``check_paths`` and ``chroot`` are the two
    sandbox layers (``chroot=None``: on unless ``$BLOCKFUZZ_NO_CHROOT``); turning one off is
    for tests that show the other holds alone.
    """

    #: ``execute(..., then_query_nodes=True)`` is understood (fuzz.engine asks)
    pipelines_graph_query = True

    def __init__(self, binaries: QemuBinaries, workdir: str | os.PathLike[str], *,
                 timeout: float = DEFAULT_TIMEOUT, machine: str = "none",
                 extra_args: Sequence[str] = (), check_paths: bool = True,
                 chroot: bool | None = None):
        self.binaries = binaries
        self.workdir = os.fspath(workdir)
        self.timeout = timeout
        self.machine = machine
        self.extra_args = tuple(extra_args)
        self.check_paths = check_paths
        self.chroot = not sandbox.chroot_disabled() if chroot is None else chroot
        self._dev_null = False   # we put the chroot's dev/null into workdir
        self.stdout_path = os.path.join(self.workdir, STDOUT_LOG)
        self.stderr_path = os.path.join(self.workdir, STDERR_LOG)
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QmpSync | None = None
        self._sock: socket.socket | None = None
        #: the query-named-block-nodes reply sent right behind the last command
        #: (``execute(..., then_query_nodes=True)``): a reply dict, or the failure to raise
        self._prefetched: dict | QemuFailure | None = None
        self._out_fd = -1
        self._err_fd = -1
        self._names = NodeNames()
        #: the last graph reply, its offset and what _canon_nodes() made of it
        self._canon_memo: tuple[list, int, list] | None = None
        #: the last graph reply (raw), as long as no command went out after it: QEMU's graph
        #: now, if no job can run (reset() plans from it instead of asking again)
        self._graph_now: list | None = None
        #: an object-add succeeded since the last reset (else the objects are as it left them)
        self._objects_possible = False
        self._names_fresh = True    # no auto nodes exist before the first command
        self._failure: QemuFailure | None = None
        self._closed = False
        self._version: tuple[int, int, int] | None = None
        self._jobs_possible = False  # a job command succeeded and query-jobs was not yet empty
        self._user_paused: set[str] = set()   # real ids of jobs the user paused (_settle_jobs)
        self._completing: set[str] = set()    # real ids of jobs told to complete (_settle_jobs)
        self._jobs_seen: list | None = []   # query-jobs' reply, if no command came since
        self._reset_failed: ResetFailed | None = None
        self._confined = False
        self._machine_objects: frozenset[str] = frozenset()
        #: examples this process ran before the current one (reset() counts them)
        self.resets = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def machine_args(self) -> list[str]:
        """``-M none`` needs nothing more.  ``-M pc`` (buses for virtio-scsi) runs TCG with the
        CPUs stopped (``-S``: the guest never runs) and needs a BIOS: a fetched tree has
        seabios and QEMU's data files (``kvmvapic.bin``) beside its ``bin/`` (``share/seabios``,
        ``share/qemu``), passed with ``-L`` in that order; any other build finds its own data
        directory."""
        if self.machine == "none":
            return []
        args = ["-accel", "tcg", "-S"]
        share = os.path.join(os.path.dirname(os.fspath(self.binaries.system)), "..", "share")
        for data in ("seabios", "qemu"):
            if os.path.isdir(os.path.join(share, data)):
                args += ["-L", os.path.normpath(os.path.join(share, data))]
        return args

    def start(self, wait: bool = True) -> "QemuProcess":
        """Launch QEMU and wait until QMP is negotiated. Raises :class:`HarnessError`.

        ``wait=False`` only launches it (a pool starts the next QEMU while an example runs);
        :meth:`wait_ready` then finishes the start.  Call both from a thread that outlives
        QEMU (see ``_pdeathsig_preexec``)."""
        if self._proc is not None:
            raise HarnessError("QemuProcess.start() called twice")
        if not os.path.isdir(self.workdir):
            raise HarnessError(f"work directory {self.workdir!r} does not exist")
        system = os.fspath(self.binaries.system)
        features = qemu_features(self.binaries)
        prefix, confine = self._confinement(features)
        monitor = (["-object", "monitor-qmp,id=qmp-monitor,chardev=qmp"] if features.monitor_object
                   else ["-mon", "chardev=qmp,mode=control"])
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        deathsig, preexec = _pdeathsig()
        argv = [
            *deathsig, *prefix, system,
            "-no-user-config", "-nodefaults", "-display", "none", "-M", self.machine,
            "-chardev", f"socket,id=qmp,fd={theirs.fileno()}", *monitor,
            *self.machine_args(), *confine, *self.extra_args,
        ]
        try:
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
                self._proc = subprocess.Popen(
                    argv, cwd=self.workdir, env=binaries_env(self.binaries),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    pass_fds=(theirs.fileno(),),
                    # Own session: a Ctrl-C aimed at the fuzzer must not also kill QEMU, or the
                    # harness would report the resulting EOF as a crash finding.
                    start_new_session=True,
                    preexec_fn=preexec,
                )
        except OSError as e:
            ours.close()
            self._drop_dev_null()
            raise HarnessError(f"cannot launch {argv[0]}: {e}") from e
        finally:
            theirs.close()  # QEMU has its copy; ours must go or we never see EOF
        self._confined = bool(confine)
        return self.wait_ready() if wait else self

    def wait_ready(self) -> "QemuProcess":
        """Finish :meth:`start` (``wait=False``): wait for QMP. Idempotent."""
        if self._qmp is not None:
            return self
        if self._proc is None or self._sock is None or self._closed:
            raise HarnessError("QemuProcess.wait_ready() before start()")
        try:
            self._out_fd = os.open(self.stdout_path, os.O_RDONLY)
            self._err_fd = os.open(self.stderr_path, os.O_RDONLY)
            self._qmp = QmpSync(self.timeout, memo=("query-named-block-nodes",))
            self._qmp.connect(self._sock, timeout=self.timeout)
        except (QmpTransportError, OSError) as e:
            self.close()
            tail = self._stderr_tail()
            if self._confined and "chroot failed" in tail:
                raise HarnessError(
                    f"QEMU cannot chroot into {self.workdir} (needs CAP_SYS_CHROOT); set "
                    f"{sandbox.NO_CHROOT_ENV}=1 to run it unconfined") from e
            raise HarnessError(f"QEMU did not become ready: {e}", stderr_tail=tail) from e
        except BaseException:   # e.g. Ctrl-C: __exit__ will not run, so clean up here
            self.close()
            raise
        if self.machine != "none":
            # the machine's own objects (-M pc: its RAM backend, "pc.ram"), which a reset
            # must leave alone; looked at before any example ran
            listed = _objects_listed(self._call("qom-list", {"path": "/objects"}, None))
            if not isinstance(listed, list):
                self.close()
                raise HarnessError(f"qom-list /objects failed on a fresh QEMU: {listed}")
            self._machine_objects = frozenset(_qom_children(listed))
        return self

    def _confinement(self, features: QemuFeatures) -> tuple[list[str], list[str]]:
        """The argv prefix and QEMU options that chroot QEMU into the work directory."""
        if not self.chroot:
            return [], []
        hint = f"set {sandbox.NO_CHROOT_ENV}=1 to run it unconfined"
        if features.chroot is None:
            raise HarnessError(f"{self.binaries.system} has no chroot option (-run-with chroot= "
                               f"or -chroot), so QEMU cannot be confined to its work directory; "
                               f"{hint}")
        why = sandbox.userns_problem()
        if why is not None:
            raise HarnessError(f"QEMU cannot be chrooted into its work directory: not root, and "
                               f"`unshare --user --map-root-user` fails ({why}); {hint}")
        self._dev_null = sandbox.make_dev_null(self.workdir)
        return sandbox.confinement(features.chroot, self.workdir)

    def _drop_dev_null(self) -> None:
        if self._dev_null:
            sandbox.remove_dev_null(self.workdir)
            self._dev_null = False

    def close(self) -> int | None:
        """Stop QEMU (``quit``, SIGKILL after a grace period), reap it, release everything.

        Idempotent and never raises. Returns QEMU's exit status: 0 after a clean quit, negative
        for a signal (-9 if it had to be killed; -6, SIGABRT, on shutdown is a finding worth a
        look). None if it was never started.
        """
        proc = self._proc
        if not self._closed:
            self._closed = True
            try:
                if proc is not None and proc.poll() is None:
                    # quit lets QEMU close its images (and shows crashes on shutdown). A QEMU that
                    # already failed, or does not answer quit, gets SIGKILL at once: no point
                    # waiting twice.
                    exiting = False
                    if self._qmp is not None and self._failure is None:
                        try:
                            self._qmp.cmd("quit", timeout=_QUIT_GRACE)
                            exiting = True
                        except QmpGone:
                            exiting = True
                        except QmpTransportError:
                            pass
                    if exiting:
                        try:
                            proc.wait(_QUIT_GRACE)
                        except subprocess.TimeoutExpired:
                            pass
                    if proc.poll() is None:
                        proc.kill()   # SIGKILL also ends a SIGSTOPped process
                        proc.wait()
            finally:
                if self._qmp is not None:
                    self._qmp.close()
                if self._sock is not None:
                    self._sock.close()
                for fd in (self._out_fd, self._err_fd):
                    if fd >= 0:
                        os.close(fd)
                self._out_fd = self._err_fd = -1
                self._drop_dev_null()
        return None if proc is None else proc.returncode

    def __enter__(self) -> "QemuProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # -- commands ----------------------------------------------------------------------------

    def execute(self, cmd: str, args: Mapping[str, Any] | None = None, *,
                timeout: float | None = None, then_query_nodes: bool = False) -> Outcome:
        """Run one QMP command and return its normalised :class:`Outcome`.

        Raises :class:`QemuCrash` / :class:`QemuHang` (findings), :class:`HarnessError` when
        the process was never started or already failed, :class:`UnsafeStep` (QEMU is not
        asked, the process stays usable) when the command names a file outside the work
        directory.

        ``then_query_nodes``: the caller's next call is :meth:`query_nodes`; where no job can
        be running, its ``query-named-block-nodes`` is sent right behind the command, in the
        same write, and :meth:`query_nodes` takes the reply (one wait less per step).  QEMU
        still runs the two one after the other: a monitor without OOB takes the next request
        only when the previous one is done (``monitor_qmp_dispatcher_co()``).  A crash or hang
        of the query is still the query's, raised by :meth:`query_nodes`.  Where a job may be
        running, the settle loop's first ``query-jobs`` goes behind the command instead (one
        wait less again); the graph query follows once the jobs have settled.
        """
        pending = self.begin(cmd, args, timeout=timeout) if then_query_nodes else None
        if pending is not None:
            return self.finish(pending)
        self._prefetched = None
        wire, out0, err0 = self._prepare(cmd, args)
        reply = self._call(cmd, wire, timeout)
        return self._outcome(cmd, wire, reply, out0, err0, None)

    def begin(self, cmd: str, args: Mapping[str, Any] | None = None, *,
              timeout: float | None = None) -> "_Pending | None":
        """The first half of ``execute(cmd, args, then_query_nodes=True)``: send the command
        with the query its check needs first right behind it, and return at once;
        :meth:`finish` takes the replies.  In between the caller may do anything but talk to
        this QEMU (the campaign draws its next step: ``fuzz.engine.Runner``'s ``pipeline``).

        Behind the command goes ``query-named-block-nodes`` where no job can be running, and
        otherwise ``query-jobs``: the settle loop's first poll (``_settle_jobs``).  After a
        job command the graph query then waits until the jobs have settled, as it always
        did: sent while a job still runs, it would meet the job at a moment that depends on
        timing, and a failure would not replay.  After any other command the jobs are most
        likely settled still (they were before it), so the graph query goes right behind the
        poll, and counts only if that poll found them settled: then QEMU ran it with every
        job settled, as if it had been sent after the poll's reply (one wait less); else its
        reply is dropped and the graph query waits as after a job command.  None for the
        state queries themselves and ``quit``; then :meth:`execute` it."""
        if cmd in ("query-jobs", "query-named-block-nodes", "quit"):
            return None
        self._prefetched = None
        settle = self._jobs_possible or cmd in JOB_COMMANDS
        wire, out0, err0 = self._prepare(cmd, args)
        assert self._qmp is not None
        limit = self.timeout if timeout is None else timeout
        behind = "query-jobs" if settle else "query-named-block-nodes"
        calls: list[tuple[str, Any]] = [(cmd, wire), (behind, None)]
        if settle and cmd not in JOB_COMMANDS:
            calls.append(("query-named-block-nodes", None))   # counts if the poll settles
        try:
            sent = self._qmp.send(calls)
        except QmpTransportError as e:   # finish() reports it as the command's failure
            return _Pending(cmd, wire, out0, err0, limit, [], e, behind)
        return _Pending(cmd, wire, out0, err0, limit, sent, None, behind)

    def finish(self, p: "_Pending") -> Outcome:
        """The second half of :meth:`begin`: the command's outcome (its crash or hang raised,
        as :meth:`execute` raises it); a graph query's reply waits for :meth:`query_nodes`,
        a ``query-jobs`` reply is the settle loop's first poll."""
        assert self._qmp is not None
        if p.send_failed is not None:
            self._fail(self._crash(p.cmd, self._wait_exit()), p.send_failed)
        r1, r2, *speculative = self._qmp.receive(p.sent, p.timeout)
        if isinstance(r1, QmpTimeout):
            self._fail(QemuHang(p.cmd, p.timeout, self._stderr_tail()), r1)
        if isinstance(r1, QmpTransportError):
            self._fail(self._crash(p.cmd, self._wait_exit()), r1)
        second: dict | QemuFailure
        if isinstance(r2, QmpTimeout):
            second = QemuHang(p.behind, p.timeout, self._stderr_tail())
        elif isinstance(r2, QmpTransportError):
            second = self._crash(p.behind, self._wait_exit())
        else:
            second = r2
        if p.behind == "query-jobs":
            graph = None
            if speculative:
                r3 = speculative[0]
                graph = (QemuHang("query-named-block-nodes", p.timeout, self._stderr_tail())
                         if isinstance(r3, QmpTimeout) else
                         self._crash("query-named-block-nodes", self._wait_exit())
                         if isinstance(r3, QmpTransportError) else r3)
            return self._outcome(p.cmd, p.wire, r1, p.out0, p.err0, None, first_poll=second,
                                 graph_behind_poll=graph)
        return self._outcome(p.cmd, p.wire, r1, p.out0, p.err0, second)

    def _prepare(self, cmd: str, args: Mapping[str, Any] | None) -> tuple[Any, int, int]:
        """What comes before a command goes out: the path check, the process check, the
        auto names it uses, and where QEMU's stdout and stderr stand."""
        if self.check_paths and (problem := sandbox.step_problem(cmd, args)) is not None:
            raise _unsafe(cmd, problem)
        self._require_usable(cmd)
        self._graph_now = None
        if not self._names_fresh and self._names.unknown(cmd, args):
            self._learn_names()
        wire = self._names.to_real(cmd, args) if args else args
        return wire, os.fstat(self._out_fd).st_size, os.fstat(self._err_fd).st_size

    def _outcome(self, cmd: str, wire: Any, reply: dict, out0: int, err0: int,
                 nodes: "dict | QemuFailure | None", first_poll: "dict | QemuFailure | None" = None,
                 graph_behind_poll: "dict | QemuFailure | None" = None) -> Outcome:
        """What comes after the command's reply (``nodes``: the reply of the graph query sent
        behind it, or its failure; ``first_poll``: that of a ``query-jobs`` sent behind it;
        ``graph_behind_poll``: that of a graph query sent behind that poll, which is the
        step's graph query if the poll found the jobs settled; None if none was sent)."""
        if cmd == "object-add" and "error" not in reply:
            self._objects_possible = True
        if cmd in JOB_COMMANDS and "error" not in reply:
            self._jobs_possible = True
            key = JOB_PAUSE_COMMANDS.get(cmd)
            if key is not None:
                self._user_paused.add(wire[key])
            key = JOB_UNPAUSE_COMMANDS.get(cmd)
            if key is not None:
                self._user_paused.discard(wire[key])
            key = JOB_COMPLETE_COMMANDS.get(cmd)
            if key is not None:
                self._completing.add(wire[key])
        if cmd not in ("query-jobs", "query-named-block-nodes"):
            self._jobs_seen = None
            if self._jobs_possible:
                if self._settle_jobs(cmd, first_poll) and graph_behind_poll is not None:
                    nodes = graph_behind_poll
            elif isinstance(first_poll, QemuFailure):
                self._fail(first_poll)   # (the command failed, so no job: the poll went for nothing)
        stdout = stdout_lines(_read_from(self._out_fd, out0))
        events = self._job_events()
        if not isinstance(nodes, QemuFailure):
            # (QEMU died or hung after the command's reply: that failure is the query's, and
            # query_nodes() raises it with the stderr it saw)
            self._check_after(cmd, err0)

        if cmd == "query-named-block-nodes" and "return" in reply:
            self._names_fresh = True
            return Outcome(ret=self._canon_nodes(reply["return"]), error=None, stdout=stdout,
                           events=events)
        else:
            self._names_fresh = False   # any other command may have created nodes
        if nodes is not None:
            self._prefetched = nodes
        if "error" in reply:
            err = reply["error"]
            return Outcome(ret=None, error=QmpError(err["class"],
                                                    _canon_text(err["desc"], self._names.offset)),
                           stdout=stdout, events=events)
        return Outcome(ret=_canon(reply["return"], self._names.offset), error=None, stdout=stdout,
                       events=events)

    def _job_events(self) -> tuple[str, ...]:
        """The job events of the step just run, folded (``models.values.fold_job_events``).

        Complete without another read: QEMU writes an event to the monitor before any reply
        that follows it, and the step ended on a reply (its own, or the last ``query-jobs`` of
        the settle loop, which waits until no job is paused by a drain any more).  Other events
        (DEVICE_DELETED, QUORUM_*) are dropped."""
        assert self._qmp is not None
        lines = [job_event_text(e["event"], _canon(e.get("data", {}), self._names.offset))
                 for e in self._qmp.take_events(JOB_EVENTS)]
        return fold_job_events(lines) if lines else ()

    def _settle_jobs(self, cmd: str, first_poll: "dict | QemuFailure | None" = None) -> bool:
        """Wait until every block job is in a settled state (``SETTLED_JOB_STATES``) or gone.

        This is what makes jobs deterministic: a job's copying is over when the command that
        started it returns, ``auto-finalize: false`` jobs wait in ``pending`` and active commits
        in ``ready``; transient states (running, waiting, paused/standby around a drain) are
        never observed.  A job that does not settle within the timeout is a hang.

        ``first_poll``: the reply (or failure) of a ``query-jobs`` that went out right behind
        the command (:meth:`begin`), taken as the first poll.  True if that poll found the
        jobs settled (or gone)."""
        deadline = time.monotonic() + self.timeout
        first = first_poll is not None
        while True:
            if first_poll is not None:
                reply, first_poll = first_poll, None
                if isinstance(reply, QemuFailure):
                    self._fail(reply)
            else:
                reply = self._call("query-jobs", None, None)
            jobs = reply.get("return", [])
            if not jobs:
                self._jobs_possible = False
                self._jobs_seen = []
                self._user_paused.clear()
                self._completing.clear()
                return first
            ids = {j.get("id") for j in jobs}
            self._user_paused &= ids
            self._completing &= ids
            self._completing -= {j.get("id") for j in jobs if j.get("status") in ("pending", "concluded")}
            if all(j.get("status") in (USER_PAUSED_JOB_STATES if j.get("id") in self._user_paused
                                       else COMPLETING_JOB_STATES if j.get("id") in self._completing
                                       else SETTLED_JOB_STATES) for j in jobs):
                self._jobs_seen = jobs
                return first
            first = False
            if time.monotonic() > deadline:
                states = ", ".join(f"{j.get('id')}={j.get('status')}" for j in jobs)
                self._fail(QemuHang(cmd, self.timeout, f"jobs never settled: {states}"))
            time.sleep(0.0005)

    def query_jobs(self) -> list[dict]:
        """``query-jobs`` as the model predicts it: id, type, status and error of each job,
        newest first (progress counters are left out: they count bytes the job visited)."""
        jobs = self._jobs_seen
        if jobs is None and not self._jobs_possible:
            jobs = []   # no job command succeeded since query-jobs was last empty
        if jobs is None:
            outcome = self.execute("query-jobs")
            if outcome.error is not None:
                self._fail(QemuQueryFailed("query-jobs", outcome.error.desc))
            jobs = outcome.ret
        # the settle loop's last reply is reused when no command came since (one round trip less);
        # it is raw, so canonicalise here (a job's default id is its node's name)
        return [{k: _canon(j[k], self._names.offset) for k in ("id", "type", "status", "error")
                 if k in j} for j in jobs]

    def query_nodes(self) -> list[dict]:
        """``query-named-block-nodes`` with every auto name canonicalised (also in json: names)."""
        nodes, self._prefetched = self._prefetched, None
        if isinstance(nodes, QemuFailure):
            self._fail(nodes)
        if nodes is not None:
            if "error" in nodes:
                self._fail(QemuQueryFailed("query-named-block-nodes", _error_text(nodes["error"])))
            self._names_fresh = True
            return self._canon_nodes(nodes["return"])
        outcome = self.execute("query-named-block-nodes")
        if outcome.error is not None:
            self._fail(QemuQueryFailed("query-named-block-nodes", outcome.error.desc))
        return outcome.ret

    def _canon_nodes(self, raw: list) -> list:
        """A graph reply's nodes learnt (:class:`NodeNames`) and canonicalised.  The same
        reply as last time (the same object: ``QmpSync``'s memo hands out one decoded value
        per distinct reply) gives the same result, so it is handed out again: learning it
        again adds nothing, and ``_canon`` depends only on the reply and the offset.  A graph
        that a failed command or a read left alone costs no work then.  Callers must not
        modify the result."""
        self._graph_now = raw
        last = self._canon_memo
        if last is not None and last[0] is raw and last[1] == self._names.offset:
            return last[2]
        self._names.learn(raw)
        out = _canon(raw, self._names.offset)
        self._canon_memo = (raw, self._names.offset, out)
        return out

    def version(self) -> tuple[int, int, int]:
        """QEMU's (major, minor, micro), from ``query-version``."""
        if self._version is None:
            outcome = self.execute("query-version")
            if outcome.error is not None:
                raise HarnessError(f"query-version failed: {outcome.error}")
            q = outcome.ret["qemu"]
            self._version = (q["major"], q["minor"], q["micro"])
        return self._version

    def drain_events(self, wait: float = 0.0) -> list[dict]:
        """Events received so far (canonicalised), waiting up to ``wait`` s if there are none."""
        self._require_usable("<events>")
        assert self._qmp is not None
        return [_canon(e, self._names.offset) for e in self._qmp.drain_events(wait)]

    # -- reuse -------------------------------------------------------------------------------

    def reset(self) -> int:
        """Bring QEMU back to empty for the next example, and check that it is.

        Cancels and dismisses every job, deletes every node (roots first, until none is left),
        deletes every object the session added, drains pending events, and learns how many
        auto names this process has used up (:attr:`name_offset`): from now on everything
        coming out is canonicalised as if the counter had started at 0 again, so ``#block0``
        is the first auto node the next example creates, as on a fresh QEMU.  The offset is
        learned here, from a probe node, never from an example's own replies.

        Then checks ``query-named-block-nodes == []``, ``query-jobs == []`` and no user object
        under ``/objects``; on a machine with buses also no guest device (a reset cannot
        remove one: it is refused).  If a check or any command fails (or QEMU dies or hangs) it raises
        :class:`ResetFailed`, and the process refuses further commands: close it and start a
        fresh one.  Returns the new offset.
        """
        if self._reset_failed is not None:
            raise self._reset_failed
        try:
            self._require_usable("<reset>")
            assert self._qmp is not None
            err0 = os.fstat(self._err_fd).st_size
            deadline = time.monotonic() + self.timeout
            self._qmp.drain_events()
            offset = self._reset_fast(deadline)
            if offset is None:   # something the one-batch plan did not clear: step by step
                self._reset_jobs(deadline)
                self._reset_nodes()
                objects_deleted = self._reset_objects()
                offset = self._probe_name_counter()
                self._reset_check(objects_deleted)
            if _FATAL_STDERR.search(_read_from(self._err_fd, err0)) or self._proc.poll() is not None:
                raise ResetFailed("QEMU reported a fatal error during reset",
                                  stderr_tail=self._stderr_tail())
            self._qmp.drain_events()   # the probe's and the cancelled jobs' events
        except QemuFailure as e:
            self._reset_failed = ResetFailed(f"QEMU failed during reset: {e}",
                                             stderr_tail=e.stderr_tail, cause=e)
            raise self._reset_failed from e
        except HarnessError as e:
            self._reset_failed = e if isinstance(e, ResetFailed) else ResetFailed(
                f"reset impossible: {e}", cause=e)
            raise self._reset_failed from e
        self._names.clear(offset)
        self._canon_memo = None
        self._graph_now = None
        self._objects_possible = False
        self._names_fresh = True
        self._jobs_possible = False
        self._user_paused.clear()
        self._completing.clear()
        self._jobs_seen = []
        self.resets += 1
        return offset

    @property
    def name_offset(self) -> int:
        """The auto-name counter value that canonical ``#block0`` stands for (0 until reset)."""
        return self._names.offset

    _PROBE = "blockfuzz-reset-probe"

    def _reset_fast(self, deadline: float) -> int | None:
        """The reset in (usually) one or two QMP batches: look (jobs, nodes, objects), then
        delete everything in dependency order, open and read the probe, delete it and look
        again.  The first look is left out where the example's last reply already shows
        everything it would (``_graph_now``, no job or object possible): on 11.1.3 a reset
        is then one batch, as 7.2 and 10.0 ask ``x-debug-query-block-graph`` for the edges.
        Returns the offset, or None if the final look is not empty (the caller then goes
        step by step, which says what is left)."""
        checks: list[tuple[str, Any]] = []
        if self.machine == "none" and self._graph_now is not None and not self._jobs_possible \
                and not self._objects_possible:
            # Nothing to look at: the graph is the reply to the example's last command (no
            # command went out since), no job command succeeded (so no job exists) and no
            # object-add (so the objects are the last reset's).  The final look checks all
            # three, query-jobs included, as the first look would have.
            jobs, nodes, objects = [], self._graph_now, []
            checks = [("query-jobs", None)]
        else:
            looks = [("query-jobs", None), ("query-named-block-nodes", None),
                     ("qom-list", {"path": "/objects"})]
            if self.machine != "none":
                # a machine with buses is reused only if its example added no device
                # (fuzz.session.Session._reusable): checked here, not trusted
                looks += [("qom-list", {"path": p}) for p in _DEVICE_CONTAINERS]
            jobs, nodes, objects, *containers = self._batch_must(looks, may_lack_objects=True)
            devices = [name for c in containers for name in _qom_children(c)]
            if devices:
                raise ResetFailed("guest devices cannot be removed by a reset: " + ", ".join(devices))
        if jobs:
            self._reset_jobs(deadline)
            nodes = self._must("query-named-block-nodes")
        kids = _children_of(nodes)
        if kids is None:   # BlockDeviceInfo.children is 11.1+: ask the debug graph (4.0+)
            kids = _graph_children(self._must("x-debug-query-block-graph"))
        own = self._own_objects()
        ids = [name for name in _qom_children(objects) if name not in own]
        plan: list[tuple[str, Any]] = [("blockdev-del", {"node-name": n})
                                       for n in _deletion_order(kids)]
        plan += [("object-del", {"id": i}) for i in ids]
        first = len(plan)
        plan += [("blockdev-add", {"driver": "raw", "node-name": self._PROBE,
                                   "file": {"driver": "null-co"}}),
                 ("query-named-block-nodes", None),
                 ("blockdev-del", {"node-name": self._PROBE}),
                 ("query-named-block-nodes", None),
                 ("qom-list", {"path": "/objects"}), *checks]
        # deletions may fail harmlessly (an inline child went with its parent: "Failed to
        # find node"); what counts is the final look
        replies = self._batch(plan)[first:]
        added, probed, deleted, after, objs, *checked = replies
        if checked and ("error" in checked[0] or checked[0]["return"]):
            return None   # a job after all: step by step, which says what is left
        if "error" in added or "error" in deleted:
            return None
        names = [n["node-name"] for n in probed["return"]]
        autos = [m for n in names if (m := _AUTO_NAME.fullmatch(n))]
        listed = _objects_listed(objs)
        if not isinstance(listed, list):
            return None
        left_objects = [name for name in _qom_children(listed) if name not in own]
        if len(names) != 2 or self._PROBE not in names or len(autos) != 1 \
                or after["return"] or left_objects:
            return None
        return int(autos[0].group(1)) + 1

    def _batch(self, calls: list[tuple[str, Any]]) -> list[dict]:
        """Send ``calls`` at once and collect every reply (``{"return"}``/``{"error"}``): one
        wait instead of one per command.  QEMU still runs them one after the other, in order
        (a monitor without OOB suspends reading until a request is handled,
        monitor_qmp_handle_inbound())."""
        assert self._qmp is not None
        what = f"{calls[0][0]} (+{len(calls) - 1})"
        replies = self._qmp.cmds(calls, self.timeout)
        for r in replies:
            if isinstance(r, QmpTimeout):
                self._fail(QemuHang(what, r.timeout, self._stderr_tail()), r)
            if isinstance(r, QmpTransportError):
                self._fail(self._crash(what, self._wait_exit()), r)
        return replies   # type: ignore[return-value]   # no failure left in it

    def _batch_must(self, calls: list[tuple[str, Any]], may_lack_objects: bool = False
                    ) -> list[Any]:
        out = []
        for (cmd, args), reply in zip(calls, self._batch(calls)):
            if cmd == "qom-list" and may_lack_objects:
                reply = {"return": _objects_listed(reply)}
            if "error" in reply:
                raise ResetFailed(f"{cmd} {args or ''} failed during reset: "
                                  f"{reply['error'].get('desc')}")
            out.append(reply["return"])
        return out

    @staticmethod
    def _must_ok(cmd: str, reply: Any) -> Any:
        if isinstance(reply, dict) and "error" in reply:
            raise ResetFailed(f"{cmd} failed during reset: {reply['error'].get('desc')}")
        return reply

    def _must(self, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
        reply = self._call(cmd, args, None)
        if "error" in reply:
            raise ResetFailed(f"{cmd} {args or ''} failed during reset: {reply['error'].get('desc')}")
        return reply["return"]

    def _reset_jobs(self, deadline: float) -> None:
        """Cancel every job (QMP job-cancel is a forced cancel, job_user_cancel_locked(job,
        true)), dismiss the concluded ones (auto-dismiss off), until query-jobs is empty."""
        cancelled: set[str] = set()
        while True:
            jobs = self._must("query-jobs")
            if not jobs:
                return
            for j in jobs:
                status, jid = j.get("status"), j.get("id")
                if status == "concluded":
                    self._must("job-dismiss", {"id": jid})
                elif status not in ("aborting", "null") and jid not in cancelled:
                    # job_verb_table: cancel is refused only where the job is already going
                    self._must("job-cancel", {"id": jid})
                    cancelled.add(jid)
            if time.monotonic() > deadline:
                states = ", ".join(f"{j.get('id')}={j.get('status')}" for j in jobs)
                raise ResetFailed(f"jobs did not go away during reset: {states}")
            time.sleep(0.0005)

    def _reset_nodes(self) -> None:
        """blockdev-del the roots (nodes no other node has as a child), again and again: an
        inline child goes with its parent, a node added on its own goes once its parents have
        (bdrv_has_blk / "Node ... is in use")."""
        last: list[str] | None = None
        while True:
            nodes = self._must("query-named-block-nodes")
            if not nodes:
                return
            names = [n["node-name"] for n in nodes]
            if names == last:
                raise ResetFailed("blockdev-del cannot empty the graph; left: " + ", ".join(names))
            last = names
            if all("children" in n for n in nodes):
                children = {c["node-name"] for n in nodes for c in n["children"]}
                roots = [n for n in names if n not in children] or names
            else:   # builds without BlockDeviceInfo.children: newest first, errors tolerated
                roots = names[::-1]
            for name in roots:
                self._call("blockdev-del", {"node-name": name}, None)

    def _own_objects(self) -> set[str]:
        """Objects QEMU has before any example: those of our own command line, and the
        machine's (``wait_ready``)."""
        own = {"qmp-monitor"} if qemu_features(self.binaries).monitor_object else set()
        return own | self._machine_objects

    def _user_objects(self) -> list[str]:
        reply = _objects_listed(self._call("qom-list", {"path": "/objects"}, None))
        own = self._own_objects()
        return [name for name in _qom_children(self._must_ok("qom-list", reply)) if name not in own]

    def _reset_objects(self) -> bool:
        """object-del every user object; True if there were any (then they are listed again)."""
        ids = self._user_objects()
        for oid in ids:
            self._must("object-del", {"id": oid})
        return bool(ids)

    def _probe_name_counter(self) -> int:
        """Open one anonymous node (raw over an inline null-co: blockdev-add wants a name for
        the root only) and read its counter; the next auto name gets counter + 1."""
        probe = "blockfuzz-reset-probe"
        self._must("blockdev-add", {"driver": "raw", "node-name": probe,
                                    "file": {"driver": "null-co"}})
        names = [n["node-name"] for n in self._must("query-named-block-nodes")]
        autos = [m for n in names if (m := _AUTO_NAME.fullmatch(n))]
        if len(names) != 2 or probe not in names or len(autos) != 1:
            raise ResetFailed("nodes left after reset: " + ", ".join(n for n in names if n != probe))
        self._must("blockdev-del", {"node-name": probe})
        return int(autos[0].group(1)) + 1

    def _reset_check(self, objects_deleted: bool) -> None:
        """The checks not already made: _reset_jobs returns only on an empty query-jobs (and
        nothing after it starts a job), an empty first qom-list needs no second one."""
        left = {"nodes": [n.get("node-name") for n in self._must("query-named-block-nodes")],
                "objects": self._user_objects() if objects_deleted else []}
        if any(left.values()):
            raise ResetFailed("reset left " + "; ".join(f"{k}: {', '.join(map(str, v))}"
                                                        for k, v in left.items() if v))

    # -- internals ---------------------------------------------------------------------------

    def _require_usable(self, cmd: str) -> None:
        if self._proc is None or self._qmp is None:
            raise HarnessError("QEMU is not running (use `with QemuProcess(...)` or start())")
        if self._closed:
            raise HarnessError("QemuProcess is closed")
        if self._failure is not None:
            raise HarnessError(f"QEMU already failed ({self._failure.kind}); "
                               "start a new process") from self._failure
        if self._reset_failed is not None:
            raise HarnessError("QEMU could not be reset; start a new process") \
                from self._reset_failed
        if self._proc.poll() is not None:
            self._fail(self._crash(cmd, self._proc.returncode))

    def _learn_names(self) -> None:
        reply = self._call("query-named-block-nodes", None, None)
        if "return" in reply:
            self._names.learn(reply["return"])
            self._names_fresh = True

    def _call(self, cmd: str, args: Mapping[str, Any] | None, timeout: float | None) -> dict:
        assert self._qmp is not None and self._proc is not None
        try:
            return self._qmp.cmd(cmd, args, self.timeout if timeout is None else timeout)
        except QmpTimeout as e:
            self._fail(QemuHang(cmd, e.timeout, self._stderr_tail()), e)
        except QmpGone as e:
            self._fail(self._crash(cmd, self._wait_exit()), e)

    def _check_after(self, cmd: str, err0: int) -> None:
        assert self._proc is not None
        new_err = _read_from(self._err_fd, err0)
        if _FATAL_STDERR.search(new_err):
            self._fail(self._crash(cmd, self._wait_exit()))
        if cmd != "quit" and self._proc.poll() is not None:
            self._fail(self._crash(cmd, self._proc.returncode))

    def _crash(self, cmd: str, returncode: int | None) -> QemuCrash:
        """The crash of ``cmd``, with the stderr tail and, from a sanitizer build, the whole
        sanitizer report (it may be longer than the tail, and it names the bug)."""
        try:
            with open(self.stderr_path, "rb") as f:
                stderr = f.read(4 * 1024 * 1024).decode("utf-8", "replace")
        except OSError:
            stderr = ""
        report = sanitizer_report(stderr)
        if report:   # chrooted, ASan could not name the functions: addr2line outside can
            from fuzz.symbolize import symbolize
            report = symbolize(report)
        return QemuCrash(cmd, returncode, self._stderr_tail(), sanitizer=report)

    def _fail(self, failure: QemuFailure, cause: BaseException | None = None) -> NoReturn:
        self._failure = failure
        raise failure from cause

    def _wait_exit(self) -> int | None:
        """Give a dying QEMU a moment to exit, so the finding carries its signal."""
        assert self._proc is not None
        try:
            return self._proc.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            return None

    def _stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


#: where qdev puts the devices of device_add: with an id, and without (``device[N]``)
_DEVICE_CONTAINERS = ("/machine/peripheral", "/machine/peripheral-anon")


def _qom_children(entries: list[dict]) -> list[str]:
    """The names of the ``child<...>`` properties in a ``qom-list`` reply: the objects (or
    devices) in that container."""
    return [o["name"] for o in entries if str(o.get("type", "")).startswith("child<")]


def _objects_listed(reply: dict) -> Any:
    """qom-list /objects' entries; [] where the container does not exist yet (7.2 creates it
    on first use, object_get_objects_root() -> container_get()).  Other errors pass through."""
    if "error" in reply and reply["error"].get("class") == "DeviceNotFound":
        return []
    return reply["return"] if "return" in reply else reply


def _children_of(nodes: list[dict]) -> dict[str, list[str]] | None:
    """Node name -> its children's names, from query-named-block-nodes (11.1+; else None)."""
    if not all("children" in n for n in nodes):
        return None
    return {n["node-name"]: [c["node-name"] for c in n["children"]] for n in nodes}


def _graph_children(graph: dict) -> dict[str, list[str]]:
    """The same from ``x-debug-query-block-graph`` (nodes by id, edges parent -> child)."""
    names = {n["id"]: n["name"] for n in graph.get("nodes", []) if n.get("type") == "block-driver"}
    kids: dict[str, list[str]] = {name: [] for name in names.values()}
    for e in graph.get("edges", []):
        if e.get("parent") in names and e.get("child") in names:
            kids[names[e["parent"]]].append(names[e["child"]])
    return kids


def _deletion_order(kids: dict[str, list[str]]) -> list[str]:
    """Node names with every parent before its children (blockdev-del refuses a node that
    still has parents, bdrv_has_blk / "Node ... is in use")."""
    parents = dict.fromkeys(kids, 0)
    for cs in kids.values():
        for c in cs:
            if c in parents:
                parents[c] += 1
    ready = [name for name, k in parents.items() if k == 0]
    out: list[str] = []
    while ready:
        name = ready.pop(0)
        out.append(name)
        for c in kids[name]:
            if c in parents:
                parents[c] -= 1
                if parents[c] == 0:
                    ready.append(c)
    return out + [name for name in parents if name not in out]   # no cycles; keep all anyway


def _error_text(err: Any) -> str:
    return err.get("desc", str(err)) if isinstance(err, dict) else str(err)


def _read_from(fd: int, offset: int) -> str:
    """Everything appended to the file behind ``fd`` since ``offset``."""
    size = os.fstat(fd).st_size
    if size <= offset:
        return ""
    return os.pread(fd, size - offset, offset).decode("utf-8", "replace")


@attrs.define
class _Pending:
    """A command :meth:`QemuProcess.begin` sent, with the query behind it."""

    cmd: str
    wire: Any
    out0: int
    err0: int
    timeout: float
    sent: list
    send_failed: BaseException | None
    #: the query sent behind the command: "query-named-block-nodes" or "query-jobs"
    behind: str
