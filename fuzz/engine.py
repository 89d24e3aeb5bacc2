"""The engine: run one step on the model and on QEMU, compare, emit events.

The same ``Runner`` serves the Hypothesis state machine, ``blockfuzz replay`` and the tests.
It does not print or write files: whoever cares subscribes to its events (``fuzz.reporters``).

A disagreement raises one exception class per kind (result, graph, data, crash, hang, and a
violated written expectation), so Hypothesis shrinks every kind of bug on its own.
"""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

import attrs

from models import Model, Outcome
from models.query import project

from .trace import expectation_for, get_path


# --------------------------------------------------------------------------------------------
# findings

class Disagreement(AssertionError):
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
        return f"{head}: expected {_short(self.expected)}, got {_short(self.actual)}"

    def signature(self) -> str:
        """What identifies the bug, independent of the path that led to it: the kind, the
        command and both sides' answers with names and numbers folded."""
        what = self.step.get("qmp") or self.step.get("assert")
        if self.kind == "graph":
            return f"graph:{what}:{generalise(self.detail.split(':')[0])}"
        return f"{self.kind}:{what}:{generalise(_short(self.expected))}|{generalise(_short(self.actual))}"


class ResultMismatch(Disagreement):
    kind = "result"


class GraphMismatch(Disagreement):
    kind = "graph"


class DataMismatch(Disagreement):
    kind = "data"


class ExpectationMismatch(Disagreement):
    kind = "expectation"


class QemuCrash(AssertionError):
    kind = "crash"

    def __init__(self, step_index: int, step: dict, cause: BaseException):
        self.step_index, self.step, self.cause = step_index, step, cause
        super().__init__(f"step {step_index + 1} ({step.get('qmp')}): QEMU crashed: {cause}")

    def signature(self) -> str:
        """How QEMU died, not the path there: the signal (or exit status) plus its abort or
        assertion text with paths, line numbers and addresses removed.  A death with no
        text (a bare SIGSEGV) also names the command, the only thing that tells two such
        crashes apart without a backtrace."""
        how = death_of(self.cause)
        text = abort_text(getattr(self.cause, "stderr_tail", "") or "")
        return f"crash:{how}:{text}" if text else f"crash:{how}:{_command_of(self.step)}"


class QemuHang(QemuCrash):
    kind = "hang"

    def __init__(self, step_index: int, step: dict, cause: BaseException, jobs: tuple = ()):
        super().__init__(step_index, step, cause)
        #: the model's jobs after the step, as ``type/status``: what the hang waited behind
        self.jobs = tuple(jobs)
        self.args = (f"step {step_index + 1} ({step.get('qmp')}): QEMU hung: {cause}",)

    def signature(self) -> str:
        """The command and what was in flight: the command itself, the state query after it,
        or jobs that never settled (their types and states)."""
        inflight = getattr(self.cause, "command", None) or "?"
        tail = getattr(self.cause, "stderr_tail", "") or ""
        if tail.startswith("jobs never settled"):
            inflight = generalise(tail.splitlines()[0])
        elif inflight == self.step.get("qmp"):
            inflight = "reply"
        jobs = ",".join(sorted(self.jobs)) or "no jobs"
        return f"hang:{_command_of(self.step)}:{inflight}:{jobs}"


def _command_of(step: dict) -> str:
    """The command, with the qemu-io verb for HMP (``human-monitor-command:qemu-io write``)."""
    cmd = step.get("qmp") or step.get("assert") or "?"
    if cmd == "human-monitor-command":
        line = (step.get("args") or {}).get("command-line", "")
        m = re.match(r'\s*(\S+)\s+\S+\s+"\s*(\S+)', line)
        if m:
            cmd += f":{m[1]} {m[2]}"
    return cmd


def death_of(cause: BaseException) -> str:
    """``SIGSEGV``, ``exit 1``, or ``fatal`` (a fatal message on stderr, QEMU still there)."""
    import signal as _signal

    rc = getattr(cause, "returncode", None)
    if rc is not None and rc < 0:
        try:
            return _signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return f"exit {rc}" if rc is not None else "fatal"


