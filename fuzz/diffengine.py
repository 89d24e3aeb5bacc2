"""Differential mode: one example on two QEMU builds, each beside its own model.

    with DiffSession((binaries_a, binaries_b), images) as d:
        d.runner.run({"qmp": "blockdev-add", "args": {...}})

Each build gets what ``blockfuzz run`` gives one build: a ``fuzz.session.Session`` (work
directory, images, QEMU) and a model under the version profile Session picks for it.  A step
runs on model A, model B, build A, build B (models first: a model's decision never depends on
QEMU) and then the sides are compared.

**While the models are in the loop** (every step up to the first one a model declines), per
*aspect* of the step (the reply, qemu-io's stdout, the projected ``query-named-block-nodes``,
``query-jobs`` once a job existed):

1. *build against build*: the two builds may differ only the way their models do.  With
   ``D(x, y)`` the set of leaf differences between two JSON values (path, value in x, value in
   y; ``<absent>`` for a missing key; node and job lists keyed by name), a step is fine when
   ``D(build A, build B) == D(model A, model B)``: both agree where the profiles predict
   agreement, and differ exactly where and how the profiles predict a difference.  Otherwise it
   is a :class:`BuildMismatch`, naming which build agrees with its model (if either does).
2. *build against its model*, exactly as ``blockfuzz run`` compares it (nothing set aside that
   run does not set aside): a ``ResultMismatch`` / ``DataMismatch`` / ``GraphMismatch`` whose
   message starts with the build's version.  This catches the cases 1 lets through: both builds
   deviating from their models the same way (a model bug, or a bug common to both), and builds
   that agree where the profiles predict a difference (a wrong profile flag).

**After a model declines a step** (``NotModeled``), that step still goes to both builds, and
for the rest of the example the builds are compared with each other only (the models keep
executing every step, so that generation can go on, but their absolute answers are no longer
trusted): the reply, stdout, ``query-jobs`` and the projected graph, with two allowances, both
derived from the profiles alone, never from QEMU:

* :class:`SetAside`: fields the two versions *present* differently are left out of the graph.
  They are found by rendering one and the same model state under profile A and under profile B
  (``models.query.query_named_block_nodes(g, profile)``) and by running the same commands on a
  model of each profile: every place where the renderings differ (``active`` in 10.0,
  ``format-specific`` of file nodes in 10.0, ``children`` and ``image.limits`` in 11.1, where an
  active commit's dirty bitmap sits, 7.2's raw and copy-on-read lengths that follow a growing
  file).  Places are generalised to (node driver, key path) for a node's own fields and (image
  format, key path) inside each ``ImageInfo`` level, so that they apply to nodes the models
  never saw; a place that differs for every driver holds for all (``*``).  The states used are
  a fixed probe (``PROBE``: one node of every generated driver, a stream, an active and a
  non-active commit, a growing file), built once per profile pair, plus the two models' own
  states after each step.  Builds of the same profile have nothing set aside.
* where the two models, following the same commands, differ from each other at exactly that
  place with exactly those values, the builds may differ so too (the versions' own behaviour on
  the models' view of the state: 10.0 puts a cancelled active commit's base back to read-only,
  7.2 does not).  For the reply and stdout that needs both models to have answered the step.

What this cannot cover is a version difference in state the models never saw (a job only the
builds run, say 7.2's "Node is busy" for a disk on it, ``dataplane_op_blocker``): that is a
finding, and its message says the models were out of the loop.  A step on which both builds
fail alike (the same signal, both an exit status, both hung) past the models is no finding,
since they agree; the example ends there (:class:`ExampleEnded`).

**Known QEMU bugs.**  A model decline that is a known-bug guard (``NotModeled("known QEMU
...")``, raised while ``Graph.guard_known_crashes`` is on) is not a decline: the step is dropped
for both builds (as ``run`` drops it), since sending it would only find the known bug again.  If
model A accepted the step and model B's guard refuses it, model A is restored to its state
before the step.  A declined step that names a node whose I/O reaches one a known bug left stuck
(either model's state) is dropped too: the model declined it before its guards had their say.

**Determinism.**  Generation reads model A's state only (``DiffRunner.model`` is model A);
model B is consulted only to steer I/O away from nodes its known bugs left stuck
(``guard_graphs``).  After a decline both models keep executing every step (their state goes on
following the commands, never QEMU's replies), so later draws still depend on model state only.
"""
from __future__ import annotations

import json
from typing import Any

import attrs

from models import KnownQemuBug, Model, NotModeled, Outcome
from models.profiles import VersionProfile
from models.values import JOB_COMMANDS

