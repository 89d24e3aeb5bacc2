"""Every exception blockfuzz raises on purpose, in one tree.

Three families never mix, because each is handled differently: a *finding* is what a campaign
is for (it is recorded, shrunk and reported); a *harness error* means blockfuzz could not do its
job and says nothing about QEMU (one line, exit status 2, never shrunk); a *campaign control*
ends a Hypothesis run.  A fourth family, the model's declines, belongs to the model
(``models.errors``) and is listed here only so that the tree is complete.

.. code-block:: none

    AssertionError
     +-- Finding                  QEMU misbehaved; signature() names the bug, kind its folder
          +-- Disagreement        the model (or a written expectation) and QEMU disagree
          |    +-- ResultMismatch       the QMP reply            kind "result"
          |    +-- GraphMismatch        query-named-block-nodes / query-jobs   "graph"
          |    +-- DataMismatch         qemu-io's output         kind "data"
          |    +-- ExpectationMismatch  a trace's written expect / assert      "expectation"
          |    +-- BuildMismatch        two builds, beyond what their models predict   "build"
          +-- QemuFailure         QEMU itself failed during a command (not a reply)
               +-- QemuCrash      it died, or printed an abort or assertion   kind "crash"
               +-- QemuHang       it did not answer in time (or jobs never settled)   "hang"

    Exception
     +-- HarnessError             the harness could not do its job (fuzz.qemu, fuzz.images)
     |    +-- UnsafeStep          a step names a file outside the work directory: refused
     |    +-- ResetFailed         a pooled QEMU could not be brought back to empty
     +-- QmpTransportError        the QMP conversation failed (fuzz.qmpsync; fuzz.qemu turns
     |    |                       these into QemuHang / QemuCrash, so no caller sees them)
     |    +-- QmpTimeout          (also a TimeoutError) no reply in time
     |    +-- QmpGone             (also a ConnectionError) the connection is closed
     +-- CliError                 one line on stderr and an exit status (the command line)
     |    +-- UsageError          a bad option value (exit status 2)
     +-- DatabaseError            --database is malformed or its server cannot be used
     +-- ExportError              a trace cannot be exported (fuzz.export)
     +-- ValueError
     |    +-- TraceError          a trace file cannot be used (fuzz.trace)
     |    +-- QemuNotFound        no usable QEMU binary (fuzz.qemufetch)
     +-- RuntimeError
          +-- FetchError          fetching or verifying a QEMU (or tool) tree failed
          +-- ToolNotFetched      a tool blockfuzz needs is not fetched (fuzz.toolfetch)
          +-- DotMissing          Graphviz's dot is not there (fuzz.report)

    KeyboardInterrupt             (why: see CampaignStop)
     +-- CampaignStop             ends a campaign's Hypothesis run at once
     |    +-- TimeUp              the budget (time or examples) is spent
     |    +-- BlockfuzzBug        a bug in blockfuzz itself, after its trace was saved
     |    +-- HarnessStop         a HarnessError during an example
     +-- MinimizeInterrupted      the minimizer was interrupted; carries the best trace so far

    NotImplementedError
     +-- models.errors.NotModeled      the model declines a step (the step is dropped)
          +-- models.errors.KnownQemuBug   ... because QEMU has a known bug there
          +-- fuzz.engine.DeclinedAfterQemu  ... its graph, after QEMU ran the step (the
                                             step stays; the example ends there)

The harness (``fuzz.qemu``) raises ``QemuCrash`` and ``QemuHang`` as soon as it sees QEMU fail;
the engine, which knows the step, attaches it (:meth:`QemuFailure.at_step`) and lets the same
exception go on.  Every message is one line except where a stderr tail is appended after it.

This module imports nothing of blockfuzz, so every layer may import it (pyproject.toml's
import-linter contracts).  The signature helpers live here too, since signatures are what
findings are compared by: ``generalise`` folds names and numbers, ``abort_text`` picks QEMU's
abort line, ``death_of`` says how it died.
"""
from __future__ import annotations

import json
import re
import signal
from typing import Any

