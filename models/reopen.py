"""blockdev-reopen: the reopen queue and its transaction.

``qmp_blockdev_reopen()`` / ``bdrv_reopen_queue_child()`` / ``bdrv_reopen_prepare()`` /
``bdrv_reopen_parse_file_or_backing()`` / ``bdrv_reopen_multiple()``, in QEMU's check order.
The driver's part (``.bdrv_reopen_prepare`` / ``_commit`` / ``_abort``, ``.bdrv_join_options``)
is its ``BlockDriver``'s (``models.drivers``).  Like ``models.blockdev``, every function works on
a clone of the graph that the caller throws away when ``QmpFailure`` is raised.
"""
from __future__ import annotations

from typing import Any

from . import limits as L
from . import perms as P
from .aio import reconcile_attach
from .blockdev import inherit_options
from .errors import NotModeled, QmpFailure
from .graph import ROLE_COW, ROLE_FILTERED, Graph, Node
from .lengths import refreshed_length
from .options import bool_opt, extract, qemu_opt_str
from .profiles import VersionProfile
from .qapi import flatten, validate_blockdev_reopen
from .qdict import qdict_order

# Options every driver handles in bdrv_reopen_prepare(); omitting them never fails
# (bdrv_reset_options_allowed()).
COMMON_OPTIONS = ("node-name", "discard", "cache.direct", "cache.no-flush", "read-only",
                  "auto-read-only", "detect-zeroes")
# bdrv_runtime_opts that bdrv_reopen_prepare() puts back for the final comparison.
PUT_BACK_GENERIC = ("node-name", "driver", "force-share")


class _Entry:
    """A BlockReopenQueueEntry."""

    def __init__(self, node: Node):
        self.node = node
        self.options: dict = {}
        self.explicit: dict = {}
        self.read_only = False
        self.cache_direct = False
        self.cache_no_flush = False
        self.backing_missing = False
        self.old_backing: str | None = None
        self.old_file: str | None = None
        self.discard = node.discard
        self.detect_zeroes = "off"
        #: what the driver's reopen_prepare returned, for its reopen_commit
        self.driver_state: Any = None


def _queue_child(g: Graph, queue: list[_Entry], node: Node, options: dict | None,
                 role: str | None, parent_options: dict | None, keep_old: bool) -> None:
    """``bdrv_reopen_queue_child()``."""
    options = dict(options or {})
    entry = next((e for e in queue if e.node is node), None)
    if entry is not None and g.qemu_profile.reopen_duplicate_drain_leak:
        g.stuck.add(node.name)
    if entry is not None or keep_old:
        node.driver.join_options(node, options, entry.explicit if entry is not None else node.explicit)
    explicit = dict(options)
    if parent_options is not None:
        assert role is not None, "a child is queued with the role its parent gives it"
        inherit_options(role, options, parent_options)
    if keep_old:
        node.driver.join_options(node, options, node.options)
    if entry is None:
        entry = _Entry(node)
        queue.append(entry)
    entry.options = options
    entry.explicit = explicit
    entry.read_only = bool_opt(options.get("read-only"))
    entry.cache_direct = bool_opt(options.get("cache.direct"))
    entry.cache_no_flush = bool_opt(options.get("cache.no-flush"))
    if not keep_old:
        entry.backing_missing = "backing" not in options and "backing.driver" not in options
    for c in list(node.children):
        child = g.nodes[c.child]
        if child.inherits_from != node.name:
            continue
        new_child_options = None
        child_keep_old = keep_old
        if c.name in options:
            if options[c.name] != child.name:
                continue
            child_keep_old = True
        else:
            prefix = c.name + "."
            extract(explicit, prefix)
            new_child_options = extract(options, prefix)
        _queue_child(g, queue, child, new_child_options, c.role, options, child_keep_old)


