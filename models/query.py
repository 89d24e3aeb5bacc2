"""``query-named-block-nodes``: what QEMU reports for each node, and the compared projection.

Filenames follow ``bdrv_refresh_filename()``: a node that its image file alone can recreate shows
that file's name; otherwise ``json:{...}`` of its strong options and children, keys in QDict
order.  The list is in reverse order of node-name assignment (``bdrv_named_nodes_list()``
prepends while walking ``graph_bdrv_states``).

Projection (what is compared): everything QEMU reports except ``image.actual-size`` at every
nesting level.  ``actual-size`` is the host file system's allocation (``st_blocks``) of the image
file; it depends on the file system under the work directory (holes, preallocation, extent
size), not on the block layer, so no model of QEMU can predict it.
"""
from __future__ import annotations

from typing import Any

import attrs

from .graph import Graph, Node
from .profiles import VersionProfile
from .drivers import DRIVERS
from .imagedata import CLUSTER
from .limits import block_limits
from .qdict import qdict_order, to_json

QCOW2_FORMAT_SPECIFIC = {
    "type": "qcow2",
    "data": {"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False,
             "refcount-bits": 16, "corrupt": False, "extended-l2": False},
}


@attrs.frozen
class Filename:
    exact: str          # bs->exact_filename ('' if none)
    full_open_options: Any
    filename: str       # bs->filename


def _strong_options(n: Node) -> dict:
    """``append_strong_runtime_options()``: driver, filename, then the driver's strong options
    (a trailing '.' is a prefix), in that order of insertion."""
    d = DRIVERS[n.drv]
    out: dict = {}
    for key in ("driver", "filename") + d.strong + (("offset", "size") if n.drv == "raw" else ()):
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
        result = children[n.children[0].name]
        cache[n.name] = result
        return result
    d = DRIVERS[n.drv]
    overridden = backing_overridden(g, n, cache)
    opts = _strong_options(n)
    found_any = any(k not in ("driver", "filename") for k in opts)
    opts.setdefault("driver", n.drv)
    generate_json = found_any or overridden
    if n.drv == "quorum":
        # quorum_gather_child_options(): a gap-less list in child index order
        kids = sorted((c for c in n.children), key=lambda c: int(c.name.split(".")[1]))
        opts["children"] = [children[c.name].full_open_options for c in kids]
    else:
        for c in n.children:
            if c.name == "backing" and not overridden:
                continue
            opts[c.name] = children[c.name].full_open_options
        if overridden and n.child("backing") is None:
            opts["backing"] = None

    exact = ""
    if n.drv == "file":
        exact = n.filename or ""
    elif n.drv == "null-co":
        # null_refresh_filename(): only if nothing but filename/driver/latency-ns was given
        if all(k in ("filename", "driver", "latency-ns") for k in opts):
            exact = "null-co://"
    elif n.drv == "blkdebug":
        img = children["image"]
        if img.exact and all(k in ("config", "image", "x-image", "driver") for k in opts):
            exact = f"blkdebug:{n.options.get('config', '')}:{img.exact}"
    elif n.drv in ("commit_top", "mirror_top"):
        # bdrv_commit_top_refresh_filename() / bdrv_mirror_top_refresh_filename()
        exact = children["backing"].filename
    elif n.drv == "blkverify":
        raw, test = children["raw"], children["test"]
        if raw.exact and test.exact:
            exact = f"blkverify:{raw.exact}:{test.exact}"
    else:
        fc = n.child("file")
        if fc is not None and not d.is_filter:
            child = g.nodes[fc.child]
            cf = children["file"]
            if cf.exact and DRIVERS[child.drv].protocol and not generate_json:
                exact = cf.exact
    filename = exact if exact else "json:" + to_json(opts)
    result = Filename(exact, opts, filename)
    cache[n.name] = result
    return result


def dirname(g: Graph, n: Node, cache: dict) -> str | None:
    """``bdrv_dirname()``: the directory a relative backing file name is taken from, or None
    ("Cannot generate a base directory for ... nodes")."""
    if n.drv in ("quorum", "blkverify"):
        return None          # their .bdrv_dirname always fails
    d = DRIVERS[n.drv]
    primary = "file" if n.child("file") else (d.children[0][0] if d.children else None)
    c = n.child(primary) if primary else None
    if c is not None:
        return dirname(g, g.nodes[c.child], cache)
    exact = refresh_filename(g, n, cache).exact
    if not exact:
        return None
    # path_combine(exact, ""): up to the last '/' (a protocol prefix counts as a directory)
    return exact[:exact.rfind("/") + 1]


def _get_info(g: Graph, n: Node) -> tuple[bool, int | None]:
    """``bdrv_get_info()``: (supported, cluster size).  qcow2 answers, file-posix answers with
    no cluster size, raw and filters forward to their child; null-co and quorum have none."""
    if n.drv == "qcow2":
        return True, 65536
    if n.drv == "file":
        return True, None
    if n.drv == "raw":
        return _get_info(g, g.nodes[n.child("file").child])
    f = g.filter_child(n)
    if f is not None:
        return _get_info(g, f)
    return False, None


