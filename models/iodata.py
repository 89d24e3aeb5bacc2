"""Guest data through the live graph: what a read returns and where a write lands.

``read()`` returns the bytes a read of a node returns, or ``None`` where the model cannot know
them (the host bytes of a qcow2 file, or a qcow2 node whose file child was swapped to an image
whose metadata does not line up with the one it was opened on).  Callers only verify reads the
model knows, and never write where it does not.

qcow2 (``qcow2_co_preadv_part()``): an allocated cluster reads its own data; an unallocated one
reads the *current* backing child at the same offset (zeros beyond the backing node's end, or
with no backing).  A write to an unallocated cluster copies the rest of the cluster from what it
reads at that moment (copy-on-write) and allocates it.  raw reads its file child at
``offset + off``.
"""
from __future__ import annotations

from .errors import NotModeled
from .graph import Graph, Node
from .imagedata import CLUSTER, Image


def _length(g: Graph, n: Node) -> int:
    from .blockdev import node_length
    return node_length(g, n)


def qcow2_image(g: Graph, n: Node) -> Image | None:
    """The image whose clusters a qcow2 node really reads, or None if unknowable.

    QEMU keeps the L1 table of the image the node was opened on and re-reads L2 tables and
    data from the *current* file child after a reopen (``qcow2_update_options_prepare()``
    recreates the metadata caches).  Two small images (one L2 table each, at the same host
    cluster) of the same size therefore behave like the file child's image; anything else is
    not modelled.
    """
    meta = g.images[n.filename]
    if any(o is not n and o.drv == "qcow2" and o.filename == n.filename for o in g.nodes.values()):
        # Two qcow2 drivers on one image (possible with locking=off) each cache metadata and
        # allocate on their own; what either then reads or writes is not modelled.
        return None
    fc = storage_leaf(g, g.nodes[n.child("file").child])
    if fc.drv != "file":
        return None
    cur = g.images[fc.filename]
    if cur is meta:
        return meta
    if cur.fmt != "qcow2" or cur.size != meta.size or bool(cur.allocated) != bool(meta.allocated):
        return None
    if cur.l1_entries() != 1:
        return None
    return cur


#: filters whose reads and writes go straight to their filtered child.  copy-on-read is not
#: one of them for reads: a read through it also allocates in the child (not modelled).
PASS_THROUGH = ("throttle", "blkdebug", "compress")


#: filters a qcow2 node may have between itself and its image file without changing what it
#: reads or writes (copy-on-read copies nothing from a file node: it is always allocated)
FILE_FILTERS = ("throttle", "blkdebug", "copy-on-read")


def _resize_filtered_parents(g: Graph, n: Node) -> None:
    """``bdrv_co_parent_cb_resize()`` -> ``bdrv_child_cb_resize()``: every parent that uses
    ``n`` as its FILTERED child refreshes its length from its driver, and tells its own
    parents in turn (VersionProfile.growth_resizes_filtered_parents)."""
    from .blockdev import refreshed_length
    from .graph import ROLE_FILTERED

    for edge in list(n.parents):
        if edge.role == ROLE_FILTERED:
            parent = g.nodes[edge.parent]
            parent.cached_length = refreshed_length(g, parent)
            _resize_filtered_parents(g, parent)


def storage_leaf(g: Graph, n: Node) -> Node:
    """The node under ``n`` once pass-through filters are skipped."""
    while n.drv in FILE_FILTERS:
        n = g.filter_child(n)
    return n


def read(g: Graph, n: Node, off: int, length: int) -> bytes | None:
    if n.name in g.dangling_data_file:
        return None  # a known QEMU bug: I/O through a freed BdrvChild (Graph.dangling_data_file)
    if n.drv in PASS_THROUGH:
        return read(g, g.filter_child(n), off, length)
    if n.drv == "null-co":
        return bytes(length) if n.read_zeroes else None
    if n.drv == "file":
        img = g.images[n.filename]
        host = img.host_bytes(off, length)
        if host is None:
            return None
        return host + bytes(length - len(host))  # past EOF reads as zeros
    if n.drv == "raw":
        child = g.nodes[n.child("file").child]
        return read(g, child, n.raw_offset + off, length)
    if n.drv == "qcow2":
        img = qcow2_image(g, n)
        if img is None:
            return None
        out = bytearray()
        pos, end = off, off + length
        backing_edge = n.child("backing")
        while pos < end:
            c = pos // CLUSTER
            stop = min(end, (c + 1) * CLUSTER)
            if c in img.allocated:
                out += img.data[pos:stop]
            elif c in img.zero_clusters:
                out += bytes(stop - pos)
            elif backing_edge is not None:
                b = g.nodes[backing_edge.child]
                blen = _length(g, b)
                inside = max(0, min(stop, blen) - pos)
                if inside:
                    part = read(g, b, pos, inside)
                    if part is None:
                        return None
                    out += part
                out += bytes(stop - pos - inside)
            else:
                out += bytes(stop - pos)
            pos = stop
        return bytes(out)
    return None


def known(g: Graph, n: Node) -> bool:
    """Whether the model knows every byte a read of ``n`` can return (the whole chain)."""
    if n.name in g.dangling_data_file:
        return False
    if n.drv == "file":
        return g.images[n.filename].fmt == "raw"
    if n.drv == "raw":
        return known(g, g.nodes[n.child("file").child])
    if n.drv in PASS_THROUGH:
        return known(g, g.filter_child(n))
    if n.drv == "null-co":
        return n.read_zeroes
    if n.drv == "qcow2":
        if qcow2_image(g, n) is None:
            return False
        b = n.child("backing")
        return b is None or known(g, g.nodes[b.child])
    return False


