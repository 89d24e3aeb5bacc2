"""Block limits: ``image.limits`` (QAPI ``BlockLimitsInfo``) of ``query-named-block-nodes``.

QEMU 10.2+ reports ``bs->bl`` of every node at every image-info level, ``backing-image``
included (``bdrv_do_query_node_info()`` in ``block/qapi.c``).  ``request-alignment``,
``max-iov``, ``min-mem-alignment`` and ``opt-mem-alignment`` are always there; the other eight
fields are left out when their ``bs->bl`` member is 0.

``bs->bl`` is written only by ``bdrv_refresh_limits()`` (``block/io.c``):

1. clear everything; ``request_alignment`` = 1 for drivers with a byte-based read callback
   (every driver of the model), else 512;
2. merge (``bdrv_merge_limits()``) the ``bl`` of every child whose role is DATA, FILTERED or
   COW -- every child the model has, qcow2's ``backing`` included.  Only eight fields merge:
   ``discard-alignment``, ``opt-transfer``, ``min/opt-mem-alignment`` take the maximum,
   ``max-transfer``, ``max-hw-transfer``, ``max-iov``, ``max-hw-iov`` the smallest non-zero
   value.  ``request-alignment``, ``max-discard``, ``max-write-zeroes`` and
   ``write-zeroes-alignment`` never pass to a parent;
3. without such a child: ``min-mem-alignment`` 512, ``opt-mem-alignment`` the host page size,
   ``max-iov`` ``IOV_MAX``;
4. the driver's ``.bdrv_refresh_limits`` overrides (``BlockDriver.refresh_limits``).

It runs only at these points (``block.c``), never because a child changed:

* ``bdrv_open_driver()``: when the node is opened, after ``.bdrv_open`` attached its children
  (a job filter, made by ``bdrv_new_open_driver()``, has none yet);
* ``bdrv_set_file_or_backing_noperm()``: a qcow2 node's backing is attached after the open
  (``bdrv_open_backing_file()`` -> ``bdrv_set_backing_hd()``), a reopen's ``file`` / ``backing``
  change, the end of a stream job (``bdrv_set_backing_hd(top, base)``); rolled back with a
  failed transaction;
* ``bdrv_reopen_commit()``: for every node of a successful reopen queue, children first
  (``bdrv_reopen_multiple()`` commits in reverse queue order);
* ``bdrv_append()`` refreshes the node *below* a new job filter (no change).

So a parent keeps what it computed last: ``bdrv_replace_node()`` (job filters coming and going,
commit completion) and changes below a child are not seen until the parent itself is refreshed
(observed on 11.1.3: a throttle node keeps ``max-transfer`` after the backing that brought it was
streamed away or reopened away, and after an active commit it keeps the ``mirror_top``
defaults it merged when it was reopened during the job).

:func:`refresh_limits` is step 1-4 for the graph as it is now.  :func:`block_limits` is what
QEMU reports: the node's stored ``bl`` if the model keeps one (a ``Node.bl`` attribute set from
:func:`refresh_limits` at the points above), else a stateless derivation that is exact as long
as no node was refreshed after a child of it changed or was replaced: a job filter has the
no-children defaults, and a parent sees through a job filter child (it was computed before the
filter was put above its child).

Host dependence (the model predicts the host these constants describe): the page size and
``IOV_MAX``; with ``cache.direct=on`` file-posix probes O_DIRECT alignment on the host file
system (refused, see ``models.drivers.file``).  Block devices (``S_ISBLK``: max-hw-transfer,
max-hw-iov, discard / write-zeroes alignment from sysfs) and macOS (``statfs``) are out of scope:
the model only opens regular files.
"""
from __future__ import annotations

from collections.abc import Iterable

from .graph import Graph, Node

#: ``qemu_real_host_page_size()`` = ``getpagesize()``, read at run time: 4 KiB on x86-64 Linux
#: (16 or 64 KiB on some aarch64 / ppc64 kernels).  Also file-posix's ``MAX_BLOCKSIZE``.
HOST_PAGE_SIZE = 4096
#: ``IOV_MAX`` of the host libc QEMU was built against (glibc on Linux: 1024; QEMU's own
#: fallback in ``include/qemu/osdep.h`` is the same number).
IOV_MAX = 1024
#: ``BDRV_SECTOR_SIZE``: the default alignment and memory alignment without children.
SECTOR = 512