from .engine import Events, Runner, diff_graphs
from .errors import (BuildMismatch, DataMismatch, Disagreement, EventMismatch, ExpectationMismatch, Finding,
                     GraphMismatch, QemuFailure, QemuHang, ResultMismatch, first_difference)
from .trace import expectation_for

ABSENT = "<absent>"


def _on_build(err: BaseException, label: str) -> BaseException:
    """Name the build in a finding's message; its signature stays what ``run`` gives it, so a
    bug found by ``run`` and by ``diff`` is one finding."""
    err.build = label
    err.args = (f"{label}: {err.args[0]}",)
    return err


# --------------------------------------------------------------------------------------------
# differences between two JSON values

def flatten(value: Any, path: tuple = ()) -> dict[tuple, str]:
    """Leaves by path, each as canonical JSON (so ``true`` and ``1`` differ).  Node lists and
    job lists should be keyed first (:func:`keyed`)."""
    out: dict[tuple, str] = {}
    if isinstance(value, dict) and value:
        for k, v in value.items():
            out.update(flatten(v, path + (k,)))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            out.update(flatten(v, path + (i,)))
    else:
        out[path] = json.dumps(value, sort_keys=True)
    return out


def differences(a: Any, b: Any) -> dict[tuple, tuple[str, str]]:
    """``D(a, b)``: path -> (a's leaf, b's leaf) wherever they differ."""
    fa, fb = flatten(a), flatten(b)
    return {p: (fa.get(p, ABSENT), fb.get(p, ABSENT)) for p in fa.keys() | fb.keys()
            if fa.get(p, ABSENT) != fb.get(p, ABSENT)}


def keyed(items: list[dict], key: str) -> dict:
    """A node (or job) list as compared: the order of names, and each entry by its name (so a
    node missing on one side is one difference, not a shifted list)."""
    return {"order": [i.get(key) for i in items], "by-name": {i.get(key): i for i in items}}


def path_text(path: tuple) -> str:
    return "/".join(str(p) for p in path if p != "by-name")


def unpredicted(qa: Any, qb: Any, ma: Any, mb: Any) -> tuple | None:
    """Where the builds' difference is not the models' difference: the first such path, with
    the builds' and the models' leaves there; None if the difference is predicted."""
    if qa == qb and ma == mb:
        return None
    dq, dm = differences(qa, qb), differences(ma, mb)
    if dq == dm:
        return None
    bad = sorted((p for p in dq.keys() | dm.keys() if dq.get(p) != dm.get(p)), key=repr)
    p = bad[0]
    fa, fb, ga, gb = flatten(qa), flatten(qb), flatten(ma), flatten(mb)
    return p, (fa.get(p, ABSENT), fb.get(p, ABSENT)), (ga.get(p, ABSENT), gb.get(p, ABSENT))


# --------------------------------------------------------------------------------------------
# what two versions legitimately report differently

def _points(a: Any, b: Any, path: tuple, out: set) -> None:
    """The shallowest places where ``a`` and ``b`` differ: a key on one side only, lists of
    different lengths, differing leaves.  List items are generalised to ``*``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() | b.keys():
            if k not in a or k not in b:
                out.add(path + (k,))
            else:
                _points(a[k], b[k], path + (k,), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for x, y in zip(a, b):
            _points(x, y, path + ("*",), out)
    elif a != b or type(a) is not type(b):
        out.add(path)


def _image_points(a: dict, b: dict, out: set) -> None:
    fmt = a.get("format")
    here: set = set()
    _points({k: v for k, v in a.items() if k != "backing-image"},
            {k: v for k, v in b.items() if k != "backing-image"}, (), here)
    out.update(("image", fmt, p) for p in here)
    ba, bb = a.get("backing-image"), b.get("backing-image")
    if isinstance(ba, dict) and isinstance(bb, dict):
        _image_points(ba, bb, out)
    elif ba != bb:
        out.add(("image", fmt, ("backing-image",)))


def presentation_points(nodes_a: list[dict], nodes_b: list[dict]) -> set:
    """Patterns where two renderings of the same graph differ: ``("node", drv, path)`` for a
    node's own fields, ``("image", format, path)`` inside an ``ImageInfo`` level."""
    out: set = set()
    by_b = {n.get("node-name"): n for n in nodes_b}
    for na in nodes_a:
        nb = by_b.get(na.get("node-name"))
        if nb is None:
            continue
        here: set = set()
        _points({k: v for k, v in na.items() if k != "image"},
                {k: v for k, v in nb.items() if k != "image"}, (), here)
        out.update(("node", na.get("drv"), p) for p in here)
        ia, ib = na.get("image"), nb.get("image")
        if isinstance(ia, dict) and isinstance(ib, dict):
            _image_points(ia, ib, out)
        elif ia != ib:
            out.add(("node", na.get("drv"), ("image",)))
    return out


