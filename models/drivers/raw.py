"""``block/raw-format.c``: the raw format driver, optionally a window (``offset``/``size``)."""
from __future__ import annotations

from typing import Any

from .. import iodata, perms
from ..errors import NotModeled, QmpFailure
from ..graph import ROLE_DATA, ROLE_FILTERED, Graph, Node
from ..imagedata import SECTOR
from ..lengths import node_length, refreshed_length
from ..probing import PROBE_BUF_SIZE, claimed_by_other_format
from ..profiles import VersionProfile
from ..qapitypes import INT, REF, Member
from .base import FILE_CHILD, FORMAT_NAMES, BlockDriver, Draw, Gen, Opener, write_child, write_zeroes_child


def check_options(g: Graph, file_child: Node, opts: dict) -> tuple[int, int | None]:
    """``raw_read_options()`` + ``raw_apply_options()`` against the current file child."""
    offset = opts.get("offset", 0)
    size = opts.get("size")
    real = node_length(g, file_child)
    if offset > real:
        raise QmpFailure(f"Offset ({offset}) cannot be greater than size of the containing file ({real})")
    if size is not None and real - offset < size:
        raise QmpFailure(f"The sum of offset ({offset}) and size ({size}) has to be smaller or equal "
                         f"to the  actual size of the containing file ({real})")
    if size is not None and size % SECTOR:
        raise QmpFailure("Specified size is not multiple of 512")
    return offset, size


class Raw(BlockDriver):
    name = "raw"
    mutable = ("offset", "size")
    strong = ("offset", "size")
    has_variable_length = True   # 7.2's .has_variable_length
    children = (("file", ROLE_FILTERED),)
    gen = Gen(weight=6, names=FORMAT_NAMES, bad_names=True, members={
        "file": Draw((FILE_CHILD,)), "offset": Draw((0, 512, 65536, 1 << 30), every=4),
        "size": Draw((512, 1000, 65536), every=8)}, reopen={
        k: Draw((0, 512, 1000, 65536, 1 << 20, 1 << 30)) for k in ("offset", "size")})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return (("file", REF, True), ("offset", INT, False), ("size", INT, False))

    def file_role(self, options: dict) -> str:
        """``raw_open()``: a window on the file is DATA, the whole file FILTERED."""
        return ROLE_DATA if (options.get("offset") or "size" in options) else ROLE_FILTERED

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        assert file is not None
        node.raw_offset, node.raw_size = check_options(op.g, file, options)
        node.cached_length = refreshed_length(op.g, node)

    def reopen_prepare(self, g: Graph, node: Node, options: dict, remaining: dict) -> Any:
        window = check_options(g, g.nodes[node.edge("file").child],
                               {k: options[k] for k in ("offset", "size") if k in options})
        remaining.pop("offset", None)
        remaining.pop("size", None)
        return window

    def reopen_commit(self, g: Graph, node: Node, state: Any) -> None:
        node.raw_offset, node.raw_size = state

    can_truncate = True

    def truncate(self, g: Graph, n: Node, size: int) -> tuple[Node, int] | None:
        """``raw_co_truncate()`` (raw-format): a fixed ``size`` cannot change; otherwise the
        file becomes ``offset + size``."""
        if n.raw_size is not None:
            raise QmpFailure("Cannot resize fixed-size raw disks")
        return g.nodes[n.edge("file").child], n.raw_offset + size

    def refresh_length(self, g: Graph, n: Node) -> int:
        flen = node_length(g, g.nodes[n.edge("file").child])
        if flen < n.raw_offset:
            return 0
        size = min(n.raw_size, flen - n.raw_offset) if n.raw_size is not None else flen - n.raw_offset
        return -(-size // SECTOR) * SECTOR  # total_sectors is whole sectors

    def get_info(self, g: Graph, n: Node) -> tuple[bool, int | None]:
        f = g.nodes[n.edge("file").child]
        return f.driver.get_info(g, f)

    def child_perm(self, role: str, parent_writable: bool, perm: int, shared: int) -> tuple[int, int]:
        """``raw_child_perm()``: the default, but write and resize only as the parent asks."""
        nperm, nshared = perms.default_perms(role, parent_writable, perm, shared)
        nperm &= ~(perms.WRITE | perms.RESIZE)
        nperm |= perm & (perms.WRITE | perms.RESIZE)
        return nperm, nshared

    def refresh_limits(self, g: Graph, n: Node, bl: dict) -> None:
        """``raw_refresh_limits()``: only a *probed* raw node changes a reported limit
        (``request_alignment`` 512, to protect the first sector).  ``offset`` / ``size`` do
        not enter."""
        if n.probed:
            bl["request-alignment"] = SECTOR

    def storage_child(self, g: Graph, n: Node) -> Node | None:
        """Raw over the whole file (no ``offset``, no ``size``) passes every request through
        at the same offset (``raw_co_preadv()`` / ``raw_co_pwritev()``), so a qcow2 over it
        reads and allocates in the file as over the file node itself."""
        if n.raw_offset == 0 and n.raw_size is None:
            return self._file(g, n)
        return None

    def _file(self, g: Graph, n: Node) -> Node:
        return g.nodes[n.edge("file").child]

    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        return iodata.read(g, self._file(g, n), n.raw_offset + off, length)

    def known(self, g: Graph, n: Node) -> bool:
        return iodata.known(g, self._file(g, n))

    def can_write(self, g: Graph, n: Node) -> bool:
        return iodata.can_write(g, self._file(g, n))

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        if n.raw_size is not None and off + len(payload) > n.raw_size:
            # raw_adjust_offset(): a write past the window (a parent whose cached length is
            # behind a reopen that shrank it) is refused before anything is written
            raise iodata.IoFailed("past the raw window", "No space left on device")
        if n.probed:
            self._check_probed_write(g, n, off, payload)
        write_child(g, n, self._file(g, n), n.raw_offset + off, payload)

    def write_zeroes(self, g: Graph, n: Node, off: int, length: int, may_unmap: bool) -> None:
        if n.raw_size is not None and off + length > n.raw_size:
            raise iodata.IoFailed("past the raw window", "No space left on device")
        if n.probed and (off % SECTOR or length % SECTOR):
            # the request alignment of 512 turns the unaligned head and tail into data writes
            raise NotModeled("an unaligned zero write to a probed raw node")
        write_zeroes_child(g, n, self._file(g, n), n.raw_offset + off, length, may_unmap)

    def _check_probed_write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        """``raw_co_pwritev()`` of a probed node: the block layer makes a write whole sectors
        (read-modify-write), and a new first sector that probes as another format is refused
        with EPERM (not modelled; the model's patterns never look like one)."""
        f = self._file(g, n)
        if node_length(g, f) % SECTOR:
            # the padded tail would write past the end of the file and grow it
            raise NotModeled("a write to a probed raw node over a file of partial sectors")
        if off < PROBE_BUF_SIZE:
            old = iodata.read(g, f, 0, PROBE_BUF_SIZE)
            if old is None:
                raise NotModeled("a write to a probed raw node whose first sector is unknown")
            first = bytearray(old)
            part = payload[:PROBE_BUF_SIZE - off]
            first[off:off + len(part)] = part
            if claimed_by_other_format(bytes(first)) is not None:
                raise NotModeled("a write that makes a probed raw image look like another format")
