"""The engine: run one step on the model and on QEMU, compare, emit events.

The same ``Runner`` serves the Hypothesis state machine, ``blockfuzz replay`` and the tests.
It does not print or write files: whoever cares subscribes to its events (``fuzz.reporters``).

A disagreement raises one exception class per kind (result, graph, data, crash, hang, and a
violated written expectation; the tree is in ``fuzz.errors``), so Hypothesis shrinks every
kind of bug on its own.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import attrs

from models import Model, Outcome
from models.errors import NeverAnswers, NotModeled
from models.query import project
from models.values import JOB_COMMANDS

from .errors import (DataMismatch, EventMismatch, ExpectationMismatch, GraphMismatch, QemuFailure,
                     QemuHang, ResultMismatch, first_difference)
from .trace import assertion_for, expectation_for, get_path


# --------------------------------------------------------------------------------------------
# events

@attrs.frozen
class StepDone:
    index: int
    step: dict
    model: Outcome | None
    qemu: Outcome | None


@attrs.frozen
class StepEffect:
    """Event: a QMP step that both sides answered alike: whether it succeeded, whether it
    changed the graph or the jobs, and for a ``qemu-io read -P`` the backing chain depth of the
    node it read (None otherwise)."""

    index: int
    step: dict
    ok: bool
    changed: bool
    read_depth: int | None


_PATTERN_READ = re.compile(r'\s*qemu-io\s+(\S+)\s+"\s*read\s+(?:\S+\s+)*-P\b')


def _read_depth(step: dict, graph: list[dict]) -> int | None:
    """``backing_file_depth`` of the node a ``qemu-io NODE "read -P ..."`` step checked."""
    if step.get("qmp") != "human-monitor-command":
        return None
    m = _PATTERN_READ.match((step.get("args") or {}).get("command-line", ""))
    if m is None:
        return None
    return next((n.get("backing_file_depth", 0) for n in graph if n.get("node-name") == m[1]), None)


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

@attrs.frozen
class _ModelState:
    """The model's side of one step's check: its graph, its ``query-jobs`` (None: jobs are not
    compared after this step), its jobs as a hang's signature names them, and why it has no
    graph, if it has none."""
    graph: list[dict]
    query_jobs: list[dict] | None
    jobs: tuple[str, ...]
    #: the model could not project its graph (raised at the comparison)
    declined: NotModeled | None = None


class DeclinedAfterQemu(NotModeled):
    """The model declined only to project its graph after a step the real QEMU already ran
    (raised from the model's ``NotModeled``, which is its cause).  Unlike a decline before
    QEMU sees the command, the step cannot be dropped from the example: the example cannot
    go on checked (``fuzz.statemachine`` ends it there).  Still a ``NotModeled`` for every
    caller that only asks whether the model declined."""


def _job_states(jobs: list[dict]) -> tuple[str, ...]:
    """Jobs as a hang's signature names them: ``type/status``."""
    return tuple(f"{j['type']}/{j['status']}" for j in jobs)


class Runner:
    """Runs steps against a model and (optionally) a live QEMU.

    ``qemu`` is a ``fuzz.qemu.QemuProcess`` or ``None`` (model only: used to check that the
    model alone predicts written expectations).  The whole projected graph is compared after
    every QMP step.  Written expectations are looked up under the model's profile name.
    """

    def __init__(self, model: Model, qemu: Any = None, events: Events | None = None,
                 field_filter: FieldFilter | None = None, pipeline: bool = False):
        self.model = model
        #: a QMP step that QemuProcess.begin() can split returns once it is sent; its check
        #: (reply, graph, events) runs at the next run() or flush().  The campaign draws its
        #: next step meanwhile: the draws depend on the model only, which has predicted the
        #: step already.  Replay and minimization check each step before the next.
        self.pipeline = pipeline
        self._pending: tuple | None = None
        self.field_filter = field_filter
        self.qemu = qemu
        self.events = events or Events()
        self.profile_name = model.profile.name
        self.snapshots: dict[str, list[dict]] = {}
        self.done: list[dict] = []
        #: per executed step: what each side answered (for the trace's reader, never trusted)
        self.observed: list[dict | None] = []
        self._qemu_graph: list[dict] | None = None
        #: QEMU's canonical nodes last projected, and their projection (qemu_graph)
        self._projected: tuple[Any, list[dict]] = (None, [])
        #: the last graphs compared and found equal, model's and QEMU's (_check)
        self._agreed: tuple[Any, Any] = (None, None)
        self._job_seen = False  # once a job existed, query-jobs is compared after every step
        self._qemu_jobs: list[dict] = []
        self._last_graph: list[dict] = []
        self._last_jobs: list[dict] = []

    # the current graph as each side sees it
    def model_graph(self) -> list[dict]:
        return self.model.query_named_block_nodes()

    def qemu_graph(self) -> list[dict]:
        if self._qemu_graph is None:
            nodes = self.qemu.query_nodes()
            if nodes is not self._projected[0]:
                # (the same nodes object as last time is the same reply: QemuProcess hands
                # out one canonical value per distinct reply, so its projection is at hand)
                graph = project(nodes)
                self._projected = (nodes, graph if self.field_filter is None else self.field_filter(graph))
            self._qemu_graph = self._projected[1]
        return self._qemu_graph

    def flush(self) -> None:
        """Check the step still in flight (``pipeline``), raising its finding; a no-op if none."""
        if self._pending is None:
            return
        index, step, predicted, pending, after = self._pending
        self._pending = None
        with self._qemu_failures(index, step, "qemu", after.jobs):
            actual = self.qemu.finish(pending)
        self._check(index, step, predicted, actual, after)

    def run(self, step: dict) -> Outcome | None:
        if "qmp" not in step:
            self.flush()
        # (a QMP step behind one in flight is predicted first and flushes it in _qmp())
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
        try:
            predicted = self.model.execute(cmd, args)
        except NeverAnswers as e:
            if self.qemu is None:
                raise
            self._never_answers(index, step, e)
        self.observed[index] = {"model": predicted.to_json()}
        self._flush_before(index)
        actual = None
        if self.qemu is not None:
            self._qemu_graph = None
            if self.pipeline:
                with self._qemu_failures(index, step, "qemu"):
                    pending = self.qemu.begin(cmd, args)
                if pending is not None:
                    # what the check compares QEMU with, worked out while QEMU runs the step,
                    # and kept: the model moves on to the next step before the check
                    self._pending = (index, step, predicted, pending, self._model_after(cmd))
                    return predicted
            with self._qemu_failures(index, step, "qemu"):
                # the graph query goes out with the command (QemuProcess.execute)
                actual = self.qemu.execute(cmd, args, then_query_nodes=True) \
                    if getattr(self.qemu, "pipelines_graph_query", False) \
                    else self.qemu.execute(cmd, args)
        return self._check(index, step, predicted, actual)

    def _flush_before(self, index: int) -> None:
        """The step in flight is checked now, before step ``index`` goes out: that one was
        predicted while QEMU ran the one in flight.  Its finding ends the trace with it."""
        if self._pending is not None:
            try:
                self.flush()
            except BaseException:
                del self.done[index:]
                del self.observed[index:]
                raise

    def _never_answers(self, index: int, step: dict, why: NeverAnswers) -> None:
        """The model predicts that QEMU never answers the step (a known QEMU hang whose right
        answer is unknown): the step goes to QEMU all the same, and its hang is the finding
        (``QemuHang`` from ``_qemu_failures``).  An answer cannot be checked: then the step
        is a decline after QEMU ran it."""
        self.observed[index] = {"model": {"no-answer": str(why)}}
        self._flush_before(index)
        self._qemu_graph = None
        with self._qemu_failures(index, step, "qemu"):
            actual = self.qemu.execute(step["qmp"], step.get("args", {}))
        self.observed[index]["qemu"] = actual.to_json()
        raise DeclinedAfterQemu(f"{why} (QEMU answered after all)") from why

    def _model_after(self, cmd: str) -> "_ModelState":
        """The model's side of a step's check, taken right after the model ran it.  Where the
        model cannot project its graph (``NotModeled``), that is raised where the graph is
        compared, after QEMU's own state queries, as if the graph were worked out then: a
        QEMU that crashes in its query must still be found crashing."""
        in_play = self._jobs_in_play(cmd)
        try:
            graph, declined = self.model_graph(), None
        except NotModeled as e:
            graph, declined = [], e
        jobs = self.model.query_jobs()
        return _ModelState(graph, jobs if in_play else None, _job_states(jobs), declined)

    def _check(self, index: int, step: dict, predicted: Outcome, actual: Outcome | None,
               after: "_ModelState | None" = None) -> Outcome:
        """The step's QEMU state queries, then every comparison of it.  ``after``: the model's
        side, if taken already (a pipelined step: the model may have run the next one)."""
        cmd = step["qmp"]
        if after is None and actual is not None:
            after = self._model_after(cmd)
        if actual is not None:
            assert after is not None
            self.observed[index]["qemu"] = actual.to_json()
            # the state queries belong to the step: a crash or hang in them is the step's
            with self._qemu_failures(index, step, "qemu-state", after.jobs):
                self.qemu_graph()
                if after.query_jobs is not None:
                    self._qemu_jobs = self.qemu.query_jobs()
        self.events.emit(StepDone(index, step, predicted, actual))
        exp = expectation_for(step, self.profile_name)
        if exp is not None:
            want = Outcome.from_json(exp)
            stdout_checked, events_checked = "stdout" in exp, "events" in exp
            for side, got in (("qemu", actual), ("model", predicted)):
                if got is None:
                    continue
                if (got.ret, got.error) != (want.ret, want.error) or (stdout_checked and got.stdout != want.stdout) \
                        or (events_checked and got.events != want.events):
                    raise ExpectationMismatch(index, step, exp, got.to_json(), side)
        if actual is not None:
            if (predicted.ret, predicted.error) != (actual.ret, actual.error):
                raise ResultMismatch(index, step, predicted.to_json(), actual.to_json(), "reply")
            if predicted.stdout != actual.stdout:
                raise DataMismatch(index, step, list(predicted.stdout), list(actual.stdout), "stdout")
            if predicted.events != actual.events:
                pe, ae = list(predicted.events), list(actual.events)
                raise EventMismatch(index, step, pe, ae, f"event {first_difference(pe, ae) + 1}")
            assert after is not None
            if after.declined is not None:
                # QEMU ran the step and the model cannot check what came of it
                raise DeclinedAfterQemu(str(after.declined)) from after.declined
            mg, qg = after.graph, self.qemu_graph()
            # both the very objects found equal last step (both sides memoise an unchanged
            # graph: Model.query_named_block_nodes, qemu_graph): equal without a look
            if (mg is not self._agreed[0] or qg is not self._agreed[1]) and mg != qg:
                raise GraphMismatch(index, step, mg, qg, diff_graphs(mg, qg))
            self._agreed = (mg, qg)
            mj: list[dict] = []
            if after.query_jobs is not None:
                mj, qj = after.query_jobs, self._qemu_jobs
                if mj != qj:
                    raise GraphMismatch(index, step, mj, qj, "query-jobs")
            # what the step did, for depth figures (fuzz.reporters.Coverage): the graphs are
            # at hand already, so this costs one comparison
            changed = mg != self._last_graph or mj != self._last_jobs
            self._last_graph, self._last_jobs = mg, mj
            self.events.emit(StepEffect(index, step, predicted.ok, changed, _read_depth(step, mg)))
        return predicted

    @contextlib.contextmanager
    def _qemu_failures(self, index: int, step: dict, key: str,
                       jobs: tuple[str, ...] | None = None):
        """QEMU dying or hanging is a finding of this step (recorded under ``key``): the
        harness's exception goes on with the step (and, for a hang, the model's jobs after
        the step: ``jobs``, or the model's now) attached."""
        try:
            yield
        except QemuFailure as e:
            self.observed[index][key] = f"{e.kind}: {e}"
            if isinstance(e, QemuHang):
                e.at_step(index, step, jobs if jobs is not None else _job_states(self.model.query_jobs()))
            else:
                e.at_step(index, step)
            raise

    def _jobs_in_play(self, cmd: str) -> bool:
        """Whether query-jobs is compared after this step: whenever the model has a job, and
        after any job command (so a job QEMU has and the model has not is caught)."""
        if self.model.graph.jobs or cmd in JOB_COMMANDS:
            self._job_seen = True
        return self._job_seen

    def _jobs(self, side: str) -> list[dict]:
        return self.model.query_jobs() if side == "model" else self.qemu.query_jobs()

    def _assert(self, index: int, step: dict) -> None:
        step = assertion_for(step, self.profile_name)
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
                elif "error" in step and job.get("error") != step["error"]:
                    raise ExpectationMismatch(index, step, step["error"], job.get("error"),
                                              f"{side}: job {step['id']} error")
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
