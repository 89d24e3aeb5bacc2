"""``block/file-posix.c``: the ``file`` protocol driver on a regular host file."""
from __future__ import annotations

from typing import Any

from .. import limits
from ..errors import NotModeled, QmpFailure
from ..graph import Graph, Node
from .. import perms
from ..imagedata import MAX_MODELLED_SIZE, Image
from ..lengths import host_sectors, refreshed_length
from ..options import qemu_opt_str
from ..profiles import VersionProfile
from ..values import header_file
from ..qapitypes import BOOL, INT, STR, Member, enum
from .base import FILE, FORMAT_NAMES, BlockDriver, Draw, Gen, Opener

# raw_reopen_prepare() absorbs its runtime options, consumes these two and puts the rest back
# *as strings* (qemu_opts_to_qdict()).
CONSUMED = ("drop-cache", "x-check-cache-dropped")
PUT_BACK = ("filename", "pr-manager", "locking", "aio", "aio-max-batch")

MEMBERS: tuple[Member, ...] = (
    ("filename", STR, True),
    ("pr-manager", STR, False),
    ("locking", enum("on", "off", "auto"), False),
    ("aio", enum("threads", "native", "io_uring"), False),
    ("aio-max-batch", INT, False),
    ("drop-cache", BOOL, False),
    ("x-check-cache-dropped", BOOL, False),
)


