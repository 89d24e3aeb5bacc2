"""Block permissions (BLK_PERM_*) and host-file locks, as ``bdrv_refresh_perms()`` checks them.

Edge permissions follow ``bdrv_default_perms()`` (block.c) or the driver's own
``.bdrv_child_perm`` (``BlockDriver.child_perm``); the order in which nodes are checked follows ``bdrv_topological_dfs()``;
each node is checked with ``bdrv_parent_perms_conflict()`` (pairs of parent edges, newest first),
then the writable check of ``bdrv_node_refresh_perm()``, then file-posix's lock bytes
(``raw_check_lock_bytes()``).
"""
from __future__ import annotations

from collections.abc import Iterable

import attrs

from .errors import QmpFailure
from .graph import ROLE_COW, ROLE_DATA, ROLE_STORAGE, Graph, Node
from .lengths import node_length

CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE = 1, 2, 4, 8
ALL = 15
_NAMES = ((CONSISTENT_READ, "consistent read"), (WRITE, "write"),
          (WRITE_UNCHANGED, "write unchanged"), (RESIZE, "resize"))


def perm_names(p: int) -> str:
    """``bdrv_perm_names()``."""
    return ", ".join(name for bit, name in _NAMES if p & bit)


@attrs.frozen
class ExternalParent:
    """A parent that is not a node: a BlockBackend (HMP qemu-io's temporary one)."""

    desc: str      # "an unnamed block device"
    child_name: str  # "root"
    perm: int
    shared: int


def default_perms(role: str, parent_writable: bool, perm: int, shared: int) -> tuple[int, int]:
    """``bdrv_default_perms()``: a COW child, or a filter/storage/data child (a driver with
    its own ``.bdrv_child_perm`` overrides ``BlockDriver.child_perm``)."""
    if role == ROLE_COW:
        nperm = perm & CONSISTENT_READ
        nshared = (WRITE | RESIZE) if shared & WRITE else 0
        nshared |= CONSISTENT_READ | WRITE_UNCHANGED
        return nperm, nshared
    # filter default: pass everything through
    nperm, nshared = perm & ALL, shared & ALL
    if role in (ROLE_STORAGE,):
        if parent_writable:
            nperm |= WRITE | RESIZE
        nperm |= CONSISTENT_READ
        nshared &= ~(WRITE | RESIZE)
    if role in (ROLE_STORAGE, ROLE_DATA):
        nshared &= ~RESIZE
        if nperm & WRITE_UNCHANGED:
            nperm |= WRITE
        if nperm & WRITE:
            nperm |= RESIZE
    return nperm, nshared


def topological_dfs(g: Graph, roots: Iterable[str]) -> list[str]:
    """``bdrv_topological_dfs()`` over a list of nodes: parents before children (each node
    after everything that reaches it, as QEMU prepends a node once its children are done)."""
    found: set[str] = set()
    post: list[str] = []
    for r in roots:
        if r in g.nodes:
            _dfs(g, r, found, post)
    post.reverse()
    return post


def _dfs(g: Graph, name: str, found: set[str], post: list[str]) -> None:
    # a module-level function, not a closure: a nested recursive one refers to itself
    # through its own cell, a reference cycle holding the graph, its images included, until
    # the cyclic collector runs (a campaign's worker runs it seldom: fuzz.campaign.gc_tuned)
    if name in found:
        return
    found.add(name)
    for c in g.nodes[name].children:
        _dfs(g, c.child, found, post)
    post.append(name)


class Perms:
    """Cumulative permissions of every node and edge of a graph."""

    def __init__(self, g: Graph, writable: dict[str, bool], external: dict[str, list[ExternalParent]],
                 fresh: Iterable[str] = ()):
        """Every edge as ``bdrv_child_perm()`` gives it, but the stale edges of
        ``Graph.stale_perms`` out of nodes not in ``fresh`` (the nodes a refresh
        recomputes): those keep the permissions QEMU left on them."""
        self.g = g
        self.writable = writable
        self.external = external
        self.edge: dict[int, tuple[int, int]] = {}
        self.node: dict[str, tuple[int, int]] = {}
        stale = g.stale_perms
        recomputed = set(fresh) if stale else set()
        for name in topological_dfs(g, list(g.nodes)):
            p, s = self._cumulative(name)
            self.node[name] = (p, s)
            n = g.nodes[name]
            for c in n.children:
                if stale and c.seq in stale and name not in recomputed:
                    self.edge[id(c)] = stale[c.seq]
                    continue
                cp, cs = n.driver.child_perm(c.role, self.is_writable(n), p, s)
                cp, cs = n.driver.adjust_child_perm(n, cp, cs)
                if g.nodes[c.child].force_share:
                    cs = ALL  # bdrv_child_perm(): a force-share child shares everything
                self.edge[id(c)] = (cp, cs)

    def is_writable(self, n: Node) -> bool:
        return self.writable.get(n.name, not n.read_only)

    def _cumulative(self, name: str) -> tuple[int, int]:
        perm, shared = 0, ALL
        for _desc, _child, p, s in self.parents_of(name):
            perm |= p
            shared &= s
        return perm, shared

    def parents_of(self, name: str) -> list[tuple[str, str, int, int]]:
        """(description, child name, perm, shared) of every parent, newest first: a temporary
        user first, then node edges and job-held parents by age."""
        out = [(e.desc, e.child_name, e.perm, e.shared) for e in self.external.get(name, ())]
        aged = []
        for c in self.g.nodes[name].parents:
            p, s = self.edge[id(c)]
            aged.append((c.seq, (f"node '{c.parent}'", c.name, p, s)))
        for j in self.g.job_parents(name):
            aged.append((j.seq, (j.desc, j.child_name, j.perm, j.shared)))
        aged.sort(key=lambda t: -t[0])
        return out + [t[1] for t in aged]