__all__ = [
    "Finding", "Disagreement", "ResultMismatch", "GraphMismatch", "DataMismatch", "EventMismatch",
    "ExpectationMismatch", "BuildMismatch", "QemuFailure", "QemuCrash", "QemuHang", "QemuQueryFailed",
    "HarnessError", "UnsafeStep", "ResetFailed",
    "QmpTransportError", "QmpTimeout", "QmpGone",
    "CliError", "UsageError", "DatabaseError", "ExportError", "TraceError", "QemuNotFound",
    "FetchError", "ToolNotFetched", "DotMissing",
    "CampaignStop", "TimeUp", "BlockfuzzBug", "HarnessStop", "MinimizeInterrupted",
    "generalise", "first_difference", "abort_text", "death_of", "short",
]


# --------------------------------------------------------------------------------------------
# findings

class Finding(AssertionError):
    """Base class of findings: QEMU misbehaved at a step (``step_index``, 0-based; ``step``, the
    trace step).  An ``AssertionError`` because it is the property a campaign checks failing.

    ``signature()`` names the bug, not the path to it (the findings folder, the known-bug
    table and the minimizer compare it); ``kind`` is the folder's prefix."""

    kind = "finding"
    step_index: int | None = None
    step: dict | None = None

    def signature(self) -> str:
        raise NotImplementedError


class Disagreement(Finding):
    """QEMU and the model (or a written expectation) disagree at a step."""

    kind = "disagreement"

    def __init__(self, step_index: int, step: dict, expected: Any, actual: Any, detail: str = ""):
        self.step_index = step_index
        self.step = step
        self.expected = expected
        self.actual = actual
        self.detail = detail
        super().__init__(self.summary())

    def summary(self) -> str:
        what = self.step.get("qmp") or self.step.get("assert") or self.step.get("snapshot")
        head = f"step {self.step_index + 1} ({what}): {self.kind} differs"
        if self.detail:
            head += f" at {self.detail}"
        return f"{head}: expected {short(self.expected)}, got {short(self.actual)}"

    def signature(self) -> str:
        """What identifies the bug, independent of the path that led to it: the kind, the
        command and both sides' answers with names and numbers folded."""
        what = self.step.get("qmp") or self.step.get("assert")
        if self.kind == "graph":
            return f"graph:{what}:{generalise(graph_where(self.detail.split(':')[0]))}"
        if self.kind == "events":
            # the first event that differs (the lists share everything before it)
            i = first_difference(self.expected, self.actual)
            e = _event_shape(self.expected[i]) if i < len(self.expected) else "<none>"
            a = _event_shape(self.actual[i]) if i < len(self.actual) else "<none>"
            return f"events:{what}:{generalise(e)}|{generalise(a)}"
        return f"{self.kind}:{what}:{generalise(short(self.expected))}|{generalise(short(self.actual))}"


def _event_shape(line: str) -> str:
    """A job event line (``models.values.job_event_text``) with its job id folded to X."""
    parts = line.split(" ")
    at = 1 if parts[0] in ("JOB_STATUS_CHANGE", "BLOCK_JOB_ERROR") else 2
    if len(parts) > at:
        parts[at] = "X"
    return " ".join(parts)


def first_difference(a: list, b: list) -> int:
    """The index of the first element where two lists differ (the shorter one's length if one
    is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


class ResultMismatch(Disagreement):
    """The QMP reply (return value, or error class and description) differs."""

    kind = "result"


class GraphMismatch(Disagreement):
    """The projected ``query-named-block-nodes`` (or ``query-jobs``) differs after a step."""

    kind = "graph"


class DataMismatch(Disagreement):
    """What qemu-io printed differs."""

    kind = "data"


class EventMismatch(Disagreement):
    """The job events a step emitted differ (``models.values.job_event_text`` lines, in order,
    drain pauses folded); ``detail`` names the first differing event."""

    kind = "events"


class ExpectationMismatch(Disagreement):
    """A side contradicts a trace's written ``expect`` or ``assert``; ``detail`` names it."""

    kind = "expectation"


