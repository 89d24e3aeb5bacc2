"""``block/blkverify.c``: ``raw`` is bs->file (opened first, FILTERED), ``test`` is DATA."""
from __future__ import annotations

from ..graph import ROLE_DATA, ROLE_FILTERED, Graph, Node
from ..lengths import node_length
from ..profiles import VersionProfile
from ..qapitypes import REF, Member
from .base import CHILD, Draw, Filter, Gen, Opener


class Blkverify(Filter):
    name = "blkverify"
    protocol = True
    can_reopen = False
    children = (("raw", ROLE_FILTERED), ("test", ROLE_DATA))
    has_dirname = False          # blkverify_dirname() always fails
    disk_read_modelled = False   # a mismatch on the guest disk's first read exits QEMU
    gen = Gen(weight=2, members={"test": Draw((CHILD,)), "raw": Draw((CHILD,))})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return (("test", REF, True), ("raw", REF, True))

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        op.open_child(node, options, "raw", ROLE_FILTERED)
        op.open_child(node, options, "test", ROLE_DATA)
        super().open(op, node, options, file)

    def refresh_length(self, g: Graph, n: Node) -> int:
        return node_length(g, g.nodes[n.edge("test").child])   # blkverify_co_getlength()

    def exact_filename(self, g: Graph, n: Node, children: dict, opts: dict,
                       generate_json: bool) -> str:
        """``blkverify_refresh_filename()``."""
        raw, test = children["raw"], children["test"]
        if raw.exact and test.exact:
            return f"blkverify:{raw.exact}:{test.exact}"
        return ""
