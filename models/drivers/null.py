"""``block/null.c``: the ``null-co`` protocol driver (reads zeros or garbage, drops writes)."""
from __future__ import annotations

from ..errors import NotModeled, QmpFailure
from ..graph import Graph, Node
from ..imagedata import SECTOR
from ..lengths import refreshed_length
from ..options import bool_opt
from ..profiles import VersionProfile
from ..qapitypes import BOOL, INT, UNMODELLED, Member
from .base import BlockDriver, Draw, Gen, Opener


class NullCo(BlockDriver):
    name = "null-co"
    protocol = True
    strong = ("size", "read-zeroes")
    reopen_refreshes_length = False
    gen = Gen(weight=2, members={
        "size": Draw((1024, 65536, 1 << 20, 1 << 30), every=2),
        "read-zeroes": Draw((False, True), every=2)}, reopen={
        "size": Draw((1024, 1 << 30)), "read-zeroes": Draw((False, True))})

    def parse_filename(self, filename: str) -> str | None:
        """``null_co_parse_filename()``: only its own URL, which is then dropped."""
        if filename != "null-co://":
            raise QmpFailure("The only allowed filename for this driver is 'null-co://'")
        return None

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return (("size", INT, False), ("latency-ns", UNMODELLED, False), ("read-zeroes", BOOL, False))

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        node.cached_length = options.get("size", 1 << 30)
        if node.cached_length < 0:
            raise NotModeled("negative null-co size")
        node.read_zeroes = bool_opt(options.get("read-zeroes"))
        node.cached_length = refreshed_length(op.g, node)

    def refresh_length(self, g: Graph, n: Node) -> int:
        return -(-n.cached_length // SECTOR) * SECTOR

    def exact_filename(self, g: Graph, n: Node, children: dict, opts: dict,
                       generate_json: bool) -> str:
        """``null_refresh_filename()``: only if nothing but filename/driver/latency-ns was given."""
        if all(k in ("filename", "driver", "latency-ns") for k in opts):
            return "null-co://"
        return ""

    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        return bytes(length) if n.read_zeroes else None

    def known(self, g: Graph, n: Node) -> bool:
        return n.read_zeroes

    def can_write(self, g: Graph, n: Node) -> bool:
        return True  # writes are dropped

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        pass

    def write_zeroes(self, g: Graph, n: Node, off: int, length: int, may_unmap: bool) -> None:
        """``null_co_pwrite_zeroes()``: dropped like any write."""