def check_node(perms: Perms, name: str) -> None:
    """Conflict, writable and lock checks of one node, in QEMU's order."""
    g = perms.g
    parents = perms.parents_of(name)
    for a in parents:
        for b in parents:
            if a is b:
                continue
            if b[2] & a[3] != b[2]:
                raise QmpFailure(
                    f"Permission conflict on node '{name}': permissions '{perm_names(b[2] & ~a[3])}' "
                    f"are both required by {b[0]} (uses node '{name}' as '{b[1]}' child) and "
                    f"unshared by {a[0]} (uses node '{name}' as '{a[1]}' child).")
    node = g.nodes[name]
    perm, shared = perms.node[name]
    if perm & (WRITE | WRITE_UNCHANGED) and not perms.is_writable(node):
        if node.read_only:
            raise QmpFailure("Block node is read-only")
        raise QmpFailure(f"Read-only block node '{name}' cannot support read-write users")
    if perm & (WRITE | WRITE_UNCHANGED) and not perm & RESIZE:
        align = node.driver.request_alignment(g, node)
        if align > 1:
            if node_length(g, node) % align:
                raise QmpFailure("Cannot get 'write' permission without 'resize': "
                                 "Image size is not a multiple of request alignment")
    if node.driver.takes_locks(node):
        _check_locks(g, node, perm, shared)


def _check_locks(g: Graph, node: Node, perm: int, shared: int) -> None:
    held_perm, held_unshared = g.locks.get(node.name, (0, 0))
    unshared = ALL & ~shared
    if (held_perm | perm) == held_perm and (held_unshared | unshared) == held_unshared:
        return  # RAW_PL_PREPARE: nothing new to lock
    others = [n for n in g.nodes.values()
              if n.driver.takes_locks(n) and n.filename == node.filename and n.name != node.name]
    # raw_check_lock_bytes(); the hint names bs->filename, which for a file node is its file
    hint = f"Is another process using the image [{node.filename}]?\n"
    for bit, pname in _NAMES:
        if perm & bit and any(g.locks.get(o.name, (0, 0))[1] & bit for o in others):
            raise QmpFailure(f'Failed to get "{pname}" lock', hint=hint)
    for bit, pname in _NAMES:
        if not shared & bit and any(g.locks.get(o.name, (0, 0))[0] & bit for o in others):
            raise QmpFailure(f'Failed to get shared "{pname}" lock', hint=hint)
    # Prepared: the new bytes are locked on top of the old ones until commit.
    g.locks[node.name] = (held_perm | perm, held_unshared | unshared)


def refresh(g: Graph, roots: Iterable[str], writable: dict[str, bool] | None = None,
            external: dict[str, list[ExternalParent]] | None = None) -> Perms:
    """``bdrv_list_refresh_perms()``: check the nodes reachable from ``roots``; on success
    commit the file locks of every file node to its new permissions."""
    order = topological_dfs(g, roots)
    perms = Perms(g, writable or {}, external or {}, fresh=order)
    for name in order:
        check_node(perms, name)
    forget_stale(g, order)   # the refreshed edges hold what they were given now
    for name in order:
        n = g.nodes[name]
        if n.driver.takes_locks(n):
            p, s = perms.node[name]
            g.locks[name] = (p, ALL & ~s)
    return perms


def forget_stale(g: Graph, names: Iterable[str]) -> None:
    """The edges out of ``names`` were recomputed (``bdrv_refresh_perms()`` over them)."""
    if g.stale_perms:
        for name in names:
            n = g.nodes.get(name)
            for c in (n.children if n is not None else ()):
                g.stale_perms.pop(c.seq, None)


def stale_after(g: Graph, before: Perms, parent: Node, old: Node) -> None:
    """After ``bdrv_set_backing_hd(parent, ...)`` took ``old`` away from ``parent``: its
    ``bdrv_refresh_perms(parent)`` recomputes ``parent``'s subtree only, so where ``old``
    lives on, every edge of ``old``'s subtree outside ``parent``'s keeps what it had
    (``before``).  Probed on 11.1.3 (``x-debug-query-block-graph``): after a stream without a
    base concluded, the old backing qcow2 node, held by the job's "intermediate node" link
    (perm none), still takes consistent read on its own backing, which
    ``blockdev-snapshot`` then calls "The overlay is already in use"; job-dismiss
    refreshes it (tests/test_stale_perms.py compares every edge with a real 11.1)."""
    if old.name not in g.nodes:
        return
    refreshed = set(topological_dfs(g, [parent.name]))
    for name in topological_dfs(g, [old.name]):
        if name not in refreshed:
            for c in g.nodes[name].children:
                g.stale_perms[c.seq] = before.edge[id(c)]


def trial(g: Graph, roots: Iterable[str], external: dict[str, list[ExternalParent]]) -> None:
    """``refresh()`` for a temporary user that the command gives up again (HMP qemu-io's and
    block_resize's BlockBackend): the same checks in the same order, raising what they
    raise, with ``g`` as it was afterwards.  The checks change only the lock bytes, so those
    are put back; no clone of the graph is needed."""
    locks = dict(g.locks)
    try:
        refresh(g, roots, external=external)
    finally:
        g.locks = locks


def settle_locks(g: Graph) -> None:
    """After a command completes, every file node holds exactly the lock bytes of its current
    permissions: detaching a parent drops them (``bdrv_child_free()`` refreshes the old child,
    and giving up permissions never fails), and a temporary user's are released with it."""
    perms = Perms(g, {}, {})
    for name, n in g.nodes.items():
        if n.driver.takes_locks(n):
            p, s = perms.node[name]
            g.locks[name] = (p, ALL & ~s)