def _drop(value: Any, path: tuple) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if head == "*" and isinstance(value, list):
        return [_drop(v, rest) for v in value]
    if isinstance(value, dict) and head in value:
        if not rest:
            return {k: v for k, v in value.items() if k != head}
        return dict(value, **{head: _drop(value[head], rest)})
    return value


class SetAside:
    """What the build-against-build comparison leaves out once the models are out of the loop
    (see the module docstring).  ``patterns`` only grows during an example."""

    def __init__(self, patterns: set | frozenset = frozenset()):
        self.patterns: set = set(patterns)

    def learn(self, nodes_a: list[dict], nodes_b: list[dict]) -> None:
        self.patterns |= presentation_points(nodes_a, nodes_b)

    def apply(self, nodes: list[dict]) -> list[dict]:
        if not self.patterns:
            return nodes
        return [self._node(n) for n in nodes]

    def _node(self, n: dict) -> dict:
        drv = n.get("drv")
        for kind, d, path in self.patterns:
            if kind == "node" and d in (drv, "*"):
                n = _drop(n, path)
        if isinstance(n.get("image"), dict):
            n = dict(n, image=self._image(n["image"]))
        return n

    def _image(self, im: dict) -> dict:
        fmt = im.get("format")
        for kind, d, path in self.patterns:
            if kind == "image" and d in (fmt, "*"):
                im = _drop(im, path)
        if isinstance(im.get("backing-image"), dict):
            im = dict(im, **{"backing-image": self._image(im["backing-image"])})
        return im

    def describe(self) -> list[str]:
        """``node raw: active``, ``image file: format-specific``; a ``*`` driver covers the
        others of the same place."""
        return sorted(f"{kind} {d}: {'/'.join(map(str, p))}" for kind, d, p in self.patterns
                      if d == "*" or (kind, "*", p) not in self.patterns)


def _probe_images():
    from models import ImageSpec, Write

    from .statemachine import SEED_IMAGES

    return SEED_IMAGES + (ImageSpec("hd3.img", "qcow2", 1 << 20, writes=(Write(0x3C, 0, 65536),)),
                          ImageSpec("r0.img", "raw", 65536, writes=(Write(0xC3, 0, 32768),)))


def _f(name: str, filename: str) -> dict:
    return {"driver": "file", "node-name": name, "filename": filename}


