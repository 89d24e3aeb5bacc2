"""``block/filter-compress.c``: writes through it are compressed into a qcow2 node below."""
from __future__ import annotations

from ..errors import NotModeled, QmpFailure
from ..graph import Graph, Node
from .base import CHILD, Draw, Gen, Opener, PassThroughFilter


class Compress(PassThroughFilter):
    name = "compress"
    can_reopen = False   # no .bdrv_reopen_prepare
    has_variable_length = True   # 7.2's .has_variable_length
    gen = Gen(weight=1, members={"file": Draw((CHILD,))})

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        assert file is not None
        if not file.driver.can_compress:
            raise QmpFailure(f"Compression is not supported for underlying format: {file.drv}")
        super().open(op, node, options, file)

    def _cluster(self, g: Graph, n: Node) -> int | None:
        c = n.child("file")
        if c is None:
            return None
        child = g.nodes[c.child]
        return child.driver.get_info(g, child)[1]

    def request_alignment(self, g: Graph, n: Node) -> int:
        return self._cluster(g, n) or 1

    def refresh_limits(self, g: Graph, n: Node, bl: dict) -> None:
        """``compress_refresh_limits()``: ``request_alignment`` = the cluster size
        ``bdrv_get_info()`` gives for the ``file`` child (filters forward it), if any."""
        cluster = self._cluster(g, n)
        if cluster:
            bl["request-alignment"] = cluster

    def can_write(self, g: Graph, n: Node) -> bool:
        c = g.filtered(n)
        return c.driver.can_write_compressed(g, c)

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        c = g.filtered(n)
        c.driver.write_compressed(g, c, off, payload)

    def write_zeroes(self, g: Graph, n: Node, off: int, length: int, may_unmap: bool) -> None:
        raise NotModeled(f"write zeroes through {n.drv}")
