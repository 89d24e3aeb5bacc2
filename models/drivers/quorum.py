"""``block/quorum.c``: quorum over ``children.0``, ``children.1``, ... (BDRV_CHILD_DATA)."""
from __future__ import annotations

from ..errors import NotModeled, QmpFailure
from ..graph import ROLE_DATA, Graph, Node
from ..lengths import node_length, refreshed_length
from ..options import array_entries
from ..perms import ALL, CONSISTENT_READ, WRITE_UNCHANGED
from ..profiles import VersionProfile
from ..qapitypes import INT, REF, UNMODELLED, Member, list_of
from .base import CHILDREN, BlockDriver, Draw, Gen, Opener


class Quorum(BlockDriver):
    name = "quorum"
    can_reopen = False
    strong = ("vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern")
    has_dirname = False          # quorum_dirname() always fails
    disk_read_modelled = False   # a guest disk's first read votes
    gen = Gen(weight=2, members={
        "children": Draw((CHILDREN,)), "vote-threshold": Draw((1, 1, 2, 0, 4))})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return (
            ("blkverify", UNMODELLED, False), ("children", list_of(REF), True),
            ("vote-threshold", INT, True), ("rewrite-corrupted", UNMODELLED, False),
            ("read-pattern", UNMODELLED, False),
        )

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        """``quorum_open()``."""
        count = array_entries(options, "children")
        if count < 1:
            raise QmpFailure("Number of provided children must be 1 or more")
        threshold = options["vote-threshold"]
        if threshold < 1:
            raise QmpFailure("Parameter 'vote-threshold' expects a value >= 1")
        if threshold > count:
            raise QmpFailure("threshold may not exceed children count")
        for i in range(count):
            op.open_child(node, options, f"children.{i}", ROLE_DATA)
        node.cached_length = refreshed_length(op.g, node)

    def refresh_length(self, g: Graph, n: Node) -> int:
        # quorum_co_getlength(): children.0's length; differing children are not modelled
        found = {node_length(g, g.nodes[c.child]) for c in n.children}
        if len(found) != 1:
            raise NotModeled("quorum children of different lengths")
        return found.pop()

    def child_perm(self, role: str, parent_writable: bool, perm: int, shared: int) -> tuple[int, int]:
        """``quorum_child_perm()``: children must not diverge, so no write/resize for others."""
        return perm & ALL, shared & (CONSISTENT_READ | WRITE_UNCHANGED)

    def gather_child_options(self, n: Node, children: dict, opts: dict,
                             backing_overridden: bool) -> None:
        """``quorum_gather_child_options()``: a gap-less list in child index order."""
        kids = sorted(n.children, key=lambda c: int(c.name.split(".")[1]))
        opts["children"] = [children[c.name].full_open_options for c in kids]
