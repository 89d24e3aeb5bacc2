"""blockdev-add and blockdev-del: ``bdrv_open_inherit()`` for a tree of options, and
``qmp_blockdev_del()``.  (blockdev-reopen is ``models.reopen``.)

Each function takes a *clone* of the graph (see ``Graph.clone``) and either returns normally,
leaving the clone in the state QEMU reaches, or raises ``QmpFailure`` with the exact error text;
the caller then throws the clone away, which is QEMU's transaction rollback.

The check order is QEMU's: ``bdrv_open_inherit()`` / ``bdrv_open_common()`` for add, then the
driver's ``.bdrv_open`` (``BlockDriver.open`` in ``models.drivers``); ``qmp_blockdev_del()``
for del.
"""
from __future__ import annotations

from typing import Any

from . import limits as L
from . import perms as P
from .aio import reconcile_attach
from .drivers import DRIVERS
from .errors import NeverAnswers, NotModeled, QmpFailure
from .filenames import full_backing_filename, refresh_filename
from .graph import ROLE_COW, Graph, Node, assign_node_name, op_blocker
from .imagedata import Image
from .options import bool_opt, extract
from .probing import find_image_format
from .profiles import VersionProfile
from .qapi import flatten, validate_blockdev_add, validate_blockdev_del, visit_arguments
from .arguments import X_BLOCKDEV_CHANGE
from .values import header_file

__all__ = ["QmpFailure", "ROLE_COW", "blockdev_add", "blockdev_del", "inherit_options", "x_blockdev_change"]

_FROM_FILENAME = "\0from-filename"  # marker: options made up from a filename, not given
_PROBED = "\0probed"  # marker: the driver is what find_image_format() picked, not given


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


