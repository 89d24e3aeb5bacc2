"""The reference model's public face.

    >>> from models import Model, ImageSpec, PROFILES
    >>> m = Model(PROFILES["10.0"], [ImageSpec("hd0.img", "qcow2", 3 << 20)])
    >>> m.execute("blockdev-add", {"driver": "qcow2", "node-name": "hd0",
    ...           "file": {"driver": "file", "filename": "hd0.img"}}).ok
    True
    >>> [n["node-name"] for n in m.query_named_block_nodes()]
    ['hd0', '#block0']

``execute()`` predicts one QMP command: its ``Outcome`` (return value or exact error, and the
lines qemu-io prints) and the state the graph is in afterwards.  Failed commands leave the state
untouched, as QEMU's transactions do.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from . import (blockdev, create, devices, iodata, jobs, known_bugs, objects, qemuio, reopen, resize,
               snapshot)
from .errors import NotModeled, QmpFailure
from .graph import Graph
from .imagedata import Image
from .values import JOB_COMMANDS, ImageSpec, Outcome, QmpError, header_file
from .profiles import VersionProfile
from .perms import settle_locks
from .query import project, query_named_block_nodes


def build_images(specs: Iterable[ImageSpec]) -> dict[str, Image]:
    """The images as ``qemu-img create`` and standalone ``qemu-io`` leave them.

    A campaign draws few image sets, each thousands of times: each set is built once and
    every model gets copy-on-write clones of it (``Image.clone``), which nobody can write
    through to the pristine set (a clone copies its bytes before its first write)."""
    return {name: img.clone() for name, img in _pristine(tuple(specs)).items()}


@functools.lru_cache(maxsize=64)
def _pristine(specs: tuple[ImageSpec, ...]) -> dict[str, Image]:
    images: dict[str, Image] = {}
    for spec in specs:
        size = spec.size
        if size is None:
            if spec.backing_file is None or header_file(spec.backing_file) not in images:
                raise ValueError(f"image {spec.file}: no size and no known backing file")
            size = images[header_file(spec.backing_file)].size
        images[spec.file] = Image.create(spec.file, spec.format, size, spec.backing_file, spec.backing_format)
        if spec.writes:
            # qemu-io -f FMT opens the image with its header backing chain.
            g = Graph(images=images)
            op = blockdev._Opener(g)
            top = op.open(_standalone_options(spec))
            for w in spec.writes:
                iodata.write(g, top, w.offset, bytes([w.pattern]) * w.length)
    return images


def _standalone_options(spec: ImageSpec) -> dict:
    return {"driver": spec.format, "file.driver": "file", "file.filename": spec.file, "read-only": "off"}


class Model:
    """A QEMU block layer in Python: one per example, like one QEMU process."""

    def __init__(self, profile: VersionProfile, images: Iterable[ImageSpec], machine: str = "none"):
        self.profile = profile
        self.graph = Graph(images=build_images(images), profile=profile, machine=machine,
                           guards=known_bugs.GUARDS)
        #: (graph, its in-place edits so far and its images' state, its projected query):
        #: query_named_block_nodes()
        self._query_memo: tuple[Graph, tuple, list[dict]] | None = None
        self._edits = 0

    def execute(self, cmd: str, args: Any) -> Outcome:
        """Predict one QMP command.  Raises ``NotModeled`` for commands outside the model."""
        if cmd == "human-monitor-command":
            line = args.get("command-line", "") if isinstance(args, dict) else ""
            io = qemuio.parse_command_line(line)
            # on a clone with copy-on-write images: a request the model declines halfway
            # (a quorum's second child, an allocation it cannot place) leaves nothing behind
            g = self.graph.clone()
            g.images = {k: v.clone() for k, v in g.images.items()}
            r = qemuio.run(g, io)
            self.graph = g
            return Outcome(ret=r.ret, error=None, stdout=r.stdout)
        handler = {
            "blockdev-add": lambda g: blockdev.blockdev_add(g, args, self.profile),
            "blockdev-reopen": lambda g: reopen.blockdev_reopen(g, args, self.profile),
            "blockdev-del": lambda g: blockdev.blockdev_del(g, args),
            "object-add": lambda g: objects.object_add(g, args),
            "object-del": lambda g: objects.object_del(g, args),
            "block-stream": lambda g: jobs.block_stream(g, args),
            "block-commit": lambda g: jobs.block_commit(g, args),
            "job-finalize": lambda g: jobs.job_finalize(g, args),
            "job-dismiss": lambda g: jobs.job_dismiss(g, args),
            "job-cancel": lambda g: jobs.job_cancel(g, args),
            "block-job-complete": lambda g: jobs.block_job_complete(g, args),
            "block-job-pause": lambda g: jobs.block_job_pause(g, args),
            "block-job-resume": lambda g: jobs.block_job_resume(g, args),
            "job-pause": lambda g: jobs.job_pause(g, args),
            "job-resume": lambda g: jobs.job_resume(g, args),
            "device_add": lambda g: devices.device_add(g, args),
            "x-blockdev-change": lambda g: blockdev.x_blockdev_change(g, args),
            "blockdev-snapshot": lambda g: snapshot.blockdev_snapshot(g, args),
            "block_resize": lambda g: resize.block_resize(g, args),
            "blockdev-mirror": lambda g: jobs.blockdev_mirror(g, args),
            "blockdev-create": lambda g: create.blockdev_create(g, args),
            "job-complete": lambda g: jobs.job_complete(g, args),
            "block-job-cancel": lambda g: jobs.block_job_cancel(g, args),
        }.get(cmd)
        if handler is None:
            raise NotModeled(f"command {cmd!r}")
        events: list[str] = []
        self.graph.job_events = events
        g = self.graph.clone()
        if cmd in JOB_COMMANDS:
            # jobs move data inside the command, and the command may still fail or be declined
            # afterwards: give the clone its own images so that nothing leaks
            g.images = {k: v.clone() for k, v in g.images.items()}
        try:
            handler(g)
        except QmpFailure as e:
            state = getattr(e, "state", None)
            if state is not None:
                # a failure that QEMU does not roll back completely (models.jobs._restoring)
                for name in g.limits_kept:
                    if name in state.nodes and name in g.nodes:
                        state.nodes[name].bl = g.nodes[name].bl
                settle_locks(state)
                self.graph = state
                return Outcome(ret=None, error=QmpError(e.cls, e.desc), events=tuple(events))
            # The auto-name counter is not rolled back: id_generate() has no undo; nor is
            # qdev's anonymous-device counter.  (Neither shows in query-named-block-nodes;
            # everything below may, so it counts as an edit of the graph if it changes it.)
            names = set(self.graph.nodes)
            stuck, dangling = g.stuck & names, g.dangling_data_file & names
            leaked = jobs.leak_blk(self.graph, e)
            if g.removed or g.moved or g.limits_kept or not stuck <= self.graph.stuck \
                    or not dangling <= self.graph.dangling_data_file or leaked:
                self._edits += 1
            self.graph.auto_counter = g.auto_counter
            self.graph.anon_devices = g.anon_devices
            # known QEMU bugs whose effect survives the rollback
            self.graph.stuck |= stuck
            self.graph.dangling_data_file |= dangling
            # the abort re-attaches removed children at the head of their lists
            self.graph.restore_removed(g.removed)
            for name in g.limits_kept:   # refreshed outside the transaction
                if name in self.graph.nodes and name in g.nodes:
                    self.graph.nodes[name].bl = g.nodes[name].bl
            self.graph.undo_moves(g.moved)
            if leaked:
                settle_locks(self.graph)   # the leaked BlockBackend's permissions stay
            return Outcome(ret=None, error=QmpError(e.cls, e.desc), events=tuple(events))
        settle_locks(g)
        self.graph = g
        return Outcome(ret={}, error=None, events=tuple(events))

    def query_jobs(self) -> list[dict]:
        """``query-jobs`` as compared: id, type, status (and error), newest first."""
        return jobs.query_jobs(self.graph)

    def query_named_block_nodes(self) -> list[dict]:
        """The projected ``query-named-block-nodes`` reply (see ``models.query.project``).

        Memoised while the graph is unchanged: a command that succeeds puts a new graph in
        place (its clone), one that fails leaves the graph as it was but for the in-place
        edits counted in ``execute()``.  So the same graph object with no edit since is the
        same reply, and the very same list is returned (a caller can tell "unchanged" by
        identity: ``fuzz.engine.Runner``).  Callers must not modify it."""
        key = (self._edits, _image_state(self.graph))
        memo = self._query_memo
        if memo is not None and memo[0] is self.graph and memo[1] == key:
            return memo[2]
        out = project(query_named_block_nodes(self.graph, self.profile))
        self._query_memo = (self.graph, key, out)
        return out


def _image_state(g: Graph) -> tuple:
    """What of the images the query can show: a graph command's clone shares them with the
    graph (``Graph.clone``), so a failed ``block_resize`` may still have changed one."""
    return tuple((img.size, img.host_length(), img.backing_file, img.backing_format)
                 for img in g.images.values())
