"""``block/qcow2.c``: the qcow2 format driver.

Reads (``qcow2_co_preadv_part()``): an allocated cluster reads its own data; an unallocated one
reads the *current* backing child at the same offset (zeros beyond the backing node's end, or
with no backing).  A write to an unallocated cluster copies the rest of the cluster from what it
reads at that moment (copy-on-write) and allocates it.
"""
from __future__ import annotations

from typing import Any

from .. import iodata, perms
from ..errors import NotModeled, QmpFailure
from ..filenames import full_backing_filename
from ..graph import ROLE_STORAGE, Graph, Node
from ..imagedata import CLUSTER, L2_ENTRIES, MAX_MODELLED_SIZE, SECTOR, Image
from ..lengths import node_length, refreshed_length, resize_filtered_parents
from ..options import bool_opt
from ..profiles import VersionProfile
from ..qapitypes import BOOL, INT, REF, REF_OR_NULL, UNMODELLED, Member
from .base import CHILD, FILE_CHILD, FORMAT_NAMES, NODE, BlockDriver, Draw, Gen, Opener

#: qcow2_runtime_opts that reopen may change (``.mutable_opts``)
RUNTIME = ("lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
           "pass-discard-other", "discard-no-unref", "overlap-check", "cache-size",
           "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size",
           "cache-clean-interval")

_CACHE_SIZES = (0, 512, 4096, 65536, 131072, 512 * 1024, 1 << 20, 4 << 20)

FORMAT_SPECIFIC: dict[str, Any] = {
    "type": "qcow2",
    "data": {"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False,
             "refcount-bits": 16, "corrupt": False, "extended-l2": False},
}


