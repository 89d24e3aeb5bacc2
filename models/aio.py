"""AioContexts: the rules that keep a connected part of the graph in one AioContext.

A node's AioContext is not visible in any query, so the model tracks it (``Node.ctx``: "main"
or an iothread id).  The rules (``bdrv_try_change_aio_context()``,
``bdrv_attach_child_noperm()``, ``blk_root_change_aio_ctx()``):

* a connected component (nodes joined by any edge, plus the BlockBackends on them) lives in
  one context;
* attaching a child from another context first tries to move the child's component into the
  parent's context, then the parent's component into the child's; a component that holds a
  BlockBackend which may not change context (a disk on an iothread controller; on 7.2 any
  disk) cannot move: ``Cannot change iothread of active block backend`` (the first attempt's
  error is reported);
* detaching never moves anything.
"""
from __future__ import annotations

from .errors import QmpFailure
from .graph import Graph, Node

CTX_ERROR = "Cannot change iothread of active block backend"


def component(g: Graph, start: Node, skip: tuple[str, str] | None = None) -> set[str]:
    """Nodes connected to ``start`` by any edge, leaving out the (parent, child) edge ``skip``."""
    seen = {start.name}
    todo = [start]
    while todo:
        n = todo.pop()
        for c in list(n.children) + list(n.parents):
            if skip is not None and (c.parent, c.child) == skip:
                continue
            other = c.child if c.parent == n.name else c.parent
            if other not in seen:
                seen.add(other)
                todo.append(g.nodes[other])
    return seen


def _pinned(g: Graph, names: set[str]) -> bool:
    """A BlockBackend in ``names`` that may not change AioContext (a guest disk's,
    ``models.devices.Disk.pinned``)."""
    return any(getattr(d, "pinned", False) and d.node in names for d in g.devices.values())


def try_move(g: Graph, start: Node, ctx: str, skip: tuple[str, str] | None = None) -> bool:
    """``bdrv_try_change_aio_context()``: move ``start``'s component, unless a pinned
    BlockBackend is in it."""
    if start.ctx == ctx:
        return True
    names = component(g, start, skip)
    if _pinned(g, names):
        return False
    for name in names:
        g.nodes[name].ctx = ctx
    return True


def reconcile_attach(g: Graph, parent: Node, child: Node) -> None:
    """The AioContext part of attaching ``child`` under ``parent`` (before the edge exists)."""
    if parent.ctx == child.ctx:
        return
    if try_move(g, child, parent.ctx) or try_move(g, parent, child.ctx):
        return
    raise QmpFailure(CTX_ERROR)


def uses_iothreads(g: Graph) -> bool:
    return any(n.ctx != "main" for n in g.nodes.values())