#: Probe states: command lists run on a fresh model (guards off; a command that fails or is
#: declined is skipped).  Together they hold every driver the fuzzer generates and both job
#: filters, so each one's rendering is seen under both profiles.
PROBE: tuple = (
    (("object-add", {"qom-type": "throttle-group", "id": "group0"}),
     ("blockdev-add", {"driver": "qcow2", "node-name": "hd2", "file": _f("hd2-file", "hd2.img")}),
     ("blockdev-add", {"driver": "raw", "node-name": "r0", "file": _f("r0-file", "r0.img")}),
     ("blockdev-add", {"driver": "file", "node-name": "f0", "filename": "hd3.img"}),
     ("blockdev-add", {"driver": "throttle", "node-name": "t0", "throttle-group": "group0",
                       "file": "r0"}),
     ("blockdev-add", {"driver": "copy-on-read", "node-name": "cor0", "file": "hd2"}),
     ("blockdev-add", {"driver": "qcow2", "node-name": "hd3", "file": _f("hd3-file", "hd3.img")}),
     ("blockdev-add", {"driver": "compress", "node-name": "c0", "file": "hd3"}),
     ("blockdev-add", {"driver": "blkdebug", "node-name": "bd", "image": "t0"}),
     ("blockdev-add", {"driver": "null-co", "node-name": "n0"}),
     ("blockdev-add", {"driver": "quorum", "node-name": "q0", "children": ["bd"],
                       "vote-threshold": 1}),
     ("blockdev-add", {"driver": "blkverify", "node-name": "bv",
                       "test": {"driver": "qcow2", "file": _f("bvt", "hd0.img")},
                       "raw": _f("bvr", "hd1.img")})),
    (("blockdev-add", {"driver": "qcow2", "node-name": "hd1", "file": _f("hd1-file", "hd1.img"),
                       "backing": {"driver": "qcow2", "node-name": "hd0",
                                   "file": _f("hd0-file", "hd0.img")}}),
     ("block-commit", {"device": "hd1", "job-id": "job0", "filter-node-name": "jf0"})),
    (("blockdev-add", {"driver": "qcow2", "node-name": "hd1", "file": _f("hd1-file", "hd1.img"),
                       "backing": {"driver": "qcow2", "node-name": "hd0",
                                   "file": _f("hd0-file", "hd0.img")}}),
     ("block-stream", {"device": "hd1", "job-id": "job0", "filter-node-name": "jf0",
                       "auto-finalize": False})),
    (("blockdev-add", {"driver": "qcow2", "node-name": "hd1", "file": _f("hd1-file", "hd1.img"),
                       "backing": {"driver": "qcow2", "node-name": "hd0",
                                   "file": _f("hd0-file", "hd0.img")}}),
     ("blockdev-add", {"driver": "qcow2", "node-name": "hd2", "file": _f("hd2-file", "hd2.img"),
                       "backing": "hd1"}),
     ("block-commit", {"device": "hd2", "job-id": "job0", "top-node": "hd1", "base-node": "hd0",
                       "filter-node-name": "jf0", "auto-finalize": False})),
    # a host file growing under nodes that cache their length or follow it (7.2: raw and
    # copy-on-read follow; 10.0: a reopened file node refreshes)
    (("blockdev-add", {"driver": "file", "node-name": "hf", "filename": "hd1.img"}),
     ("blockdev-add", {"driver": "qcow2", "node-name": "hq", "file": "hf", "backing": None}),
     ("blockdev-add", {"driver": "raw", "node-name": "rr", "file": "hf", "read-only": True}),
     ("blockdev-add", {"driver": "copy-on-read", "node-name": "cr", "file": "hf"}),
     ("blockdev-add", {"driver": "file", "node-name": "hg", "filename": "hd1.img", "read-only": True}),
     ("blockdev-add", {"driver": "raw", "node-name": "rg", "file": "hg", "read-only": True}),
     ("human-monitor-command", {"command-line": 'qemu-io hq "write -P 0x11 0 1M"'}),
     ("blockdev-reopen", {"options": [{"driver": "file", "node-name": "hg", "filename": "hd1.img",
                                       "read-only": True}]})),
)

_PROBE_CACHE: dict[tuple, frozenset] = {}


def profile_set_aside(pa: VersionProfile, pb: VersionProfile) -> frozenset:
    """The presentation differences of two profiles over the probe states (cached)."""
    key = (pa, pb)
    if key not in _PROBE_CACHE:
        out: set = set()
        drivers: set = set()
        if pa != pb:
            for script in PROBE:
                ma, mb = Model(pa, _probe_images()), Model(pb, _probe_images())
                for m in (ma, mb):
                    for cmd, args in script:
                        try:
                            m.execute(cmd, args)
                        except NotModeled:
                            pass
                    # the same state rendered under both profiles
                    out |= render_difference(m, pa, pb)
                    drivers |= {n.drv for n in m.graph.nodes.values()}
                # the same commands, each model under its own profile
                out |= presentation_points(ma.query_named_block_nodes(), mb.query_named_block_nodes())
        # a place that differs on every driver the probe has is a per-node field (``active``,
        # ``children``): it applies to any driver, the probe's or not
        for kind, _d, path in list(out):
            if {d for k, d, p in out if (k, p) == (kind, path)} >= (
                    drivers if kind == "node" else {"qcow2", "raw", "file"} & drivers):
                out.add((kind, "*", path))
        _PROBE_CACHE[key] = frozenset(out)
    return _PROBE_CACHE[key]


def render_difference(model: Model, pa: VersionProfile, pb: VersionProfile) -> set:
    """Where the same model state renders differently under the two profiles."""
    from models.query import project, query_named_block_nodes

    if pa == pb:
        return set()
    return presentation_points(project(query_named_block_nodes(model.graph, pa)),
                               project(query_named_block_nodes(model.graph, pb)))


# --------------------------------------------------------------------------------------------
# the two sides

def is_known_bug(e: NotModeled) -> bool:
    """A decline that is a known-QEMU-bug guard (``Graph.guard_known_crashes``), not a gap of
    the model (``models.KnownQemuBug``)."""
    return isinstance(e, KnownQemuBug)


_VERSIONS: dict[str, str] = {}


@attrs.define
class Side:
    label: str
    session: Any
    runner: Runner

    @property
    def model(self) -> Model:
        return self.runner.model

    @property
    def qemu(self):
        return self.runner.qemu


