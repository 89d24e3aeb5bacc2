"""``block/copy-on-read.c``: the copy-on-read filter (also what ``block-stream`` inserts)."""
from __future__ import annotations

from .. import iodata
from ..errors import NotModeled
from ..graph import Graph, Node
from ..imagedata import CLUSTER
from ..perms import ALL, CONSISTENT_READ, RESIZE, WRITE, WRITE_UNCHANGED
from ..profiles import VersionProfile
from ..qapitypes import REF, UNMODELLED, Member
from .base import CHILD, Draw, Gen, PassThroughFilter


class CopyOnRead(PassThroughFilter):
    name = "copy-on-read"
    can_reopen = False          # no .bdrv_reopen_prepare
    can_compress = True
    has_variable_length = True   # 7.2's .has_variable_length
    storage_transparent = True  # nothing to copy from a file node: it is always allocated
    disk_read_modelled = False  # a guest disk's first read allocates below
    gen = Gen(weight=1, members={"file": Draw((CHILD,))})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return (("file", REF, True), ("bottom", UNMODELLED, False))

    def child_perm(self, role: str, parent_writable: bool, perm: int, shared: int) -> tuple[int, int]:
        """``cor_child_perm()``: always asks for 'write unchanged' (copy-on-read writes)."""
        passthrough = CONSISTENT_READ | WRITE | RESIZE
        return (perm & passthrough) | WRITE_UNCHANGED, (shared & passthrough) | (ALL & ~passthrough)

    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        # a read also allocates in the child: followed only for a qemu-io read entering here
        # (qemu_io_read), not through the nodes above
        return None

    def known(self, g: Graph, n: Node) -> bool:
        return False

    read_has_effects = True

    def _copies_into(self, g: Graph, n: Node) -> Node | None:
        """The qcow2 child a read copies into, None for a child that is always allocated (a
        protocol node); NotModeled for anything else."""
        q = g.filtered(n)
        if "bottom" in n.options:
            # a stream's filter: only what is allocated between the child's backing and the
            # bottom node is copied; with no backing below the child there is nothing
            # (QEMU 7.2-11.1 crash instead: corpus/findings/stream-filter-read-without-backing-segv.json)
            if g.cow_child(q) is not None:
                raise NotModeled("copy-on-read with a bottom node over a backing chain")
            if not iodata.known(g, q):
                raise NotModeled(f"data of node '{q.name}' is not known to the model")
            return None
        if q.driver.protocol:
            if not iodata.known(g, q):
                raise NotModeled(f"data of node '{q.name}' is not known to the model")
            return None
        if q.drv != "qcow2" or not iodata.can_write(g, q):
            raise NotModeled("copy-on-read over anything but a plain qcow2 or a protocol node")
        if "l2-cache-entry-size" in q.options:
            # block status runs end at an L2 slice, and the copy's zero check is per run
            raise NotModeled("copy-on-read with L2 cache slices other than whole tables")
        if g.image(q).size % CLUSTER:
            raise NotModeled("copy-on-read of an image that ends inside a cluster")
        return q

    def qemu_io_readable(self, g: Graph, n: Node) -> bool:
        try:
            self._copies_into(g, n)
        except NotModeled:
            return False
        return True

    def peek(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        return iodata.read(g, g.filtered(n), off, length)

    def qemu_io_read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        """``cor_co_preadv_part()`` without ``bottom``: the read goes to the child with
        BDRV_REQ_COPY_ON_READ.  Unless the child is allocated over the whole request
        (``bdrv_is_allocated()``), ``bdrv_co_do_copy_on_readv()`` goes over it in whole
        clusters, one block-status run at a time: a run the child has allocated (data or
        zero flag) is read, an unallocated one is read through the backing chain and written
        back, as zeroes (zero flags) where the whole run reads as zeros, as data otherwise."""
        q = self._copies_into(g, n)
        data = iodata.read(g, g.filtered(n), off, length)
        if q is None or length == 0:
            return data
        img = g.image(q)

        def allocated(c: int) -> bool:
            return c in img.allocated or c in img.zero_clusters

        c, last = off // CLUSTER, -(-(off + length) // CLUSTER)
        while c < last:
            end = c + 1
            while end < last and allocated(end) == allocated(c):
                end += 1
            if not allocated(c):
                lo, hi = c * CLUSTER, end * CLUSTER
                buf = iodata.read(g, q, lo, hi - lo)
                if buf is None:
                    raise NotModeled(f"data of node '{q.name}' is not known to the model")
                if buf.strip(b"\0"):
                    iodata.write(g, q, lo, buf)
                else:
                    iodata.write_zeroes(g, q, lo, hi - lo, False, entry=False)
            c = end
        return data
