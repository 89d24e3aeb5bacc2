"""Node filenames: ``bdrv_refresh_filename()`` and ``bdrv_dirname()``.

A node that its image file alone can recreate shows that file's name; otherwise ``json:{...}``
of its strong options and children, keys in QDict order.  The generic part is here; what a
driver adds (``.bdrv_refresh_filename``, ``.bdrv_gather_child_options``, ``.bdrv_dirname``) is
its ``BlockDriver``'s (``models.drivers``).
"""
from __future__ import annotations

from typing import Any

import attrs

from .errors import NotModeled
from .graph import Graph, Node
from .qdict import qdict_order, to_json


@attrs.frozen
class Filename:
    exact: str          # bs->exact_filename ('' if none)
    full_open_options: Any
    filename: str       # bs->filename


def strong_options(n: Node) -> dict:
    """``append_strong_runtime_options()``: driver, filename, then the driver's strong options
    (a trailing '.' is a prefix), in that order of insertion."""
    out: dict = {}
    for key in ("driver", "filename") + n.driver.strong:
        if key.endswith("."):
            for k in qdict_order(n.options):
                if k.startswith(key):
                    out[k] = n.options[k]
        elif key in n.options and key not in out:
            out[key] = n.options[key]
    return out


def backing_overridden(g: Graph, n: Node, cache: dict) -> bool:
    """``bdrv_backing_overridden()``."""
    c = n.child("backing")
    if c is not None:
        return n.auto_backing_file != refresh_filename(g, g.nodes[c.child], cache).filename
    return n.auto_backing_file != ""


def refresh_filename(g: Graph, n: Node, cache: dict | None = None) -> Filename:
    """``bdrv_refresh_filename()``."""
    if cache is None:
        cache = {}
    if n.name in cache:
        return cache[n.name]
    children = {c.name: refresh_filename(g, g.nodes[c.child], cache) for c in n.children}
    if n.implicit:
        # an implicit job filter shows its only child's names
        if not n.children:
            # 7.2/10.0 leave a concluded stream's filter without its child, and QEMU's own
            # query then dies (corpus/findings/stream-concluded-query-segv.json)
            raise NotModeled("the name of a job filter without its child (a QEMU crash)")
        result = children[n.children[0].name]
        cache[n.name] = result
        return result
    overridden = backing_overridden(g, n, cache)
    opts = strong_options(n)
    found_any = any(k not in ("driver", "filename") for k in opts)
    opts.setdefault("driver", n.drv)
    generate_json = found_any or overridden
    n.driver.gather_child_options(n, children, opts, overridden)
    exact = n.driver.exact_filename(g, n, children, opts, generate_json)
    filename = exact if exact else "json:" + to_json(opts)
    result = Filename(exact, opts, filename)
    cache[n.name] = result
    return result


def path_has_protocol(name: str) -> bool:
    """``path_has_protocol()``: a ':' before any '/'."""
    head = name.split("/", 1)[0]
    return ":" in head


def full_backing_filename(g: Graph, n: Node, name: str, cache: dict) -> str | None:
    """``bdrv_make_absolute_filename(n, name)``: a name with a protocol as it is, else
    relative to ``n``'s directory (None where ``bdrv_dirname()`` fails)."""
    if path_has_protocol(name):
        return name
    directory = dirname(g, n, cache)
    return None if directory is None else directory + name


def dirname(g: Graph, n: Node, cache: dict) -> str | None:
    """``bdrv_dirname()``: the directory a relative backing file name is taken from, or None
    ("Cannot generate a base directory for ... nodes")."""
    d = n.driver
    if not d.has_dirname:
        return None          # its .bdrv_dirname always fails
    primary = "file" if n.child("file") else (d.children[0][0] if d.children else None)
    c = n.child(primary) if primary else None
    if c is not None:
        return dirname(g, g.nodes[c.child], cache)
    exact = refresh_filename(g, n, cache).exact
    if not exact:
        return None
    # path_combine(exact, ""): up to the last '/' (a protocol prefix counts as a directory)
    return exact[:exact.rfind("/") + 1]