class BuildMismatch(Disagreement):
    """The two builds of ``blockfuzz diff`` disagree at a step in a way their profiles do not
    predict (``fuzz.diffengine``).

    ``expected``/``actual`` are build A's and build B's value at the first differing place;
    ``agrees`` is the label of the build that agrees with its model ("" for neither, None when
    the models were out of the loop)."""

    kind = "build"

    def __init__(self, step_index: int, step: dict, aspect: str, path: str, labels: tuple,
                 values: tuple, agrees: str | None, predicted: tuple | None = None,
                 declined: str = ""):
        self.aspect, self.path, self.labels = aspect, path, tuple(labels)
        self.agrees, self.predicted, self.declined = agrees, predicted, declined
        super().__init__(step_index, step, values[0], values[1], f"{aspect} {path}".strip())

    @property
    def role(self) -> str:
        """Which side agrees with its model, as a role (A/B/neither/unmodelled)."""
        if self.agrees is None:
            return "unmodelled"
        if not self.agrees:
            return "neither"
        return "A" if self.agrees == self.labels[0] else "B"

    def summary(self) -> str:
        what = self.step.get("qmp") or self.step.get("assert")
        la, lb = self.labels
        head = (f"step {self.step_index + 1} ({what}): builds differ at {self.detail}: "
                f"{la} {short(self.expected)}, {lb} {short(self.actual)}")
        if self.agrees is None:
            return f"{head}; models out of the loop ({self.declined})"
        if self.predicted is not None and self.predicted[0] != self.predicted[1]:
            head += f" (models: {la} {short(self.predicted[0])}, {lb} {short(self.predicted[1])})"
        if self.agrees:
            return f"{head}; {self.agrees} agrees with its model"
        return f"{head}; neither agrees with its model"

    def signature(self) -> str:
        what = self.step.get("qmp") or self.step.get("assert")
        path = self.path
        if self.aspect in ("graph", "jobs") and "/" in path:
            # a node's (job's) name says where, not what: fold it whole
            head, rest = path.split("/", 1)
            path = ("order" if head == "order" else "NAME") + "/" + rest
        sig = f"build:{what}:{self.aspect}:{self.role}:{generalise(path)}"
        if self.aspect in ("reply", "stdout"):
            sig += f":{generalise(short(self.expected))}|{generalise(short(self.actual))}"
        return sig


class QemuFailure(Finding):
    """QEMU itself failed while running ``command`` (the step's command, or a state query after
    it).  Raised by ``fuzz.qemu`` with the command only; whoever knows the step attaches it
    with :meth:`at_step`, which also makes the message name the step.  ``stderr_tail`` is the
    end of QEMU's stderr log."""

    #: the verb of the message once the step is known ("crashed", "hung")
    _what = "failed"

    def __init__(self, command: str, stderr_tail: str = ""):
        self.command = command
        self.stderr_tail = stderr_tail
        super().__init__(self.describe())

    def describe(self) -> str:
        """What happened, in the harness's words (no step)."""
        raise NotImplementedError

    def at_step(self, step_index: int, step: dict) -> QemuFailure:
        """Attach the step this happened at; returns ``self`` (the same exception goes on)."""
        self.step_index, self.step = step_index, step
        self.args = (f"step {step_index + 1} ({step.get('qmp')}): QEMU {self._what}: "
                     f"{self.describe()}",)
        return self

    def _step(self) -> dict:
        return self.step if self.step is not None else {"qmp": self.command}


class QemuCrash(QemuFailure):
    """QEMU died, or printed an assertion/abort message, during (or right after) ``command``.
    ``returncode`` is the exit status as from Popen: negative for a signal, None if it had
    not exited (yet) when the fatal message was seen."""

    kind = "crash"
    _what = "crashed"

    def __init__(self, command: str, returncode: int | None, stderr_tail: str = "",
                 sanitizer: str = ""):
        self.returncode = returncode
        #: the AddressSanitizer / UBSan report QEMU printed (a sanitizer build), whole
        self.sanitizer = sanitizer
        super().__init__(command, stderr_tail)

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    def describe(self) -> str:
        if self.signal is not None:
            try:
                how = f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                how = f"killed by signal {self.signal}"
        elif self.returncode is not None:
            how = f"exited with status {self.returncode}"
        else:
            how = "reported a fatal error"
        if self.sanitizer:
            tool, kind, frame = sanitizer_parts(self.sanitizer)
            return (f"QEMU {how} during {self.command!r}: {tool}: {kind} in {frame}"
                    f"\n--- {tool} report ---\n{self.sanitizer}")
        return f"QEMU {how} during {self.command!r}" + _tail_suffix(self.stderr_tail)

    def signature(self) -> str:
        """How QEMU died, not the path there: the signal (or exit status) plus its abort or
        assertion text with paths, line numbers and addresses removed.  A death with no
        text (a bare SIGSEGV) also names the command, the only thing that tells two such
        crashes apart without a backtrace."""
        if self.sanitizer:   # the bug's own words: what went wrong, and in which function
            tool, kind, frame = sanitizer_parts(self.sanitizer)
            return f"{_SAN_SHORT.get(tool, tool.lower())}:{kind}:{frame}"
        how = death_of(self)
        text = abort_text(self.stderr_tail or "")
        return f"crash:{how}:{text}" if text else f"crash:{how}:{_command_of(self._step())}"


