"""Image files: what is in them, byte for byte.

A qcow2 image is modelled as its guest-visible bytes plus the set of allocated clusters; a raw
image as its bytes.  The host length of a qcow2 file is derived from the allocation the way
``qemu-img create`` and the qcow2 allocator lay a small image out: header, refcount table,
refcount block, then the L1 table (the file ends right after the L1 entries until the first
allocation), then one cluster per L2 table and per data cluster, in allocation order.  This is
exact for images below 2 GiB (one refcount block) with 64 KiB clusters.

The host bytes of a qcow2 file are *opaque*: reading them through a ``file`` node returns
metadata the model does not reproduce, so readers get ``None`` and must not verify them.
"""
from __future__ import annotations

import attrs

CLUSTER = 65536
L2_ENTRIES = CLUSTER // 8  # one L2 table maps 8192 clusters (512 MiB)
SECTOR = 512


#: the largest image the model follows through a resize: it holds image data in memory
MAX_MODELLED_SIZE = 128 << 20


@attrs.define
class Image:
    file: str
    fmt: str  # "qcow2" | "raw"
    size: int  # qcow2: virtual size; raw: file length
    #: the guest-visible bytes (qcow2) or the file's (raw) up to the last one ever written:
    #: the rest up to ``size`` reads as zeros (a resize or create of 128 MiB costs nothing)
    data: bytearray
    allocated: set[int] = attrs.field(factory=set)  # qcow2 cluster indices with a host cluster
    backing_file: str | None = None
    backing_format: str | None = None
    #: qcow2 clusters with the zero flag (they read as zeros, whatever the backing file holds):
    #: without a host cluster (QCOW2_CLUSTER_ZERO_PLAIN), or, if also in ``allocated``, with
    #: one that holds zero bytes (QCOW2_CLUSTER_ZERO_ALLOC); block status calls both ZERO
    zero_clusters: set[int] = attrs.field(factory=set)
    #: host clusters freed by discards, reused by the next allocations (lowest first)
    free_host: int = 0
    #: qcow2: the L2 tables the image has (by L1 index): one is allocated for the first data
    #: cluster it maps and for the first zero flag it holds (``get_cluster_table()``), and
    #: none is ever freed (but by a shrink, not modelled)
    l2_tables: set[int] = attrs.field(factory=set)
    #: qcow2: the file length a resize of the file node gave it (ftruncate() past the
    #: metadata); the allocator does not look at the file's end, so the file is as long as
    #: this or as the clusters in use reach, whichever is longer
    host_min: int = 0
    #: ``data`` is shared with a clone: copy-on-write, the first of them to write copies it
    #: (a job command's transaction clones every image, and most of them are never written)
    shared: bool = attrs.field(default=False, eq=False, repr=False)

    @classmethod
    def create(cls, file: str, fmt: str, size: int, backing_file: str | None = None,
               backing_format: str | None = None) -> "Image":
        return cls(file, fmt, size, bytearray(), set(), backing_file, backing_format)

    def clone(self) -> "Image":
        self.shared = True
        return Image(self.file, self.fmt, self.size, self.data, set(self.allocated),
                     self.backing_file, self.backing_format, set(self.zero_clusters), self.free_host,
                     set(self.l2_tables), self.host_min, shared=True)

    def writable(self) -> bytearray:
        """``data``, to be written: its own copy first if a clone shares it."""
        if self.shared:
            self.data = bytearray(self.data)
            self.shared = False
        return self.data

    def read_bytes(self, off: int, length: int) -> bytes:
        """``length`` bytes of ``data`` from ``off``, zeros past what was written."""
        part = bytes(self.data[off:off + length])
        return part + bytes(length - len(part))

    def write_bytes(self, off: int, payload: bytes) -> None:
        """``payload`` into ``data`` at ``off`` (zeros between the old end and ``off``)."""
        data = self.writable()
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(payload)] = payload

    def zero_bytes(self, off: int, length: int) -> None:
        """Zeros over ``[off, off + length)``: only what was written needs them."""
        if off < len(self.data):
            self.write_bytes(off, bytes(min(length, len(self.data) - off)))

    def resize(self, size: int) -> None:
        """A raw file truncated or extended (zeros), or a qcow2 image grown."""
        if size < len(self.data):
            del self.writable()[size:]
        self.size = size

    # -- host view -------------------------------------------------------------------------
    def l1_entries(self) -> int:
        return max(1, -(-self.size // (CLUSTER * L2_ENTRIES)))

    def host_length(self) -> int:
        """Length of the host file in bytes."""
        if self.fmt == "raw":
            return self.size
        return max(self.host_min, self.metadata_end())

    def metadata_end(self) -> int:
        """qcow2: where the clusters in use end (the file's length as qemu-img and the
        allocator leave it)."""
        l1_bytes = self.l1_entries() * 8
        if not self.l2_tables:
            return 3 * CLUSTER + l1_bytes
        l1_clusters = -(-l1_bytes // CLUSTER)
        return (3 + l1_clusters + len(self.l2_tables) + len(self.allocated) + self.free_host) * CLUSTER

    def allocate(self, c: int) -> None:
        """A new host cluster for guest cluster ``c``: a freed one if there is one."""
        if self.free_host:
            self.free_host -= 1
        self.allocated.add(c)
        self.l2_tables.add(c // L2_ENTRIES)
        self.zero_clusters.discard(c)

    def set_zero(self, c: int) -> None:
        """The zero flag on guest cluster ``c`` (its L2 table is allocated if it has none
        yet; a host cluster it has stays)."""
        self.zero_clusters.add(c)
        self.l2_tables.add(c // L2_ENTRIES)

    def host_bytes(self, off: int, length: int) -> bytes | None:
        """The file's bytes at ``off``, up to its end."""
        if self.fmt == "raw":
            return self.read_bytes(off, max(0, min(length, self.size - off)))
        return None  # qcow2 metadata: opaque

    def write_host(self, off: int, payload: bytes) -> None:
        """pwrite(): a write past the end extends the file (with zeros up to ``off``)."""
        assert self.fmt == "raw", "writes to the host bytes of a qcow2 file are not modelled"
        self.write_bytes(off, payload)
        self.size = max(self.size, off + len(payload))