class DiffRunner:
    """Runs steps on two sides (model + build each) and compares them (module docstring)."""

    def __init__(self, a: Side, b: Side, events: Events | None = None):
        self.sides = (a, b)
        self.labels = (a.label, b.label)
        self.events = events or Events()
        self.done: list[dict] = []
        self.observed: list[dict | None] = []
        #: index and reason of the first step a model declined (None: models in the loop)
        self.declined_at: int | None = None
        self.declined_why = ""
        self.set_aside = SetAside(profile_set_aside(a.model.profile, b.model.profile))
        self._job_seen = False
        #: set when both builds exited the same way out of the models' reach: nothing more runs
        self.ended = ""

    def flush(self) -> None:
        """Runner.flush(): nothing is ever in flight here (each step is checked on both builds
        before the next)."""

    # generation reads model A; guards read both
    @property
    def model(self) -> Model:
        return self.sides[0].model

    @property
    def models(self) -> tuple:
        return tuple(s.model for s in self.sides)

    def guard_graphs(self) -> list:
        return [s.model.graph for s in self.sides]

    @property
    def modelled(self) -> bool:
        return self.declined_at is None

    def run(self, step: dict) -> None:
        index = len(self.done)
        self.done.append(step)
        self.observed.append(None)
        if self.ended:   # dropped, like a declined step in `run` (the caller pops it)
            raise NotModeled(f"the example is over ({self.ended})")
        if "qmp" in step:
            self._qmp(index, step)
            return
        if not self.modelled:
            return  # assertions are written against a model; it is out of the loop
        for side in self.sides:
            try:
                side.runner.run(step)
            except Disagreement as e:
                raise _on_build(e, side.label) from None

    # -- a QMP step -------------------------------------------------------------------------
    def _predict(self, cmd: str, args: Any) -> list:
        """Both models' predictions (None where declined); raises NotModeled for a step a
        known-bug guard refuses (after restoring a model that had already run it)."""
        preds: list = []
        saved: list = []
        declined: list = []
        for side in self.sides:
            m = side.model
            saved.append(self._checkpoint(m, cmd))
            try:
                preds.append(m.execute(cmd, args))
            except NotModeled as e:
                if is_known_bug(e):
                    for other, state in zip(self.sides, saved):
                        other.model.graph = state
                    raise
                preds.append(None)
                declined.append(f"{side.label}'s model: {e}")
        if declined and self._reaches_known_bug(args):
            for other, state in zip(self.sides, saved):
                other.model.graph = state
            raise NotModeled("known QEMU bug: a declined step reaches a node a known bug left stuck")
        if declined and self.modelled:
            self.declined_at = len(self.done) - 1
            self.declined_why = f"step {self.declined_at + 1} declined by {'; '.join(declined)}"
        return preds

    def _reaches_known_bug(self, args: Any) -> bool:
        """Whether a step names (in any argument, qemu-io's command line included) a node whose
        I/O reaches one a known bug left stuck, in either model's state.  A model that declines
        a step says so at the first thing it does not cover, before its known-bug guards had
        their say; sending such a step would only find the known bug again."""
        words: set = set()

        def walk(v: Any) -> None:
            if isinstance(v, str):
                words.update(v.replace('"', " ").replace("'", " ").split())
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        walk(args)
        return any(g.reaches_stuck(g.nodes[w]) for g in self.guard_graphs() if g.guard_known_crashes
                   for w in words if w in g.nodes)

    @staticmethod
    def _checkpoint(model: Model, cmd: str):
        g = model.graph.clone()
        if cmd == "human-monitor-command":
            # qemu-io writes change the (shared) images in place
            g.images = {k: v.clone() for k, v in g.images.items()}
        return g

    def _qmp(self, index: int, step: dict) -> None:
        cmd, args = step["qmp"], step.get("args", {})
        preds = self._predict(cmd, args)
        modelled = self.modelled  # False from the declined step on
        if cmd in JOB_COMMANDS or any(m.graph.jobs for m in self.models):
            self._job_seen = True
        seen: dict = {}
        self.observed[index] = seen
        actual: list = []
        failures: list = []
        for side, pred in zip(self.sides, preds):
            rec: dict = {} if pred is None else {"model": pred.to_json()}
            seen[side.label] = rec
            runner = side.runner
            runner._qemu_graph = None   # the runner caches QEMU's graph per step
            try:
                key = "qemu"
                out = side.qemu.execute(cmd, args)
                rec["qemu"] = out.to_json()
                key = "qemu-state"
                graph = runner.qemu_graph()
                jobs = side.qemu.query_jobs() if self._job_seen else None
                actual.append((out, graph, jobs))
            except QemuFailure as e:
                rec[key] = f"{e.kind}: {e}"
                failures.append((side, e))
                actual.append(None)
        if not modelled:
            seen["declined"] = self.declined_why
        self.events.emit(DiffStepDone(index, step, self.labels, tuple(preds),
                                      tuple(a[0] if a else None for a in actual), modelled))
        if failures and not modelled and len(failures) == 2:
            how = {_failure_kind(e) for _s, e in failures}
            if len(how) == 1:
                # Out of the models' reach both builds failed the same way (the same signal,
                # both an exit status, both hung): they agree, so it is no finding of diff;
                # the example is over.  (An exit status is often by design: blkverify exits
                # on a mismatch, why its model declines disks on it.)  DiffSession reports
                # the example (ExampleEnded) so that a campaign can keep its trace.
                self.ended = f"step {index + 1} ({cmd}): both builds {how.pop()}"
                return
        if failures:
            side, e = failures[0]
            err = e.at_step(index, step)
            if len(failures) == 1:
                other = self.sides[1] if side is self.sides[0] else self.sides[0]
                err.args = (err.args[0] + f" ({other.label} did not)",)
            else:
                err.args = (err.args[0] + f" ({failures[1][0].label} too)",)
            raise _on_build(err, side.label)
        self._expectations(index, step, preds, actual)
        if modelled:
            self._compare_modelled(index, step, preds, actual)
        else:
            self._compare_builds(index, step, preds, actual)

    def _expectations(self, index: int, step: dict, preds: list, actual: list) -> None:
        for side, pred, act in zip(self.sides, preds, actual):
            exp = expectation_for(step, side.runner.profile_name)
            if exp is None:
                continue
            want = Outcome.from_json(exp)
            for who, got in (("qemu", act[0]), ("model", pred)):
                if got is None:
                    continue
                if (got.ret, got.error) != (want.ret, want.error) or (
                        "stdout" in exp and got.stdout != want.stdout) or (
                        "events" in exp and got.events != want.events):
                    raise _on_build(ExpectationMismatch(index, step, exp, got.to_json(), who), side.label)

    @staticmethod
    def _aspects(outcome: Outcome, graph: list, jobs) -> dict:
        d = {"reply": {k: v for k, v in outcome.to_json().items() if k not in ("stdout", "events")},
             "stdout": list(outcome.stdout),
             "events": list(outcome.events),
             "graph": keyed(graph, "node-name")}
        if jobs is not None:
            d["jobs"] = keyed(jobs, "id")
        return d

    def _compare_modelled(self, index: int, step: dict, preds: list, actual: list) -> None:
        a, b = self.sides
        mjobs = [s.model.query_jobs() if self._job_seen else None for s in self.sides]
        mgraphs = [s.model.query_named_block_nodes() for s in self.sides]
        q = [self._aspects(*act) for act in actual]
        m = [self._aspects(p, g, j) for p, g, j in zip(preds, mgraphs, mjobs)]
        # 1. build against build: differ only as the models do
        for aspect in q[0]:
            hit = unpredicted(q[0][aspect], q[1][aspect], m[0][aspect], m[1][aspect])
            if hit is None:
                continue
            path, builds, models = hit
            ok = [q[i][aspect] == m[i][aspect] for i in (0, 1)]
            agrees = a.label if ok[0] else b.label if ok[1] else ""
            whole = aspect in ("reply", "stdout", "events")
            values = (q[0][aspect], q[1][aspect]) if whole else tuple(map(_loads, builds))
            predicted = (m[0][aspect], m[1][aspect]) if whole else tuple(map(_loads, models))
            raise BuildMismatch(index, step, aspect, "" if whole else path_text(path), self.labels,
                                values, agrees, predicted)
        # 2. each build against its own model, as `blockfuzz run` compares them
        for side, pred, (out, graph, jobs), mj, mg in zip(self.sides, preds, actual, mjobs, mgraphs):
            if (pred.ret, pred.error) != (out.ret, out.error):
                raise _on_build(ResultMismatch(index, step, pred.to_json(), out.to_json(), "reply"), side.label)
            if pred.stdout != out.stdout:
                raise _on_build(DataMismatch(index, step, list(pred.stdout), list(out.stdout), "stdout"), side.label)
            if pred.events != out.events:
                pe, oe = list(pred.events), list(out.events)
                raise _on_build(EventMismatch(index, step, pe, oe, f"event {first_difference(pe, oe) + 1}"),
                                side.label)
            if mg != graph:
                raise _on_build(GraphMismatch(index, step, mg, graph, diff_graphs(mg, graph)), side.label)
            if jobs is not None and mj != jobs:
                raise _on_build(GraphMismatch(index, step, mj, jobs, "query-jobs"), side.label)

    def _compare_builds(self, index: int, step: dict, preds: list, actual: list) -> None:
        # The models still follow the commands: what their current states render differently
        # under the two profiles is set aside too (from model state only, so what is set aside
        # at a step depends on the steps so far, never on QEMU's answers)
        profiles = [s.model.profile for s in self.sides]
        if profiles[0] != profiles[1]:
            for m in self.models:
                self.set_aside.patterns |= render_difference(m, *profiles)
        q = [self._aspects(out, self.set_aside.apply(graph), jobs) for out, graph, jobs in actual]
        models = None
        for aspect in q[0]:
            dq = differences(q[0][aspect], q[1][aspect])
            if not dq:
                continue
            # A difference the two models (on their own view of the state) predict exactly,
            # at that place and with those values, is the versions' (a cancelled active
            # commit's read-only base, say); anything else is a finding
            if models is None:
                jobs = [s.model.query_jobs() if self._job_seen else None for s in self.sides]
                models = [self._aspects(p or Outcome.success(), self.set_aside.apply(
                    s.model.query_named_block_nodes()), j) for p, s, j in zip(preds, self.sides, jobs)]
            if aspect in ("reply", "stdout", "events") and None in preds:
                dm = {}   # a model declined this very step: no prediction of its answer
            else:
                dm = differences(models[0][aspect], models[1][aspect])
            bad = sorted((p for p in dq if dm.get(p) != dq[p]), key=repr)
            if not bad:
                continue
            path = bad[0]
            va, vb = dq[path]
            whole = aspect in ("reply", "stdout", "events")
            values = (q[0][aspect], q[1][aspect]) if whole else (_loads(va), _loads(vb))
            raise BuildMismatch(index, step, aspect, "" if whole else path_text(path), self.labels,
                                values, None, declined=self.declined_why)


