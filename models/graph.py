"""The block graph: nodes (BlockDriverState) and edges (BdrvChild).

Nodes and edges refer to each other by node-name so that a whole graph can be cloned cheaply:
every command runs on a clone and the clone replaces the graph only if the command succeeds,
which is how QEMU's transactions (blockdev-add since 7.1, blockdev-reopen) behave.

Lists are newest-first, as QEMU keeps them (``QLIST_INSERT_HEAD`` in
``bdrv_attach_child_noperm()`` and ``bdrv_replace_child_noperm()``): a qcow2 node opened with a
backing file has children ``[backing, file]``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from .errors import QmpFailure

if TYPE_CHECKING:
    from .drivers.base import BlockDriver
    from .imagedata import Image
    from .profiles import VersionProfile

def shallow_copier(cls: type) -> Callable[[Any], Any]:
    """A function that copies an attrs instance field by field, without running ``__init__``.

    ``attrs.evolve(x)`` builds the copy through ``__init__`` (keyword arguments, defaults and
    factories all over again): 4.9 µs for a ``Node`` against 0.7 µs here, and every command
    clones every node (``Graph.clone``).  For classes without converters or validators, so
    the two copies are the same; the copy is shallow, the caller replaces what it mutates."""
    fields = [a.name for a in attrs.fields(cls)]
    assert not any(a.converter or a.validator for a in attrs.fields(cls)), cls
    # one assignment per field in generated code: a loop over setattr() costs twice as much
    body = "".join(f"    _set(new, {f!r}, old.{f})\n" for f in fields)
    src = f"def copy(old):\n    new = _new(_cls)\n{body}    return new\n"
    scope: dict = {"_new": object.__new__, "_cls": cls, "_set": object.__setattr__}
    exec(compile(src, f"<shallow_copier {cls.__name__}>", "exec"), scope)
    return scope["copy"]


# BdrvChildRole, reduced to what the permission rules look at.
ROLE_FILTERED = "filtered"   # BDRV_CHILD_FILTERED | PRIMARY (raw without offset/size)
ROLE_DATA = "data"           # BDRV_CHILD_DATA | PRIMARY (raw with offset/size)
ROLE_STORAGE = "storage"     # BDRV_CHILD_DATA | METADATA | PRIMARY (qcow2 'file')
ROLE_COW = "cow"             # BDRV_CHILD_COW (qcow2 'backing')

#: the parent field of a ``Graph.moved`` entry that is a BlockBackend parent (a guest disk,
#: a leaked BlockBackend) rather than a node's edge; no node name can start with a NUL
MOVED_BLK = "\0blk"


@attrs.define
class Child:
    """A BdrvChild: ``parent`` uses ``child`` under ``name`` with ``role``."""

    parent: str
    child: str
    name: str
    role: str
    frozen: bool = False
    seq: int = 0        # when it was attached (or last moved): parents are listed newest first


@attrs.frozen
class JobParent:
    """A parent that is not a node: a block job's BdrvChild (``block_job_add_bdrv()``) or a
    BlockBackend a job (or device) holds.  ``blk`` parents make ``bdrv_has_blk()`` true."""

    node: str
    desc: str        # "stream job 'stream0'", "an unnamed block device"
    child_name: str  # "intermediate node", "root", ...
    perm: int
    shared: int
    seq: int
    blk: bool = False


@attrs.define
class Node:
    name: str
    auto_named: bool
    drv: str               # bs->drv->format_name
    driver: "BlockDriver"  # bs->drv: the driver's module in models/drivers/
    options: dict          # bs->options, flattened, without child keys
    explicit: dict         # bs->explicit_options
    read_only: bool
    cache_direct: bool
    cache_no_flush: bool
    discard: str           # "ignore" | "unmap"
    detect_zeroes: str
    force_share: bool
    children: list[Child] = attrs.field(factory=list)  # newest first
    parents: list[Child] = attrs.field(factory=list)   # newest first
    inherits_from: str | None = None
    monitor_owned: bool = False
    # driver state
    filename: str | None = None      # file: the host file; qcow2: the image its file holds
    locking: bool = True             # file
    raw_offset: int = 0
    raw_size: int | None = None
    auto_backing_file: str = ""      # qcow2: bs->auto_backing_file
    cached_length: int = 0           # bs->total_sectors * 512 (null-co: its size)
    throttle_group: str | None = None  # throttle: the group it is a member of
    read_zeroes: bool = False        # null-co
    next_child_index: int = 0        # quorum: s->next_child_index (x-blockdev-change)
    mirror_is_commit: bool = True    # mirror_top: MirrorBDSOpaque.is_commit (False for blockdev-mirror)
    seq: int = 0                     # name-assignment order (query-named-block-nodes)
    implicit: bool = False           # bs->implicit: a job filter nobody named
    probed: bool = False             # bs->probed: opened without a driver (models.probing)
    ctx: str = "main"                # AioContext: "main" or an iothread id (models.devices)
    #: bs->bl as last computed by bdrv_refresh_limits() (models.limits), for profiles that
    #: report image.limits; replaced, never mutated (clones share it)
    bl: dict | None = None

    def clone(self) -> "Node":
        new = _copy_node(self)
        new.options, new.explicit = dict(self.options), dict(self.explicit)
        new.children, new.parents = list(self.children), list(self.parents)
        return new

    def child(self, name: str) -> Child | None:
        for c in self.children:
            if c.name == name:
                return c
        return None

    def edge(self, name: str) -> Child:
        """``child(name)`` for a child the node cannot be without (raw's and qcow2's
        ``file``, blkverify's ``test``, a running job's filter's): its open requires it, and a
        reopen only replaces it."""
        c = self.child(name)
        assert c is not None, f"node {self.name!r} has no {name!r} child"
        return c


_copy_node = shallow_copier(Node)
_copy_child = shallow_copier(Child)


@attrs.define
class Graph:
    nodes: dict[str, Node] = attrs.field(factory=dict)  # by name, in name-assignment order
    images: dict[str, Image] = attrs.field(factory=dict)  # by file name
    auto_counter: int = 0                       # id_generate(ID_BLOCK)
    seq: int = 0
    #: file-posix lock bytes currently held by each file node: (perm, unshared)
    locks: dict = attrs.field(factory=dict)
    #: QOM objects by id (models.objects.QomObject): throttle groups, iothreads
    objects: dict = attrs.field(factory=dict)
    #: block jobs by id, oldest first (models.jobs.Job)
    jobs: dict = attrs.field(factory=dict)
    #: guest devices by id or QOM path (models.devices.Controller / Disk)
    devices: dict = attrs.field(factory=dict)
    #: the QEMU machine type: "none" has no buses, "pc" has PCI
    machine: str = "none"
    #: qdev's counter of anonymous devices (their QOM path is device[N]); never rolled back
    anon_devices: int = 0
    edge_seq: int = 0
    #: the VersionProfile (models.profiles) the graph behaves by; None only in the standalone
    #: qemu-io graph of ``models.model.build_images``, which opens images and writes, nothing
    #: that differs between versions (see ``qemu_profile``)
    profile: VersionProfile | None = None
    #: nodes a known QEMU bug left drained (see VersionProfile.reopen_duplicate_drain_leak):
    #: I/O that reaches them never completes
    stuck: set = attrs.field(factory=set)
    #: qcow2 nodes whose s->data_file points at a BdrvChild a failed reopen removed (QEMU bug,
    #: 7.2 and 10.0; corpus/findings/qcow2-failed-reopen-dangling-data-file.json)
    dangling_data_file: set = attrs.field(factory=set)
    #: refuse (NotModeled) commands that crash QEMU through a known bug, so a campaign does
    #: not find them again; replay leaves it off and lets QEMU show the crash
    guard_known_crashes: bool = False
    #: the guards ``guard()`` runs while ``guard_known_crashes`` is on: point name -> check
    #: (``models.known_bugs.GUARDS``, installed by ``models.model.Model``)
    guards: dict = attrs.field(factory=dict)
    #: edges the current command's transaction removed from their parent, in order (a clone
    #: starts empty): a failed command's abort puts them back at the head of both lists
    #: (``restore_removed()``)
    removed: list = attrs.field(factory=list)
    #: (parent, child name) of every edge the current command's bdrv_replace_node() calls moved,
    #: in order (a clone starts empty; see ``undo_moves()``)
    moved: list = attrs.field(factory=list)
    #: nodes whose limits the current command refreshed outside any transaction
    #: (``bdrv_append()``'s ``bdrv_refresh_limits(bs_top, NULL, NULL)``): a failed command
    #: keeps these (a clone starts empty)
    limits_kept: list = attrs.field(factory=list)
    #: the job events the current command emitted (``models.values.job_event_text``): one list
    #: per command, shared by every clone made during it, because QEMU's events are out on the
    #: wire even when the command then fails (a job start's ``job_early_fail()``)
    job_events: list = attrs.field(factory=list)
    #: BlockBackends a failed job start left behind, as parents of their node (QEMU bug, 7.2,
    #: 10.0 and 11.1: ``stream_start()``'s error path never unrefs ``s->blk``;
    #: corpus/findings/stream-failed-start-leaks-blockbackend.json).  Nothing frees them: the
    #: node can no longer be deleted and keeps their permissions.
    leaked_blks: list = attrs.field(factory=list)
    #: edge permissions QEMU did not recompute, by edge ``seq``: (perm, shared) as the edge had
    #: them.  ``bdrv_set_backing_hd()`` refreshes only the parent's subtree, so an old backing
    #: node that something else still holds (a stream job's "intermediate node" link) keeps
    #: the edge permissions of its own subtree as they were (``models.perms.stale_after``)
    stale_perms: dict = attrs.field(factory=dict)

    def clone(self) -> "Graph":
        # Images are shared: graph commands never change image contents; only qemu-io writes
        # do, and they are not transactional.
        nodes = {}
        edge_map: dict[int, Child] = {}

        def copy_edge(e: Child) -> Child:
            c = edge_map.get(id(e))
            if c is None:
                c = edge_map[id(e)] = _copy_child(e)
            return c

        for name, n in self.nodes.items():
            m = n.clone()
            m.children = [copy_edge(e) for e in n.children]
            m.parents = [copy_edge(e) for e in n.parents]
            nodes[name] = m
        return Graph(nodes, self.images, self.auto_counter, self.seq, dict(self.locks),
                     dict(self.objects), {k: j.clone() for k, j in self.jobs.items()},
                     dict(self.devices), self.machine, self.anon_devices, self.edge_seq, self.profile,
                     set(self.stuck), set(self.dangling_data_file), self.guard_known_crashes,
                     self.guards, job_events=self.job_events, leaked_blks=list(self.leaked_blks),
                     stale_perms=dict(self.stale_perms))

    @property
    def qemu_profile(self) -> VersionProfile:
        """``profile`` where the code needs one: every graph of a ``Model`` has one."""
        assert self.profile is not None, "a version-dependent rule ran in build_images' graph"
        return self.profile

    def guard(self, point: str, **context: Any) -> None:
        """A point where a known QEMU bug strikes (``models.known_bugs``): in a campaign the
        guard of ``point`` may refuse the command with ``KnownQemuBug``; replay lets QEMU
        show the bug, so nothing runs."""
        if self.guard_known_crashes:
            check: Callable[..., None] | None = self.guards.get(point)
            if check is not None:
                check(self, **context)

    # -- lookups ---------------------------------------------------------------------------
    def lookup_bs(self, ref: str) -> Node:
        """``bdrv_lookup_bs(ref, ref)``: a device name or a node name (no devices here)."""
        n = self.nodes.get(ref)
        if n is None:
            raise QmpFailure(f"Cannot find device='{ref}' nor node-name='{ref}'")
        return n

    def lookup_node(self, ref: str) -> Node:
        """``bdrv_lookup_bs(NULL, ref)``: a node name only."""
        n = self.nodes.get(ref)
        if n is None:
            raise QmpFailure(f"Cannot find device='' nor node-name='{ref}'")
        return n

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def image(self, node: Node) -> Image:
        """The image a file or qcow2 node holds (``Node.filename``, which its open sets)."""
        assert node.filename is not None, f"node {node.name!r} holds no image"
        return self.images[node.filename]

    def cow_child(self, node: Node) -> Node | None:
        """``bdrv_cow_bs()``: the backing child of a format node (a job filter's ``backing``
        is a filtered child, not a COW one)."""
        c = node.child("backing")
        return self.nodes[c.child] if c and c.role == ROLE_COW else None

    def filter_child(self, node: Node) -> Node | None:
        """``bdrv_filter_bs()``: the filtered child of a filter node."""
        name = node.driver.filtered_child_name
        c = node.child(name) if name else None
        return self.nodes[c.child] if c else None

    def filtered(self, node: Node) -> Node:
        """``filter_child()`` of a filter that I/O or a length reaches: it has its child (only
        a job filter its job dropped loses it: ``models.jobs._drop_filter``)."""
        c = self.filter_child(node)
        assert c is not None, f"filter {node.name!r} has no child"
        return c

    def filter_or_cow_child(self, node: Node) -> Node | None:
        """``bdrv_filter_or_cow_bs()``."""
        return self.filter_child(node) or self.cow_child(node)

    def skip_implicit_filters(self, node: Node) -> Node:
        """``bdrv_skip_implicit_filters()``."""
        while node.implicit:
            below = self.filter_child(node) or self.cow_child(node)
            assert below is not None, "an implicit node is a job filter, which has its child"
            node = below
        return node

    def has_child_recursive(self, node: Node, target: str) -> bool:
        """``bdrv_recurse_has_child()``: is ``target`` ``node`` or below it (any role)?"""
        if node.name == target:
            return True
        return any(self.has_child_recursive(self.nodes[c.child], target) for c in node.children)

    def reaches(self, node: Node, pred: Callable[[Node], bool]) -> bool:
        """Whether ``pred`` holds for ``node`` or any node below it (any child role)."""
        if pred(node):
            return True
        return any(self.reaches(self.nodes[c.child], pred) for c in node.children)

    def reaches_stuck(self, node: Node) -> bool:
        """Whether I/O through ``node`` may reach a node left drained by a known QEMU bug."""
        return self.reaches(node, lambda n: n.name in self.stuck or n.name in self.dangling_data_file)

    def job_parents(self, name: str) -> list:
        """Non-node parents of a node (JobParent): held by jobs and by guest disks."""
        out = [p for j in self.jobs.values() for p in j.parents if p.node == name]
        out += [d.parent for d in self.devices.values()
                if getattr(d, "parent", None) is not None and d.node == name]
        out += [p for p in self.leaked_blks if p.node == name]
        return out

    def leak_blk(self, node: str, perm: int, shared: int) -> None:
        """A BlockBackend that its owner forgot to unref stays a parent of ``node`` for good
        (``leaked_blks``); it is the newest parent until ``undo_moves()`` runs."""
        self.leaked_blks.append(JobParent(node, "an unnamed block device", "root", perm, shared,
                                          self.next_edge_seq(), blk=True))

    def has_blk(self, name: str) -> bool:
        """``bdrv_has_blk()``."""
        return any(p.blk for p in self.job_parents(name))

    def refcount(self, node: Node) -> int:
        return len(node.parents) + (1 if node.monitor_owned else 0) + len(self.job_parents(node.name))

    def next_edge_seq(self) -> int:
        self.edge_seq += 1
        return self.edge_seq

    # -- naming ----------------------------------------------------------------------------
    def next_auto_name(self) -> str:
        name = f"#block{self.auto_counter}"
        self.auto_counter += 1
        return name

    # -- edges -----------------------------------------------------------------------------
    def attach(self, parent: Node, child: Node, name: str, role: str) -> Child:
        edge = Child(parent.name, child.name, name, role, seq=self.next_edge_seq())
        parent.children.insert(0, edge)
        child.parents.insert(0, edge)
        return edge

    def move_to_head(self, edge: Child) -> None:
        """``bdrv_replace_child_noperm()`` detaches and re-attaches the BdrvChild on its parent
        (``bdrv_child_cb_detach()`` / ``_attach()``: ``QLIST_REMOVE`` then ``QLIST_INSERT_HEAD``)
        and inserts it at the head of the new child's parents: an edge whose child changes, or
        that an abort restores, becomes the newest of both lists."""
        parent, child = self.nodes[edge.parent], self.nodes[edge.child]
        edge.seq = self.next_edge_seq()     # parents are ordered by age (models.perms)
        parent.children = [edge] + [e for e in parent.children if e is not edge]
        child.parents = [edge] + [e for e in child.parents if e is not edge]

    def remove_child(self, edge: Child) -> None:
        """``bdrv_remove_child()``: a detach that the transaction's abort undoes."""
        self.removed.append((edge.parent, edge.name, edge.child))
        self.detach(edge)

    def restore_removed(self, removed: list) -> None:
        """The abort of a failed transaction that removed ``removed`` (from its clone):
        ``bdrv_replace_child_abort()`` runs in reverse order and re-attaches each old child at
        the head of its parent's children and of its child's parents.  Seen on QEMU 11.1.3,
        whose ``children`` field shows the order: a reopen that swapped qcow2 ``file`` and
        then failed leaves ``[file, backing]`` where ``[backing, file]`` was."""
        for parent, name, child in reversed(removed):
            p = self.nodes.get(parent)
            edge = p.child(name) if p is not None else None
            if edge is not None and edge.child == child:
                self.move_to_head(edge)

    def undo_moves(self, moved: list) -> None:
        """A failed command that QEMU undoes with more ``bdrv_replace_node()`` calls (a job
        start dropping the filter it inserted: ``bdrv_cor_filter_drop()``, ``commit_start()``'s
        error path), applied to the graph as it was before the command.  Every replace puts
        the edge at the head of its lists: the insertion moved the edges in ``moved`` order,
        the drop moves them back iterating the filter's parents (newest first, so in reverse),
        and the edges end up first, in ``moved`` order.  Observed on 11.1.3: a blkverify
        node's ``raw`` and ``test`` edges after a ``block-stream`` of their child failed on
        the job ID."""
        for parent, name in [*moved, *reversed(moved)]:
            if parent == MOVED_BLK:
                self._renew_blk_parent(name)
                continue
            p = self.nodes.get(parent)
            edge = p.child(name) if p is not None else None
            if edge is not None:
                self.move_to_head(edge)

    def _renew_blk_parent(self, key: Any) -> None:
        """A BlockBackend parent (a guest disk by its device key, a leaked one by its index)
        that ``bdrv_replace_node()`` re-inserted at the head of its node's parents."""
        if isinstance(key, int):
            if key < len(self.leaked_blks):
                self.leaked_blks[key] = attrs.evolve(self.leaked_blks[key], seq=self.next_edge_seq())
            return
        d = self.devices.get(key)
        if d is not None and getattr(d, "parent", None) is not None:
            self.devices[key] = attrs.evolve(d, parent=attrs.evolve(d.parent, seq=self.next_edge_seq()))

    def detach(self, edge: Child) -> None:
        parent, child = self.nodes[edge.parent], self.nodes[edge.child]
        parent.children = [e for e in parent.children if e is not edge]
        child.parents = [e for e in child.parents if e is not edge]

    def unset_inherits_from(self, root: str, edge: Child) -> None:
        """``bdrv_unset_inherits_from()``: forget inheritance through a removed edge."""
        child = self.nodes[edge.child]
        if child.inherits_from == root:
            parent = self.nodes[root]
            if not any(c is not edge and c.child == child.name for c in parent.children):
                child.inherits_from = None
        for c in child.children:
            self.unset_inherits_from(root, c)

    def inherits_from_recursive(self, child: Node, parent: str) -> bool:
        """``bdrv_inherits_from_recursive()``."""
        cur: str | None = child.name
        while cur is not None:
            n = self.nodes.get(cur)
            if n is None:
                return False
            cur = n.inherits_from
            if cur == parent:
                return True
        return False

    def unref(self, node: Node) -> None:
        """Drop a reference; close the node (and unref its children) when none is left."""
        if self.refcount(node) > 0:
            return
        self.guard("close-node", node=node)
        edges = list(node.children)
        for edge in edges:
            self.unset_inherits_from(node.name, edge)
            self.detach(edge)
        del self.nodes[node.name]
        self.locks.pop(node.name, None)
        self.stuck.discard(node.name)
        self.dangling_data_file.discard(node.name)
        for edge in edges:
            child = self.nodes.get(edge.child)
            if child is not None:
                self.unref(child)


_ID_OK = re.compile(r"[A-Za-z][A-Za-z0-9\-._]*\Z")


def id_wellformed(s: str) -> bool:
    """``id_wellformed()`` (util/id.c): a letter, then letters, digits, '-', '.', '_'.  Node
    names, job IDs and QOM object IDs all go through it."""
    return bool(_ID_OK.match(s))


def assign_node_name(g: Graph, explicit: str | None) -> tuple[str, bool]:
    """``bdrv_assign_node_name()``: the name and whether it was generated."""
    if explicit is None:
        return g.next_auto_name(), True
    if not id_wellformed(explicit):
        raise QmpFailure(f"Invalid node-name: '{explicit}'")
    if explicit in g.nodes:
        raise QmpFailure(f"Duplicate nodes with node-name='{explicit}'")
    if len(explicit) >= 32:
        raise QmpFailure("Node name too long")
    return explicit, False


def op_blocker(g: Graph, node: Node, dataplane: bool = False) -> str | None:
    """The reason of the newest op blocker on ``node`` (``bdrv_op_is_blocked()`` reports
    ``QLIST_FIRST``): a COW parent's "node is used as backing hd of ..." (``bdrv_backing_attach()``)
    or a job's "block device is in use by block job: ..." (``block_job_add_bdrv()``).
    ``dataplane``: BLOCK_OP_TYPE_DATAPLANE, which ``block_job_create()`` unblocks on the job's
    main node (and only there)."""
    reasons = [(c.seq, f"node is used as backing hd of '{c.parent}'")
               for c in node.parents if c.role == ROLE_COW]
    for j in g.jobs.values():
        seq = j.blocks.get(node.name)
        if dataplane and any(p.node == node.name and p.child_name == "main node" for p in j.parents):
            continue
        if seq is not None:
            reasons.append((seq, f"block device is in use by block job: {j.type}"))
    return max(reasons)[1] if reasons else None