class QemuQueryFailed(QemuFailure):
    """A state query the harness runs after every step (``query-named-block-nodes``,
    ``query-jobs``) answered with an error: QEMU's state is broken (seen on 7.2.22:
    "Block device r0 is ejected").  A finding, not a harness error: the query itself is fine."""

    kind = "query"
    _what = "failed a state query"

    def __init__(self, command: str, error: str):
        self.error = error
        super().__init__(command)

    def describe(self) -> str:
        return f"{self.command} answered {self.error}"

    def signature(self) -> str:
        return f"query:{self.command}:{generalise(self.error)}"


class QemuHang(QemuFailure):
    """``command`` got no reply within ``timeout`` seconds, or block jobs never settled after it
    (``stderr_tail`` then starts ``jobs never settled``); QEMU is still there (closing the
    process kills it).  ``jobs``: the model's jobs after the step, as ``type/status``, which
    the engine attaches: what the hang waited behind."""

    kind = "hang"
    _what = "hung"

    def __init__(self, command: str, timeout: float, stderr_tail: str = ""):
        self.timeout = timeout
        self.jobs: tuple[str, ...] = ()
        super().__init__(command, stderr_tail)

    def describe(self) -> str:
        return f"QEMU did not answer {self.command!r} within {self.timeout:g} s" + _tail_suffix(
            self.stderr_tail)

    def at_step(self, step_index: int, step: dict, jobs: tuple = ()) -> QemuHang:
        self.jobs = tuple(jobs)
        super().at_step(step_index, step)
        return self

    def signature(self) -> str:
        """The command and what was in flight: the command itself, the state query after it,
        or jobs that never settled (their types and states)."""
        step = self._step()
        inflight = self.command or "?"
        tail = self.stderr_tail or ""
        if tail.startswith("jobs never settled"):
            inflight = generalise(tail.splitlines()[0])
        elif inflight == step.get("qmp"):
            inflight = "reply"
        jobs = ",".join(sorted(self.jobs)) or "no jobs"
        return f"hang:{_command_of(step)}:{inflight}:{jobs}"


def _tail_suffix(tail: str) -> str:
    return f"\n--- stderr (tail) ---\n{tail}" if tail else ""


# --------------------------------------------------------------------------------------------
# signature helpers

def _command_of(step: dict) -> str:
    """The command, with the qemu-io verb for HMP (``human-monitor-command:qemu-io write``)."""
    cmd = step.get("qmp") or step.get("assert") or "?"
    if cmd == "human-monitor-command":
        line = (step.get("args") or {}).get("command-line", "")
        m = re.match(r'\s*(\S+)\s+\S+\s+"\s*(\S+)', line)
        if m:
            cmd += f":{m[1]} {m[2]}"
    return cmd


def death_of(crash: QemuCrash) -> str:
    """``SIGSEGV``, ``exit 1``, or ``fatal`` (a fatal message on stderr, QEMU still there)."""
    rc = crash.returncode
    if rc is not None and rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return f"exit {rc}" if rc is not None else "fatal"


# glibc assert(), glib g_assert*/g_error/g_assert_not_reached, QEMU's abort() messages
# (and util/qemu-thread-posix.c's error_exit(): "qemu: qemu_mutex_unlock_impl: ...")
_ABORT_LINE = re.compile(r"Assertion .* failed|assertion failed|code should not be reached"
                         r"|ERROR:|Bail out!|Unexpected error|Aborted|^qemu: ")


