"""block_resize: ``qmp_block_resize()`` (blockdev.c) and ``bdrv_co_truncate()`` (block/io.c),
which calls the node's driver (``BlockDriver.truncate``) or, for a filter without one, goes on
to the filtered child.

Probed on 7.2.22, 10.0.2 and 11.1.3 (iotests resize-below-raw and resize-below-filter as seeds
in corpus/seeds).  Where the versions differ: 7.2's op blocker text, and which parents of a
resized node see its new length (``VersionProfile.growth_resizes_filtered_parents``: 11.1 tells
every FILTERED parent; 10.0 none; 7.2 none, but its raw, copy-on-read and compress nodes
re-read their child's length anyway, ``driver_variable_length``).
"""
from __future__ import annotations

from typing import Any

from . import perms as P
from .errors import QmpFailure
from .graph import Graph, Node, op_blocker
from .lengths import refreshed_length, resize_filtered_parents
from .qapi import visit_arguments
from .arguments import BLOCK_RESIZE

#: BDRV_MAX_LENGTH: INT64_MAX rounded down to a multiple of 1 GiB (bdrv_check_request())
MAX_LENGTH = 9223372035781033984


def block_resize(g: Graph, args: Any) -> None:
    args = visit_arguments(args, BLOCK_RESIZE, g.qemu_profile)
    device, name, size = args.get("device"), args.get("node-name"), args["size"]
    # bdrv_lookup_bs(device, node_name): device names are named BlockBackends (-drive), which
    # blockfuzz never makes, so only node-name can match
    bs = g.get(name) if name is not None else None
    if bs is None:
        raise QmpFailure(f"Cannot find device='{device or ''}' nor node-name='{name or ''}'")
    if size < 0:
        raise QmpFailure("Parameter 'size' expects a >0 size")
    reason = op_blocker(g, bs)   # BLOCK_OP_TYPE_RESIZE: a backing parent's or a job's
    if reason is not None:
        raise QmpFailure(g.qemu_profile.resize_blocked_error.format(
            node=bs.name, reason=reason, device="(null)" if device is None else device))
    # blk_co_new_with_bs(bs, BLK_PERM_RESIZE, BLK_PERM_ALL)
    bb = P.ExternalParent("an unnamed block device", "root", P.RESIZE, P.ALL)
    P.trial(g, [bs.name], {bs.name: [bb]})
    truncate(g, bs, size)


def truncate(g: Graph, n: Node, size: int) -> None:
    """``bdrv_co_truncate()``: the generic checks, the driver (or the filtered child), then
    ``total_sectors`` refreshed and the parents told (``bdrv_co_write_req_finish()``)."""
    if size > MAX_LENGTH:
        raise QmpFailure(f"offset({size}) exceeds maximum({MAX_LENGTH})")
    if n.read_only:
        raise QmpFailure("Image is read-only")
    g.guard("truncate", node=n, size=size)
    d = n.driver
    if d.can_truncate:
        below = d.truncate(g, n, size)
        if below is not None:
            truncate(g, *below)
    elif d.is_filter:
        truncate(g, g.filtered(n), size)
    else:
        raise QmpFailure("Image format driver does not support resize")
    n.cached_length = refreshed_length(g, n)
    if g.qemu_profile.growth_resizes_filtered_parents:
        resize_filtered_parents(g, n)