def check_options(g: Graph, image: str, opts: dict) -> None:
    """``qcow2_update_options_prepare()`` / ``read_cache_sizes()``."""
    size = g.images[image].size
    max_l2_entries = -(-size // CLUSTER)
    max_l2_cache = -(-(max_l2_entries * 8) // CLUSTER) * CLUSTER
    combined_set = "cache-size" in opts
    l2_set = "l2-cache-size" in opts
    refcount_set = "refcount-cache-size" in opts
    entry_set = "l2-cache-entry-size" in opts
    combined = opts.get("cache-size", 0)
    l2_max_setting = opts.get("l2-cache-size", 32 * 1024 * 1024)
    refcount = opts.get("refcount-cache-size", 0)
    entry = opts.get("l2-cache-entry-size", CLUSTER)
    l2 = min(max_l2_cache, l2_max_setting)
    if combined_set:
        if l2_set and refcount_set:
            raise QmpFailure("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
        if l2_set and l2_max_setting > combined:
            raise QmpFailure("l2-cache-size may not exceed cache-size")
        if refcount > combined:
            raise QmpFailure("refcount-cache-size may not exceed cache-size")
        min_refcount = 4 * CLUSTER
        if l2_set:
            refcount = combined - l2
        elif refcount_set:
            l2 = combined - refcount
        elif combined >= max_l2_cache + min_refcount:
            l2 = max_l2_cache
            refcount = combined - l2
        else:
            refcount = min(combined, min_refcount)
            l2 = combined - refcount
    if l2 < max_l2_cache and not entry_set:
        entry = min(CLUSTER, 4096)
    if entry < 512 or entry > CLUSTER or entry & (entry - 1):
        raise QmpFailure("L2 cache entry size must be a power of two between 512 and the cluster size (65536)")
    if max(l2 // entry, 4) > 2**31 - 1:
        raise QmpFailure("L2 cache size too big")
    if max(refcount // CLUSTER, 4) > 2**31 - 1:
        raise QmpFailure("Refcount cache size too big")
    if opts.get("cache-clean-interval", 600) > 2**32 - 1:
        raise QmpFailure("Cache clean interval too big")


def _refuse_unmodelled(options: dict) -> None:
    """qcow2 options outside the model: overlap checks, encryption, external data files, and
    lazy refcounts (they set the header's dirty bit, which query reports)."""
    for k in ("overlap-check", "encrypt", "data-file"):
        if any(key == k or key.startswith(k + ".") for key in options):
            raise NotModeled(f"qcow2 option {k}")
    if bool_opt(options.get("lazy-refcounts")):
        raise NotModeled("lazy-refcounts=on (dirty bit) is not modelled")


def _image_of(g: Graph, file_node: Node) -> str:
    """The image a qcow2 node opens through its file child (``qcow2_do_open()`` reads the
    header).  Only a file node on a qcow2 image is modelled as a success; any other child
    whose first bytes the model knows and which are not the qcow2 magic is refused."""
    leaf = iodata.storage_leaf(g, file_node)
    if leaf.drv == "file":
        img = g.image(leaf)
        if img.fmt == "qcow2":
            return img.file
    if node_length(g, file_node) < SECTOR:
        raise NotModeled("qcow2 over a child shorter than its header")
    head = iodata.read(g, file_node, 0, 4)
    if head is None or head == b"QFI\xfb":
        raise NotModeled("qcow2 over a child whose first bytes may be a qcow2 header")
    raise QmpFailure("Image is not in qcow2 format")


def qcow2_image(g: Graph, n: Node) -> Image | None:
    """The image whose clusters a qcow2 node really reads, or None if unknowable.

    QEMU keeps the L1 table of the image the node was opened on and re-reads L2 tables and
    data from the *current* file child after a reopen (``qcow2_update_options_prepare()``
    recreates the metadata caches).  Two small images (one L2 table each, at the same host
    cluster) of the same size therefore behave like the file child's image; anything else is
    not modelled.
    """
    meta = g.image(n)
    if any(o is not n and o.drv == "qcow2" and o.filename == n.filename for o in g.nodes.values()):
        # Two qcow2 drivers on one image (possible with locking=off) each cache metadata and
        # allocate on their own; what either then reads or writes is not modelled.
        return None
    fc = iodata.storage_leaf(g, g.nodes[n.edge("file").child])
    if fc.drv != "file":
        return None
    cur = g.image(fc)
    if cur is meta:
        return meta
    if cur.fmt != "qcow2" or cur.size != meta.size or bool(cur.l2_tables) != bool(meta.l2_tables):
        return None
    if cur.l1_entries() != 1:
        return None
    return cur


def _host_grown(g: Graph, n: Node, img: Image, before: int) -> None:
    """After a qcow2 write through the node's current file child (``before``: the host
    file's length before it).  Where the write grew the host file, a request of it ended at
    the new end of the file, and every node on the way down saw that request past its own
    end (``bdrv_co_write_req_finish()``): each grows to the new length.

    Where the write did not grow the host file, a node on the way down whose length is
    behind the file's (it missed an earlier growth through another parent: 10.0.2 and
    7.2.22 do not resize a filter over a file that grew, see
    ``VersionProfile.growth_resizes_filtered_parents``) grows only if a request of this write
    lands past that length, which depends on where the written clusters and metadata lie in
    the host file, and the model does not place them (found by a 10.0.2 campaign: blkdebug
    over a file a qcow2 node had grown directly, then the qcow2 node reopened onto the
    blkdebug node and written into clusters it had allocated before: QEMU kept blkdebug's
    length, the model grew it to the file's)."""
    host = -(-img.host_length() // SECTOR) * SECTOR
    path = []
    fc: Node | None = g.nodes[n.edge("file").child]
    while fc is not None:
        path.append(fc)
        fc = fc.driver.storage_child(g, fc)
    if host <= -(-before // SECTOR) * SECTOR:
        if any(fc.cached_length < host for fc in path):
            raise NotModeled("a qcow2 write that does not grow its file through a node whose "
                             "length is behind the file's")
        return
    grown = []
    for fc in path:
        if host > fc.cached_length:
            fc.cached_length = host
            grown.append(fc)
    if g.profile is not None and g.profile.growth_resizes_filtered_parents:
        for fc in reversed(grown):
            resize_filtered_parents(g, fc)


def _whole_clusters(g: Graph, n: Node, off: int, length: int) -> tuple[Image, range]:
    img = g.image(n)
    end = off + length
    if off % CLUSTER or (end % CLUSTER and end != img.size):
        raise NotModeled("partial-cluster zero or compressed writes")
    return img, range(off // CLUSTER, -(-end // CLUSTER))


class Qcow2(BlockDriver):
    name = "qcow2"
    supports_backing = True
    metadata_in_file = True
    mutable = RUNTIME
    # qcow2_open(): file is opened by bdrv_open_inherit(); role DATA|METADATA|PRIMARY
    children = (("file", ROLE_STORAGE),)
    can_compress = True
    reopen_refreshes_length = False
    gen = Gen(weight=12, names=FORMAT_NAMES, bad_names=True, members={
        "file": Draw((FILE_CHILD,)), "backing": Draw((None, NODE, NODE, CHILD), every=3)}, reopen={
        # l2-cache-size, l2-cache-entry-size and cache-clean-interval are clamped or checked,
        # never allocated, so huge values are deterministic; a huge cache-size or
        # refcount-cache-size is allocated for real and fails or not with the host's overcommit
        **{k: Draw(_CACHE_SIZES + (1000, 1 << 40)) for k in (
            "l2-cache-size", "l2-cache-entry-size", "cache-clean-interval")},
        **{k: Draw(_CACHE_SIZES) for k in ("cache-size", "refcount-cache-size")},
        **{k: Draw((False, True)) for k in ("pass-discard-request", "pass-discard-other")}})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        members: list[Member] = [
            ("file", REF, True),
            ("backing", REF_OR_NULL, False),
            ("lazy-refcounts", BOOL, False),
            ("pass-discard-request", BOOL, False),
            ("pass-discard-snapshot", BOOL, False),
            ("pass-discard-other", BOOL, False),
        ]
        if profile.qcow2_discard_no_unref:
            members.append(("discard-no-unref", BOOL, False))
        members += [
            ("overlap-check", UNMODELLED, False),
            ("cache-size", INT, False),
            ("l2-cache-size", INT, False),
            ("l2-cache-entry-size", INT, False),
            ("refcount-cache-size", INT, False),
            ("cache-clean-interval", INT, False),
            ("encrypt", UNMODELLED, False),
            ("data-file", UNMODELLED, False),
        ]
        return tuple(members)

    # -- open / reopen -------------------------------------------------------------------------
    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        """``qcow2_open()``, then ``bdrv_open_backing_file()``."""
        g = op.g
        assert file is not None
        _refuse_unmodelled(options)
        g.guard("qcow2-header-read", file=file)
        try:
            node.filename = _image_of(g, file)
            check_options(g, node.filename, options)
        except QmpFailure:
            g.guard("qcow2-open-failed", file=file)
            raise
        if node.read_only:
            g.guard("qcow2-open-read-only", file=file)
        op.open_backing(node, options)

    def join_options(self, node: Node, options: dict, old: dict) -> None:
        """``qcow2_join_options()``'s cache rules, then the generic join."""
        old = dict(old)
        new_total = "cache-size" in options
        if new_total:
            # a new total cache size overrides all old cache options
            old.pop("l2-cache-size", None)
            old.pop("refcount-cache-size", None)
        super().join_options(node, options, old)
        if not new_total and any(k in options for k in ("cache-size", "l2-cache-size",
                                                        "refcount-cache-size")):
            # QEMU's "has_all_cache_options" is an OR: any cache option drops an old total size
            options.pop("cache-size", None)

    def reopen_prepare(self, g: Graph, node: Node, options: dict, remaining: dict) -> Any:
        _refuse_unmodelled(options)
        assert node.filename is not None, "an open qcow2 node has its image"
        check_options(g, node.filename, {k: options[k] for k in RUNTIME if k in options})
        for k in RUNTIME:
            remaining.pop(k, None)
        return None

    def reopen_abort(self, g: Graph, node: Node, file_replaced: bool) -> None:
        if file_replaced:
            # qcow2_reopen_abort() runs inside bdrv_reopen_prepare(), before the transaction
            # puts the old file child back: s->data_file keeps the new one, which the abort
            # then frees.  QEMU reports it as an external data file.
            g.dangling_data_file.add(node.name)

    def has_header_backing(self, g: Graph, node: Node) -> bool:
        return bool(g.image(node).backing_file)

    # -- lengths, info, limits -------------------------------------------------------------------
    can_create = True

    def create(self, g: Graph, opts: dict) -> None:
        """``qcow2_co_create()``: the option checks in QEMU's order, the permission check of a
        BlockBackend on the file node (WRITE and RESIZE), then the new header.  The model
        writes images of the default layout only: 64 KiB clusters, v3, 16-bit refcounts, zlib,
        no extended L2, no preallocation or data file, over a file node nothing else uses."""
        ref = opts["file"]
        if not isinstance(ref, str):
            raise NotModeled("blockdev-create of qcow2 over an inline file (opened as a new node)")
        file = g.lookup_bs(ref)
        size = opts["size"]
        v2 = opts.get("version", "v3") == "v2"
        ext = opts.get("extended-l2", False)
        cs = opts.get("cluster-size", CLUSTER)
        prealloc = opts.get("preallocation", "off")
        if size % 512:
            raise QmpFailure("Image size must be a multiple of 512 bytes")
        if ext and v2:
            raise QmpFailure("Extended L2 entries are only supported with compatibility level 1.1 "
                             "and above (use version=v3 or greater)")
        if not 512 <= cs <= 2 << 20 or cs & (cs - 1):
            raise QmpFailure("Cluster size must be a power of two between 512 and 2048k")
        if ext and cs < 16384:
            raise QmpFailure("Extended L2 entries are only supported with cluster sizes of at "
                             "least 16384 bytes")
        if "backing-file" in opts and prealloc != "off" and not ext:
            raise QmpFailure("Backing file and preallocation can only be used at the same time "
                             "if extended_l2 is on")
        if "backing-fmt" in opts and "backing-file" not in opts:
            raise QmpFailure("Backing format cannot be used without backing file")
        if opts.get("lazy-refcounts", False) and v2:
            raise QmpFailure("Lazy refcounts only supported with compatibility level 1.1 and "
                             "above (use version=v3 or greater)")
        bits = opts.get("refcount-bits", 16)
        if bits > 64 or bits <= 0 or bits & (bits - 1):
            raise QmpFailure("Refcount width must be a power of two and may not exceed 64 bits")
        if bits != 16 and v2:
            raise QmpFailure("Different refcount widths than 16 bits require compatibility level "
                             "1.1 or above (use version=v3 or greater)")
        raw_data = opts.get("data-file-raw", False)
        if raw_data and "data-file" not in opts:
            raise QmpFailure("data-file-raw requires data-file")
        if raw_data and "backing-file" in opts:
            raise QmpFailure("Backing file and data-file-raw cannot be used at the same time")
        if "data-file" in opts and v2:
            raise QmpFailure("External data files are only supported with compatibility level "
                             "1.1 and above (use version=v3 or greater)")
        if "data-file" in opts:
            raise NotModeled("blockdev-create of qcow2 with a data file")
        if opts.get("compression-type", "zlib") == "zstd" and v2:
            raise QmpFailure("Non-zlib compression type is only supported with compatibility "
                             "level 1.1 and above (use version=v3 or greater)")
        bb = perms.ExternalParent("an unnamed block device", "root", perms.WRITE | perms.RESIZE, perms.ALL)
        perms.refresh(g.clone(), [file.name], external={file.name: [bb]})
        if (cs != CLUSTER or v2 or ext or bits != 16 or opts.get("lazy-refcounts", False)
                or opts.get("compression-type", "zlib") != "zlib" or prealloc != "off"):
            raise NotModeled("blockdev-create of qcow2 with a layout other than the default")
        if file.drv != "file" or file.parents or any(not p.blk or p.child_name != "root"
                                                     or not p.desc.startswith("block device")
                                                     for p in g.job_parents(file.name)):
            raise NotModeled("blockdev-create of qcow2 over anything but a file node without "
                             "parents other than guest disks")
        assert file.filename is not None, "a file node holds its file"
        if any(n is not file and n.filename == file.filename for n in g.nodes.values()):
            raise NotModeled("blockdev-create of qcow2 over a file another node has open")
        if not 0 < size <= MAX_MODELLED_SIZE:
            raise NotModeled("blockdev-create of qcow2 of size 0 (no L1 table) or over 128 MiB")
        if len(opts.get("backing-file", "").encode()) > 1023:
            # qcow2_co_change_backing_file(): EINVAL once the image is written
            raise NotModeled("blockdev-create of qcow2 with a backing-file over 1023 bytes")
        img = Image.create(file.filename, "qcow2", size, opts.get("backing-file"), opts.get("backing-fmt"))
        if g.images[file.filename].host_length() > img.host_length():
            raise NotModeled("blockdev-create of qcow2 over a longer file (it is not truncated)")
        g.guard("qcow2-create", file=file)
        # blk_co_new_open(): a temporary qcow2 node (an auto name) over the file, writable: its
        # file child takes WRITE and RESIZE and shares neither (a guest disk that holds WRITE
        # conflicts; one that shares WRITE and holds none does not)
        temp = f"#block{g.auto_counter}"
        g.auto_counter += 1
        tmp = perms.ExternalParent(f"node '{temp}'", "file", perms.CONSISTENT_READ | perms.WRITE
                                   | perms.RESIZE, perms.CONSISTENT_READ | perms.WRITE_UNCHANGED)
        try:
            perms.refresh(g.clone(), [file.name], external={file.name: [tmp]})
        except QmpFailure:
            # the first BlockBackend has written header, refcount table and refcount block
            # (3 clusters) by then: the file is left a qcow2 without an L1 table (11.1.3: a
            # guest disk holding WRITE on the file node; the model has no such image)
            raise NotModeled("blockdev-create of qcow2 whose temporary qcow2 node a guest "
                             "disk's permissions refuse (the header is written before)") from None
        g.images[file.filename] = img
        file.cached_length = max(file.cached_length, refreshed_length(g, file))
        g.auto_counter += 1   # the second temporary node, reopened to flush

    can_truncate = True

    def truncate(self, g: Graph, n: Node, size: int) -> tuple[Node, int] | None:
        """``qcow2_co_truncate()``: a whole number of sectors; a grow writes the new size into
        the header and the new area reads as zeros.  What the model leaves out: shrinking
        (which clusters it frees, and the file's new length), a grow that needs a larger L1
        table (allocated anew: the file grows), and a grow over a backing file longer than
        the old size (``bdrv_co_truncate()`` zero-writes the new area)."""
        if size % SECTOR:
            raise QmpFailure(f"The new size must be a multiple of {SECTOR}")
        if n.name in g.dangling_data_file:
            # qcow2_co_truncate() resizes s->data_file, a freed BdrvChild (known QEMU bug)
            raise NotModeled("resize of a qcow2 node with a dangling data_file (known QEMU bug)")
        leaf = iodata.storage_leaf(g, g.nodes[n.edge("file").child])
        if leaf.drv != "file":
            # the header and L1 writes go through a format node, which allocates as it likes
            raise NotModeled("resize of a qcow2 node whose metadata lives in a format node")
        if g.image(leaf) is not g.image(n):
            # a reopen gave the node another file: QEMU writes the new size into that one's
            # first cluster, with the header the node holds in memory (BDRVQcow2State)
            raise NotModeled("resize of a qcow2 node whose file child holds another image")
        img = g.image(n)
        if size < img.size:
            raise NotModeled("qcow2 shrink")
        if size > MAX_MODELLED_SIZE:
            raise NotModeled("resize beyond 128 MiB (the model holds image data in memory)")
        if any(o is not n and o.drv == "qcow2" and o.filename == n.filename for o in g.nodes.values()):
            raise NotModeled("resize of a qcow2 image another node has open")
        if max(1, -(-size // (CLUSTER * L2_ENTRIES))) > img.l1_entries():
            raise NotModeled("qcow2 grow that needs a larger L1 table")
        cow = g.cow_child(n)
        if size > img.size and cow is not None and node_length(g, cow) > img.size:
            raise NotModeled("qcow2 grow over a longer backing file (the new area is zero-written)")
        img.resize(size)
        return None

    def getlength(self, g: Graph, n: Node) -> int:
        return g.image(n).size

    def refresh_length(self, g: Graph, n: Node) -> int:
        return g.image(n).size

    def get_info(self, g: Graph, n: Node) -> tuple[bool, int | None]:
        return True, CLUSTER

    def image_info(self, g: Graph, n: Node, profile: VersionProfile, info: dict,
                   cache: dict) -> None:
        info["format-specific"] = FORMAT_SPECIFIC
        if n.name in g.dangling_data_file:
            data = dict(FORMAT_SPECIFIC["data"], **{"data-file-raw": False})
            info["format-specific"] = {"type": "qcow2", "data": data}
        img = g.image(n)
        if img.backing_file:
            info["backing-filename"] = img.backing_file
            full = full_backing_filename(g, n, img.backing_file, cache)
            if full is not None:   # bdrv_get_full_backing_filename() fails otherwise
                info["full-backing-filename"] = full
            if img.backing_format:
                info["backing-filename-format"] = img.backing_format

    def refresh_limits(self, g: Graph, n: Node, bl: dict) -> None:
        """``qcow2_refresh_limits()``: write zeroes by subcluster, discard by cluster.

        The model's images have 64 KiB clusters and no extended L2 entries (subcluster =
        cluster) and no encryption (which would set ``request_alignment`` to the crypto
        sector size)."""
        bl["write-zeroes-alignment"] = CLUSTER
        bl["discard-alignment"] = CLUSTER

    # -- I/O -----------------------------------------------------------------------------------------
    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
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
                out += img.read_bytes(pos, stop - pos)
            elif c in img.zero_clusters:
                out += bytes(stop - pos)
            elif backing_edge is not None:
                b = g.nodes[backing_edge.child]
                blen = node_length(g, b)
                inside = max(0, min(stop, blen) - pos)
                if inside:
                    part = iodata.read(g, b, pos, inside)
                    if part is None:
                        return None
                    out += part
                out += bytes(stop - pos - inside)
            else:
                out += bytes(stop - pos)
            pos = stop
        return bytes(out)

    def disk_read_ok(self, g: Graph, n: Node) -> bool:
        """A disk's first-sector read through metadata the model cannot follow (its file
        moved onto another format node, say) may find the image corrupt: QEMU then marks the
        node unusable (corpus/findings/qcow2-corrupt-node-breaks-node-query.json)."""
        return qcow2_image(g, n) is not None

    def known(self, g: Graph, n: Node) -> bool:
        if qcow2_image(g, n) is None:
            return False
        b = n.child("backing")
        return b is None or iodata.known(g, g.nodes[b.child])

    def can_write(self, g: Graph, n: Node) -> bool:
        # copy-on-write reads the backing chain, so all of it must be known
        return qcow2_image(g, n) is g.image(n) and iodata.known(g, n)

    def can_write_compressed(self, g: Graph, n: Node) -> bool:
        return self.can_write(g, n)

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        img = g.image(n)
        before = img.host_length()
        end = off + len(payload)
        first, last = off // CLUSTER, (end - 1) // CLUSTER
        if img.free_host:
            # handle_alloc() asks for each run of unallocated clusters in one piece, and
            # alloc_clusters_noref() skips a free hole shorter than the run; after an
            # allocated cluster of the same request it first tries the host cluster right
            # behind that one (qcow2_alloc_clusters_at()), the file's end as a rule, not a
            # hole: where the clusters land then depends on where the holes are, which the
            # model does not keep (11.1.3 and 7.2.22 grew the file with a hole free)
            run = longest = 0
            follows_allocated = False
            for c in range(first, last + 1):
                if c not in img.allocated:
                    run += 1
                    follows_allocated |= c > first and c - 1 in img.allocated
                else:
                    run = 0
                longest = max(longest, run)
            if longest > 1 or follows_allocated:
                raise NotModeled("an allocation QEMU may place past a freed cluster of the "
                                 "image")
        for c in range(first, last + 1):
            if c not in img.allocated:
                lo, hi = c * CLUSTER, min((c + 1) * CLUSTER, img.size)
                visible = iodata.read(g, n, lo, hi - lo)
                assert visible is not None
                img.write_bytes(lo, visible)
                img.allocate(c)
            img.zero_clusters.discard(c)   # data in a zero-flagged host cluster clears the flag
        img.write_bytes(off, payload)
        _host_grown(g, n, img, before)

    def write_compressed(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        """``qcow2_co_pwritev_compressed_part()``: one whole cluster into an unallocated one
        (an allocated cluster, even a zeroed one, fails with EIO)."""
        if qcow2_image(g, n) is not g.image(n):
            raise NotModeled("compressed writes into anything but a plain qcow2 node")
        img, clusters = _whole_clusters(g, n, off, len(payload))
        if len(clusters) != 1:
            raise NotModeled("compressed writes of several clusters")
        c = clusters[0]
        if c in img.allocated:
            raise iodata.IoFailed()
        if not img.free_host:
            raise NotModeled("where a compressed cluster lands at the end of the file")
        before = img.host_length()
        img.write_bytes(off, payload)
        img.allocate(c)
        _host_grown(g, n, img, before)

    def write_zeroes(self, g: Graph, n: Node, off: int, length: int, may_unmap: bool) -> None:
        """``qcow2_co_pwrite_zeroes()``: sets the zero flag; with BDRV_REQ_MAY_UNMAP still set
        when the request reaches it, it also frees the host cluster."""
        if qcow2_image(g, n) is not g.image(n):
            raise NotModeled(f"write zeroes through {n.drv}")
        img, clusters = _whole_clusters(g, n, off, length)
        before = img.host_length()
        for c in clusters:
            if may_unmap and c in img.allocated:
                img.allocated.discard(c)
                img.free_host += 1
            img.set_zero(c)   # on an allocated cluster: QCOW2_CLUSTER_ZERO_ALLOC
        img.zero_bytes(off, length)
        _host_grown(g, n, img, before)
