"""``block/quorum.c``: quorum over ``children.0``, ``children.1``, ... (BDRV_CHILD_DATA)."""
from __future__ import annotations

from typing import Any

from ..aio import reconcile_attach
from ..errors import NotModeled, QmpFailure
from ..graph import ROLE_DATA, Graph, Node
from ..lengths import node_length, refreshed_length
from ..options import array_entries
from .. import iodata
from ..options import bool_opt
from ..perms import ALL, CONSISTENT_READ, WRITE_UNCHANGED
from ..perms import refresh as refresh_perms
from ..profiles import VersionProfile
from ..qapitypes import BOOL, INT, REF, UNMODELLED, Member, enum, list_of
from .base import CHILDREN, BlockDriver, Draw, Gen, Opener, write_child


class Quorum(BlockDriver):
    name = "quorum"
    can_reopen = False
    strong = ("vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern")
    has_dirname = False          # quorum_dirname() always fails
    disk_read_modelled = False   # a guest disk's first read votes
    gen = Gen(weight=2, members={
        "children": Draw((CHILDREN,)), "vote-threshold": Draw((1, 1, 2, 0, 4))})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        # rewrite-corrupted writes the winner back into the children that lost a vote and
        # asks WRITE of every child: not modelled
        return (
            ("blkverify", BOOL, False), ("children", list_of(REF), True),
            ("vote-threshold", INT, True), ("rewrite-corrupted", UNMODELLED, False),
            ("read-pattern", enum("quorum", "fifo"), False),
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
        if options.get("read-pattern", "quorum") == "quorum" and bool_opt(options.get("blkverify")) \
                and (count != 2 or threshold != 2):
            raise QmpFailure("blkverify=on can only be set if there are exactly two files and vote-threshold is 2")
        for i in range(count):
            op.open_child(node, options, f"children.{i}", ROLE_DATA)
        node.next_child_index = count
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

    # -- x-blockdev-change (quorum_add_child(), quorum_del_child()) ----------------------------
    changes_children = True

    def add_child(self, g: Graph, node: Node, child: Node) -> None:
        """The new child is ``children.<next_child_index>``, at the end of the vote order;
        a failed attach gives the index back (the clone is thrown away).  The length stays
        the one cached at open: nothing refreshes it."""
        if _blkverify(node):
            raise QmpFailure("Cannot add a child to a quorum in blkverify mode")
        name = f"children.{node.next_child_index}"
        node.next_child_index += 1
        if g.has_child_recursive(child, node.name):
            raise QmpFailure(f"Making '{child.name}' a {name} child of '{node.name}' would create a cycle")
        reconcile_attach(g, node, child)
        g.attach(node, child, name, ROLE_DATA)
        refresh_perms(g, [node.name])

    def del_child(self, g: Graph, node: Node, edge: Any) -> None:
        """Only the top index is given back: removing another child leaves a gap, and no
        child is renamed."""
        threshold = node.options["vote-threshold"]
        if len(node.children) <= threshold:
            raise QmpFailure(f"The number of children cannot be lower than the vote threshold {threshold}")
        if edge.name == f"children.{node.next_child_index - 1}":
            node.next_child_index -= 1
        g.unset_inherits_from(node.name, edge)
        g.detach(edge)
        g.unref(g.nodes[edge.child])   # bdrv_unref_child()

    # -- I/O (quorum_co_preadv(), quorum_co_pwritev()) --------------------------------------------
    read_may_fail = True

    def _kids(self, g: Graph, n: Node) -> list[Node]:
        """``s->children``: the vote order, which is index order (adds go to the end)."""
        return [g.nodes[c.child] for c in sorted(n.children, key=lambda c: int(c.name.split(".")[1]))]

    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        """fifo: the first child's data.  quorum: every child is read and the version read by
        the most children wins if at least vote-threshold read it (``quorum_vote()``), else
        the read fails with EIO."""
        datas = [iodata.read(g, k, off, length) for k in self._kids(g, n)]
        if any(d is None for d in datas):
            return None
        if n.options.get("read-pattern", "quorum") == "fifo":
            return datas[0]
        counts: dict[bytes, int] = {}
        for d in datas:
            assert d is not None
            counts[d] = counts.get(d, 0) + 1
        if len(counts) > 1 and _blkverify(n):
            raise NotModeled("a blkverify-mode quorum read that mismatches (QEMU exits)")
        best = max(counts.values())
        if best < n.options["vote-threshold"]:
            raise iodata.IoFailed("quorum: no version reached the vote threshold")
        winners = [d for d, c in counts.items() if c == best]
        if len(winners) > 1:
            raise NotModeled("a quorum vote tie (which version wins is the vote list's order)")
        return winners[0]

    def known(self, g: Graph, n: Node) -> bool:
        return all(iodata.known(g, k) for k in self._kids(g, n))

    def disk_read_ok(self, g: Graph, n: Node) -> bool:
        """The disk's first read votes: harmless where every child has the same first sector
        (a mismatch would emit QUORUM_REPORT_BAD, or fail, or exit QEMU in blkverify mode)."""
        if not self.known(g, n):
            return False
        first = min(512, node_length(g, n))
        firsts = {iodata.read(g, k, 0, first) for k in self._kids(g, n)}
        return len(firsts) == 1
    def can_write(self, g: Graph, n: Node) -> bool:
        return all(iodata.can_write(g, k) for k in self._kids(g, n))

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        for k in self._kids(g, n):
            write_child(g, n, k, off, payload)

    def gather_child_options(self, n: Node, children: dict, opts: dict,
                             backing_overridden: bool) -> None:
        """``quorum_gather_child_options()``: a gap-less list in child index order."""
        kids = sorted(n.children, key=lambda c: int(c.name.split(".")[1]))
        opts["children"] = [children[c.name].full_open_options for c in kids]


def _blkverify(n: Node) -> bool:
    """``s->is_blkverify``: only with read-pattern quorum (the default)."""
    return n.options.get("read-pattern", "quorum") == "quorum" and bool_opt(n.options.get("blkverify"))