_QEMU_TOP = ("block", "util", "hw", "include", "qapi", "qom", "monitor", "migration", "system",
             "softmmu", "target", "accel", "tcg", "net", "ui", "audio", "chardev", "crypto", "io",
             "nbd", "scsi", "backends", "replay", "stubs", "job", "blockjob", "blockdev",
             "iothread", "job-qmp", "blockdev-nbd")
_QEMU_PATH = re.compile(r"(?<![\w./+-])/?(?:[\w.+-]+/)*?((?:" + "|".join(map(re.escape, _QEMU_TOP))
                        + r")(?:/[\w./+-]*)?\.[ch])(?![\w/])")


def abort_text(stderr: str) -> str:
    """The first abort or assertion line of ``stderr``, without the program name, paths'
    line numbers and addresses: ``../block.c: bdrv_reopen_multiple: Assertion `...' failed.``"""
    for line in stderr.splitlines():
        if _ABORT_LINE.search(line):
            line = re.sub(r"^\S*qemu-system-\S+: ", "", line.strip())
            line = re.sub(r"(\.[ch]):\d+(:\d+)?", r"\1", line)      # file.c:123 -> file.c
            line = re.sub(r"(?<![\w/.])(\.\./)+", "", line)        # the build directory's depth
            # a source tree elsewhere than ../ (a build from a copy, `qemu build --src`):
            # the path from QEMU's own top directory on, as Debian's builds print it
            line = _QEMU_PATH.sub(r"\1", line)
            line = re.sub(r"0x[0-9a-fA-F]+", "0xN", line)
            return line
    return ""


# -- sanitizer reports (QEMU built with --enable-asan --enable-ubsan: `blockfuzz qemu build`)

# "==1234==ERROR: AddressSanitizer: heap-use-after-free on address 0x... at pc ..."
_ASAN_HEAD = re.compile(r"^==\d+==ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer|"
                        r"MemorySanitizer): (.*)$", re.M)
# "../block/qcow2.c:123:45: runtime error: signed integer overflow: ..."
_UBSAN_HEAD = re.compile(r"^(\S+?):\d+(?::\d+)?: runtime error: (.*)$", re.M)
# "    #3 0x55d0c0a1b2c3 in bdrv_reopen_multiple ../block.c:4659"
_FRAME = re.compile(r"^\s*#\d+ 0x[0-9a-fA-F]+ in (\S+)(?: (\S+))?", re.M)
_SAN_SHORT = {"AddressSanitizer": "asan", "UndefinedBehaviorSanitizer": "ubsan",
              "LeakSanitizer": "lsan", "ThreadSanitizer": "tsan", "MemorySanitizer": "msan"}
_ABORTING = re.compile(r"^==\d+==ABORTING$", re.M)
_SUMMARY = re.compile(r"^SUMMARY: \S+Sanitizer: .*$", re.M)


def sanitizer_report(stderr: str) -> str:
    """The first sanitizer report in QEMU's ``stderr``, whole ("" if none).  ASan's start-up
    warnings (``==N==WARNING: ASan doesn't fully support makecontext/swapcontext``: QEMU's
    coroutines switch stacks) are not reports."""
    starts = [m.start() for m in (_ASAN_HEAD.search(stderr), _UBSAN_HEAD.search(stderr)) if m]
    if not starts:
        return ""
    start = min(starts)
    # ASan: header, stacks, SUMMARY, shadow bytes, "==N==ABORTING"; UBSan: the header line,
    # its stack (print_stacktrace=1) and a SUMMARY line, or the header line alone
    end = _ABORTING.search(stderr, start) or _SUMMARY.search(stderr, start)
    if end is not None:
        text = stderr[start:end.end()]
    else:
        text = stderr[start:start + 64 * 1024].split("\n\n", 1)[0]
    return text.rstrip() + "\n"


def _own_frame(frames: list[tuple[str, str]]) -> str:
    """The first frame in QEMU's own code: not a sanitizer interceptor, not a shared library
    (``(/lib/...so+0x...)``), not a system header or library source (/usr/include, /usr/lib,
    libsanitizer)."""
    for func, where in frames:
        if func.startswith(("__interceptor_", "__asan", "__ubsan", "__sanitizer", "___interceptor_")):
            continue
        if not where or where.startswith(("(", "??")) or where.startswith(("/usr/include/", "/usr/lib/")) \
                or "libsanitizer" in where:
            continue
        return func
    return frames[0][0] if frames else "?"