# glibc assert(), glib g_assert*/g_error/g_assert_not_reached, QEMU's abort() messages
# (and util/qemu-thread-posix.c's error_exit(): "qemu: qemu_mutex_unlock_impl: ...")
_ABORT_LINE = re.compile(r"Assertion .* failed|assertion failed|code should not be reached"
                         r"|ERROR:|Bail out!|Unexpected error|Aborted|^qemu: ")


def abort_text(stderr: str) -> str:
    """The first abort or assertion line of ``stderr``, without the program name, paths'
    line numbers and addresses: ``../block.c: bdrv_reopen_multiple: Assertion `...' failed.``"""
    for line in stderr.splitlines():
        if _ABORT_LINE.search(line):
            line = re.sub(r"^\S*qemu-system-\S+: ", "", line.strip())
            line = re.sub(r"(\.[ch]):\d+(:\d+)?", r"\1", line)      # file.c:123 -> file.c
            line = re.sub(r"(?<![\w/.])(\.\./)+", "", line)        # the build directory's depth
            line = re.sub(r"0x[0-9a-fA-F]+", "0xN", line)
            return line
    return ""


def generalise(text: str) -> str:
    """Fold node names, quoted values and numbers, so equal kinds of outcome compare equal."""
    text = re.sub(r"'[^']*'", "'X'", text)
    text = re.sub(r"#block\d+", "#blockN", text)
    return re.sub(r"\d+", "N", text)


def _short(v: Any, limit: int = 400) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


# --------------------------------------------------------------------------------------------
# events

@attrs.frozen
class StepDone:
    index: int
    step: dict
    model: Outcome | None
    qemu: Outcome | None


Listener = Callable[[Any], None]