def _failure_kind(e: BaseException) -> str:
    import signal

    if isinstance(e, QemuHang):
        return "hung"
    sig, rc = getattr(e, "signal", None), getattr(e, "returncode", None)
    if sig is not None:
        try:
            return f"died of {signal.Signals(sig).name}"
        except ValueError:
            return f"died of signal {sig}"
    return "reported a fatal error" if rc is None else f"exited with status {rc}"


def _loads(leaf: str) -> Any:
    return leaf if leaf == ABSENT else json.loads(leaf)


@attrs.frozen
class DiffStepDone:
    """Event: a QMP step ran on both sides.  ``models`` holds None where a model declined;
    ``qemus`` None where a build crashed or hung; ``modelled`` is False from the first decline
    of the example on."""

    index: int
    step: dict
    labels: tuple
    models: tuple
    qemus: tuple
    modelled: bool


@attrs.frozen
class ExampleEnded:
    """Event, when a DiffSession closes after both builds failed the same way past the
    models (``DiffRunner.ended``): the example's images, machine and recorded steps."""

    reason: str
    images: tuple
    machine: str
    steps: tuple


# --------------------------------------------------------------------------------------------
# the world of one example on two builds

def build_label(binaries) -> str:
    """The build's QEMU version (``7.2.22``), from ``--version`` (cached per path)."""
    from .qemufetch import qemu_version

    key = str(binaries.system)
    if key not in _VERSIONS:
        _VERSIONS[key] = qemu_version(binaries.system)
    return _VERSIONS[key]