def sanitizer_parts(report: str) -> tuple[str, str, str]:
    """``(tool, kind, function)`` of a sanitizer report: ``("AddressSanitizer",
    "heap-use-after-free", "bdrv_reopen_multiple")``.  The kind has addresses, sizes and
    numbers folded (``signed integer overflow: N + N cannot be represented in type 'int'``);
    the function is the first frame in QEMU's own code, without line or address."""
    frames = [(m[1], m[2] or "") for m in _FRAME.finditer(report)]
    m = _ASAN_HEAD.search(report)
    u = _UBSAN_HEAD.search(report)
    if m is not None and (u is None or m.start() < u.start()):
        tool = m[1]
        kind = re.split(r" on (?:unknown )?address| on 0x| at pc | \(", m[2], maxsplit=1)[0]
        kind = re.sub(r"0x[0-9a-fA-F]+", "0xN", kind).strip()
        if tool == "AddressSanitizer" and kind.startswith("SEGV"):
            kind = "SEGV"
    elif u is not None:
        tool = "UndefinedBehaviorSanitizer"
        kind = re.sub(r"0x[0-9a-fA-F]+", "0xN", u[2])
        kind = re.sub(r"-?\d+", "N", kind).strip()
        # its own stack is the frames right below it (print_stacktrace=1); frames further
        # down belong to what came after (ASan's SEGV report, say)
        frames = []
        for line in report[u.end():].splitlines()[1:]:
            f = _FRAME.match(line)
            if f is None:
                break
            frames.append((f[1], f[2] or ""))
        if not frames:   # no stack trace: the file names the place
            path = _QEMU_PATH.sub(r"\1", re.sub(r"^(\.\./)+", "", u[1]))
            frames = [(path, u[1])]
    else:
        return ("sanitizer", "report", "?")
    return tool, kind, _own_frame(frames)


def one_line(e: BaseException | str) -> str:
    """A message on one line (``|`` between its lines), as replay, show and minimize print
    it; a sanitizer crash gives its headline only (the report is in the finding folder)."""
    text = str(e)
    if getattr(e, "sanitizer", ""):
        text = text.split("\n--- ", 1)[0]
    return " | ".join(l for l in text.splitlines() if l.strip())


def graph_where(path: str) -> str:
    """Where a graph differs, as a signature names it: a node's name says where, not what,
    so it is folded whole (the fuzzer names nodes from pools: ``hd4``, ``cor0``, ``bd``), and
    a ``backing-image`` chain is the same image info seen from the parents above it, so it
    is left out.  One model fault found by a 10.0.2 campaign came out as four signatures
    without this: ``cor0/image/virtual-size``, ``hd4/image/backing-image/virtual-size``,
    ``bd/image/backing-image/virtual-size`` and ``t1/image/backing-image/backing-image/...``.
    A list of node names (``node list [...] vs [...]``) and ``query-jobs`` stay as they are."""
    _node, sep, rest = path.partition("/")
    if not sep or path.startswith("node list"):
        return path
    return "NODE/" + re.sub(r"(?:backing-image/)+", "", rest)


def generalise(text: str) -> str:
    """Fold node names, quoted values and numbers, so equal kinds of outcome compare equal."""
    text = re.sub(r"'[^']*'", "'X'", text)
    text = re.sub(r"#block\d+", "#blockN", text)
    return re.sub(r"\d+", "N", text)


def short(v: Any, limit: int = 400) -> str:
    """A value as it appears in a message and a signature: JSON (a string: its repr), clipped."""
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


# --------------------------------------------------------------------------------------------
# harness errors

class HarnessError(Exception):
    """The harness could not do its job (not a finding about QEMU).  ``stderr_tail``: stderr of
    the failing program, when there is one."""

    # plain classes, not attrs: this module is imported by the command line before anything
    # else, and a bad option should not wait for attrs
    def __init__(self, message: str, stderr_tail: str = ""):
        super().__init__(message)
        self.message = message
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        return self.message + (f"\n--- stderr ---\n{self.stderr_tail}" if self.stderr_tail else "")