def check_generic_flags(options: dict, read_only: bool, needs_filename: bool,
                        drv: str) -> tuple[str, str, bool]:
    """``bdrv_open_common()``'s checks of the generic options in its order: force-share, the
    file name a driver needs, then discard and detect-zeroes (seen on 7.2.22, 10.0.2 and
    11.1.3: an empty filename comes before a detect-zeroes without discard); returns discard,
    detect-zeroes and force-share."""
    force_share = bool_opt(options.get("force-share"))
    if force_share and not read_only:
        raise QmpFailure("force-share=on can only be used with read-only images")
    if needs_filename and not options.get("filename"):
        # before bdrv_open_driver() names the node
        raise QmpFailure(f"The '{drv}' block driver requires a file name")
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
        #: the image files of the nodes whose header backing files are being opened, outermost
        #: first (_open_backing_node)
        self._headers: list[str] = []

    def open(self, options: dict, parent_options: dict | None = None, role: str | None = None,
             filename: str | None = None, parent_name: str | None = None) -> Node:
        """Open one node (``bdrv_open_inherit()``); a child gets its parent's options to inherit
        from and, once the parent has a name, ``inherits_from`` (a non-protocol node's ``file``
        child is opened before that)."""
        g = self.g
        from_filename = options.pop(_FROM_FILENAME, False)
        probed = options.pop(_PROBED, False)
        # bdrv_open_inherit() takes explicit_options before it probes and adds "driver"
        explicit = {} if from_filename else {k: v for k, v in options.items()
                                             if not (probed and k == "driver")}
        if parent_options is not None:
            assert role is not None, "a child is opened with the role its parent gives it"
            inherit_options(role, options, parent_options)
        drv = options.get("driver")
        if drv not in DRIVERS:
            raise NotModeled(f"driver {drv!r}")
        d = DRIVERS[drv]
        if filename is not None and not d.protocol and not d.file_first:
            # bdrv_open_inherit() opens the file name as a 'file' BDS for probing and puts
            # its node name into the options of a driver that has no such child
            raise NotModeled(f"a file name for the {drv} driver, which has no file child (probing)")
        if filename is not None and d.protocol:
            # bdrv_fill_options(): a protocol node opened by file name (a header backing file
            # whose format a job wrote as "file", or an inline backing without file.filename)
            # takes it as its 'filename' option, after its explicit_options were taken; then
            # the driver's .bdrv_parse_filename
            if "filename" in options:
                raise QmpFailure("Can't specify 'file' and 'filename' options at the same time")
            parsed = d.parse_filename(filename)
            if parsed is not None:
                options["filename"] = parsed
        read_only = bool_opt(options.get("read-only"))

        # Non-protocol drivers get their file child opened (and named) before themselves.
        file_edge_target: Node | None = None
        file_role: str | None = None
        file_inline = False
        if d.file_first:
            file_role = d.file_role(options)
            ref = options.get("file")
            if isinstance(ref, str):
                if filename is not None:
                    # bdrv_open_child_bs(filename, ...) -> bdrv_open_inherit() with both
                    raise QmpFailure("Cannot reference an existing block device with "
                                     "additional options or a new filename")
                file_edge_target = g.lookup_bs(ref)
            else:
                child_opts = extract(options, "file.")
                child_filename = filename
                if filename is not None and not child_opts:
                    # bdrv_open_child_bs(filename, ...): the filename and the probed protocol
                    # driver enter the child's options after its explicit_options were taken
                    child_opts = {"driver": "file", "filename": header_file(filename),
                                  _FROM_FILENAME: True}   # raw_parse_filename() strips file:
                    child_filename = None
                # inherits from the parent's options as they are when the child is opened;
                # a file name goes on down (a format or filter child passes it to its own)
                file_edge_target = self.open(child_opts, options, file_role,
                                             filename=child_filename)
                file_inline = True

        discard, detect, force_share = check_generic_flags(options, read_only, d.needs_filename, drv)
        name, auto = assign_node_name(g, options.get("node-name"))
        g.seq += 1
        node = Node(name=name, auto_named=auto, drv=drv, driver=d, options={}, explicit={},
                    read_only=read_only, cache_direct=bool_opt(options.get("cache.direct")),
                    cache_no_flush=bool_opt(options.get("cache.no-flush")), discard=discard,
                    detect_zeroes=detect, force_share=force_share, seq=g.seq,
                    inherits_from=parent_name, probed=probed)
        g.nodes[name] = node
        if file_edge_target is not None and file_inline:
            file_edge_target.inherits_from = name  # opened from a nested dict: inherited

        if file_edge_target is not None:
            g.guard("attach-file", parent=node, child=file_edge_target)
            # The driver attaches the (already opened) file child first; every attach
            # refreshes permissions from the parent down (bdrv_attach_child()).
            reconcile_attach(g, node, file_edge_target)
            assert file_role is not None, "set together with file_edge_target"
            g.attach(node, file_edge_target, "file", file_role)
            P.refresh(g, [node.name])

        d.open(self, node, options, file_edge_target)

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
            target = g.lookup_bs(ref)
        else:
            sub = extract(options, child_name + ".")
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
        img = g.image(node)
        node.auto_backing_file = img.backing_file or ""
        implicit = "backing" not in options and not any(k.startswith("backing.") for k in options)
        try:
            if "backing" in options:
                ref = options["backing"]
                if ref is None:
                    return
                if ref == "":
                    raise NotModeled("backing: '' (deprecated) is not modelled")
                target = g.lookup_bs(ref)
            else:
                opened = self._open_backing_node(node, options, img)
                if opened is None:
                    return
                target = opened
        except QmpFailure as e:
            raise QmpFailure("Could not open backing file: " + e.desc) from None
        # bdrv_set_backing_hd(): not prefixed
        reconcile_attach(g, node, target)
        g.attach(node, target, "backing", ROLE_COW)
        L.refresh(g, node)   # bdrv_set_file_or_backing_noperm()
        P.refresh(g, [node.name])
        if implicit:
            # bdrv_open_backing_file(): implicit_backing -> auto_backing_file = child's filename
            node.auto_backing_file = refresh_filename(g, target).filename

    def _open_backing_node(self, node: Node, options: dict, img: Image) -> Node | None:
        """The backing node from a ``backing.*`` dict or, failing that, the image header."""
        sub = extract(options, "backing.")
        if sub:
            # bdrv_open_backing_file(): unless the options name file.filename, the header's
            # backing file name (bdrv_get_full_backing_filename()) goes into the open too,
            # down to the protocol node (probed on 7.2.22, 10.0.2 and 11.1.3:
            # corpus/probes/inline-backing-takes-the-header-name.json)
            fname = None
            if "file.filename" not in sub and img.backing_file:
                fname = full_backing_filename(self.g, node, img.backing_file, {})
                if fname is None:
                    raise NotModeled("an inline backing of a node without a directory")
            return self.open(sub, options, ROLE_COW, filename=fname, parent_name=node.name)
        if not img.backing_file:
            return None
        file = header_file(img.backing_file)
        if file not in self.g.images:
            raise NotModeled("missing header backing file")
        if self._headers.count(file) >= 2:
            # A header chain that loops (a block-stream's backing-file can write one).  The
            # first time round a file may fail on its lock (its read-write user is the top);
            # past that every turn opens the same read-only nodes again, and QEMU has no check
            # (bdrv_open_backing_file() recurses through bdrv_open_inherit() for ever, no
            # reply, memory growing: 7.2.22, 10.0.2 and 11.1.3; qemu-img's backing chain walk
            # does say "creates an infinite loop").
            self.g.guard("backing-loop", file=file)
            raise NeverAnswers(f"a header backing chain that loops back to {file}: QEMU opens "
                               "it without end")
        self._headers.append(img.file)
        try:
            return self._open_header_backing(node, options, img, file)
        finally:
            self._headers.pop()

    def _open_header_backing(self, node: Node, options: dict, img: Image, file: str) -> Node:
        if img.backing_format:
            # bdrv_open_backing_file(): the header's backing format is the driver
            return self.open({"driver": img.backing_format}, options, ROLE_COW,
                             filename=img.backing_file, parent_name=node.name)
        # no backing format: bdrv_open_inherit() opens the file, then find_image_format()
        # (probed on 7.2.22, 10.0.2 and 11.1.3: corpus/probes/header-backing-probed.json)
        fmt = find_image_format(self.g.images[file], file)
        return self.open({"driver": fmt, _PROBED: True}, options, ROLE_COW,
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
# blockdev-del

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


# --------------------------------------------------------------------------------------------
# x-blockdev-change

def x_blockdev_change(g: Graph, args: Any) -> None:
    """``qmp_x_blockdev_change()``: add a node as a new child of ``parent`` (``node``) or
    remove the child edge named ``child`` (``bdrv_add_child()`` / ``bdrv_del_child()`` in
    block.c; only quorum has the driver callbacks).

    Probed on 7.2.22, 10.0.2 and 11.1.3 (all alike): the parent is looked up before the
    member combination is checked; ``child`` is an edge name (``children.1``), looked up
    before the driver's support; a node to add must have no parent at all, BlockBackends of
    devices and jobs included."""
    args = visit_arguments(args, X_BLOCKDEV_CHANGE, g.qemu_profile)
    parent = g.lookup_bs(args["parent"])
    if "child" in args and "node" in args:
        raise QmpFailure("The parameters child and node are in conflict")
    if "child" not in args and "node" not in args:
        raise QmpFailure("Either child or node must be specified")
    d = parent.driver
    if "child" in args:
        edge = parent.child(args["child"])   # bdrv_find_child(): by edge name
        if edge is None:
            raise QmpFailure(f"Node '{args['parent']}' does not have child '{args['child']}'")
        if not d.changes_children:
            raise QmpFailure(f"The node {parent.name} does not support removing a child")
        g.guard("child-change", parent=parent, removing=True)
        d.del_child(g, parent, edge)
        return
    child = g.get(args["node"])   # bdrv_find_node()
    if child is None:
        raise QmpFailure(f"Node '{args['node']}' not found")
    if not d.changes_children:
        raise QmpFailure(f"The node {parent.name} does not support adding a child")
    if child.parents or g.job_parents(child.name):
        raise QmpFailure(f"The node {child.name} already has a parent")
    try:
        d.add_child(g, parent, child)
    except QmpFailure:
        g.guard("child-change", parent=parent, removing=False)
        raise