def image_info(g: Graph, n: Node, profile: VersionProfile, cache: dict) -> dict:
    from .blockdev import node_length

    info: dict = {
        "filename": refresh_filename(g, n, cache).filename,
        "format": n.drv,
        "virtual-size": node_length(g, n),
    }
    has_info, cs = _get_info(g, n)
    if has_info:
        info["dirty-flag"] = False
    if cs is not None:
        info["cluster-size"] = cs
    if n.drv == "qcow2":
        info["format-specific"] = QCOW2_FORMAT_SPECIFIC
        if n.name in g.dangling_data_file:
            data = dict(QCOW2_FORMAT_SPECIFIC["data"], **{"data-file-raw": False})
            info["format-specific"] = {"type": "qcow2", "data": data}
        img = g.images[n.filename]
        if img.backing_file:
            info["backing-filename"] = img.backing_file
            directory = dirname(g, n, cache)
            if directory is not None:   # bdrv_get_full_backing_filename() fails otherwise
                info["full-backing-filename"] = directory + img.backing_file
            if img.backing_format:
                info["backing-filename-format"] = img.backing_format
    elif n.drv == "file" and profile.file_format_specific:
        info["format-specific"] = {"type": "file", "data": {}}
    if profile.image_limits_field:
        info["limits"] = block_limits(g, n)
    b = g.filter_or_cow_child(n)
    if b is not None:
        info["backing-image"] = image_info(g, b, profile, cache)
    return info


def node_info(g: Graph, n: Node, profile: VersionProfile, cache: dict) -> dict:
    image = image_info(g, n, profile, cache)
    depth = 0
    b = image.get("backing-image")
    while b is not None:
        depth += 1
        b = b.get("backing-image")
    info: dict = {
        "node-name": n.name,
        "drv": n.drv,
        "ro": n.read_only,
        "file": image["filename"],
        "encrypted": False,
        "detect_zeroes": n.detect_zeroes,
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "cache": {"writeback": True, "direct": n.cache_direct, "no-flush": n.cache_no_flush},
        "write_threshold": 0,
        "backing_file_depth": depth,
        "image": image,
    }
    cow = g.cow_child(n)
    if cow is not None:
        info["backing_file"] = refresh_filename(g, cow, cache).filename
    bitmaps = [j for j in g.jobs.values() if j.active and j.status in ("ready", "pending")
               and (j.filter if profile.mirror_bitmap_on_filter else j.device) == n.name]
    if bitmaps:
        # the mirror's own dirty bitmap; nothing was written during the job, so its count is 0
        # (the fuzzer does not write while an active commit runs).  7.2 records writes into it
        # (enabled bitmap on the source); 10.0 disables it and marks it from mirror_top's
        # write path (same profile flag)
        info["dirty-bitmaps"] = [{"busy": False, "count": 0, "granularity": CLUSTER,
                                  "persistent": False,
                                  "recording": not profile.mirror_bitmap_on_filter}
                                 for _ in bitmaps]
    if profile.node_active_field:
        info["active"] = True
    if profile.node_children_field:
        # qmp_query_named_block_nodes() -> bdrv_block_device_info(): one entry per BdrvChild
        info["children"] = [{"child": c.name, "node-name": c.child} for c in n.children]
    return info


def query_named_block_nodes(g: Graph, profile: VersionProfile) -> list[dict]:
    cache: dict = {}
    nodes = sorted(g.nodes.values(), key=lambda n: n.seq, reverse=True)
    return [node_info(g, n, profile, cache) for n in nodes]


_QCOW2_DATA_KEYS = ("compat", "compression-type", "lazy-refcounts", "refcount-bits", "corrupt",
                    "extended-l2", "data-file-raw")
#: BlockLimitsInfo (qapi/block-core.json)
_LIMITS_KEYS = ("request-alignment", "max-discard", "discard-alignment", "max-write-zeroes",
                "write-zeroes-alignment", "opt-transfer", "max-transfer", "max-hw-transfer",
                "max-iov", "max-hw-iov", "min-mem-alignment", "opt-mem-alignment")


def known_fields(profile: VersionProfile) -> dict:
    """The schema of the compared projection under ``profile``: key -> sub-schema, where None
    is a leaf and ``[schema]`` a list of ``schema``.  A key QEMU reports outside it is a field
    this profile does not know (a newer build's addition); the harness sets such keys aside
    only for builds without an exact profile (fuzz.engine.FieldFilter)."""
    leaf = dict.fromkeys
    image: dict = leaf(("filename", "format", "virtual-size", "dirty-flag", "cluster-size",
                        "backing-filename", "full-backing-filename", "backing-filename-format"))
    image["format-specific"] = {"type": None, "data": leaf(_QCOW2_DATA_KEYS)}
    if profile.image_limits_field:
        image["limits"] = leaf(_LIMITS_KEYS)
    image["backing-image"] = image      # ImageInfo nests itself
    node: dict = leaf(("node-name", "drv", "ro", "file", "encrypted", "detect_zeroes", "bps",
                       "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr", "write_threshold",
                       "backing_file_depth", "backing_file"))
    node["image"] = image
    node["cache"] = leaf(("writeback", "direct", "no-flush"))
    node["dirty-bitmaps"] = [leaf(("busy", "count", "granularity", "persistent", "recording"))]
    if profile.node_active_field:
        node["active"] = None
    if profile.node_children_field:
        node["children"] = [leaf(("child", "node-name"))]
    return node


def project(nodes: list[dict]) -> list[dict]:
    """The compared view of a ``query-named-block-nodes`` reply (see module docstring)."""
    return [_project_node(n) for n in nodes]


def _project_node(n: dict) -> dict:
    out = dict(n)
    if "image" in out:
        out["image"] = _project_image(out["image"])
    return out


def _project_image(im: dict) -> dict:
    out = {k: v for k, v in im.items() if k != "actual-size"}
    if "backing-image" in out:
        out["backing-image"] = _project_image(out["backing-image"])
    return out