def labels_for(pair) -> tuple[str, str]:
    la, lb = (build_label(b) for b in pair)
    if la == lb:
        la, lb = f"{la}/A", f"{lb}/B"
    return la, lb


class DiffSession:
    """Two ``Session``s (one per build) and a ``DiffRunner`` over them.  ``profiles``
    overrides a side's version profile (tests plant a wrong one)."""

    def __init__(self, pair, images, events: Events | None = None, timeout: float = 5.0,
                 machine: str = "none", profiles: tuple = (None, None), strict: bool = False):
        self.pair = tuple(pair)
        self.images = tuple(images)
        self.events = events
        self.timeout = timeout
        self.machine = machine
        self.profiles = profiles
        self.strict = strict
        self.sessions: list = []
        self.runner: DiffRunner | None = None

    def __enter__(self) -> "DiffSession":
        from .session import Session

        kw = {"strict": True} if self.strict else {}
        sessions = [Session(b, self.images, events=self.events, timeout=self.timeout,
                            machine=self.machine, **kw) for b in self.pair]
        try:
            labels = labels_for(self.pair)
            self.sessions = _enter_both(sessions, parallel=self.pair[0].system != self.pair[1].system)
            sides = []
            for s, label, override in zip(self.sessions, labels, self.profiles):
                runner = s.runner
                if override is not None:
                    runner = Runner(Model(override, self.images, self.machine), s.qemu, self.events,
                                    field_filter=getattr(s.runner, "field_filter", None))
                sides.append(Side(label, s, runner))
            self.runner = DiffRunner(sides[0], sides[1], self.events)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for s in self.sessions:
            s.__exit__(None, None, None)
        self.sessions = []
        r = self.runner
        if r is not None and r.ended and self.events is not None:
            steps = tuple(dict(st, observed=o) if o else st for st, o in zip(r.done, r.observed))
            self.runner = None
            self.events.emit(ExampleEnded(r.ended, self.images, self.machine, steps))