class UnsafeStep(HarnessError):
    """A step (or image spec) names a file outside the work directory; refused before QEMU
    sees it.  ``message`` is one line naming the command and the offending string."""

    def __init__(self, message: str, stderr_tail: str = "", command: str = "", path: str = ""):
        super().__init__(message, stderr_tail)
        self.command = command
        self.path = path


class ResetFailed(HarnessError):
    """``QemuProcess.reset`` could not bring QEMU back to empty (a command failed, QEMU died
    or hung, or something survived).  The caller must close this QEMU and start a fresh one;
    ``cause`` is the QEMU failure behind it, if any (a crash during clean-up is worth a look,
    but it is not a step's finding)."""

    def __init__(self, message: str, stderr_tail: str = "", cause: BaseException | None = None):
        super().__init__(message, stderr_tail)
        self.cause = cause


class QmpTransportError(Exception):
    """Base class: the QMP conversation itself failed (as opposed to a command failing)."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message)
        #: the QMP command that was running, or None (connect, events)
        self.command = command


class QmpTimeout(QmpTransportError, TimeoutError):
    """No reply within ``timeout`` seconds. The connection stays open; the late reply is dropped."""

    def __init__(self, command: str | None, timeout: float):
        super().__init__(f"no QMP reply to {command or 'greeting'!r} within {timeout:g} s", command)
        self.timeout = timeout


class QmpGone(QmpTransportError, ConnectionError):
    """The server closed the connection (or it was never opened / already closed by us)."""

    def __init__(self, command: str | None, cause: BaseException | None = None):
        why = f": {cause}" if cause is not None and str(cause) else ""
        super().__init__(f"QMP connection lost during {command or 'connect'!r}{why}", command)
        self.cause = cause


# --------------------------------------------------------------------------------------------
# bad input and set-up: one line, exit status 2

class CliError(Exception):
    """A failure to report as one line on stderr, with an exit status (``fuzz.cli.main``).

    Defined here, not in ``fuzz.cli``: under ``python -m fuzz.cli`` that module runs as
    ``__main__``, and a class defined there would be a different class from the one the
    subcommand modules import."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


class UsageError(CliError):
    """A bad option value: one line, exit status 2."""


class DatabaseError(Exception):
    """``--database`` is malformed or its server cannot be used; the message is one line."""


class ExportError(Exception):
    """The trace cannot be exported; one line."""


class TraceError(ValueError):
    """A trace file cannot be used; ``str()`` is a one-line message naming the file."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class QemuNotFound(ValueError):
    """No usable QEMU binary; the message is one actionable line."""


class FetchError(RuntimeError):
    """Fetching or verifying a QEMU tree failed; the message is one line."""


class ToolNotFetched(RuntimeError):
    """A tool blockfuzz needs is not fetched; the message is one line naming the fix."""


class DotMissing(RuntimeError):
    """Graphviz's ``dot`` is neither fetched nor in ``$PATH``; the message names the fix."""


# --------------------------------------------------------------------------------------------
# campaign control

class CampaignStop(KeyboardInterrupt):
    """Ends a campaign's Hypothesis run at once, without shrinking: Hypothesis lets a
    ``KeyboardInterrupt`` through, and the example's teardown still runs (QEMU is closed)."""


class TimeUp(CampaignStop):
    """The budget (time or examples) is spent."""


class BlockfuzzBug(CampaignStop):
    """A bug in blockfuzz itself, raised after its trace was saved."""

    def __init__(self, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class HarnessStop(CampaignStop):
    """The harness could not do its job (QEMU would not start, a tool failed): says nothing
    about QEMU, so it must not be shrunk as if it were a finding, nor be lost as one."""

    def __init__(self, cause: BaseException):
        super().__init__(" ".join(str(cause).split("\n")[:1]))
        self.cause = cause


class MinimizeInterrupted(KeyboardInterrupt):
    """The minimizer was interrupted (Ctrl-C, SIGTERM); ``best`` is the smallest failing trace
    found until then, ``stats`` the search's ``fuzz.minimize.Stats``.  A ``KeyboardInterrupt``
    like the interrupt it replaces, so that no ``except Exception`` on the way takes it for an
    error."""

    def __init__(self, best: Any, stats: Any):   # a fuzz.trace.Trace: not imported, see above
        super().__init__("minimization interrupted")
        self.best = best
        self.stats = stats
