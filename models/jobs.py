"""Block jobs: ``block-stream``, ``block-commit`` (non-active and active) and the job verbs.

Timing is made deterministic by the harness, not guessed here: every command returns only once
each job has reached a *settled* state (``pending``, ``ready``, ``concluded`` or gone).  So a
job's copying is finished when the command that started it returns, and the model applies the
data movement at once; the graph changes of ``prepare`` happen at finalize (at once with
``auto-finalize``, else on ``job-finalize``); an active commit waits in ``ready`` until
``block-job-complete``.

What a job does to the graph, from ``stream_start()`` (block/stream.c), ``commit_start()``
(block/commit.c) and ``mirror_start_job()`` (block/mirror.c):

* a filter node above the device (stream: ``copy-on-read``; commit: ``commit_top`` above
  ``top``; active commit: ``mirror_top``), implicit unless ``filter-node-name`` names it;
* frozen links from the filter down to the bottom of the chain the job works on
  (``bdrv_freeze_backing_chain()``);
* job-held parents (``block_job_add_bdrv()``: "main node", "active node", "intermediate node",
  "base", "source", "target") with their permissions and op blockers, and BlockBackends
  (``bdrv_has_blk()``: "Node %s is in use");
* read-only nodes made writable for the job and restored at clean.

The model covers chains of qcow2 nodes of one size (others are ``NotModeled``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from . import arguments as A
from . import iodata
from . import perms as P
from . import limits as L
from .aio import component
from .drivers import DRIVERS
from .drivers.qcow2 import qcow2_image
from .errors import NotModeled, QmpFailure
from .filenames import backing_overridden, refresh_filename
from .graph import (shallow_copier, MOVED_BLK, ROLE_COW, ROLE_FILTERED, Child, Graph, JobParent, Node, assign_node_name,
                    id_wellformed, op_blocker)
from .lengths import node_length
from .qapi import visit_arguments
from .qapitypes import Member
from .values import job_event_text
from .reopen import reopen_set_read_only
from .imagedata import CLUSTER

READ, WRITE, WU, RESIZE, ALL = P.CONSISTENT_READ, P.WRITE, P.WRITE_UNCHANGED, P.RESIZE, P.ALL


@attrs.define
class Job:
    id: str
    type: str                 # "stream" | "commit"
    status: str
    auto_finalize: bool
    auto_dismiss: bool
    active: bool = False      # active commit (a mirror job)
    device: str = ""          # stream: the node streamed into; commit: the root
    filter: str | None = None
    top: str | None = None
    base: str | None = None
    above_base: str | None = None
    #: stream / commit ``backing-file``: the name written into the overlay's header in place
    #: of the base's filename (``s->backing_file_str``)
    backing_file: str | None = None
    restore_ro: str | None = None
    error: str | None = None
    #: job->user_paused (block-job-pause / job-pause)
    user_paused: bool = False
    #: block-job-complete of a user-paused job: mirror_complete() set should_complete, and the
    #: job completes when it is resumed
    complete_requested: bool = False
    #: blockdev-mirror: the node the target replaces at completion (None: the device)
    replaces: str | None = None
    #: a ready mirror's completion pivots to the target (False after a soft block-job-cancel)
    pivot: bool = True
    #: the mirror's dirty bitmap granularity (query-named-block-nodes' dirty-bitmaps)
    granularity: int = CLUSTER
    parents: list = attrs.field(factory=list)   # JobParent
    blocks: dict = attrs.field(factory=dict)    # node -> seq of its op blocker
    frozen: list = attrs.field(factory=list)    # (parent, child name)

    def clone(self) -> "Job":
        new = _copy_job(self)
        new.parents, new.blocks, new.frozen = list(self.parents), dict(self.blocks), list(self.frozen)
        return new

    def desc(self) -> str:
        return f"{self.type} job '{self.id}'"


_copy_job = shallow_copier(Job)

# --------------------------------------------------------------------------------------------
# job events (job.c, blockjob.c): what the harness compares, in order, with QEMU's

def _transition(g: Graph, job: Job, status: str) -> None:
    """``job_state_transition_locked()``: JOB_STATUS_CHANGE for every change of state."""
    if status != job.status:
        g.job_events.append(job_event_text("JOB_STATUS_CHANGE", {"id": job.id, "status": status}))
    job.status = status


def _block_job_event(g: Graph, job: Job, event: str, error: str | None = None) -> None:
    """The notifiers of ``block_job_create()``: BLOCK_JOB_READY, _PENDING, _COMPLETED (with
    the job's error when it failed) and _CANCELLED (``block_job_event_*_locked()``)."""
    data: dict[str, Any] = {"type": job.type, "device": job.id, "id": job.id}
    if error is not None:
        data["error"] = error
    g.job_events.append(job_event_text(event, data))


def _register(g: Graph, job: Job) -> None:
    """``job_create()``: the job exists (state ``created``) before ``block_job_add_bdrv()``
    attaches its parents; each attach checks permissions with the job's parents so far."""
    job.status = "undefined"
    g.jobs[job.id] = job
    _transition(g, job, "created")


def _start(g: Graph, job: Job) -> None:
    """``job_start()``: the job runs."""
    g.jobs[job.id] = job
    _transition(g, job, "running")


# --------------------------------------------------------------------------------------------
# QAPI

def _visit(g: Graph, args: Any, members: tuple[Member, ...], unmodelled: tuple[str, ...]) -> dict:
    """``qmp_marshal_block_stream()`` / ``_commit()``: the whole QAPI visit
    (``models.qapi.visit_arguments``), so that a type error in any member is predicted; the
    members the model does not follow are declined only after it, where QEMU's command
    starts."""
    if not isinstance(args, dict):
        raise QmpFailure("Invalid parameter type for 'device', expected: string")
    if not g.qemu_profile.job_backing_mask_protocol:
        members = tuple(m for m in members if m[0] != "backing-mask-protocol")
    args = visit_arguments(args, members, g.qemu_profile)
    for name in unmodelled:
        if name in args:
            raise NotModeled(f"job argument {name!r}")
    return args


def _check_backing_file_str(args: dict) -> None:
    """A ``backing-file`` the job would fail to write at its end: ``qcow2_co_change_backing_file()``
    refuses a name over 1023 bytes with EINVAL (stream_prepare() then fails the job after the
    graph changed; bdrv_drop_intermediate() "Could not update backing file link")."""
    name = args.get("backing-file")
    if name is not None and len(name.encode()) > 1023:
        raise NotModeled("a job's backing-file over 1023 bytes")


# --------------------------------------------------------------------------------------------
# graph helpers

def chain_edge(g: Graph, n: Node) -> Child | None:
    """``bdrv_filter_or_cow_child()``."""
    name = n.driver.filtered_child_name
    if name:
        return n.child(name)
    c = n.child("backing")
    return c if c is not None and c.role == ROLE_COW else None


def chain_next(g: Graph, n: Node) -> Node | None:
    c = chain_edge(g, n)
    return g.nodes[c.child] if c else None


def skip_filters(g: Graph, n: Node) -> Node:
    """``bdrv_skip_filters()``."""
    while (f := g.filter_child(n)) is not None:
        n = f
    return n


def chain_contains(g: Graph, top: Node | None, base: Node) -> bool:
    """``bdrv_chain_contains()``."""
    while top is not None and top is not base:
        top = chain_next(g, top)
    return top is not None


def backing_chain_next(g: Graph, n: Node) -> Node | None:
    """``bdrv_backing_chain_next()``: the next COW node, filters skipped on both sides."""
    cow = g.cow_child(skip_filters(g, n))
    return skip_filters(g, cow) if cow is not None else None


def find_backing_image(g: Graph, bs: Node, name: str) -> Node | None:
    """``bdrv_find_backing_image()`` for plain file names in the work directory: down the
    COW chain (filters skipped), a node whose backing was set by its header is matched by the
    header's name (which must name an existing file: QEMU compares realpath()s), one whose
    backing was overridden by the backing node's file name."""
    cur = skip_filters(g, bs)
    while g.cow_child(cur) is not None:
        below = backing_chain_next(g, cur)
        assert below is not None, "a COW child is the next node of the chain"
        if backing_overridden(g, cur, {}):
            if refresh_filename(g, below).filename == name:
                return below
        elif name == g.image(cur).backing_file and name in g.images:
            return below
        cur = below
    return None


def find_overlay(g: Graph, active: Node | None, bs: Node | None) -> Node | None:
    """``bdrv_find_overlay()``: the (filter-skipped) node of ``active``'s chain whose next
    COW node is ``bs``; with ``bs`` None, the bottom of the chain.  A ``bs`` that a filter
    skip passes over (a filter's child) is never found."""
    target = skip_filters(g, bs) if bs is not None else None
    cur = skip_filters(g, active) if active is not None else None
    while cur is not None:
        nxt = backing_chain_next(g, cur)
        if nxt is target:
            return cur
        cur = nxt
    return None


def freeze_chain(g: Graph, job: Job, top: Node, base: Node | None) -> None:
    """``bdrv_freeze_backing_chain()``."""
    edges = []
    i = top
    while i is not base and i is not None:
        c = chain_edge(g, i)
        if c is None:
            break
        if c.frozen:
            raise QmpFailure(f"Cannot change '{c.name}' link from '{i.name}' to '{c.child}'")
        edges.append(c)
        i = g.nodes[c.child]
    for c in edges:
        c.frozen = True
        job.frozen.append((c.parent, c.name))


def unfreeze(g: Graph, job: Job) -> None:
    for parent, name in job.frozen:
        n = g.get(parent)
        c = n.child(name) if n else None
        if c is not None:
            c.frozen = False
    job.frozen = []


def add_parent(g: Graph, job: Job, node: Node, child_name: str, perm: int, shared: int,
               blk: bool = False, block: bool = True, desc: str | None = None) -> None:
    """``block_job_add_bdrv()`` (or a job's BlockBackend): attach, then check permissions."""
    seq = g.next_edge_seq()
    job.parents.append(JobParent(node.name, desc or job.desc(), child_name, perm, shared, seq, blk))
    if block:
        job.blocks[node.name] = seq
    P.refresh(g, [node.name])


def replace_node(g: Graph, old: Node, new: Node) -> None:
    """``bdrv_replace_node()``: every parent of ``old`` except ``new`` itself now uses
    ``new``, guest disks' and leaked BlockBackends included; job edges stay
    (``stay_at_node``).  ``bdrv_replace_node_noperm()`` walks ``old``'s parents newest first
    and inserts each at the head of ``new``'s, so the moved parents end up in reverse order:
    of two scsi-hd disks on a node, the first one attached is the newest parent after a
    ``blockdev-snapshot`` (probed on 10.0.2 and 11.1.3: its permission error names
    ``device[0]``; corpus/probes/snapshot-moves-disks-in-reverse.json)."""
    movers: list[tuple[int, str, Any]] = [(c.seq, "edge", c) for c in old.parents]
    movers += [(d.parent.seq, "device", key) for key, d in g.devices.items()
               if getattr(d, "node", None) == old.name and getattr(d, "parent", None) is not None]
    movers += [(p.seq, "leak", i) for i, p in enumerate(g.leaked_blks) if p.node == old.name]
    movers.sort(key=lambda t: -t[0])
    for _seq, kind, what in movers:
        if kind == "edge":
            c = what
            if c.parent == new.name or g.has_child_recursive(new, c.parent):
                continue   # should_update_child(): no loops
            _move_edge(g, c, old, new)
        elif kind == "device":
            d = g.devices[what]
            g.devices[what] = attrs.evolve(d, node=new.name, parent=attrs.evolve(
                d.parent, node=new.name, seq=g.next_edge_seq()))
            g.moved.append((MOVED_BLK, what))
        else:
            g.leaked_blks[what] = attrs.evolve(g.leaked_blks[what], node=new.name,
                                               seq=g.next_edge_seq())
            g.moved.append((MOVED_BLK, what))


def _move_edge(g: Graph, c: Child, old: Node, new: Node) -> None:
    """``bdrv_replace_child_noperm()`` of one edge from ``old`` to ``new``: the newest parent
    of ``new`` and of its parent's children, recorded in ``Graph.moved``."""
    old.parents.remove(c)
    c.child = new.name
    c.seq = g.next_edge_seq()
    new.parents.insert(0, c)
    g.move_to_head(c)
    g.moved.append((c.parent, c.name))


def set_backing(g: Graph, parent: Node, new: Node | None) -> None:
    """``bdrv_set_backing_hd()`` of a COW parent (inherits_from follows the new child)."""
    old_edge = parent.child("backing")
    update = new is not None and g.inherits_from_recursive(new, parent.name)
    old = g.nodes[old_edge.child] if old_edge else None
    before = P.Perms(g, {}, {}) if old is not None else None
    if old_edge is not None:
        g.unset_inherits_from(parent.name, old_edge)
        g.detach(old_edge)
    if new is not None:
        g.attach(parent, new, "backing", ROLE_COW)
        if update:
            new.inherits_from = parent.name
    L.refresh(g, parent)   # bdrv_set_file_or_backing_noperm()
    if old is not None and g.refcount(old) == 0:
        g.unref(old)
    if old is not None and before is not None:
        P.stale_after(g, before, parent, old)


def _job_id(g: Graph, job_id: str | None, device_name: str = "") -> str:
    """``block_job_create()`` + ``job_create()``: no id means the device name ('' for nodes)."""
    jid = job_id if job_id is not None else device_name
    if not id_wellformed(jid):
        raise QmpFailure(f"Invalid job ID '{jid}'")
    if jid in g.jobs:
        raise QmpFailure(f"Job ID '{jid}' already in use")
    return jid


def _busy(g: Graph, node: Node) -> None:
    """``bdrv_op_is_blocked()`` for STREAM / COMMIT_TARGET: a backing blocker unblocks these
    (``bdrv_backing_attach()``), so only job blockers count; the newest is reported."""
    seqs = [(j.blocks[node.name], j.type) for j in g.jobs.values() if node.name in j.blocks]
    if seqs:
        raise QmpFailure(f"Node '{node.name}' is busy: block device is in use by block job: {max(seqs)[1]}")


def _is_root(g: Graph, n: Node) -> bool:
    """``bdrv_is_root_node()``: no parents but BlockBackends."""
    return not n.parents and not any(not p.blk for p in g.job_parents(n.name))


def _new_filter(g: Graph, drv: str, name: str | None, read_only: bool) -> Node:
    if name is None:
        node_name, auto = g.next_auto_name(), True
    else:
        node_name, auto = assign_node_name(g, name)
    g.seq += 1
    n = Node(name=node_name, auto_named=auto, drv=drv, driver=DRIVERS[drv], options={"driver": drv}, explicit={},
             read_only=read_only, cache_direct=False, cache_no_flush=False, discard="ignore",
             detect_zeroes="off", force_share=False, seq=g.seq, implicit=name is None)
    g.nodes[node_name] = n
    if n.driver.job_filter:
        L.refresh(g, n, children=())   # bdrv_new_open_driver(): opened without children
    return n


def _append_filter(g: Graph, drv: str, name: str | None, read_only: bool, below: Node,
                   commit: bool = True) -> Node:
    """``bdrv_append()`` of a new job filter: it takes ``below`` as its backing, then
    ``below``'s parents."""
    g.guard("append", top=below)
    f = _new_filter(g, drv, name, read_only)
    f.mirror_is_commit = commit
    g.attach(f, below, "backing", ROLE_FILTERED)
    f.cached_length = node_length(g, below)
    try:
        replace_node(g, below, f)
        P.refresh(g, [f.name])
    finally:
        # bdrv_append() ends with bdrv_refresh_limits(bs_top), outside the transaction and
        # on its error path too
        L.refresh(g, below)
        g.limits_kept.append(below.name)
    return f


def _qcow2_chain(g: Graph, top: Node, stop: Node | None, into_stop: bool = False) -> list[Node]:
    """The nodes from ``top`` down to (excluding) ``stop``; all must be qcow2 of one size with
    data the model knows.  The base may be any node of that length (a raw or null-co one,
    say): a stream only reads through it, and a commit (``into_stop``) writes into it, which
    the model must be able to follow."""
    out = []
    n: Node | None = top
    while n is not None and n is not stop:
        if n.drv != "qcow2":
            raise NotModeled("jobs over non-qcow2 chains")
        out.append(n)
        n = chain_next(g, n)
    sizes = {node_length(g, x) for x in out + ([stop] if stop is not None else [])}
    if into_stop and stop is not None and stop.drv != "qcow2" and not iodata.can_write(g, stop):
        raise NotModeled("jobs with a non-qcow2 base")
    if len(sizes) > 1:
        raise NotModeled("jobs over images of different sizes")
    if not iodata.known(g, top) or any(qcow2_image(g, x) is not g.image(x) for x in out):
        raise NotModeled("jobs over data the model does not know")
    return out


def _walk(g: Graph, top: Node, stop: Node | None) -> list[Node]:
    """``top`` and the nodes below it through ``bdrv_filter_or_cow_child()``, down to
    (excluding) ``stop``."""
    out = []
    n: Node | None = top
    while n is not None and n is not stop:
        out.append(n)
        n = chain_next(g, n)
    return out


def _has_cow_link(g: Graph, top: Node, stop: Node | None) -> bool:
    """Whether the chain from ``top`` down to ``stop`` has a backing (COW) link: only then
    does a stream copy data."""
    return any((c := chain_edge(g, n)) is not None and c.role == ROLE_COW for n in _walk(g, top, stop))


def _refuse_nested_metadata(g: Graph, nodes: list[Node]) -> None:
    """A job rewrites image headers (the overlay's backing name) and allocates in the
    chain's images; where a qcow2 node's file is itself a format node (a reopen can make it
    so), those writes go through that format, which allocates as it likes."""
    for n in nodes:
        f = n.child("file")
        if not n.driver.metadata_in_file or f is None:
            continue
        leaf = iodata.storage_leaf(g, g.nodes[f.child])
        if leaf.driver.metadata_in_file:
            raise NotModeled("a job over a node whose metadata lives in a format node")
        if leaf.filename is not None and n.filename is not None and leaf.filename != n.filename:
            # a reopen gave the node another file: its header (backing name) and allocations
            # go there, from the metadata it holds in memory
            raise NotModeled("a job over a node whose file child holds another image")


def _refuse_iothreads(g: Graph, nodes: list[Node]) -> None:
    """Jobs are modelled in the main loop with no guest disk in reach: whatever is connected to
    the job's nodes (any edge, either way) must be in the main AioContext and carry no disk.
    Disks and iothreads elsewhere in the graph do not matter."""
    reach: set[str] = set()
    for n in nodes:
        reach |= component(g, n)
    if any(g.nodes[name].ctx != "main" for name in reach) or any(
            getattr(d, "node", None) in reach for d in g.devices.values()):
        raise NotModeled("block jobs with guest disks or iothreads")


def _allocated(g: Graph, n: Node, c: int) -> bool:
    """``bdrv_is_allocated()`` of a qcow2 cluster: data or the zero flag."""
    img = g.image(n)
    return c in img.allocated or c in img.zero_clusters


def _read_known(g: Graph, n: Node, off: int, length: int) -> bytes:
    """What a job copies: ``_qcow2_chain()`` made sure the model knows the data."""
    data = iodata.read(g, n, off, length)
    assert data is not None, "the job's chain has data the model knows"
    return data


# --------------------------------------------------------------------------------------------
# block-stream

def _restoring(start: Callable[[Graph, Any, dict], None]) -> Callable[[Graph, Any], None]:
    """A job start that fails after making a node writable puts it back with another reopen
    (``bdrv_reopen_set_read_only(bs, true)`` on the error path), which is no rollback: children
    that inherit read-only from it change too.  The failure keeps that state (``e.state``)."""
    def wrapper(g: Graph, args: Any) -> None:
        ctx: dict = {}
        jobs_before = set(g.jobs)
        try:
            start(g, args, ctx)
        except QmpFailure as e:
            for jid in g.jobs.keys() - jobs_before:
                _transition(g, g.jobs[jid], "null")   # job_early_fail() -> job_do_dismiss()
            snap = ctx.get("snapshot")
            if snap is not None:
                # a failed start frees the job it created (job_early_fail()), registered
                # before its parents were attached (block_job_create())
                for jid in set(snap.jobs) - jobs_before:
                    del snap.jobs[jid]
                snap.auto_counter = g.auto_counter
                snap.anon_devices = g.anon_devices
                leak_blk(snap, e)
                snap.undo_moves(g.moved[ctx["moved"]:])
                trial = snap.clone()
                try:
                    reopen_set_read_only(trial, trial.nodes[ctx["node"]], True)
                    snap = trial
                except QmpFailure:
                    pass   # "ignore error and errp for bdrv_reopen"
                e.state = snap
            raise
    wrapper.__doc__ = start.__doc__
    return wrapper


def leak_blk(g: Graph, e: QmpFailure) -> bool:
    """The BlockBackend a failed job start leaked (``e.leaked_blk``, set by the start), added
    to ``g`` as the state before the command: before ``undo_moves()``, because the drop
    that moves it onto its node moves the node's other parents back after it."""
    leaked = e.leaked_blk
    if leaked is None:
        return False
    node, perm, shared = leaked
    g.leak_blk(node, perm, shared)
    return True


def _try_set_read_only(g: Graph, node: Node, read_only: bool) -> None:
    """``bdrv_reopen_set_read_only(bs, ro, NULL)``: errors are ignored, the node stays."""
    trial = g.clone()
    try:
        reopen_set_read_only(trial, trial.nodes[node.name], read_only)
    except QmpFailure:
        return
    reopen_set_read_only(g, node, read_only)   # succeeds as the trial did (deterministic)


def _make_writable(g: Graph, job: Job, node: Node, ctx: dict) -> None:
    reopen_set_read_only(g, node, False)
    job.restore_ro = node.name
    ctx["snapshot"], ctx["node"], ctx["moved"] = g.clone(), node.name, len(g.moved)


@_restoring
def block_stream(g: Graph, args: Any, ctx: dict) -> None:
    args = _visit(g, args, A.BLOCK_STREAM, ("speed", "on-error", "backing-mask-protocol"))
    # the known concluded-stream crash comes before the model's own limits: diff mode sends a
    # declined step to both builds, and a stream of any node crashes 7.2 and 10.0 once it
    # concludes
    g.guard("stream-start", args=args, checked=False)
    # qmp_block_stream(): the combinations first, before the device is looked up
    for a, b in (("base", "base-node"), ("base", "bottom"), ("bottom", "base-node")):
        if a in args and b in args:
            raise QmpFailure(f"'{a}' and '{b}' cannot be specified at the same time")
    device = args["device"]
    bs = g.lookup_bs(device)
    base = None
    if "base" in args:
        base = find_backing_image(g, bs, args["base"])
        if base is None:
            raise QmpFailure(f"Can't find '{args['base']}' in the backing chain")
    if "base-node" in args:
        ref = args["base-node"]
        base = g.lookup_node(ref)
        if base is bs or not chain_contains(g, bs, base):
            raise QmpFailure(f"Node '{ref}' is not a backing image of '{device}'")
    named_base = base   # qmp_block_stream()'s base_bs: a bottom does not set it
    bottom = None
    if "bottom" in args:
        ref = args["bottom"]
        bottom = g.lookup_node(ref)
        if bottom.driver.is_filter:
            raise QmpFailure(f"Node '{ref}' is a filter, use a non-filter node as 'bottom'")
        if not chain_contains(g, bs, bottom):
            raise QmpFailure(f"Node '{ref}' is not in a chain starting from '{device}'")
        base = chain_next(g, bottom)   # the stream ends below bottom: nothing below it changes
    it: Node | None = bs
    while it is not None and it is not base:
        _busy(g, it)
        it = chain_next(g, it)
    if "backing-file" in args and named_base is None:
        # (with bottom too: 11.1.3 refuses backing-file with any bottom, whatever is below it)
        raise QmpFailure("backing file specified, but streaming the entire chain")
    _check_backing_file_str(args)
    _refuse_iothreads(g, [bs])
    g.guard("stream-start", args=args, checked=True)
    # stream_start(): with bottom, base_overlay and above_base are bottom itself
    base_overlay = bottom if bottom is not None else find_overlay(g, bs, base)
    if base_overlay is None:
        assert base is not None, "the bottom of a chain is its own overlay of nothing"
        raise QmpFailure(f"'{base.name}' is not in the backing chain of '{bs.name}'")
    # the node directly above base: base_overlay's COW child, then filters down to base
    above_base = base_overlay
    cow = g.cow_child(above_base)
    if bottom is None and cow is not base:
        assert cow is not None, "base_overlay's next COW node is base"
        above_base = cow
        while g.filter_child(above_base) is not base:
            nxt = g.filter_child(above_base)
            assert nxt is not None, "only filters lie between base_overlay's COW child and base"
            above_base = nxt
    copies = _has_cow_link(g, bs, base)
    if copies:
        if bs.drv != "qcow2":
            raise NotModeled("stream into a non-qcow2 node")
        chain = _qcow2_chain(g, bs, base)
    else:
        # nothing below bs to copy from (its chain is filters only, or bs alone): any driver
        # streams, as a copy-on-read filter that copies nothing and a prepare that changes no
        # backing link (stream_prepare(): no COW child of bdrv_skip_filters(bs))
        chain = _walk(g, bs, base)
    g.guard("job-start", nodes=[n for n in chain + [base] if n is not None])

    job = Job("", "stream", "created", args.get("auto-finalize", True), args.get("auto-dismiss", True),
              device=bs.name, above_base=above_base.name, backing_file=args.get("backing-file"))
    if bs.read_only:
        _make_writable(g, job, bs, ctx)

    # bdrv_insert_node(): a copy-on-read filter over bs, freezing bs..base_overlay
    try:
        # bdrv_new_open_driver_opts(): the filter's open attaches its file child, and the
        # permissions of that attach are checked there too (a writable filter over a node
        # whose child is read-only: "Could not create node: Block node is read-only")
        cor = _new_filter(g, "copy-on-read", args.get("filter-node-name"), False)
        cor.options = {"driver": "copy-on-read", "bottom": base_overlay.name}
        if "filter-node-name" in args:
            cor.options["node-name"] = args["filter-node-name"]
        g.attach(cor, bs, "file", ROLE_FILTERED)
        L.refresh(g, cor)   # cor_open() attached its file child
        cor.cached_length = node_length(g, bs)
        P.refresh(g, [cor.name])
    except QmpFailure as e:
        raise QmpFailure("Could not create node: " + e.desc) from None
    freeze_chain(g, job, cor, base_overlay)   # cor_open(): down to 'bottom'; bottom->base stays free
    replace_node(g, bs, cor)
    P.refresh(g, [cor.name])
    job.filter = cor.name

    job.id = _job_id(g, args.get("job-id"))
    _register(g, job)
    add_parent(g, job, cor, "main node", 0, ALL)
    add_parent(g, job, cor, "root", READ, READ | WU | WRITE, blk=True, block=False,
               desc="an unnamed block device")
    try:
        add_parent(g, job, bs, "active node", 0, READ | WU | WRITE)
        it = chain_next(g, bs)
        stop = chain_next(g, above_base)
        while it is not None and it is not stop:
            add_parent(g, job, it, "intermediate node", 0, READ | WU)
            it = chain_next(g, it)
    except QmpFailure as e:
        # QEMU bug (7.2.22, 10.0.2, 11.1.3): stream_start()'s error path (job_early_fail(),
        # bdrv_cor_filter_drop()) never unrefs s->blk, so the job's BlockBackend stays, moved
        # from the filter onto bs by the drop: bs keeps an unnamed parent with
        # CONSISTENT_READ that shares no RESIZE, and can no longer be deleted ("Node %s is in
        # use"); x-debug-query-block-graph shows it
        # (corpus/findings/stream-failed-start-leaks-blockbackend.json)
        e.leaked_blk = (bs.name, READ, READ | WU | WRITE)
        raise
    _start(g, job)

    # stream_run(): clusters allocated below bs down to base_overlay are copied up (through
    # the copy-on-read filter, so a whole cluster at a time)
    if copies:
        size = g.image(bs).size
        for c in range(-(-size // CLUSTER)):
            if _allocated(g, bs, c):
                continue
            if any(_allocated(g, n, c) for n in chain[1:] + [base_overlay] if n is not bs):
                lo, hi = c * CLUSTER, min(size, (c + 1) * CLUSTER)
                data = _read_known(g, bs, lo, hi - lo)
                if not data.strip(b"\0"):
                    # bdrv_co_do_copy_on_readv() writes zeroes for an all-zero bounce buffer,
                    # which spans a block-status run, not a cluster
                    raise NotModeled("stream of areas the chain reads as zeros")
                if not iodata.can_write(g, bs):
                    raise NotModeled("stream into a node the model cannot write")
                iodata.write(g, bs, lo, data)
    _settle(g, job)


def _stream_prepare(g: Graph, job: Job) -> None:
    bs = g.nodes[job.device]
    cow = g.cow_child(bs)
    _drop_filter(g, job)
    if cow is not None:
        assert job.above_base is not None, "block_stream() sets it"
        above = g.get(job.above_base)
        base = chain_next(g, above) if above is not None else None
        set_backing(g, bs, base)
        img = g.image(bs)
        if base is not None:
            # the header names the base below any filters (stream_prepare(): unfiltered_base)
            unfiltered = skip_filters(g, base)
            img.backing_file = job.backing_file if job.backing_file is not None \
                else refresh_filename(g, unfiltered).filename
            img.backing_format = unfiltered.drv
        else:
            img.backing_file = None
            img.backing_format = None
        bs.auto_backing_file = img.backing_file or ""


def _drop_filter(g: Graph, job: Job) -> None:
    """``bdrv_cor_filter_drop()`` / ``bdrv_drop_filter()``: the filter's parents use its
    child again; the filter itself lives on while the job holds it."""
    unfreeze(g, job)
    f = g.get(job.filter) if job.filter else None
    if f is None:
        return
    c = f.child("file") or f.child("backing")
    if c is not None:
        child = g.nodes[c.child]
        replace_node(g, f, child)
        if not g.qemu_profile.dropped_filter_keeps_child:
            g.detach(c)   # else the edge goes when the job frees the filter (_release_all)


# --------------------------------------------------------------------------------------------
# block-commit

@_restoring
def block_commit(g: Graph, args: Any, ctx: dict) -> None:
    args = _visit(g, args, A.BLOCK_COMMIT, ("speed", "on-error", "backing-mask-protocol"))
    device = args["device"]
    bs = g.get(device)
    if bs is None:
        raise QmpFailure(f"Device '{device}' not found", "DeviceNotFound")
    if not _is_root(g, bs):
        raise QmpFailure("Need a root block node")
    reason = op_blocker(g, bs)   # COMMIT_SOURCE: blocked by any blocker
    if reason is not None:
        raise QmpFailure(f"Node '{bs.name}' is busy: {reason}")
    def in_chain(key: str, above: Node) -> Node:
        ref = args[key]
        n = g.lookup_node(ref)
        if not chain_contains(g, above, n):
            raise QmpFailure(f"'{ref}' is not in this backing file chain")
        return n

    if "top-node" in args and "top" in args:
        raise QmpFailure("'top-node' and 'top' are mutually exclusive")
    top: Node | None = bs
    if "top-node" in args:
        top = in_chain("top-node", bs)
    elif "top" in args and refresh_filename(g, bs).filename != args["top"]:
        top = find_backing_image(g, bs, args["top"])
    if top is None:
        raise QmpFailure(f"Top image file {args['top']} not found")
    if "base-node" in args and "base" in args:
        raise QmpFailure("'base-node' and 'base' are mutually exclusive")
    if "base-node" in args:
        base = in_chain("base-node", top)
    elif "base" in args:
        found = find_backing_image(g, top, args["base"])
        if found is None:
            raise QmpFailure(f"Can't find '{args['base']}' in the backing chain")
        base = found
    else:
        bottom = find_overlay(g, top, None)
        assert bottom is not None, "find_overlay(top, None) is the bottom of top's chain"
        base = bottom
    _refuse_iothreads(g, [bs])
    stop = chain_next(g, base)
    it: Node | None = top
    while it is not None and it is not stop:
        _busy(g, it)
        it = chain_next(g, it)
    if top is base:
        raise QmpFailure("cannot commit an image into itself")
    is_active = skip_filters(g, top) is skip_filters(g, bs)
    # active commit if and only if someone has taken WRITE on top (or top is the active layer)
    active = is_active or bool(P.Perms(g, {}, {}).node[top.name][0] & WRITE)
    if active and "backing-file" in args:
        raise QmpFailure("'backing-file' specified, but 'top' is the active layer" if is_active
                         else "'backing-file' specified, but 'top' has a writer on it")
    _check_backing_file_str(args)
    # before the model's own limits, so that diff mode, which sends declined steps to the
    # builds, does not find a known bug of an active commit again and again
    g.guard("active-commit-start", device=bs, active=is_active)
    chain = _qcow2_chain(g, top, base, into_stop=True)
    g.guard("job-start", nodes=[n for n in [bs] + chain + [base] if n is not None])
    if active:
        # commit_active_start(top_bs, ...): the mirror works on top, below any filter on bs
        _active_commit(g, args, top, base, chain, ctx)
        return
    overlay = find_overlay(g, bs, top)
    assert overlay is not None, "top is below bs here (top is bs made it an active commit)"
    _busy(g, overlay)

    job = Job("", "commit", "created", args.get("auto-finalize", True), args.get("auto-dismiss", True),
              device=bs.name, top=top.name, base=base.name, backing_file=args.get("backing-file"))
    job.id = _job_id(g, args.get("job-id"))
    _register(g, job)
    add_parent(g, job, bs, "main node", 0, ALL)
    if base.read_only:
        _make_writable(g, job, base, ctx)
    ct = _append_filter(g, "commit_top", args.get("filter-node-name"), True, top)
    job.filter = ct.name
    it = top
    while it is not base:
        assert it is not None, "base is in top's chain (in_chain / find_overlay)"
        add_parent(g, job, it, "intermediate node", 0, WU | WRITE)
        it = chain_next(g, it)
    freeze_chain(g, job, ct, base)
    add_parent(g, job, base, "base", 0, ALL)
    add_parent(g, job, base, "root", READ | WRITE, READ | WU, blk=True, block=False,
               desc="an unnamed block device")
    add_parent(g, job, top, "root", 0, ALL, blk=True, block=False, desc="an unnamed block device")
    _start(g, job)
    _copy_into_base(g, top, base, chain)
    _settle(g, job)


def _copy_into_base(g: Graph, top: Node, base: Node, chain: list[Node]) -> None:
    """``commit_run()`` / mirror's copy: what is allocated above the base is written into it."""
    size = node_length(g, base)
    for c in range(-(-size // CLUSTER)):
        if any(c in g.image(n).zero_clusters for n in chain):
            # 10.0's commit_iteration() writes zeroes (MAY_UNMAP) where block status says
            # ZERO (whether the base then has a zero flag or a freed cluster is the base's)
            raise NotModeled("commit of zero-flagged clusters")
        if any(_allocated(g, n, c) for n in chain):
            if not iodata.can_write(g, base):
                # a qcow2 base whose file now holds another image (a reopen moved it): QEMU
                # writes through the old metadata into the new file (7.2.22, 10.0.2 and
                # 11.1.3 alike, found by a campaign), which the model does not follow
                raise NotModeled("commit into a base the model cannot write")
            lo, hi = c * CLUSTER, min(size, (c + 1) * CLUSTER)
            iodata.write(g, base, lo, _read_known(g, top, lo, hi - lo))


def _active_commit(g: Graph, args: dict, bs: Node, base: Node, chain: list[Node], ctx: dict) -> None:
    job = Job("", "commit", "created", args.get("auto-finalize", True), args.get("auto-dismiss", True),
              active=True, device=bs.name, top=bs.name, base=base.name)
    if base.read_only:
        _make_writable(g, job, base, ctx)
    mt = _append_filter(g, "mirror_top", args.get("filter-node-name"), False, bs)
    job.filter = mt.name
    job.id = _job_id(g, args.get("job-id"))
    _register(g, job)
    add_parent(g, job, mt, "main node", READ, READ | WU | WRITE)
    add_parent(g, job, base, "root", WRITE, WU | READ | WRITE, blk=True, block=False,
               desc="an unnamed block device")
    add_parent(g, job, bs, "source", 0, WU | WRITE | READ)
    add_parent(g, job, base, "target", 0, ALL)
    it = chain_next(g, bs)
    while it is not base:
        assert it is not None, "base is in bs's chain (block_commit)"
        add_parent(g, job, it, "intermediate node", 0, WU | WRITE)
        it = chain_next(g, it)
    freeze_chain(g, job, mt, base)
    _start(g, job)
    _copy_into_base(g, bs, base, chain)
    _transition(g, job, "ready")   # job_transition_to_ready()
    _block_job_event(g, job, "BLOCK_JOB_READY")


# --------------------------------------------------------------------------------------------
# blockdev-mirror

def _visit_mirror(g: Graph, args: Any) -> dict:
    """The QAPI visit of ``blockdev-mirror`` (``models.qapi.visit_arguments``)."""
    members = tuple(m for m in A.BLOCKDEV_MIRROR
                    if m[0] != "target-is-zero" or g.qemu_profile.mirror_target_is_zero)
    return visit_arguments(args, members, g.qemu_profile)


def _can_replace(g: Graph, bs: Node, to_replace: Node) -> bool:
    """``bdrv_recurse_can_replace()``: the node itself; a quorum child that has no other
    parent; either child of blkverify; through a filter's filtered child; nothing else (raw
    is no filter)."""
    if bs is to_replace:
        return True
    if bs.drv == "quorum":
        return any(g.nodes[c.child] is to_replace and len(to_replace.parents) == 1 for c in bs.children)
    if bs.drv == "blkverify":
        return any(_can_replace(g, g.nodes[c.child], to_replace) for c in bs.children)
    f = g.filter_child(bs)
    return f is not None and _can_replace(g, f, to_replace)


def _mirror_data(g: Graph, job: Job, src: Node, target: Node, sync: str, granularity: int) -> None:
    """``mirror_run()``'s copy.  sync=none copies nothing; sync=top the clusters allocated in
    the top qcow2 node (its backing chain stays the target's business); sync=full the whole
    chain.  What the model leaves out: areas the source reads as zeros (pre-zeroing and
    skipping differ by version), and dirty granularities other than a qcow2 cluster."""
    if sync == "none":
        return
    if target.drv == "null-co":
        # the target drops what it is sent, but the source is read all the same: a blkverify
        # whose children differ ends QEMU there (7.2.22, found by a campaign), a copy-on-read
        # filter allocates, a quorum vote the model sees fail would fail the job
        def effects(n: Node) -> bool:
            c = n.child("file")
            return n.drv == "blkverify" or (
                n.drv == "copy-on-read" and c is not None
                and not iodata.storage_leaf(g, g.nodes[c.child]).driver.protocol)

        if g.reaches(src, effects):
            raise NotModeled("mirror into null-co of a source whose reads do more than read")
        if iodata.known(g, src):
            size = node_length(g, src)
            try:
                for c in range(-(-size // CLUSTER)):
                    iodata.read(g, src, c * CLUSTER, min(size, (c + 1) * CLUSTER) - c * CLUSTER)
            except iodata.IoFailed:
                raise NotModeled("mirror of a source whose read fails (the job's error path)") from None
        return
    if granularity not in (0, CLUSTER):
        raise NotModeled("mirror granularity other than 64 KiB")
    if not iodata.known(g, src) or not iodata.can_write(g, target):
        raise NotModeled("mirror of data the model does not know, or into a target it cannot write")
    size = node_length(g, src)
    top_only = sync == "top" and g.cow_child(skip_filters(g, src)) is not None
    if top_only and skip_filters(g, src).drv != "qcow2":
        raise NotModeled("sync=top from a top that is not qcow2")
    for c in range(-(-size // CLUSTER)):
        lo, hi = c * CLUSTER, min(size, (c + 1) * CLUSTER)
        if top_only:
            top = skip_filters(g, src)
            img = g.image(top)
            if c in img.zero_clusters:
                raise NotModeled("sync=top over zeroed clusters")
            if c not in img.allocated:
                continue
        try:
            data = iodata.read(g, src, lo, hi - lo)
        except iodata.IoFailed:
            raise NotModeled("mirror of a source whose read fails (the job's error path)") from None
        assert data is not None, "known() said the data is known"
        if not data.strip(b"\0"):
            raise NotModeled("mirror of areas the source reads as zeros")
        try:
            iodata.write(g, target, lo, data)
        except iodata.IoFailed:
            # (a compressed write into an allocated cluster, say: seen in a 7.2.22 campaign
            # as the model's internal error)
            raise NotModeled("mirror onto a target whose write fails (the job's error path)") from None


@_restoring
def blockdev_mirror(g: Graph, args: Any, ctx: dict) -> None:
    """``qmp_blockdev_mirror()`` -> ``blockdev_mirror_common()`` -> ``mirror_start_job()``
    (probed on 7.2.22, 10.0.2 and 11.1.3; iotest 041's blockdev seeds).  Failures after the
    filter was created have used up its auto name; failures after ``job_create()`` emit the
    job's created and null events."""
    args = _visit_mirror(g, args)
    bs = g.lookup_bs(args["device"])
    if not _is_root(g, bs):
        raise QmpFailure("Need a root block node")
    target = g.lookup_bs(args["target"])
    _refuse_iothreads(g, [bs, target])
    granularity = args.get("granularity", 0)
    if granularity and not 512 <= granularity <= 64 << 20:
        raise QmpFailure("Parameter 'granularity' expects a value in range [512B, 64MB]")
    if granularity & (granularity - 1):
        raise QmpFailure("Parameter 'granularity' expects a power of 2")
    for node in (bs, target):   # MIRROR_SOURCE, MIRROR_TARGET
        reason = op_blocker(g, node)
        if reason is not None:
            raise QmpFailure(f"Node '{node.name}' is busy: {reason}")
    if "replaces" in args:
        # check_to_replace_node()
        rep = g.get(args["replaces"])
        if rep is None:
            raise QmpFailure(f"Failed to find node with node-name='{args['replaces']}'")
        reason = op_blocker(g, rep)
        if reason is not None:
            raise QmpFailure(f"Node '{rep.name}' is busy: {reason}")
        if not _can_replace(g, bs, rep):
            raise QmpFailure(f"Cannot replace '{rep.name}' by a node mirrored from '{bs.name}', because "
                             "it cannot be guaranteed that doing so would not lead to an abrupt change of "
                             "visible data")
        if node_length(g, rep) != node_length(g, bs):
            raise QmpFailure("cannot replace image with a mirror image of different size")
    sync = args["sync"]
    if sync in ("incremental", "bitmap"):
        raise QmpFailure(f"Sync mode '{sync}' not supported")
    if args.get("buf-size", 0) < 0:
        raise QmpFailure("Invalid parameter 'buf-size'")
    if skip_filters(g, bs) is skip_filters(g, target):
        raise QmpFailure("Can't mirror node into itself")
    g.guard("job-start", nodes=[bs, target])
    job = Job("", "mirror", "created", args.get("auto-finalize", True), args.get("auto-dismiss", True),
              active=True, device=bs.name, top=bs.name, base=target.name, replaces=args.get("replaces"),
              granularity=granularity or CLUSTER)
    mt = _append_filter(g, "mirror_top", args.get("filter-node-name"), False, bs, commit=False)
    job.filter = mt.name
    job.id = _job_id(g, args.get("job-id"))   # the filter's BlockBackend name: '' for nodes
    _register(g, job)
    add_parent(g, job, mt, "main node", READ, READ | WU | WRITE)
    if args.get("speed", 0) < 0:
        raise QmpFailure("Parameter 'speed' expects a non-negative value")
    if chain_contains(g, bs, target):
        # target_is_backing: mirror_start_job() then works like an active commit (other
        # target permissions, intermediate nodes, a frozen chain); reached when the target is
        # below a filter in the source's chain (a backing node itself is op-blocked)
        raise NotModeled("blockdev-mirror into the source's own backing chain")
    if chain_contains(g, bs, skip_filters(g, target)):
        raise QmpFailure("Cannot mirror to a filter on top of a node in the source's backing chain")
    add_parent(g, job, target, "root", WRITE, WU, blk=True, block=False, desc="an unnamed block device")
    add_parent(g, job, bs, "source", 0, WU | WRITE | READ)
    add_parent(g, job, target, "target", 0, ALL)
    _start(g, job)
    if node_length(g, bs) != node_length(g, target):
        # mirror_run(): the job fails before it copies anything
        _transition(g, job, "aborting")
        _drop_filter(g, job)
        _release_all(g, job)
        job.error = "Source and target image have different sizes"
        _block_job_event(g, job, "BLOCK_JOB_COMPLETED", job.error)
        _transition(g, job, "concluded")
        if job.auto_dismiss:
            _dismiss(g, job)
        return
    _mirror_data(g, job, bs, target, sync, granularity)
    _transition(g, job, "ready")   # job_transition_to_ready()
    _block_job_event(g, job, "BLOCK_JOB_READY")


def _commit_prepare(g: Graph, job: Job) -> None:
    """``commit_prepare()`` -> ``bdrv_drop_intermediate()``: the overlay's backing becomes the
    base and its image header names the base."""

    unfreeze(g, job)
    job.parents = [p for p in job.parents if not (p.blk and p.node == job.base)]
    assert job.filter is not None and job.base is not None and job.top is not None, \
        "block_commit() names all three"
    ct = g.nodes[job.filter]
    base = g.nodes[job.base]
    top = g.nodes[job.top]
    inherits = g.inherits_from_recursive(base, top.name)
    for c in list(ct.parents):
        parent = g.nodes[c.parent]
        _move_edge(g, c, ct, base)
        if c.role == ROLE_COW:
            # bdrv_drop_intermediate(): backing_file_str, or the base's filename
            img = g.image(parent)
            img.backing_file = job.backing_file if job.backing_file is not None \
                else refresh_filename(g, base).filename
            img.backing_format = base.drv
            parent.auto_backing_file = img.backing_file
    if inherits:
        base.inherits_from = top.inherits_from
    if g.refcount(ct) == 0:
        g.unref(ct)   # the filter had only its parents' references; top lives while the job does


def _mirror_complete(g: Graph, job: Job) -> str | None:
    """``mirror_exit_common()``: the job lets go of every node (``block_job_remove_all_bdrv()``)
    and the filter is replaced by its child and freed.  With no parent above the device,
    nothing else changes.  A pivot the new permissions refuse leaves the graph as it was and
    fails the job with EPERM: the error it returns (041 test_failing_permission_in_complete)."""
    job.parents = [p for p in job.parents if not p.blk]   # s->target is gone by now
    assert job.base is not None, "a commit job has its base"
    failed = None
    src, base = g.nodes.get(job.replaces or job.device), g.get(job.base)
    if job.pivot and src is not None and base is not None:
        if src.read_only != base.read_only:
            # the target gets the read-only state of what it replaces
            _try_set_read_only(g, base, src.read_only)
        # bdrv_replace_node(to_replace, target): its parents -- the filter's backing link
        # among them, so the filter's own parents end on the target too -- now use the target
        trial = g.clone()
        try:
            replace_node(trial, trial.nodes[src.name], trial.nodes[base.name])
            P.refresh(trial, [base.name])
        except QmpFailure:
            failed = "Operation not permitted"
        else:
            replace_node(g, src, base)
            if job.replaces and g.refcount(src) == 0:
                g.unref(src)   # the moved links held its only references
    _drop_filter(g, job)
    _release_all(g, job)
    return failed


# --------------------------------------------------------------------------------------------
# the job state machine

def _settle(g: Graph, job: Job) -> None:
    """From running to the state the harness waits for: ``job_completed_txn_success_locked()``
    (waiting, then pending), and on to ``job_do_finalize_locked()`` with auto-finalize."""
    _transition(g, job, "waiting")
    _transition(g, job, "pending")
    if job.auto_finalize:
        _finalize(g, job)
    else:
        _block_job_event(g, job, "BLOCK_JOB_PENDING")


def _finalize(g: Graph, job: Job) -> None:
    g.guard("job-finalize", job=job)
    # the prepare rewrites an image header: the streamed node's, or the overlay's above a
    # commit's filter (a reopen may have moved its file onto a format node since the start)
    if job.type == "stream":
        _refuse_nested_metadata(g, [g.nodes[job.device]])
    elif not job.active and job.filter in g.nodes:
        _refuse_nested_metadata(g, [g.nodes[c.parent] for c in g.nodes[job.filter].parents])
    failed = None
    if job.type == "stream":
        _stream_prepare(g, job)
    elif job.active:
        failed = _mirror_complete(g, job)
    else:
        _commit_prepare(g, job)
    _clean(g, job, restore=not job.active)
    if failed is not None:
        # job_prepare_locked() failed: job_update_rc_locked() -> aborting
        _transition(g, job, "aborting")
        job.error = failed
    # job_finalize_single_locked(): the event, then job_conclude_locked()
    _block_job_event(g, job, "BLOCK_JOB_COMPLETED", failed)
    _transition(g, job, "concluded")
    if job.auto_dismiss:
        _dismiss(g, job)


def _clean(g: Graph, job: Job, restore: bool = True) -> None:
    if job.type == "stream" or job.active:
        job.parents = [p for p in job.parents if not p.blk]
    elif job.type == "commit":
        job.parents = [p for p in job.parents if not (p.blk and p.node == job.top)]
    if restore and job.restore_ro and job.restore_ro in g.nodes:
        _try_set_read_only(g, g.nodes[job.restore_ro], True)   # errors ignored (NULL errp)
        job.restore_ro = None


def _release_all(g: Graph, job: Job) -> None:
    """``block_job_remove_all_bdrv()``: the job's parents and blockers go; nodes nobody
    references any more are closed."""
    held = [p.node for p in job.parents]
    job.parents = []
    job.blocks = {}
    for name in dict.fromkeys(held):
        n = g.get(name)
        if n is None:
            continue
        if g.stale_perms:
            # bdrv_root_unref_child() refreshes the node it let go of, subtree and all,
            # before a node nobody references any more is closed
            P.forget_stale(g, P.topological_dfs(g, [name]))
        if g.refcount(n) == 0:
            g.unref(n)


def _dismiss(g: Graph, job: Job) -> None:
    """``job_do_dismiss_locked()``: the job is freed with everything it still holds."""
    _transition(g, job, "null")
    del g.jobs[job.id]
    _release_all(g, job)


def _abort(g: Graph, job: Job) -> None:
    if job.type == "stream":
        _drop_filter(g, job)
        _clean(g, job)
    elif job.active:
        _drop_filter(g, job)
        _release_all(g, job)
        _clean(g, job, restore=g.qemu_profile.active_commit_cancel_restores_ro)
    else:
        # commit_abort(): the filter is replaced by its child again
        unfreeze(g, job)
        assert job.filter is not None, "block_commit() inserted its commit_top filter"
        ct = g.nodes[job.filter]
        c = ct.edge("backing")   # frozen while the job ran
        top = g.nodes[c.child]
        replace_node(g, ct, top)
        g.detach(c)
        if g.refcount(ct) == 0:
            del g.nodes[ct.name]
        # block_job_remove_all_bdrv(): an aborted commit holds no node and no blocker any
        # more (a completed one keeps them until it is dismissed)
        _release_all(g, job)
        _clean(g, job)


def _get_job(g: Graph, args: Any, key: str = "id",
             members: tuple[Member, ...] | None = None) -> Job:
    """The QAPI visit of a job verb (``models.arguments``), then ``find_job_locked()`` /
    ``find_block_job_locked()``."""
    if not isinstance(args, dict):
        raise QmpFailure(f"Parameter '{key}' is missing")
    visit_arguments(args, members or (A.JOB_ID if key == "id" else A.BLOCK_JOB_DEVICE),
                    g.qemu_profile)
    jid = args[key]
    job = g.jobs.get(jid)
    if key == "device" and job is not None and job.type == "create":
        job = None   # a create job is no block job (query-block-jobs does not list it)
    if job is None:
        if key == "device":
            raise QmpFailure(f"Block job '{jid}' not found", "DeviceNotActive")
        raise QmpFailure("Job not found")
    return job


def _verb(job: Job, verb: str, allowed: tuple) -> None:
    if job.status not in allowed:
        raise QmpFailure(f"Job '{job.id}' in state '{job.status}' cannot accept command verb '{verb}'")


def job_finalize(g: Graph, args: Any) -> None:
    job = _get_job(g, args)
    _verb(job, "finalize", ("pending",))
    _finalize(g, job)


def job_dismiss(g: Graph, args: Any) -> None:
    job = _get_job(g, args)
    _verb(job, "dismiss", ("concluded",))
    _dismiss(g, job)


def job_cancel(g: Graph, args: Any) -> None:
    job = _get_job(g, args)
    _verb(job, "cancel", ("created", "running", "paused", "ready", "standby", "pending"))
    g.guard("job-cancel", job=job)
    if job.user_paused:
        # job_cancel_async_locked() undoes the user's pause: the job leaves its pause point
        # (standby -> ready) before it aborts
        job.user_paused = False
        _transition(g, job, _RESUMED.get(job.status, job.status))
    # job-cancel is a forced cancel: the job stops (a running one at once, one that waits for
    # finalize through job_completed_txn_abort_locked()) and job_update_rc_locked() sets
    # -ECANCELED; a cancelled job goes from aborting straight to concluded
    _transition(g, job, "aborting")
    _abort(g, job)
    _block_job_event(g, job, "BLOCK_JOB_CANCELLED")
    _transition(g, job, "concluded")
    job.error = "Operation canceled"
    if job.auto_dismiss:
        _dismiss(g, job)


def block_job_complete(g: Graph, args: Any, key: str = "device") -> None:
    job = _get_job(g, args, key)
    _verb(job, "complete", ("ready", "standby"))
    if not job.active:
        raise NotModeled("complete of a job that is not an active commit")
    if job.status == "standby":
        # mirror_complete() only asks; a paused job is not entered (probed on 7.2, 10.0, 11.1)
        job.complete_requested = True
        return
    _settle(g, job)


def job_complete(g: Graph, args: Any) -> None:
    """``job-complete``: ``block-job-complete`` by job id."""
    block_job_complete(g, args, "id")


def block_job_cancel(g: Graph, args: Any) -> None:
    """``qmp_block_job_cancel()``: a paused job refuses a soft cancel; a soft cancel of a
    ready mirror completes it without the pivot (``mirror_cancel()``, since 6.2: the event
    is BLOCK_JOB_COMPLETED); otherwise it is ``job-cancel``."""
    job = _get_job(g, args, "device", A.BLOCK_JOB_CANCEL)
    force = args.get("force", False)
    if job.user_paused and not force:
        raise QmpFailure(f"The block job for device '{job.id}' is currently paused")
    if not force and job.status == "ready":
        _verb(job, "cancel", ("ready",))
        if job.type != "mirror":
            raise NotModeled("soft cancel of a ready active commit")
        job.pivot = False
        _settle(g, job)
        return
    job_cancel(g, {"id": job.id})


#: JobVerbTable (job.c): the states that take pause and resume
_PAUSABLE = ("created", "running", "paused", "ready", "standby")
#: job_pause_point_locked(): where a paused job goes, and back
_PAUSED = {"ready": "standby", "running": "paused"}
_RESUMED = {"standby": "ready", "paused": "running"}


def _pause(g: Graph, args: Any, key: str) -> None:
    """``job_user_pause_locked()``: the verb check, then ``Job is already paused``.  A ready
    job reaches its pause point at once and waits there in ``standby``."""
    job = _get_job(g, args, key)
    _verb(job, "pause", _PAUSABLE)
    if job.user_paused:
        raise QmpFailure("Job is already paused")
    job.user_paused = True
    _transition(g, job, _PAUSED.get(job.status, job.status))


def _resume(g: Graph, args: Any, key: str) -> None:
    """``job_user_resume_locked()``: the pause check comes before the verb check, so resuming
    a pending or concluded job says it was not paused."""
    job = _get_job(g, args, key)
    if not job.user_paused:
        raise QmpFailure("Can't resume a job that was not paused")
    _verb(job, "resume", _PAUSABLE)
    job.user_paused = False
    _transition(g, job, _RESUMED.get(job.status, job.status))
    if job.complete_requested:
        job.complete_requested = False
        _settle(g, job)


def block_job_pause(g: Graph, args: Any) -> None:
    _pause(g, args, "device")


def job_pause(g: Graph, args: Any) -> None:
    _pause(g, args, "id")


def block_job_resume(g: Graph, args: Any) -> None:
    _resume(g, args, "device")


def job_resume(g: Graph, args: Any) -> None:
    _resume(g, args, "id")


def job_nodes(g: Graph, job: Job) -> set[str]:
    """Every node a job holds or works on."""
    out = {p.node for p in job.parents}
    for name in (job.device, job.top, job.base, job.filter):
        n = g.get(name) if name else None
        while n is not None and n.name not in out | {job.base}:
            out.add(n.name)
            n = chain_next(g, n)
        if name:
            out.add(name)
    return out


def active_commit_nodes(g: Graph) -> dict[str, "Job"]:
    """The nodes an active commit works on (its filter, source chain and base), by job."""
    out: dict[str, Job] = {}
    for job in g.jobs.values():
        if job.active and job.status in ("ready", "standby", "pending"):
            n = g.get(job.device)
            while n is not None:
                out[n.name] = job
                if n.name == job.base:
                    break
                n = chain_next(g, n)
            if job.filter:
                out[job.filter] = job
            if job.type == "mirror" and job.base:
                out[job.base] = job   # the target
    return out


def query_jobs(g: Graph) -> list[dict]:
    """``query-jobs``, newest first, without the progress counters."""
    out = []
    for job in reversed(list(g.jobs.values())):
        d = {"id": job.id, "type": job.type, "status": job.status}
        if job.error:
            d["error"] = job.error
        out.append(d)
    return out