def _enter_both(sessions: list, parallel: bool) -> list:
    """Enter both sessions, B's in a thread while A's runs here when ``parallel`` (each waits
    mostly for its QEMU to come up).  Builds of one binary share image templates, so they
    start one after the other.  If anything fails or is interrupted (the campaign's time-up
    signal arrives in this thread), every session that did start is left again."""
    import threading

    if not parallel:
        entered: list = []
        try:
            for s in sessions:
                entered.append(s.__enter__())
        except BaseException:
            for s in entered:
                s.__exit__(None, None, None)
            raise
        return entered
    result: dict = {}

    def enter_b() -> None:
        try:
            result["b"] = sessions[1].__enter__()
        except BaseException as e:   # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e

    worker = threading.Thread(target=enter_b, name="blockfuzz-diff-start", daemon=True)
    worker.start()
    a = None
    try:
        a = sessions[0].__enter__()
    finally:
        while worker.is_alive():
            try:
                worker.join()
            except BaseException:   # interrupted again: still wait, B's QEMU must not leak
                continue
        if a is None or "error" in result:
            for s in (a, result.get("b")):
                if s is not None:
                    s.__exit__(None, None, None)
    if "error" in result:
        raise result["error"]
    return [a, result["b"]]


# --------------------------------------------------------------------------------------------
# replay and minimization of a trace on two builds

def diff_failure_of(tr, pair, timeout: float, record: list | None = None,
                    profiles: tuple = (None, None), info: dict | None = None) -> BaseException | None:
    """Replay ``tr`` on both builds; the finding it raises, or None.  ``info["ended"]`` tells
    when both builds failed alike past the models (no finding)."""
    s = DiffSession(pair, tr.images, timeout=timeout, machine=tr.machine, profiles=profiles)
    try:
        with s:
            for step in tr.steps:
                s.runner.run(step)
    except Finding as e:
        return e
    except NotModeled:
        return None
    finally:
        if info is not None and s.runner is not None:
            info["ended"] = s.runner.ended
        if record is not None and s.runner is not None:
            record.extend(dict(st, observed=o) if o else st
                          for st, o in zip(s.runner.done, s.runner.observed))
    return None


def minimize_diff(tr, pair, signature: str, timeout: float = 2.0, budget: int = 200,
                  profiles: tuple = (None, None)):
    """Delete steps (halving chunks, then single steps) while the same signature still
    fails on the two builds; the result is re-recorded with what each side answered."""
    from . import trace as T

    steps = [{k: v for k, v in s.items() if k != "observed"} for s in tr.steps]
    runs = 0

    def fails(candidate: list) -> bool:
        nonlocal runs
        runs += 1
        err = diff_failure_of(T.Trace(tr.name, tr.images, candidate, tr.description, dict(tr.extra)),
                              pair, timeout, profiles=profiles)
        return err is not None and err.signature() == signature

    chunk = max(1, len(steps) // 2)
    while runs < budget:
        i, removed = 0, False
        while i < len(steps) and runs < budget:
            candidate = steps[:i] + steps[i + chunk:]
            if candidate and fails(candidate):
                steps, removed = candidate, True
            else:
                i += chunk
        if chunk == 1 and not removed:
            break
        chunk = max(1, chunk // 2)
    recorded: list = []
    diff_failure_of(T.Trace(tr.name, tr.images, steps, tr.description, dict(tr.extra)), pair,
                    timeout, recorded, profiles=profiles)
    return T.Trace(tr.name, tr.images, recorded or steps, tr.description, dict(tr.extra))