def _qcow2_whole_clusters(g: Graph, n: Node, off: int, length: int):
    img = g.images[n.filename]
    end = off + length
    if off % CLUSTER or (end % CLUSTER and end != img.size):
        raise NotModeled("partial-cluster zero or compressed writes")
    return img, range(off // CLUSTER, -(-end // CLUSTER))


def _write_compressed(g: Graph, n: Node, off: int, payload: bytes) -> None:
    """``qcow2_co_pwritev_compressed_part()`` through a compress filter: one whole cluster
    into an unallocated one (an allocated cluster, even a zeroed one, fails with EIO)."""
    if n.drv != "qcow2" or qcow2_image(g, n) is not g.images[n.filename]:
        raise NotModeled("compressed writes into anything but a plain qcow2 node")
    img, clusters = _qcow2_whole_clusters(g, n, off, len(payload))
    if len(clusters) != 1:
        raise NotModeled("compressed writes of several clusters")
    c = clusters[0]
    if c in img.allocated:
        raise IoFailed()
    if not img.free_host:
        raise NotModeled("where a compressed cluster lands at the end of the file")
    img.data[off:off + len(payload)] = payload
    img.allocate(c)


def write_zeroes(g: Graph, n: Node, off: int, length: int, may_unmap: bool,
                 entry: bool = True) -> None:
    """``write -z [-u]``: qcow2 sets the zero flag; with BDRV_REQ_MAY_UNMAP still set when the
    request reaches it, it also frees the host cluster.  ``bdrv_co_pwrite_zeroes()`` clears the
    flag for a child without ``discard=unmap``; 10.0 also does so for the node the request
    enters, 7.2 does not (VersionProfile.write_zeroes_unmap_needs_discard)."""
    if n.discard != "unmap" and (not entry or g.profile.write_zeroes_unmap_needs_discard):
        may_unmap = False
    if n.drv == "raw":
        write_zeroes(g, g.nodes[n.child("file").child], n.raw_offset + off, length, may_unmap, False)
        return
    if n.drv in ("throttle", "blkdebug", "copy-on-read"):
        write_zeroes(g, g.filter_child(n), off, length, may_unmap, False)
        return
    if n.drv != "qcow2" or qcow2_image(g, n) is not g.images[n.filename]:
        raise NotModeled(f"write zeroes through {n.drv}")
    img, clusters = _qcow2_whole_clusters(g, n, off, length)
    for c in clusters:
        if may_unmap and c in img.allocated:
            img.allocated.discard(c)
            img.free_host += 1
        if c not in img.allocated:
            img.zero_clusters.add(c)
    img.data[off:off + length] = bytes(length)


def can_write(g: Graph, n: Node) -> bool:
    """Whether the model can predict the effect of writing through ``n``."""
    if n.drv == "file":
        return g.images[n.filename].fmt == "raw" and n.name not in g.dangling_data_file
    if n.drv == "raw":
        return can_write(g, g.nodes[n.child("file").child])
    if n.drv in ("throttle", "blkdebug", "copy-on-read"):
        return can_write(g, g.filter_child(n))
    if n.drv == "null-co":
        return True  # writes are dropped
    if n.drv == "compress":
        c = g.filter_child(n)
        return c.drv == "qcow2" and can_write(g, c)
    if n.drv == "qcow2":
        img = qcow2_image(g, n)
        # copy-on-write reads the backing chain, so all of it must be known
        return img is g.images[n.filename] and known(g, n)
    return False


class IoFailed(Exception):
    """The request fails with EIO ("write failed: Input/output error")."""


def write(g: Graph, n: Node, off: int, payload: bytes) -> None:
    if n.drv == "compress":
        _write_compressed(g, g.filter_child(n), off, payload)
        return
    if n.drv == "file":
        g.images[n.filename].write_host(off, payload)
        return
    if n.drv == "raw":
        write(g, g.nodes[n.child("file").child], n.raw_offset + off, payload)
        return
    if n.drv in ("throttle", "blkdebug", "copy-on-read"):
        write(g, g.filter_child(n), off, payload)
        return
    if n.drv == "null-co":
        return
    if n.drv == "qcow2":
        img = g.images[n.filename]
        end = off + len(payload)
        first, last = off // CLUSTER, (end - 1) // CLUSTER
        for c in range(first, last + 1):
            if c not in img.allocated:
                lo, hi = c * CLUSTER, min((c + 1) * CLUSTER, img.size)
                visible = read(g, n, lo, hi - lo)
                assert visible is not None
                img.data[lo:hi] = visible
                img.allocate(c)
        img.data[off:end] = payload
        # the qcow2 driver grew the host file through its current file child
        # every node on the way down sees the write past its end (bdrv_co_write_req_finish())
        host = -(-img.host_length() // 512) * 512
        fc = g.nodes[n.child("file").child]
        grown = []
        while True:
            if host > fc.cached_length:
                fc.cached_length = host
                grown.append(fc)
            if fc.drv not in FILE_FILTERS:
                break
            fc = g.filter_child(fc)
        if g.profile is not None and g.profile.growth_resizes_filtered_parents:
            for fc in reversed(grown):
                _resize_filtered_parents(g, fc)
        return
    raise AssertionError(n.drv)