def _parse_file_or_backing(g: Graph, e: _Entry, is_backing: bool) -> None:
    """``bdrv_reopen_parse_file_or_backing()`` + ``bdrv_set_file_or_backing_noperm()``."""
    bs = e.node
    child_name = "backing" if is_backing else "file"
    if child_name not in e.options:
        return
    value = e.options[child_name]
    if value is None:
        new = None
    else:
        new = g.lookup_node(value)
        if g.has_child_recursive(new, bs.name):
            raise QmpFailure(f"Making '{value}' a {child_name} child of '{bs.name}' would create a cycle")
    d = bs.driver
    # bs->file is the child opened with bdrv_open_file_child(): "image" for blkdebug, "raw"
    # for blkverify; the replacement is attached under the name "file" all the same
    old_edge = bs.child(child_name)
    if not is_backing and old_edge is None and d.protocol and d.is_filter:
        old_edge = bs.child(d.children[0][0])
    old = g.nodes[old_edge.child] if old_edge else None
    if old is new:
        return
    if old is not None:
        if g.skip_implicit_filters(old) is new:
            return
        if old.implicit:
            raise QmpFailure(f"Cannot replace implicit {child_name} child of {bs.name}")
    if d.is_filter and old is None:
        raise QmpFailure(f"'{bs.name}' is a {bs.drv} filter node that does not support a {child_name} child")
    if old_edge is not None and old_edge.frozen:
        raise QmpFailure(f"Cannot change frozen '{child_name}' link from '{bs.name}' to '{old_edge.child}'")
    if is_backing and not d.is_filter and not d.supports_backing:
        raise QmpFailure(f"Driver '{bs.drv}' of node '{bs.name}' does not support backing files")
    if d.is_filter:
        role = ROLE_FILTERED
    elif is_backing:
        role = ROLE_COW
    else:
        if old_edge is None:
            raise QmpFailure("Cannot set file child to format node without file child")
        role = old_edge.role
    update_inherits = new is not None and g.inherits_from_recursive(new, bs.name)
    if old_edge is not None:
        if is_backing:
            e.old_backing = old_edge.child   # old's name
        else:
            e.old_file = old_edge.child
        g.unset_inherits_from(bs.name, old_edge)
        g.remove_child(old_edge)
        if old is not None and old.driver.job_filter and not old.parents:
            g.guard("job-filter-orphaned", node=old)
    if new is not None:
        reconcile_attach(g, bs, new)
        g.attach(bs, new, child_name, role)
        if update_inherits:
            new.inherits_from = bs.name
    L.refresh(g, bs)   # bdrv_set_file_or_backing_noperm()


