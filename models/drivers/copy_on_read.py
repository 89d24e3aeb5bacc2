"""``block/copy-on-read.c``: the copy-on-read filter (also what ``block-stream`` inserts)."""
from __future__ import annotations

from ..graph import Graph, Node
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
        return None   # a read also allocates in the child: not modelled

    def known(self, g: Graph, n: Node) -> bool:
        return False
