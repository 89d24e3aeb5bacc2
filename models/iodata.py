"""Guest data through the live graph: what a read returns and where a write lands.

``read()`` returns the bytes a read of a node returns, or ``None`` where the model cannot know
them (the host bytes of a qcow2 file, or a qcow2 node whose file child was swapped to an image
whose metadata does not line up with the one it was opened on).  Callers only verify reads the
model knows, and never write where it does not.

This is ``block/io.c``'s part: each request goes to the node's driver (``BlockDriver.read``,
``write``, ``write_zeroes`` in ``models.drivers``), which passes it on to its children through
these functions again, as ``bdrv_co_preadv()`` does.
"""
from __future__ import annotations

from .graph import Graph, Node
from .lengths import node_length


class IoFailed(Exception):
    """The request fails: EIO ("write failed: Input/output error") unless ``strerror`` says
    otherwise."""

    def __init__(self, why: str = "", strerror: str = "Input/output error"):
        super().__init__(why)
        self.strerror = strerror


def storage_leaf(g: Graph, n: Node) -> Node:
    """The node under ``n`` once nodes that change nothing of a format's image file are
    skipped (``BlockDriver.storage_child``: transparent filters, raw over a whole file)."""
    while (below := n.driver.storage_child(g, n)) is not None:
        n = below
    return n


def read(g: Graph, n: Node, off: int, length: int) -> bytes | None:
    """``bdrv_co_preadv()`` of ``n``: what lies past the node's length is zeros without asking
    its driver (``bdrv_aligned_preadv()``: ``max_bytes`` from ``bdrv_co_getlength()``), so a
    parent whose cached length is behind a shrunk child reads zeros there (11.1.3: raw over a
    raw reopened with ``size: 0``)."""
    if n.name in g.dangling_data_file:
        return None  # a known QEMU bug: I/O through a freed BdrvChild (Graph.dangling_data_file)
    total = node_length(g, n)
    if off + length > total:
        inside = max(0, total - off)
        data = n.driver.read(g, n, off, inside) if inside else b""
        return None if data is None else data + bytes(length - inside)
    return n.driver.read(g, n, off, length)


def known(g: Graph, n: Node) -> bool:
    """Whether the model knows every byte a read of ``n`` can return (the whole chain)."""
    if n.name in g.dangling_data_file:
        return False
    return n.driver.known(g, n)


def can_write(g: Graph, n: Node) -> bool:
    """Whether the model can predict the effect of writing through ``n``."""
    return n.driver.can_write(g, n)


def write(g: Graph, n: Node, off: int, payload: bytes) -> None:
    n.driver.write(g, n, off, payload)


def write_zeroes(g: Graph, n: Node, off: int, length: int, may_unmap: bool,
                 entry: bool = True) -> None:
    """``write -z [-u]``.  ``bdrv_co_pwrite_zeroes()`` clears BDRV_REQ_MAY_UNMAP for a child
    without ``discard=unmap``; 10.0 also does so for the node the request enters, 7.2 does not
    (VersionProfile.write_zeroes_unmap_needs_discard)."""
    if n.discard != "unmap" and (not entry or g.qemu_profile.write_zeroes_unmap_needs_discard):
        may_unmap = False
    n.driver.write_zeroes(g, n, off, length, may_unmap)
