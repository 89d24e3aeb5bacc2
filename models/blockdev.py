"""blockdev-add, blockdev-reopen and blockdev-del for file, raw and qcow2 nodes.

Each function takes a *clone* of the graph (see ``Graph.clone``) and either returns normally,
leaving the clone in the state QEMU reaches, or raises ``QmpFailure`` with the exact error text;
the caller then throws the clone away, which is QEMU's transaction rollback.

The check order is QEMU's: ``bdrv_open_inherit()`` / ``bdrv_open_common()`` for add,
``qmp_blockdev_reopen()`` / ``bdrv_reopen_queue_child()`` / ``bdrv_reopen_prepare()`` /
``bdrv_reopen_parse_file_or_backing()`` for reopen, ``qmp_blockdev_del()`` for del.
"""
from __future__ import annotations

import re
from typing import Any

from . import perms as P
from .errors import KnownQemuBug, NotModeled, QmpFailure
from .devices import reconcile_attach
from .drivers import DRIVERS, FILE_FIRST
from . import limits as L
from .graph import ROLE_COW, ROLE_DATA, ROLE_FILTERED, Graph, Node
from .imagedata import CLUSTER, SECTOR
from .profiles import VersionProfile
from .qapi import flatten, validate_blockdev_add, validate_blockdev_del, validate_blockdev_reopen
from .qdict import qdict_order

# Options every driver handles in bdrv_reopen_prepare(); omitting them never fails
# (bdrv_reset_options_allowed()).
COMMON_OPTIONS = ("node-name", "discard", "cache.direct", "cache.no-flush", "read-only",
                  "auto-read-only", "detect-zeroes")
# bdrv_runtime_opts that bdrv_reopen_prepare() puts back for the final comparison.
PUT_BACK_GENERIC = ("node-name", "driver", "force-share")

from .drivers import QCOW2_RUNTIME  # noqa: E402
#: drivers whose nodes a compress filter can sit on (``block_driver_can_compress()``)
COMPRESSIBLE = ("qcow2", "throttle", "copy-on-read")
# file-posix's raw_reopen_prepare() absorbs its runtime options, consumes these two and puts the
# rest back *as strings* (qemu_opts_to_qdict()).
FILE_CONSUMED = ("drop-cache", "x-check-cache-dropped")
FILE_PUT_BACK = ("filename", "pr-manager", "locking", "aio", "aio-max-batch")

_FROM_FILENAME = "\0from-filename"  # marker: options made up from a filename, not given
_NODE_NAME_OK = re.compile(r"[A-Za-z][A-Za-z0-9\-._]*\Z")


# --------------------------------------------------------------------------------------------
# small helpers

def _bool_opt(v: Any, default: bool = False) -> bool:
    """Parse a QemuOpts boolean the way qemu_opt_get_bool() sees a flattened QDict value."""
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    return v == "on"


def qemu_opt_str(v: Any) -> str:
    """How a QObject scalar reads back from QemuOpts (qemu_opts_to_qdict() gives strings)."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _lookup_bs(g: Graph, ref: str) -> Node:
    """``bdrv_lookup_bs(ref, ref)``: a device name or a node name (no devices here)."""
    n = g.get(ref)
    if n is None:
        raise QmpFailure(f"Cannot find device='{ref}' nor node-name='{ref}'")
    return n


def _extract(options: dict, prefix: str) -> dict:
    """``qdict_extract_subqdict()``: move ``prefix.*`` keys out of ``options``."""
    out = {}
    for k in [k for k in options if k.startswith(prefix)]:
        out[k[len(prefix):]] = options.pop(k)
    return out


def inherit_options(role: str, child: dict, parent: dict) -> None:
    """``bdrv_inherited_options()``: defaults a child takes from its parent's options."""
    for key in ("cache.direct", "cache.no-flush", "force-share"):
        if key not in child and key in parent:
            child[key] = parent[key]
    if role == ROLE_COW:
        child.setdefault("read-only", "on")
        child.setdefault("auto-read-only", "off")
    else:
        for key in ("read-only", "auto-read-only"):
            if key not in child and key in parent:
                child[key] = parent[key]
    child.setdefault("discard", "unmap")