#: BlockLimitsInfo members in QAPI order, and which of them ``bdrv_do_query_node_info()``
#: leaves out when 0 (``has_* = ... != 0``).
FIELDS = ("request-alignment", "max-discard", "discard-alignment", "max-write-zeroes",
          "write-zeroes-alignment", "opt-transfer", "max-transfer", "max-hw-transfer",
          "max-iov", "max-hw-iov", "min-mem-alignment", "opt-mem-alignment")
ALWAYS = ("request-alignment", "max-iov", "min-mem-alignment", "opt-mem-alignment")

#: bdrv_merge_limits(): the members a parent takes from its children, and how
_MERGE_MAX = ("discard-alignment", "opt-transfer", "opt-mem-alignment", "min-mem-alignment")
_MERGE_MIN_NON_ZERO = ("max-transfer", "max-hw-transfer", "max-iov", "max-hw-iov")

Limits = dict   # QAPI member name -> int; an absent optional member is 0


def _blank() -> Limits:
    return dict.fromkeys(FIELDS, 0)


def reported(bl: Limits) -> Limits:
    """``bdrv_do_query_node_info()``: ``bs->bl`` as BlockLimitsInfo, zero optionals left out."""
    return {k: bl.get(k, 0) for k in FIELDS if k in ALWAYS or bl.get(k, 0)}


def merge_limits(dst: Limits, src: Limits) -> None:
    """``bdrv_merge_limits()``: fold one child's limits into ``dst``."""
    for k in _MERGE_MAX:
        dst[k] = max(dst[k], src.get(k, 0))
    for k in _MERGE_MIN_NON_ZERO:
        a, b = dst[k], src.get(k, 0)
        dst[k] = min(a, b) if a and b else a or b


# -- the generic part ------------------------------------------------------------------------

def refresh_limits(g: Graph, n: Node, children: Iterable[Node] | None = None) -> Limits:
    """``bdrv_refresh_limits()``: the limits ``n`` gets if it is refreshed now, as reported.

    ``children`` defaults to every child of ``n`` (the model has only DATA, FILTERED and COW
    roles); pass ``()`` for a job filter at its creation.  Each child contributes what it
    reports now (:func:`block_limits`), as QEMU merges ``c->bs->bl``."""
    bl = _blank()
    bl["request-alignment"] = 1   # every modelled driver has .bdrv_co_preadv(_part)
    if children is None:
        children = [g.nodes[c.child] for c in n.children]
    have_limits = False
    for child in children:
        merge_limits(bl, block_limits(g, child))
        have_limits = True
    if not have_limits:
        bl["min-mem-alignment"] = SECTOR
        bl["opt-mem-alignment"] = HOST_PAGE_SIZE
        bl["max-iov"] = IOV_MAX
    n.driver.refresh_limits(g, n, bl)   # .bdrv_refresh_limits (models.drivers)
    return reported(bl)


def refresh(g: Graph, n: Node, children: Iterable[Node] | None = None) -> None:
    """Record ``bdrv_refresh_limits()`` of ``n`` now, at one of the points the module
    docstring lists; only for profiles that report limits (elsewhere nothing reads it, and
    ``cache.direct=on`` must not be declined for them)."""
    if g.profile is not None and g.profile.image_limits_field:
        n.bl = refresh_limits(g, n, children)


def block_limits(g: Graph, n: Node) -> dict:
    """``image.limits`` QEMU 10.2+ reports for ``n`` (``bs->bl``; see the module docstring).

    A stored ``n.bl`` (the model's record of the last refresh) wins.  Without it: a job filter
    has the limits of a node opened without children (``bdrv_new_open_driver()``; no reopen,
    and ``bdrv_append()`` refreshes the node below, not the filter); every other node is
    refreshed from its children, looking through job filter children to what they filter
    (the parent was computed before ``bdrv_append()`` put the filter in)."""
    stored = getattr(n, "bl", None)
    if stored is not None:
        return dict(stored)
    if n.driver.job_filter:
        return refresh_limits(g, n, children=())
    return refresh_limits(g, n, [_through_job_filters(g, g.nodes[c.child]) for c in n.children])


def _through_job_filters(g: Graph, n: Node) -> Node:
    while n.driver.job_filter:
        c = n.child("backing")
        if c is None:
            break
        n = g.nodes[c.child]
    return n