class Events:
    """A tiny synchronous event bus."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Any) -> None:
        for listener in self._listeners:
            listener(event)


# --------------------------------------------------------------------------------------------
# graph diff

def diff_graphs(expected: list[dict], actual: list[dict]) -> str:
    """A short path to the first difference between two projected node lists."""
    en = [n.get("node-name") for n in expected]
    an = [n.get("node-name") for n in actual]
    if en != an:
        return f"node list {en} vs {an}"
    for e, a in zip(expected, actual):
        d = _first_diff(e, a, e.get("node-name", "?"))
        if d:
            return d
    return ""


def _first_diff(e: Any, a: Any, path: str) -> str:
    if isinstance(e, dict) and isinstance(a, dict):
        for k in sorted(set(e) | set(a)):
            if k not in e or k not in a:
                return f"{path}/{k} ({'missing in qemu' if k not in a else 'unexpected in qemu'})"
            d = _first_diff(e[k], a[k], f"{path}/{k}")
            if d:
                return d
        return ""
    return "" if e == a and type(e) is type(a) else f"{path}: {e!r} vs {a!r}"


# --------------------------------------------------------------------------------------------
# fields a build without an exact profile reports and its profile does not know

@attrs.frozen
class UnknownFields:
    """Event: ``build`` reported fields its (nearest) profile does not know; from now on they
    are left out of the comparison for that build.  Emitted once per new set."""

    build: str
    paths: tuple


class FieldFilter:
    """Sets aside, in QEMU's projected graph, every key outside a profile's schema
    (``models.query.known_fields``).

    Only for a build that has no exact profile (a developer's 11.1.90, say), and never with
    ``--strict``: a known version is compared on every field.  Paths are ``/``-separated with
    ``[]`` for list items (``image/limits``, ``children[]/foo``).  One filter per build is shared
    by all its sessions, so each field is named once per campaign."""

    def __init__(self, build: str, schema: dict):
        self.build = build
        self.schema = schema
        self.found: set[str] = set()
        #: event buses told about new fields (a campaign's, the warning printer)
        self.listeners: list[Events] = []

    def __call__(self, nodes: list[dict]) -> list[dict]:
        new: set[str] = set()
        out = [self._restrict(n, self.schema, "", new) for n in nodes]
        new -= self.found
        if new:
            self.found |= new
            event = UnknownFields(self.build, tuple(sorted(new)))
            for events in self.listeners:
                events.emit(event)
        return out

    def _restrict(self, value: Any, schema: Any, path: str, new: set[str]) -> Any:
        if isinstance(schema, list):
            if not isinstance(value, list):
                return value
            return [self._restrict(v, schema[0], path + "[]", new) for v in value]
        if schema is None or not isinstance(value, dict):
            return value
        out = {}
        for k, v in value.items():
            if k in schema:
                out[k] = self._restrict(v, schema[k], f"{path}{k}/", new)
            else:
                new.add(path + k)
        return out


# --------------------------------------------------------------------------------------------
# the runner

class Runner:
    """Runs steps against a model and (optionally) a live QEMU.

    ``qemu`` is a ``fuzz.qemu.QemuProcess`` or ``None`` (model only: used to check that the
    model alone predicts written expectations).  ``check_graph`` compares the whole projected
    graph after every QMP step; the state machine and replay always do.
    """

    def __init__(self, model: Model, qemu: Any = None, events: Events | None = None,
                 profile_name: str | None = None, check_graph: bool = True,
                 field_filter: FieldFilter | None = None):
        self.model = model
        self.field_filter = field_filter
        self.qemu = qemu
        self.events = events or Events()
        self.profile_name = profile_name or model.profile.name
        self.check_graph = check_graph
        self.snapshots: dict[str, list[dict]] = {}
        self.done: list[dict] = []
        #: per executed step: what each side answered (for the trace's reader, never trusted)
        self.observed: list[dict | None] = []
        self._qemu_graph: list[dict] | None = None
        self._job_seen = False  # once a job existed, query-jobs is compared after every step
        self._qemu_jobs: list[dict] = []

    # the current graph as each side sees it
    def model_graph(self) -> list[dict]:
        return self.model.query_named_block_nodes()

    def qemu_graph(self) -> list[dict]:
        if self._qemu_graph is None:
            graph = project(self.qemu.query_nodes())
            self._qemu_graph = graph if self.field_filter is None else self.field_filter(graph)
        return self._qemu_graph

    def run(self, step: dict) -> Outcome | None:
        index = len(self.done)
        self.done.append(step)
        self.observed.append(None)
        if "qmp" in step:
            return self._qmp(index, step)
        if "snapshot" in step:
            self.snapshots[step["snapshot"]] = self.model_graph()
            if self.qemu is not None:
                self.snapshots["qemu:" + step["snapshot"]] = self.qemu_graph()
            self.events.emit(StepDone(index, step, None, None))
            return None
        self._assert(index, step)
        self.events.emit(StepDone(index, step, None, None))
        return None

    def _qmp(self, index: int, step: dict) -> Outcome:
        cmd, args = step["qmp"], step.get("args", {})
        if self.qemu is not None:
            # a step that names a host path is refused before anything runs, so the error
            # names the path rather than whatever the model would decline it for
            from .qemu import check_step
            check_step(cmd, args)
        predicted = self.model.execute(cmd, args)
        self.observed[index] = {"model": predicted.to_json()}
        actual = None
        if self.qemu is not None:
            self._qemu_graph = None
            with self._qemu_failures(index, step, "qemu"):
                actual = self.qemu.execute(cmd, args)
            self.observed[index]["qemu"] = actual.to_json()
            # the state queries belong to the step: a crash or hang in them is the step's
            with self._qemu_failures(index, step, "qemu-state"):
                self.qemu_graph()
                if self._jobs_in_play(cmd):
                    self._qemu_jobs = self.qemu.query_jobs()
        self.events.emit(StepDone(index, step, predicted, actual))
        exp = expectation_for(step, self.profile_name)
        if exp is not None:
            want = Outcome.from_json(exp)
            stdout_checked = "stdout" in exp
            for side, got in (("qemu", actual), ("model", predicted)):
                if got is None:
                    continue
                if (got.ret, got.error) != (want.ret, want.error) or (stdout_checked and got.stdout != want.stdout):
                    raise ExpectationMismatch(index, step, exp, got.to_json(), side)
        if actual is not None:
            if (predicted.ret, predicted.error) != (actual.ret, actual.error):
                raise ResultMismatch(index, step, predicted.to_json(), actual.to_json(), "reply")
            if predicted.stdout != actual.stdout:
                raise DataMismatch(index, step, list(predicted.stdout), list(actual.stdout), "stdout")
            if self.check_graph:
                mg, qg = self.model_graph(), self.qemu_graph()
                if mg != qg:
                    raise GraphMismatch(index, step, mg, qg, diff_graphs(mg, qg))
                if self._jobs_in_play(cmd):
                    mj, qj = self.model.query_jobs(), self._qemu_jobs
                    if mj != qj:
                        raise GraphMismatch(index, step, mj, qj, "query-jobs")
        return predicted

    @contextlib.contextmanager
    def _qemu_failures(self, index: int, step: dict, key: str):
        """QEMU dying or hanging is a finding of this step (recorded under ``key``)."""
        from .qemu import QemuCrashed, QemuHung

        try:
            yield
        except QemuHung as e:
            self.observed[index][key] = f"hang: {e}"
            jobs = tuple(f"{j['type']}/{j['status']}" for j in self.model.query_jobs())
            raise QemuHang(index, step, e, jobs) from e
        except QemuCrashed as e:
            self.observed[index][key] = f"crash: {e}"
            raise QemuCrash(index, step, e) from e

    def _jobs_in_play(self, cmd: str) -> bool:
        """Whether query-jobs is compared after this step: whenever the model has a job, and
        after any job command (so a job QEMU has and the model has not is caught)."""
        from .qemu import JOB_COMMANDS

        if self.model.graph.jobs or cmd in JOB_COMMANDS:
            self._job_seen = True
        return self._job_seen

    def _jobs(self, side: str) -> list[dict]:
        return self.model.query_jobs() if side == "model" else self.qemu.query_jobs()

    def _assert(self, index: int, step: dict) -> None:
        sides = [("model", self.model_graph())]
        if self.qemu is not None:
            sides.insert(0, ("qemu", self.qemu_graph()))
        if step["assert"] == "job":
            for side, _graph in sides:
                job = next((j for j in self._jobs(side) if j["id"] == step["id"]), None)
                if step.get("absent"):
                    if job is not None:
                        raise ExpectationMismatch(index, step, "absent", job, f"{side}: job {step['id']}")
                elif job is None or job["status"] != step["status"]:
                    raise ExpectationMismatch(index, step, step["status"], job, f"{side}: job {step['id']}")
            return
        for side, graph in sides:
            if step["assert"] == "graph-equals":
                key = step["snapshot"] if side == "model" else "qemu:" + step["snapshot"]
                if key not in self.snapshots:
                    raise ExpectationMismatch(index, step, "a snapshot", None, f"{side}: no snapshot {step['snapshot']!r}")
                if graph != self.snapshots[key]:
                    raise ExpectationMismatch(index, step, self.snapshots[key], graph,
                                              f"{side}: {diff_graphs(self.snapshots[key], graph)}")
                continue
            node = next((n for n in graph if n.get("node-name") == step["node"]), None)
            if "path" not in step:
                present = node is not None
                if present == step.get("absent", False):
                    raise ExpectationMismatch(index, step, "absent" if step.get("absent") else "present",
                                              node, f"{side}: node {step['node']}")
                continue
            if node is None:
                raise ExpectationMismatch(index, step, "node present", None, f"{side}: node {step['node']}")
            present, value = get_path(node, step["path"])
            if step.get("absent"):
                if present:
                    raise ExpectationMismatch(index, step, "absent", value, f"{side}: {step['node']}/{step['path']}")
            elif not present or value != step["equals"] or type(value) is not type(step["equals"]):
                raise ExpectationMismatch(index, step, step["equals"], value if present else "<absent>",
                                          f"{side}: {step['node']}/{step['path']}")