def _host_sectors(g: Graph, filename: str) -> int:
    """The host file's length rounded up to whole sectors (``bdrv_refresh_total_sectors()``)."""
    return -(-g.images[filename].host_length() // SECTOR) * SECTOR


def node_length(g: Graph, n: Node) -> int:
    """``bdrv_getlength()`` of a node.  Regular files have no variable length, so file, raw and
    filter nodes answer from ``total_sectors``, which is refreshed when the node is opened or
    reopened (``bdrv_refresh_total_sectors()``) and grows only by the node's own writes past
    its end."""
    if g.profile is not None and n.drv in g.profile.variable_length_drivers:
        return refreshed_length(g, n)
    if n.drv == "qcow2":
        return g.images[n.filename].size
    if n.drv in DRIVERS:
        return n.cached_length
    raise NotModeled(n.drv)


def refreshed_length(g: Graph, n: Node) -> int:
    """What ``bdrv_refresh_total_sectors()`` sets: the driver's own idea of the length."""
    if n.drv == "file":
        return _host_sectors(g, n.filename)
    if n.drv == "qcow2":
        return g.images[n.filename].size
    if n.drv == "raw":
        flen = node_length(g, g.nodes[n.child("file").child])
        if flen < n.raw_offset:
            return 0
        size = min(n.raw_size, flen - n.raw_offset) if n.raw_size is not None else flen - n.raw_offset
        return -(-size // SECTOR) * SECTOR  # total_sectors is whole sectors
    if n.drv == "null-co":
        return -(-n.cached_length // SECTOR) * SECTOR
    if n.drv == "quorum":
        # quorum_co_getlength(): children.0's length; differing children are not modelled
        lengths = {node_length(g, g.nodes[c.child]) for c in n.children}
        if len(lengths) != 1:
            raise NotModeled("quorum children of different lengths")
        return lengths.pop()
    if n.drv == "blkverify":
        return node_length(g, g.nodes[n.child("test").child])
    d = DRIVERS.get(n.drv)
    if d is not None and d.is_filter:
        return node_length(g, g.nodes[n.child(d.children[0][0]).child])
    raise NotModeled(n.drv)


def throttle_check_group(g: Graph, options: dict) -> str:
    """``throttle_parse_options()``."""
    group = options.get("throttle-group")
    if group is None:
        raise QmpFailure("Please specify a throttle group")
    obj = g.objects.get(group)
    if obj is None or obj.qom_type != "throttle-group":
        raise QmpFailure(f"Throttle group '{group}' does not exist")
    return group


def _array_entries(options: dict, prefix: str) -> int:
    """``qdict_array_entries()`` for the forms QAPI lets through: ``prefix.0``, ``prefix.1``..."""
    count = 0
    while any(k == f"{prefix}.{count}" or k.startswith(f"{prefix}.{count}.") for k in options):
        count += 1
    return count


def _qcow2_image_of(g: Graph, file_node: Node) -> str:
    """The image a qcow2 node opens through its file child (``qcow2_do_open()`` reads the
    header).  Only a file node on a qcow2 image is modelled as a success; any other child
    whose first bytes the model knows and which are not the qcow2 magic is refused."""
    from . import iodata

    leaf = iodata.storage_leaf(g, file_node)
    if leaf.drv == "file":
        img = g.images[leaf.filename]
        if img.fmt == "qcow2":
            return img.file
    if node_length(g, file_node) < SECTOR:
        raise NotModeled("qcow2 over a child shorter than its header")
    head = iodata.read(g, file_node, 0, 4)
    if head is None or head == b"QFI\xfb":
        raise NotModeled("qcow2 over a child whose first bytes may be a qcow2 header")
    raise QmpFailure("Image is not in qcow2 format")


# --------------------------------------------------------------------------------------------
# driver option checks (shared by open and reopen)

def qcow2_check_options(g: Graph, image: str, opts: dict) -> None:
    """``qcow2_update_options_prepare()`` / ``read_cache_sizes()``."""
    size = g.images[image].size
    max_l2_entries = -(-size // CLUSTER)
    max_l2_cache = -(-(max_l2_entries * 8) // CLUSTER) * CLUSTER
    combined_set = "cache-size" in opts
    l2_set = "l2-cache-size" in opts
    refcount_set = "refcount-cache-size" in opts
    entry_set = "l2-cache-entry-size" in opts
    combined = opts.get("cache-size", 0)
    l2_max_setting = opts.get("l2-cache-size", 32 * 1024 * 1024)
    refcount = opts.get("refcount-cache-size", 0)
    entry = opts.get("l2-cache-entry-size", CLUSTER)
    l2 = min(max_l2_cache, l2_max_setting)
    if combined_set:
        if l2_set and refcount_set:
            raise QmpFailure("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
        if l2_set and l2_max_setting > combined:
            raise QmpFailure("l2-cache-size may not exceed cache-size")
        if refcount > combined:
            raise QmpFailure("refcount-cache-size may not exceed cache-size")
        min_refcount = 4 * CLUSTER
        if l2_set:
            refcount = combined - l2
        elif refcount_set:
            l2 = combined - refcount
        elif combined >= max_l2_cache + min_refcount:
            l2 = max_l2_cache
            refcount = combined - l2
        else:
            refcount = min(combined, min_refcount)
            l2 = combined - refcount
    if l2 < max_l2_cache and not entry_set:
        entry = min(CLUSTER, 4096)
    if entry < 512 or entry > CLUSTER or entry & (entry - 1):
        raise QmpFailure("L2 cache entry size must be a power of two between 512 and the cluster size (65536)")
    if max(l2 // entry, 4) > 2**31 - 1:
        raise QmpFailure("L2 cache size too big")
    if max(refcount // CLUSTER, 4) > 2**31 - 1:
        raise QmpFailure("Refcount cache size too big")
    if opts.get("cache-clean-interval", 600) > 2**32 - 1:
        raise QmpFailure("Cache clean interval too big")


def _qcow2_refuse_unmodelled(options: dict) -> None:
    """qcow2 options outside the model: overlap checks, encryption, external data files, and
    lazy refcounts (they set the header's dirty bit, which query reports)."""
    for k in ("overlap-check", "encrypt", "data-file"):
        if any(key == k or key.startswith(k + ".") for key in options):
            raise NotModeled(f"qcow2 option {k}")
    if _bool_opt(options.get("lazy-refcounts")):
        raise NotModeled("lazy-refcounts=on (dirty bit) is not modelled")


def raw_check_options(g: Graph, file_child: Node, opts: dict) -> tuple[int, int | None]:
    """``raw_read_options()`` + ``raw_apply_options()`` against the current file child."""
    offset = opts.get("offset", 0)
    size = opts.get("size")
    real = node_length(g, file_child)
    if offset > real:
        raise QmpFailure(f"Offset ({offset}) cannot be greater than size of the containing file ({real})")
    if size is not None and real - offset < size:
        raise QmpFailure(f"The sum of offset ({offset}) and size ({size}) has to be smaller or equal "
                         f"to the  actual size of the containing file ({real})")
    if size is not None and size % SECTOR:
        raise QmpFailure("Specified size is not multiple of 512")
    return offset, size


def check_generic_flags(options: dict, read_only: bool) -> tuple[str, str, bool]:
    """``bdrv_open_common()``'s checks of the generic options; returns discard,
    detect-zeroes and force-share."""
    force_share = _bool_opt(options.get("force-share"))
    if force_share and not read_only:
        raise QmpFailure("force-share=on can only be used with read-only images")
    discard = options.get("discard", "ignore")
    detect = options.get("detect-zeroes", "off")
    if detect == "unmap" and discard != "unmap":
        raise QmpFailure("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
    return discard, detect, force_share


# --------------------------------------------------------------------------------------------
# blockdev-add

class _Opener:
    """One ``bdrv_open_inherit()`` call tree."""

    def __init__(self, g: Graph):
        self.g = g

    def assign_name(self, explicit: str | None) -> tuple[str, bool]:
        """``bdrv_assign_node_name()``."""
        g = self.g
        if explicit is None:
            return g.next_auto_name(), True
        if not _NODE_NAME_OK.match(explicit):
            raise QmpFailure(f"Invalid node-name: '{explicit}'")
        if explicit in g.nodes:
            raise QmpFailure(f"Duplicate nodes with node-name='{explicit}'")
        if len(explicit) >= 32:
            raise QmpFailure("Node name too long")
        return explicit, False

    def open(self, options: dict, parent_options: dict | None = None, role: str | None = None,
             filename: str | None = None, parent_name: str | None = None) -> Node:
        """Open one node (``bdrv_open_inherit()``); a child gets its parent's options to inherit
        from and, once the parent has a name, ``inherits_from`` (a non-protocol node's ``file``
        child is opened before that)."""
        g = self.g
        from_filename = options.pop(_FROM_FILENAME, False)
        explicit = {} if from_filename else dict(options)
        if parent_options is not None:
            inherit_options(role, options, parent_options)
        drv = options.get("driver")
        if drv not in DRIVERS:
            raise NotModeled(f"driver {drv!r}")
        d = DRIVERS[drv]
        read_only = _bool_opt(options.get("read-only"))

        # Non-protocol drivers get their file child opened (and named) before themselves.
        file_edge_target: Node | None = None
        file_role = None
        file_inline = False
        if drv in FILE_FIRST:
            if drv == "raw":
                file_role = ROLE_DATA if (options.get("offset") or "size" in options) else ROLE_FILTERED
            else:
                file_role = dict(d.children)["file"]
            ref = options.get("file")
            if isinstance(ref, str):
                file_edge_target = _lookup_bs(g, ref)
            else:
                child_opts = _extract(options, "file.")
                if filename is not None and not child_opts:
                    # bdrv_open_child_bs(filename, ...): the filename and the probed protocol
                    # driver enter the child's options after its explicit_options were taken
                    child_opts = {"driver": "file", "filename": filename, _FROM_FILENAME: True}
                # inherits from the parent's options as they are when the child is opened
                file_edge_target = self.open(child_opts, options, file_role)
                file_inline = True

        discard, detect, force_share = check_generic_flags(options, read_only)
        name, auto = self.assign_name(options.get("node-name"))
        g.seq += 1
        node = Node(name=name, auto_named=auto, drv=drv, options={}, explicit={},
                    read_only=read_only, cache_direct=_bool_opt(options.get("cache.direct")),
                    cache_no_flush=_bool_opt(options.get("cache.no-flush")), discard=discard,
                    detect_zeroes=detect, force_share=force_share, seq=g.seq,
                    inherits_from=parent_name)
        g.nodes[name] = node
        if file_edge_target is not None and file_inline:
            file_edge_target.inherits_from = name  # opened from a nested dict: inherited

        if file_edge_target is not None:
            if drv == "throttle" and file_edge_target.ctx != "main" and g.guard_known_crashes:
                # QEMU bug (7.2 and 10.0): throttle_open() attaches its file child before it
                # joins its group; the attach moves the new node into the child's iothread and
                # throttle_attach_aio_context() dereferences the missing group: SIGSEGV
                # (corpus/findings/throttle-over-iothread-node-segv.json)
                raise KnownQemuBug("known QEMU crash: a throttle node over a node in an iothread")
            # The driver attaches the (already opened) file child first; every attach
            # refreshes permissions from the parent down (bdrv_attach_child()).
            reconcile_attach(g, node, file_edge_target)
            g.attach(node, file_edge_target, "file", file_role)
            P.refresh(g, [node.name])

        if drv == "file":
            fn = options["filename"]
            if fn not in g.images:
                raise QmpFailure(f"Could not open '{fn}': No such file or directory")
            if options.get("aio") in ("native", "io_uring") or options.get("pr-manager") is not None:
                raise NotModeled("aio=native/io_uring and pr-manager are not modelled")
            node.filename = fn
            node.locking = options.get("locking", "auto") != "off"
            node.cached_length = refreshed_length(g, node)
        elif drv == "qcow2":
            _qcow2_refuse_unmodelled(options)
            if g.reaches_stuck(file_edge_target) and g.guard_known_crashes:
                # reading the header through a node a known 10.0 bug left drained never ends
                raise KnownQemuBug("known QEMU hang: qcow2 header read through a drained node")
            try:
                node.filename = _qcow2_image_of(g, file_edge_target)
                qcow2_check_options(g, node.filename, options)
            except QmpFailure:
                if file_edge_target.ctx != "main" and g.guard_known_crashes:
                    # QEMU bug (7.2 SIGABRT in qemu_mutex_unlock_impl, 10.0 a hang most of
                    # the time, 11.1 SIGABRT in bdrv_drain_all_end): a qcow2 open that fails
                    # over a child in an iothread
                    # (corpus/findings/qcow2-failed-open-over-iothread-node-abort.json)
                    raise KnownQemuBug("known QEMU crash: a failing qcow2 open over a node in "
                                     "an iothread") from None
                raise
        elif drv == "raw":
            node.raw_offset, node.raw_size = raw_check_options(g, file_edge_target, options)
            node.cached_length = refreshed_length(g, node)
        elif drv == "throttle":
            node.throttle_group = throttle_check_group(g, options)
        elif drv == "compress":
            if file_edge_target.drv not in COMPRESSIBLE:
                raise QmpFailure("Compression is not supported for underlying format: "
                                 f"{file_edge_target.drv}")
        elif drv == "null-co":
            node.cached_length = options.get("size", 1 << 30)
            if node.cached_length < 0:
                raise NotModeled("negative null-co size")
            node.read_zeroes = _bool_opt(options.get("read-zeroes"))
        elif drv == "blkdebug":
            config = options.get("config")
            if config is not None and config != "/dev/null":
                raise NotModeled("blkdebug config files other than /dev/null")
            self.open_child(node, options, "image", ROLE_FILTERED)
            align = options.get("align", 0)
            if align and (align >= 2**31 - 1 or align & (align - 1) or align < 0):
                raise QmpFailure(f"Cannot meet constraints with align {align % 2**64}")
            if align > 512:
                raise NotModeled("blkdebug align > 512 (request alignment rules)")
        elif drv == "quorum":
            count = _array_entries(options, "children")
            if count < 1:
                raise QmpFailure("Number of provided children must be 1 or more")
            threshold = options["vote-threshold"]
            if threshold < 1:
                raise QmpFailure("Parameter 'vote-threshold' expects a value >= 1")
            if threshold > count:
                raise QmpFailure("threshold may not exceed children count")
            for i in range(count):
                self.open_child(node, options, f"children.{i}", ROLE_DATA)
        elif drv == "blkverify":
            self.open_child(node, options, "raw", ROLE_FILTERED)
            self.open_child(node, options, "test", ROLE_DATA)
        elif drv == "copy-on-read":
            pass
        if d.is_filter or drv in ("null-co", "quorum"):
            node.cached_length = refreshed_length(g, node)

        if drv == "qcow2":
            self.open_backing(node, options)

        # bs->options / explicit_options without child keys
        child_names = {c.name for c in node.children} | {"backing", "file"}
        node.options = {k: v for k, v in options.items()
                        if k not in child_names and not any(k.startswith(c + ".") for c in child_names)}
        node.explicit = {k: v for k, v in explicit.items()
                         if k not in child_names and not any(k.startswith(c + ".") for c in child_names)}
        # bdrv_open_driver() after .bdrv_open attached the children, and for qcow2 again when
        # bdrv_open_backing_file() set the backing: the last of them is what stays
        L.refresh(g, node)
        return node

    def open_child(self, node: Node, options: dict, child_name: str, role: str) -> Node:
        """``bdrv_open_child()`` inside a driver's open: a reference or a nested dict (opened
        now, after the parent got its name), then attached."""
        g = self.g
        ref = options.get(child_name)
        if isinstance(ref, str):
            target = _lookup_bs(g, ref)
        else:
            sub = _extract(options, child_name + ".")
            if not sub:
                raise NotModeled(f"child {child_name!r} without options")
            target = self.open(sub, options, role, parent_name=node.name)
        reconcile_attach(g, node, target)
        g.attach(node, target, child_name, role)
        P.refresh(g, [node.name])
        return target

    def open_backing(self, node: Node, options: dict) -> None:
        """``bdrv_open_backing_file()``: after the node itself is open."""
        g = self.g
        img = g.images[node.filename]
        node.auto_backing_file = img.backing_file or ""
        implicit = "backing" not in options and not any(k.startswith("backing.") for k in options)
        try:
            if "backing" in options:
                ref = options["backing"]
                if ref is None:
                    return
                if ref == "":
                    raise NotModeled("backing: '' (deprecated) is not modelled")
                target = _lookup_bs(g, ref)
            else:
                target = self._open_backing_node(node, options, img)
                if target is None:
                    return
        except QmpFailure as e:
            raise QmpFailure("Could not open backing file: " + e.desc) from None
        # bdrv_set_backing_hd(): not prefixed
        reconcile_attach(g, node, target)
        g.attach(node, target, "backing", ROLE_COW)
        L.refresh(g, node)   # bdrv_set_file_or_backing_noperm()
        P.refresh(g, [node.name])
        if implicit:
            # bdrv_open_backing_file(): implicit_backing -> auto_backing_file = child's filename
            from .query import refresh_filename
            node.auto_backing_file = refresh_filename(g, target).filename

    def _open_backing_node(self, node: Node, options: dict, img) -> Node | None:
        """The backing node from a ``backing.*`` dict or, failing that, the image header."""
        sub = _extract(options, "backing.")
        if sub:
            return self.open(sub, options, ROLE_COW, parent_name=node.name)
        if not img.backing_file:
            return None
        if not img.backing_format:
            raise NotModeled("header backing without a format (probing)")
        if img.backing_file not in self.g.images:
            raise NotModeled("missing header backing file")
        return self.open({"driver": img.backing_format}, options, ROLE_COW,
                         filename=img.backing_file, parent_name=node.name)


def blockdev_add(g: Graph, args: Any, profile: VersionProfile) -> None:
    validate_blockdev_add(args, profile)
    if not isinstance(args.get("node-name"), str):
        raise QmpFailure("'node-name' must be specified for the root node")
    options = flatten(args)
    options.setdefault("cache.direct", "off")
    options.setdefault("cache.no-flush", "off")
    options.setdefault("read-only", "off")
    top = _Opener(g).open(options)
    top.monitor_owned = True


# --------------------------------------------------------------------------------------------
# blockdev-reopen

class _Entry:
    """A BlockReopenQueueEntry."""

    def __init__(self, node: Node):
        self.node = node
        self.options: dict = {}
        self.explicit: dict = {}
        self.read_only = False
        self.cache_direct = False
        self.cache_no_flush = False
        self.backing_missing = False
        self.old_backing: str | None = None
        self.old_file: str | None = None
        self.discard = node.discard
        self.detect_zeroes = "off"
        self.raw: tuple[int, int | None] | None = None
        self.throttle_group: str | None = None


def _join_options(node: Node, options: dict, old: dict) -> None:
    """``bdrv_join_options()``, with ``qcow2_join_options()``'s cache rules for qcow2."""
    old = dict(old)
    new_total = "cache-size" in options
    if node.drv == "qcow2" and new_total:
        # a new total cache size overrides all old cache options
        old.pop("l2-cache-size", None)
        old.pop("refcount-cache-size", None)
    for k, v in old.items():
        if k not in options:
            options[k] = v
    if node.drv == "qcow2" and not new_total and any(
            k in options for k in ("cache-size", "l2-cache-size", "refcount-cache-size")):
        # QEMU's "has_all_cache_options" is an OR: any cache option drops an old total size
        options.pop("cache-size", None)


def _queue_child(g: Graph, queue: list[_Entry], node: Node, options: dict | None,
                 role: str | None, parent_options: dict | None, keep_old: bool) -> None:
    """``bdrv_reopen_queue_child()``."""
    options = dict(options or {})
    entry = next((e for e in queue if e.node is node), None)
    if entry is not None and g.profile.reopen_duplicate_drain_leak:
        g.stuck.add(node.name)
    if entry is not None or keep_old:
        _join_options(node, options, entry.explicit if entry is not None else node.explicit)
    explicit = dict(options)
    if parent_options is not None:
        inherit_options(role, options, parent_options)
    if keep_old:
        _join_options(node, options, node.options)
    if entry is None:
        entry = _Entry(node)
        queue.append(entry)
    entry.options = options
    entry.explicit = explicit
    entry.read_only = _bool_opt(options.get("read-only"))
    entry.cache_direct = _bool_opt(options.get("cache.direct"))
    entry.cache_no_flush = _bool_opt(options.get("cache.no-flush"))
    if not keep_old:
        entry.backing_missing = "backing" not in options and "backing.driver" not in options
    for c in list(node.children):
        child = g.nodes[c.child]
        if child.inherits_from != node.name:
            continue
        new_child_options = None
        child_keep_old = keep_old
        if c.name in options:
            if options[c.name] != child.name:
                continue
            child_keep_old = True
        else:
            prefix = c.name + "."
            _extract(explicit, prefix)
            new_child_options = _extract(options, prefix)
        _queue_child(g, queue, child, new_child_options, c.role, options, child_keep_old)


def _parse_file_or_backing(g: Graph, e: _Entry, is_backing: bool) -> None:
    """``bdrv_reopen_parse_file_or_backing()`` + ``bdrv_set_file_or_backing_noperm()``."""
    bs = e.node
    child_name = "backing" if is_backing else "file"
    if child_name not in e.options:
        return
    value = e.options[child_name]
    if value is None:
        new = None
    else:
        new = g.get(value)
        if new is None:
            raise QmpFailure(f"Cannot find device='' nor node-name='{value}'")
        if g.has_child_recursive(new, bs.name):
            raise QmpFailure(f"Making '{value}' a {child_name} child of '{bs.name}' would create a cycle")
    d = DRIVERS[bs.drv]
    # bs->file is the child opened with bdrv_open_file_child(): "image" for blkdebug, "raw"
    # for blkverify; the replacement is attached under the name "file" all the same
    old_edge = bs.child(child_name)
    if not is_backing and old_edge is None and d.protocol and d.is_filter:
        old_edge = bs.child(d.children[0][0])
    old = g.nodes[old_edge.child] if old_edge else None
    if old is new:
        return
    if old is not None:
        if g.skip_implicit_filters(old) is new:
            return
        if old.implicit:
            raise QmpFailure(f"Cannot replace implicit {child_name} child of {bs.name}")
    if d.is_filter and old is None:
        raise QmpFailure(f"'{bs.name}' is a {bs.drv} filter node that does not support a {child_name} child")
    if old_edge is not None and old_edge.frozen:
        raise QmpFailure(f"Cannot change frozen '{child_name}' link from '{bs.name}' to '{old.name}'")
    if is_backing and not d.is_filter and not d.supports_backing:
        raise QmpFailure(f"Driver '{bs.drv}' of node '{bs.name}' does not support backing files")
    if d.is_filter:
        role = ROLE_FILTERED
    elif is_backing:
        role = ROLE_COW
    else:
        if old_edge is None:
            raise QmpFailure("Cannot set file child to format node without file child")
        role = old_edge.role
    update_inherits = new is not None and g.inherits_from_recursive(new, bs.name)
    if old_edge is not None:
        if is_backing:
            e.old_backing = old.name
        else:
            e.old_file = old.name
        g.unset_inherits_from(bs.name, old_edge)
        g.remove_child(old_edge)
    if new is not None:
        reconcile_attach(g, bs, new)
        g.attach(bs, new, child_name, role)
        if update_inherits:
            new.inherits_from = bs.name
    L.refresh(g, bs)   # bdrv_set_file_or_backing_noperm()


def _prepare(g: Graph, e: _Entry, profile: VersionProfile) -> None:
    """``bdrv_reopen_prepare()`` for one queue entry."""
    bs = e.node
    # generic runtime options
    if "discard" in e.options:
        e.discard = e.options["discard"]
    e.detect_zeroes = e.options.get("detect-zeroes", "off")
    if e.detect_zeroes == "unmap" and e.discard != "unmap":
        raise QmpFailure("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
    # what is left for the final comparison: generic options are consumed, and node-name,
    # driver and force-share come back as strings (qemu_opts_to_qdict())
    remaining = {k: v for k, v in e.options.items() if k not in PUT_BACK_GENERIC and k not in COMMON_OPTIONS}
    for k in PUT_BACK_GENERIC:
        if k in e.options:
            remaining[k] = qemu_opt_str(e.options[k])
    d = DRIVERS[bs.drv]
    if not d.reopen:
        raise QmpFailure(f"Block format '{bs.drv}' used by node '{bs.name}' does not support reopening files")
    # reset-to-default (bdrv_reset_options_allowed), in QDict order of the old options
    for key in qdict_order(bs.options):
        if key not in e.options and key not in COMMON_OPTIONS and key not in d.mutable:
            raise QmpFailure(f"Option '{key}' cannot be reset to its default value")
    # driver prepare
    for k in d.absorbed:
        remaining.pop(k, None)
    if bs.drv == "throttle":
        e.throttle_group = throttle_check_group(g, e.options)
    elif bs.drv == "qcow2":
        _qcow2_refuse_unmodelled(e.options)
        qopts = {k: e.options[k] for k in QCOW2_RUNTIME if k in e.options}
        qcow2_check_options(g, bs.filename, qopts)
        for k in QCOW2_RUNTIME:
            remaining.pop(k, None)
    elif bs.drv == "file":
        # file-posix's reopen changes none of these; they are compared below
        for k in FILE_CONSUMED:
            remaining.pop(k, None)
        for k in FILE_PUT_BACK:
            if k in remaining:
                v = remaining.pop(k)
                remaining[k] = qemu_opt_str(v)
    elif bs.drv == "raw":
        e.raw = raw_check_options(g, g.nodes[bs.child("file").child],
                                  {k: e.options[k] for k in ("offset", "size") if k in e.options})
        remaining.pop("offset", None)
        remaining.pop("size", None)
    # backing is missing
    if d.supports_backing and e.backing_missing and (bs.child("backing") or g.images[bs.filename].backing_file):
        raise QmpFailure(f"backing is missing for '{bs.name}'")
    _parse_file_or_backing(g, e, True)
    remaining.pop("backing", None)
    _parse_file_or_backing(g, e, False)
    remaining.pop("file", None)
    # leftover options must be unchanged
    for key in qdict_order(remaining):
        new = remaining[key]
        old = bs.options.get(key, _MISSING)
        if isinstance(new, str):
            c = bs.child(key)
            if c is not None and c.child == new:
                continue
        if not _qobject_equal(new, old):
            if bs.drv == "qcow2" and e.old_file is not None:
                # qcow2_reopen_abort() runs inside bdrv_reopen_prepare(), before the
                # transaction puts the old file child back: s->data_file keeps the new one,
                # which the abort then frees.  QEMU reports it as an external data file.
                g.dangling_data_file.add(bs.name)
            raise QmpFailure(f"Cannot change the option '{key}'")


_MISSING = object()


def _qobject_equal(a: Any, b: Any) -> bool:
    """``qobject_is_equal()``: different QTypes are never equal (bool is not int here)."""
    if b is _MISSING:
        return False
    if type(a) is not type(b):
        return False
    return a == b


def _commit(g: Graph, e: _Entry) -> None:
    """``bdrv_reopen_commit()``."""
    bs = e.node
    child_names = {c.name for c in bs.children} | {"backing"}
    bs.options = {k: v for k, v in e.options.items() if k not in child_names}
    bs.explicit = {k: v for k, v in e.explicit.items() if k not in child_names}
    bs.read_only = e.read_only
    bs.cache_direct = e.cache_direct
    bs.cache_no_flush = e.cache_no_flush
    bs.discard = e.discard
    bs.detect_zeroes = e.detect_zeroes
    if e.raw is not None:
        bs.raw_offset, bs.raw_size = e.raw
    if e.throttle_group is not None:
        bs.throttle_group = e.throttle_group  # throttle_reopen_commit() switches groups
    if bs.drv not in ("qcow2", "null-co") and g.profile.reopen_refreshes_length:
        bs.cached_length = refreshed_length(g, bs)
    L.refresh(g, bs)   # bdrv_reopen_commit(): children first (the caller's reverse order)


def blockdev_reopen(g: Graph, args: Any, profile: VersionProfile) -> None:
    elements = validate_blockdev_reopen(args, profile)
    queue: list[_Entry] = []
    for element in elements:
        name = element.get("node-name")
        if name is None:
            raise QmpFailure("node-name not specified")
        node = g.get(name)
        if node is None:
            raise QmpFailure(f"Failed to find node with node-name='{name}'")
        _queue_child(g, queue, node, flatten(element), None, None, False)
    reopen_multiple(g, queue, profile)


def reopen_set_read_only(g: Graph, node: Node, read_only: bool) -> None:
    """``bdrv_reopen_set_read_only()``: reopen keeping the old options, flipping read-only."""
    queue: list[_Entry] = []
    _queue_child(g, queue, node, {"read-only": read_only}, None, None, True)
    reopen_multiple(g, queue, g.profile)


def reopen_multiple(g: Graph, queue: list, profile: VersionProfile) -> None:
    """``bdrv_reopen_multiple()``: prepare every entry, refresh permissions, commit."""
    if g.stuck and g.jobs and g.guard_known_crashes:
        from .jobs import job_nodes
        # draining a node drains its parents too: a job on any ancestor of a stuck node stalls
        if any(g.reaches_stuck(g.nodes[n]) for j in g.jobs.values() for n in job_nodes(g, j)
               if n in g.nodes):
            raise KnownQemuBug("known QEMU bug: the reopen leaves a job's node drained; the job "
                             "never settles (VersionProfile.reopen_duplicate_drain_leak)")
    for i, e in enumerate(queue):
        _prepare(g, e, profile)
        if profile.reopen_detached_entry_asserts and g.guard_known_crashes:
            later = {f.node.name for f in queue[i + 1:]}
            if {e.old_backing, e.old_file} & later:
                raise KnownQemuBug("known QEMU 7.2 abort: the reopen detaches a node that a later "
                                 "entry of the same queue reopens")
    refresh_list: list[str] = []
    for e in queue:
        refresh_list.insert(0, e.node.name)
        if e.old_backing:
            refresh_list.insert(0, e.old_backing)
        if e.old_file:
            refresh_list.insert(0, e.old_file)
    writable = {e.node.name: not e.read_only for e in queue}
    P.refresh(g, refresh_list, writable)
    for e in reversed(queue):
        _commit(g, e)
    # Old children that nothing references any more are closed when the transaction commits.
    before = set(g.nodes)
    for e in queue:
        for old in (e.old_backing, e.old_file):
            n = g.get(old) if old else None
            if n is not None and g.refcount(n) == 0:
                g.unref(n)
    closed = before - set(g.nodes)
    if closed & {e.node.name for e in queue} and g.guard_known_crashes:
        # QEMU (7.2 and 10.0) crashes with SIGSEGV here: the queue entry of a node that the
        # reopen itself closes is used after the node was freed.
        # corpus/findings/reopen-closes-queued-node-segv.json
        raise KnownQemuBug("known QEMU crash: the reopen closes a node that is in its own queue")


# --------------------------------------------------------------------------------------------
# blockdev-del

def op_blocker(g: Graph, node: Node) -> str | None:
    """The reason of the newest op blocker on ``node`` (``bdrv_op_is_blocked()`` reports
    ``QLIST_FIRST``): a COW parent's "node is used as backing hd of ..." (``bdrv_backing_attach()``)
    or a job's "block device is in use by block job: ..." (``block_job_add_bdrv()``)."""
    reasons = [(c.seq, f"node is used as backing hd of '{c.parent}'")
               for c in node.parents if c.role == ROLE_COW]
    for j in g.jobs.values():
        seq = j.blocks.get(node.name)
        if seq is not None:
            reasons.append((seq, f"block device is in use by block job: {j.type}"))
    return max(reasons)[1] if reasons else None


def blockdev_del(g: Graph, args: Any) -> None:
    name = validate_blockdev_del(args)
    node = g.get(name)
    if node is None:
        raise QmpFailure(f"Failed to find node with node-name='{name}'")
    if g.has_blk(name):
        raise QmpFailure(f"Node {name} is in use")
    reason = op_blocker(g, node)
    if reason is not None:
        raise QmpFailure(f"Node '{name}' is busy: {reason}")
    if not node.monitor_owned:
        raise QmpFailure(f"Node {name} is not owned by the monitor")
    if g.refcount(node) > 1:
        raise QmpFailure(f"Block device {name} is in use")
    node.monitor_owned = False
    g.unref(node)