class File(BlockDriver):
    name = "file"
    protocol = True
    mutable = ("x-check-cache-dropped",)
    gen = Gen(weight=6, names=FORMAT_NAMES, bad_names=True, members={
        "filename": Draw((FILE,)), "locking": Draw(("on", "off", "auto"), every=2)})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return MEMBERS

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        """``raw_open_common()``."""
        g = op.g
        fn = options["filename"]
        if any(len(part.encode()) > 255 for part in fn.split("/")):
            raise QmpFailure(f"Could not open '{fn}': File name too long")   # ENAMETOOLONG
        if fn not in g.images:
            raise QmpFailure(f"Could not open '{fn}': No such file or directory")
        if options.get("aio") in ("native", "io_uring") or options.get("pr-manager") is not None:
            raise NotModeled("aio=native/io_uring and pr-manager are not modelled")
        node.filename = fn
        node.locking = options.get("locking", "auto") != "off"
        node.cached_length = refreshed_length(g, node)

    def reopen_prepare(self, g: Graph, node: Node, options: dict, remaining: dict) -> Any:
        # file-posix's reopen changes none of these; they are compared by the caller
        for k in CONSUMED:
            remaining.pop(k, None)
        for k in PUT_BACK:
            if k in remaining:
                remaining[k] = qemu_opt_str(remaining.pop(k))
        return None

    #: ``.bdrv_needs_filename``: an empty 'filename' is refused before the node is named
    needs_filename = True
    can_create = True

    def create(self, g: Graph, opts: dict) -> None:
        """``raw_co_create()`` (file-posix): the file is opened without O_TRUNC, locked for
        write and resize, truncated to 0, then to ``size``; an error after the first truncate
        leaves an empty file."""
        name, size = opts["filename"], opts["size"]
        if opts.get("extent-size-hint", 0) > 0xFFFFFFFF:
            raise QmpFailure("Extent size hint is too large")
        if "/" in name:   # the work directory has no subdirectories
            raise QmpFailure(f"Could not create '{name}': No such file or directory")
        # raw_check_lock_bytes(): perm WRITE|RESIZE, shared ALL & ~RESIZE, against every
        # other holder's lock bytes (this QEMU's own nodes included)
        held = [g.locks.get(n.name, (0, 0)) for n in g.nodes.values()
                if n.filename == name and n.driver is self and n.locking]
        for bit, text in ((perms.WRITE, "write"), (perms.RESIZE, "resize")):
            if any(unshared & bit for _perm, unshared in held):
                raise QmpFailure(f'Failed to get "{text}" lock')
        if any(perm & perms.RESIZE for perm, _unshared in held):
            raise QmpFailure('Failed to get shared "resize" lock')
        if any(n.drv == "qcow2" and n.filename == name for n in g.nodes.values()):
            # a qcow2 node keeps the header it read from this file (BDRVQcow2State: its size
            # and L1 table) while the file is truncated under it, e.g. after a reopen moved its
            # file child elsewhere; the model keeps that header in the file's Image
            raise NotModeled("file create over an image an open qcow2 node holds its header from")
        g.images[name] = Image.create(name, "raw", 0)
        if opts.get("preallocation", "off") == "metadata":
            raise QmpFailure("Unsupported preallocation mode: metadata")
        if size >= 1 << 63:
            raise QmpFailure("Could not resize file: Invalid argument")
        if size > MAX_MODELLED_SIZE:
            raise NotModeled("images over 128 MiB (the model holds image data in memory)")
        g.images[name].resize(size)

    def parse_filename(self, filename: str) -> str | None:
        """``raw_parse_filename()`` strips a ``file:`` prefix; the rest stays the
        ``filename`` option."""
        return header_file(filename)

    can_truncate = True

    def truncate(self, g: Graph, n: Node, size: int) -> tuple[Node, int] | None:
        """``raw_co_truncate()`` of a regular file: ftruncate() to the byte (the node's
        length then rounds up to a sector)."""
        assert n.filename is not None, "open() sets it"
        img = g.images[n.filename]
        if size > MAX_MODELLED_SIZE:
            raise NotModeled("resize beyond 128 MiB (the model holds image data in memory)")
        if img.fmt != "raw":
            # the qcow2 metadata stays as it is; the clusters past its end are free to the
            # allocator whatever the file's length (qcow2_alloc_clusters() goes by refcounts)
            if size < img.metadata_end():
                raise NotModeled("a file holding a qcow2 image cut below the clusters in use")
            img.host_min = size
            return None
        img.resize(size)
        return None

    def refresh_length(self, g: Graph, n: Node) -> int:
        assert n.filename is not None, "open() sets it before the first refresh"
        return host_sectors(g, n.filename)

    def get_info(self, g: Graph, n: Node) -> tuple[bool, int | None]:
        return True, None   # raw_get_info(): no cluster size

    def image_info(self, g: Graph, n: Node, profile: VersionProfile, info: dict,
                   cache: dict) -> None:
        if profile.file_format_specific:
            info["format-specific"] = {"type": "file", "data": {}}

    def takes_locks(self, n: Node) -> bool:
        return n.locking

    def refresh_limits(self, g: Graph, n: Node, bl: dict) -> None:
        """``raw_refresh_limits()`` for a regular file without O_DIRECT.

        ``raw_needs_alignment()`` is false (no ``BDRV_O_NOCACHE``; ``force_alignment`` is only
        set for FreeBSD character devices), so ``raw_probe_alignment()`` sets
        ``request_alignment`` and ``buf_align`` to 1: ``min-mem-alignment`` 1,
        ``opt-mem-alignment`` = MAX(1, page size).  ``max-iov`` stays the no-children default.

        ``cache.direct=on`` cannot be predicted: ``raw_probe_alignment()`` then asks the host
        (``BLKSSZGET``, the XFS ``DIOINFO`` ioctl, trial O_DIRECT ``pread``s; NFS is
        byte-aligned), e.g. 512/512 on ext4 over a 512-byte-sector disk and 4096/4096 on tmpfs
        (observed, 11.1.3).
        """
        if n.cache_direct:
            raise NotModeled("block limits with cache.direct=on (O_DIRECT alignment of the host "
                             "file system)")
        buf_align = 1
        bl["request-alignment"] = 1
        bl["min-mem-alignment"] = buf_align
        bl["opt-mem-alignment"] = max(buf_align, limits.HOST_PAGE_SIZE)

    def exact_filename(self, g: Graph, n: Node, children: dict, opts: dict,
                       generate_json: bool) -> str:
        return n.filename or ""

    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        host = g.image(n).host_bytes(off, length)
        if host is None:
            return None
        return host + bytes(length - len(host))  # past EOF reads as zeros

    def known(self, g: Graph, n: Node) -> bool:
        return g.image(n).fmt == "raw"

    def can_write(self, g: Graph, n: Node) -> bool:
        return g.image(n).fmt == "raw" and n.name not in g.dangling_data_file

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        g.image(n).write_host(off, payload)

    def write_zeroes(self, g: Graph, n: Node, off: int, length: int, may_unmap: bool) -> None:
        """``raw_co_pwrite_zeroes()``: with ``may_unmap`` a hole is punched
        (``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE``: the file keeps its length, also
        where the range reaches past it), otherwise the range is zeroed
        (``FALLOC_FL_ZERO_RANGE``, which extends the file); either way it reads as zeros.
        Inside a qcow2 image it overwrites metadata the model does not hold."""
        img = g.image(n)
        if img.fmt != "raw":
            raise NotModeled("write zeroes into a file holding a qcow2 image")
        if may_unmap:
            img.zero_bytes(off, max(0, min(length, img.size - off)))
        else:
            img.write_host(off, bytes(length))
