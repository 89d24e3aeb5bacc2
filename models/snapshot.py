"""blockdev-snapshot: an external snapshot onto an overlay node the user added before
(``external_snapshot_action()`` in blockdev.c, one action of a transaction, and
``bdrv_append()`` in block.c).

Probed on 7.2.22, 10.0.2 and 11.1.3 (iotests 085, 228 and 273 as seeds in corpus/seeds): the
three versions answer alike.  The image header of the overlay is never written: its
``backing-filename`` stays what the header says, and only the graph gains the backing link.
"""
from __future__ import annotations

from typing import Any

from . import limits as L
from . import perms as P
from .aio import reconcile_attach
from .errors import NotModeled, QmpFailure
from .graph import ROLE_COW, ROLE_STORAGE, Graph, op_blocker
from .jobs import _try_set_read_only, replace_node
from .qapi import visit_arguments
from .arguments import BLOCKDEV_SNAPSHOT


def blockdev_snapshot(g: Graph, args: Any) -> None:
    """The node is looked up and its op blockers (BLOCK_OP_TYPE_EXTERNAL_SNAPSHOT: a backing
    parent's and every job's) are checked before the overlay is even looked up."""
    args = visit_arguments(args, BLOCKDEV_SNAPSHOT, g.qemu_profile)
    node = g.lookup_bs(args["node"])
    reason = op_blocker(g, node)
    if reason is not None:
        raise QmpFailure(f"Node '{node.name}' is busy: {reason}")
    overlay = g.lookup_bs(args["overlay"])
    # "in use" is a permission question: some parent reads the overlay (a qcow2's file
    # child, a disk, the backing of a reader), not whether it has parents
    if P.Perms(g, {}, {}).node[overlay.name][0] & P.CONSISTENT_READ:
        raise QmpFailure("The overlay is already in use")
    if overlay.driver.is_filter:
        raise QmpFailure("Filters cannot be used as overlays")
    if g.cow_child(overlay) is not None:
        raise QmpFailure("The overlay already has a backing image")
    if not overlay.driver.supports_backing:
        raise QmpFailure("The overlay does not support backing images")
    if any(c.role == ROLE_STORAGE and c.parent != overlay.name for c in node.parents):
        # a format node's file moves onto the overlay: its metadata is then read and written
        # through another format node, which the model does not follow
        raise NotModeled("a snapshot of a node that holds a format node's metadata")
    _append(g, overlay, node)
    # external_snapshot_commit(): the old top becomes read-only (errors ignored), unless it
    # is a copy-on-read node
    if node.drv != "copy-on-read":
        _try_set_read_only(g, node, True)


def _append(g: Graph, overlay: Any, node: Any) -> None:
    """``bdrv_append()``: ``node`` becomes the overlay's backing, then every parent of
    ``node`` (but job links and the overlay's own subtree) moves to the overlay; the new
    permissions are checked last."""
    g.guard("append", top=node)   # its error path refreshes node's limits too
    try:
        if g.has_child_recursive(node, overlay.name):
            raise QmpFailure(f"Making '{node.name}' a backing child of '{overlay.name}' would create a cycle")
        reconcile_attach(g, overlay, node)
        g.attach(overlay, node, "backing", ROLE_COW)
        replace_node(g, node, overlay)
        P.refresh(g, [overlay.name])
    finally:
        # bdrv_append() ends with bdrv_refresh_limits(bs_top), outside the transaction and
        # on its error path too: a failed snapshot keeps the node's refreshed limits
        L.refresh(g, node)
        g.limits_kept.append(node.name)
