"""Node lengths: ``bdrv_getlength()`` and ``bdrv_refresh_total_sectors()``, dispatched to the
node's driver (``BlockDriver.getlength`` / ``refresh_length`` in ``models.drivers``).

Regular files have no variable length, so file, raw and filter nodes answer from
``total_sectors`` (``Node.cached_length``), which is refreshed when the node is opened or
reopened and grows only by the node's own writes past its end.
"""
from __future__ import annotations

from .graph import ROLE_FILTERED, Graph, Node
from .imagedata import SECTOR


def host_sectors(g: Graph, filename: str) -> int:
    """The host file's length rounded up to whole sectors (``bdrv_refresh_total_sectors()``)."""
    return -(-g.images[filename].host_length() // SECTOR) * SECTOR


def node_length(g: Graph, n: Node) -> int:
    """``bdrv_getlength()`` of a node: ``total_sectors``, or the driver's own answer for
    drivers whose length a version re-reads on every call (``BlockDriver.has_variable_length``
    where ``VersionProfile.driver_variable_length``)."""
    if g.profile is not None and g.profile.driver_variable_length and n.driver.has_variable_length:
        return refreshed_length(g, n)
    return n.driver.getlength(g, n)


def refreshed_length(g: Graph, n: Node) -> int:
    """What ``bdrv_refresh_total_sectors()`` sets: the driver's own idea of the length."""
    return n.driver.refresh_length(g, n)


def resize_filtered_parents(g: Graph, n: Node) -> None:
    """``bdrv_co_parent_cb_resize()`` -> ``bdrv_child_cb_resize()``: every parent that uses
    ``n`` as its FILTERED child refreshes its length from its driver, and tells its own
    parents in turn (VersionProfile.growth_resizes_filtered_parents)."""
    for edge in list(n.parents):
        if edge.role == ROLE_FILTERED:
            parent = g.nodes[edge.parent]
            parent.cached_length = refreshed_length(g, parent)
            resize_filtered_parents(g, parent)
