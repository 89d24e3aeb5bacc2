"""``query-named-block-nodes``: what QEMU reports for each node, and the compared projection.

Filenames follow ``bdrv_refresh_filename()`` (``models.filenames``).  The list is in reverse
order of node-name assignment (``bdrv_named_nodes_list()`` prepends while walking
``graph_bdrv_states``).

Projection (what is compared): everything QEMU reports except ``image.actual-size`` at every
nesting level.  ``actual-size`` is the host file system's allocation (``st_blocks``) of the image
file; it depends on the file system under the work directory (holes, preallocation, extent
size), not on the block layer, so no model of QEMU can predict it.
"""
from __future__ import annotations

from .filenames import refresh_filename
from .graph import Graph, Node
from .lengths import node_length
from .limits import block_limits
from .profiles import VersionProfile


def image_info(g: Graph, n: Node, profile: VersionProfile, cache: dict) -> dict:
    """``bdrv_query_image_info()``: the generic fields, then the driver's
    (``BlockDriver.image_info``), limits and the backing image."""
    info: dict = {
        "filename": refresh_filename(g, n, cache).filename,
        "format": n.drv,
        "virtual-size": node_length(g, n),
    }
    has_info, cs = n.driver.get_info(g, n)
    if has_info:
        info["dirty-flag"] = False
    if cs is not None:
        info["cluster-size"] = cs
    n.driver.image_info(g, n, profile, info, cache)
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
    bitmaps = [j for j in g.jobs.values() if j.active and j.status in ("ready", "standby", "pending")
               and (j.filter if profile.mirror_bitmap_on_filter else j.device) == n.name]
    if bitmaps:
        # the mirror's own dirty bitmap; nothing was written during the job, so its count is 0
        # (the fuzzer does not write while an active commit runs).  7.2 records writes into it
        # (enabled bitmap on the source); 10.0 disables it and marks it from mirror_top's
        # write path (same profile flag)
        info["dirty-bitmaps"] = [{"busy": False, "count": 0, "granularity": j.granularity,
                                  "persistent": False,
                                  "recording": not profile.mirror_bitmap_on_filter}
                                 for j in bitmaps]
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