def _prepare(g: Graph, e: _Entry) -> None:
    """``bdrv_reopen_prepare()`` for one queue entry."""
    bs = e.node
    # generic runtime options
    if "discard" in e.options:
        e.discard = e.options["discard"]
    e.detect_zeroes = e.options.get("detect-zeroes", "off")
    if e.detect_zeroes == "unmap" and e.discard != "unmap":
        raise QmpFailure("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
    # what is left for the final comparison: generic options are consumed, and node-name,
    # driver and force-share come back as strings (qemu_opts_to_qdict())
    remaining = {k: v for k, v in e.options.items() if k not in PUT_BACK_GENERIC and k not in COMMON_OPTIONS}
    for k in PUT_BACK_GENERIC:
        if k in e.options:
            remaining[k] = qemu_opt_str(e.options[k])
    d = bs.driver
    if not d.can_reopen:
        raise QmpFailure(f"Block format '{bs.drv}' used by node '{bs.name}' does not support reopening files")
    # reset-to-default (bdrv_reset_options_allowed), in QDict order of the old options
    for key in qdict_order(bs.options):
        if key not in e.options and key not in COMMON_OPTIONS and key not in d.mutable:
            raise QmpFailure(f"Option '{key}' cannot be reset to its default value")
    # driver prepare
    for k in d.absorbed:
        remaining.pop(k, None)
    e.driver_state = d.reopen_prepare(g, bs, e.options, remaining)
    # backing is missing
    if d.supports_backing and e.backing_missing and (bs.child("backing") or d.has_header_backing(g, bs)):
        raise QmpFailure(f"backing is missing for '{bs.name}'")
    try:
        _parse_file_or_backing(g, e, True)
        remaining.pop("backing", None)
        _parse_file_or_backing(g, e, False)
    except QmpFailure:
        # bdrv_reopen_prepare()'s error path aborts the driver's prepare too; a file child
        # already taken away (the new one staged, or its attach refused: the AioContext, say)
        # leaves qcow2's s->data_file on it (the known dangling data_file bug; seen on 7.2.22
        # with "Cannot change iothread of active block backend")
        d.reopen_abort(g, bs, file_replaced=e.old_file is not None)
        raise
    remaining.pop("file", None)
    # leftover options must be unchanged
    for key in qdict_order(remaining):
        new = remaining[key]
        old = bs.options.get(key, _MISSING)
        if isinstance(new, str):
            c = bs.child(key)
            if c is not None and c.child == new:
                continue
        if not _qobject_equal(new, old):
            d.reopen_abort(g, bs, file_replaced=e.old_file is not None)
            raise QmpFailure(f"Cannot change the option '{key}'")


_MISSING = object()


def _qobject_equal(a: Any, b: Any) -> bool:
    """``qobject_is_equal()``: different QTypes are never equal (bool is not int here)."""
    if b is _MISSING:
        return False
    if type(a) is not type(b):
        return False
    return a == b


def _commit(g: Graph, e: _Entry) -> None:
    """``bdrv_reopen_commit()``."""
    bs = e.node
    child_names = {c.name for c in bs.children} | {"backing"}
    bs.options = {k: v for k, v in e.options.items() if k not in child_names}
    bs.explicit = {k: v for k, v in e.explicit.items() if k not in child_names}
    bs.read_only = e.read_only
    bs.cache_direct = e.cache_direct
    bs.cache_no_flush = e.cache_no_flush
    bs.discard = e.discard
    bs.detect_zeroes = e.detect_zeroes
    bs.driver.reopen_commit(g, bs, e.driver_state)
    if bs.driver.reopen_refreshes_length and g.qemu_profile.reopen_refreshes_length:
        bs.cached_length = refreshed_length(g, bs)
    L.refresh(g, bs)   # bdrv_reopen_commit(): children first (the caller's reverse order)


def blockdev_reopen(g: Graph, args: Any, profile: VersionProfile) -> None:
    """``qmp_blockdev_reopen()``."""
    elements = validate_blockdev_reopen(args, profile)
    queue: list[_Entry] = []
    for element in elements:
        name = element.get("node-name")
        node = g.get(name) if name is not None else None
        if node is None:
            # goto fail: bdrv_reopen_queue_free() ends one drain per entry, so a node queued
            # twice so far stays drained (VersionProfile.reopen_duplicate_drain_leak), and a
            # job above it stalls (corpus/findings/qemu10-failed-reopen-dup-node-job-hang.json)
            g.guard("reopen-start")
            if name is None:
                raise QmpFailure("node-name not specified")
            raise QmpFailure(f"Failed to find node with node-name='{name}'")
        _queue_child(g, queue, node, flatten(element), None, None, False)
    if any(e.node.name in g.dangling_data_file for e in queue):
        # s->data_file points at a freed BdrvChild: whether a later file change resyncs it
        # depends on where the allocator puts the new child (seen on 11.1.3)
        raise NotModeled("reopen of a qcow2 node with a dangling data_file (known QEMU bug)")
    reopen_multiple(g, queue)


def reopen_set_read_only(g: Graph, node: Node, read_only: bool) -> None:
    """``bdrv_reopen_set_read_only()``: reopen keeping the old options, flipping read-only."""
    queue: list[_Entry] = []
    _queue_child(g, queue, node, {"read-only": read_only}, None, None, True)
    reopen_multiple(g, queue)


def reopen_multiple(g: Graph, queue: list[_Entry]) -> None:
    """``bdrv_reopen_multiple()``: prepare every entry, refresh permissions, commit."""
    g.guard("reopen-start")
    g.guard("reopen-dangling", queued={e.node.name for e in queue})
    for i, e in enumerate(queue):
        _prepare(g, e)
        g.guard("reopen-prepared", entry=e, later={f.node.name for f in queue[i + 1:]})
    refresh_list: list[str] = []
    for e in queue:
        refresh_list.insert(0, e.node.name)
        if e.old_backing:
            refresh_list.insert(0, e.old_backing)
        if e.old_file:
            refresh_list.insert(0, e.old_file)
    writable = {e.node.name: not e.read_only for e in queue}
    P.refresh(g, refresh_list, writable)
    for e in reversed(queue):
        _commit(g, e)
    # Old children that nothing references any more are closed when the transaction commits.
    before = set(g.nodes)
    for e in queue:
        for old in (e.old_backing, e.old_file):
            n = g.get(old) if old else None
            if n is not None and g.refcount(n) == 0:
                g.unref(n)
    g.guard("reopen-closed", closed=before - set(g.nodes), queued={e.node.name for e in queue})
    g.guard("reopen-done")


