"""``BlockDriver``: what one ``block/<driver>.c`` contributes to the model.

Each module of this package holds one driver class, as QEMU keeps one ``BlockDriver`` per
``block/<driver>.c``.  The generic code (``models.blockdev``, ``models.reopen``, ``models.perms``,
``models.lengths``, ``models.filenames``, ``models.limits``, ``models.iodata``, ``models.query``)
calls a node's driver through ``Node.driver`` and never names a driver itself.

Class attributes are the C structure's members that decide graph behaviour, so a QEMU developer
can check a driver against ``block/<driver>.c``:

* ``protocol`` -- ``.protocol_name`` is set.  ``bdrv_open_inherit()`` opens a non-protocol
  node's ``file`` child *before* the node itself (and so names it first); protocol drivers open
  their children inside ``.bdrv_open``, after the node got its name.
* ``is_filter`` -- ``.is_filter``: the filtered child is shown as ``backing-image``, the node
  never takes its child's plain filename, and a ``backing`` child cannot be added by reopen.
* ``can_reopen`` -- ``.bdrv_reopen_prepare`` exists; without it every reopen of the node fails
  with ``Block format '%s' used by node '%s' does not support reopening files``.
* ``mutable`` -- ``.mutable_opts``: options that may be omitted on reopen (reset to default).
* ``strong`` -- ``.strong_runtime_opts`` (``bdrv_refresh_filename()``); a trailing ``.`` is a
  prefix.
* ``absorbed`` -- options the driver's reopen-prepare consumes, so they are not compared by the
  final "Cannot change the option" check.
* ``children`` -- child names in the order the driver opens them, with their BdrvChildRole.

Methods are the callbacks (``.bdrv_open``, ``.bdrv_reopen_prepare``, ``.bdrv_child_perm``,
``.bdrv_co_getlength``, ``.bdrv_refresh_filename``, ``.bdrv_refresh_limits``,
``.bdrv_get_info``, ``.bdrv_co_preadv``, ...).  The defaults here are what ``block.c`` does
for a driver that leaves the callback NULL, or what the model does for a driver whose data it
does not know (reads unknown, writes not modelled).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from .. import iodata, lengths, perms
from ..errors import NotModeled
from ..graph import ROLE_FILTERED, Graph, Node
from ..profiles import VersionProfile
from ..qapitypes import REF, Member

if TYPE_CHECKING:
    from ..filenames import Filename


# -- generation ---------------------------------------------------------------------------------
# What the fuzzer draws for a driver's blockdev-add (``fuzz.statemachine.add_args``).  Plain
# data, so that the model stays free of Hypothesis and a new driver module is generated without
# an edit to the generator.  A value that is one of these sources stands for values drawn at
# that moment:

NODE = "<an existing node-name>"
FILE = "<an image file of the trace>"
GROUP = "<an existing throttle-group id>"
#: a child: an existing node, or an inline file or qcow2-over-file tree
CHILD = "<a child reference or tree>"
#: a format's ``file``: an existing node now and then, mostly an inline file node
FILE_CHILD = "<a protocol child>"
#: a list of up to three existing nodes (or a missing one), now and then with an inline tree
CHILDREN = "<a list of children>"

#: node-names formats are drawn with (and, now and then, a bad or duplicate name)
FORMAT_NAMES = ("hd0", "hd1", "hd2", "hd3", "hd4", "f0", "f1", "r0", "r1")
#: node-names filters and other drivers are drawn with
FILTER_NAMES = ("t0", "t1", "cor0", "c0", "bd", "n0", "q0", "bv")


@attrs.frozen
class Draw:
    """The values of one member: given in every example (``every=1``, required members) or
    in about one example in ``every``."""

    values: tuple[Any, ...]
    every: int = 1


@attrs.frozen
class Gen:
    """How often a driver is drawn (``weight``, 0: never, e.g. job filters), its node-names
    and its members' values, in the order they are drawn; ``reopen``: the options a reopen
    changes now and then (one to three of them, each from its values)."""

    weight: int = 0
    names: tuple[str, ...] = FILTER_NAMES
    bad_names: bool = False
    members: Mapping[str, Draw] = attrs.field(factory=dict)
    reopen: Mapping[str, Draw] = attrs.field(factory=dict)


class Opener(Protocol):
    """What a driver's ``open`` may ask of the ``bdrv_open_inherit()`` call tree it runs in
    (``models.blockdev._Opener``)."""

    g: Graph

    def open_child(self, node: Node, options: dict, child_name: str, role: str) -> Node: ...

    def open_backing(self, node: Node, options: dict) -> None: ...


class BlockDriver:
    name: ClassVar[str]
    protocol: ClassVar[bool] = False
    is_filter: ClassVar[bool] = False
    supports_backing: ClassVar[bool] = False
    can_reopen: ClassVar[bool] = True
    mutable: ClassVar[tuple[str, ...]] = ()
    strong: ClassVar[tuple[str, ...]] = ()
    absorbed: ClassVar[tuple[str, ...]] = ()
    children: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: ``block_driver_can_compress()``: a compress filter may sit on the node
    can_compress: ClassVar[bool] = False
    #: made by jobs only (``bdrv_new_open_driver()``) and put above a node by ``bdrv_append()``
    job_filter: ClassVar[bool] = False
    #: a filter between a format node and its image file that changes nothing of what the
    #: format reads or writes (``models.iodata.storage_leaf``)
    storage_transparent: ClassVar[bool] = False
    #: ``.bdrv_dirname`` does not always fail
    has_dirname: ClassVar[bool] = True
    #: ``bdrv_reopen_commit()`` refreshes ``total_sectors`` (VersionProfile.reopen_refreshes_length)
    reopen_refreshes_length: ClassVar[bool] = True
    #: ``.has_variable_length`` (7.2; VersionProfile.driver_variable_length)
    has_variable_length: ClassVar[bool] = False
    #: keeps its own metadata (tables, refcounts) in its ``file`` child at host offsets it
    #: chooses, and reads it from there (qcow2): a stale length of that child changes what it
    #: reads (``models.qemuio``)
    metadata_in_file: ClassVar[bool] = False
    #: a guest disk's first-sector read at realize is predictable through this node
    disk_read_modelled: ClassVar[bool] = True
    #: what the fuzzer draws for blockdev-add (see ``Gen``)
    gen: ClassVar[Gen] = Gen()

    # -- QAPI --------------------------------------------------------------------------------
    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        """The driver's ``BlockdevOptions`` variant members, in schema order."""
        return (("file", REF, True),)

    @property
    def filtered_child_name(self) -> str | None:
        """``bdrv_filter_child()``: the child a filter passes I/O to."""
        return self.children[0][0] if self.is_filter else None

    @property
    def file_first(self) -> bool:
        """A non-protocol driver with a ``file`` child: ``bdrv_open_inherit()`` opens that
        child before the node."""
        return not self.protocol and any(c[0] == "file" for c in self.children)

    # -- open ----------------------------------------------------------------------------------
    def file_role(self, options: dict) -> str:
        """The BdrvChildRole of the ``file`` child opened before the node."""
        return dict(self.children)["file"]

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        """``.bdrv_open`` after the generic part attached ``file`` (if the driver is
        file-first); children of protocol drivers are opened here with ``op.open_child``."""

    # -- reopen --------------------------------------------------------------------------------
    def join_options(self, node: Node, options: dict, old: dict) -> None:
        """``bdrv_join_options()`` (+ ``.bdrv_join_options``): old options fill in new ones."""
        for k, v in old.items():
            if k not in options:
                options[k] = v

    def reopen_prepare(self, g: Graph, node: Node, options: dict, remaining: dict) -> Any:
        """``.bdrv_reopen_prepare``: check ``options``, take what it consumes out of
        ``remaining`` (left for the final "Cannot change the option" comparison) and return
        what ``reopen_commit`` applies."""
        return None

    def reopen_commit(self, g: Graph, node: Node, state: Any) -> None:
        """``.bdrv_reopen_commit``."""

    def reopen_abort(self, g: Graph, node: Node, file_replaced: bool) -> None:
        """``.bdrv_reopen_abort`` when ``bdrv_reopen_prepare()`` itself fails after the
        driver's prepare."""

    def has_header_backing(self, g: Graph, node: Node) -> bool:
        """``bs->backing_file`` is set (a backing file named in the image header)."""
        return False

    # -- lengths and info ------------------------------------------------------------------------
    def getlength(self, g: Graph, n: Node) -> int:
        """``bdrv_getlength()``: ``total_sectors`` unless the driver answers itself."""
        return n.cached_length

    def refresh_length(self, g: Graph, n: Node) -> int:
        """``.bdrv_co_getlength`` as ``bdrv_refresh_total_sectors()`` calls it."""
        if self.is_filter:
            return lengths.node_length(g, g.filtered(n))
        raise NotModeled(f"length of {n.drv}")

    def get_info(self, g: Graph, n: Node) -> tuple[bool, int | None]:
        """``bdrv_get_info()``: (supported, cluster size); filters forward to their child."""
        f = g.filter_child(n)
        if f is not None:
            return f.driver.get_info(g, f)
        return False, None

    def image_info(self, g: Graph, n: Node, profile: VersionProfile, info: dict,
                   cache: dict) -> None:
        """``.bdrv_get_specific_info`` and the backing-file fields of ``bdrv_query_image_info()``."""

    # -- permissions and limits -------------------------------------------------------------------
    def child_perm(self, role: str, parent_writable: bool, perm: int, shared: int) -> tuple[int, int]:
        """``.bdrv_child_perm``: ``bdrv_default_perms()`` unless the driver has its own."""
        return perms.default_perms(role, parent_writable, perm, shared)

    def adjust_child_perm(self, n: Node, perm: int, shared: int) -> tuple[int, int]:
        """What the node's own options add to ``child_perm`` (blkdebug's take-child-perms and
        unshare-child-perms)."""
        return perm, shared

    def request_alignment(self, g: Graph, n: Node) -> int:
        """``bs->bl.request_alignment`` where it is not 1."""
        return 1

    def takes_locks(self, n: Node) -> bool:
        """The node holds file-posix lock bytes on its host file."""
        return False

    def refresh_limits(self, g: Graph, n: Node, bl: dict) -> None:
        """``.bdrv_refresh_limits``: overrides after the generic merge (``models.limits``)."""

    #: ``.bdrv_needs_filename``
    needs_filename: ClassVar[bool] = False

    # -- blockdev-create ------------------------------------------------------------------------------
    #: ``.bdrv_co_create`` exists (file and qcow2)
    can_create: ClassVar[bool] = False

    def create(self, g: Graph, opts: dict) -> None:
        """``.bdrv_co_create`` inside the create job: raises ``QmpFailure`` for the job's
        error (the command itself has succeeded by then)."""
        raise NotImplementedError(self.name)

    # -- block_resize --------------------------------------------------------------------------------
    #: ``.bdrv_co_truncate`` exists; without it a filter's resize goes to its filtered child
    #: and any other driver answers "Image format driver does not support resize"
    can_truncate: ClassVar[bool] = False

    def truncate(self, g: Graph, n: Node, size: int) -> tuple[Node, int] | None:
        """``.bdrv_co_truncate``: the driver's checks and its own change; a driver that
        resizes a child returns (child, size) for the generic code to go on with."""
        raise NotImplementedError(self.name)

    # -- x-blockdev-change ---------------------------------------------------------------------------
    #: ``.bdrv_add_child`` / ``.bdrv_del_child`` exist (quorum only)
    changes_children: ClassVar[bool] = False

    def add_child(self, g: Graph, node: Node, child: Node) -> None:
        """``.bdrv_add_child``: attach ``child`` (``bdrv_add_child()`` checked the rest)."""
        raise NotImplementedError(self.name)

    def del_child(self, g: Graph, node: Node, edge: Any) -> None:
        """``.bdrv_del_child``: detach the edge and drop the reference it held."""
        raise NotImplementedError(self.name)

    # -- filenames ---------------------------------------------------------------------------------
    def gather_child_options(self, n: Node, children: dict[str, Filename], opts: dict,
                             backing_overridden: bool) -> None:
        """``bdrv_refresh_filename()``'s child options (``.bdrv_gather_child_options``)."""
        for c in n.children:
            if c.name == "backing" and not backing_overridden:
                continue
            opts[c.name] = children[c.name].full_open_options
        if backing_overridden and n.child("backing") is None:
            opts["backing"] = None

    def exact_filename(self, g: Graph, n: Node, children: dict[str, Filename], opts: dict,
                       generate_json: bool) -> str:
        """``bs->exact_filename`` (``.bdrv_refresh_filename``, else block.c's rule: a format
        node over a protocol node with nothing else to say takes its file's name)."""
        fc = n.child("file")
        if fc is not None and not self.is_filter:
            child = g.nodes[fc.child]
            cf = children["file"]
            if cf.exact and child.driver.protocol and not generate_json:
                return cf.exact
        return ""

    # -- I/O -----------------------------------------------------------------------------------------
    #: a read can fail on data alone (quorum's vote): qemu-io reads through it are predicted
    #: only where the model knows the data, pattern or not
    read_may_fail: ClassVar[bool] = False

    def disk_read_ok(self, g: Graph, n: Node) -> bool:
        """Whether the read a scsi-hd makes of its first sector when it is realized has no
        effect the model misses (``disk_read_modelled``, unless the driver knows better)."""
        return self.disk_read_modelled

    def parse_filename(self, filename: str) -> str | None:
        """``.bdrv_parse_filename`` of a protocol node opened by a file name
        (``bdrv_fill_options()``): the ``filename`` option it leaves, or None (a driver
        without ``bdrv_needs_filename`` drops it); drivers the model does not follow there
        decline."""
        raise NotModeled(f"a file name for the protocol driver {self.name} (bdrv_parse_filename)")

    #: a qemu-io read entering at this node changes what is below it (copy-on-read)
    read_has_effects: ClassVar[bool] = False

    def qemu_io_readable(self, g: Graph, n: Node) -> bool:
        """Whether the model predicts a qemu-io read entering at ``n`` (data and effects)."""
        return iodata.known(g, n)

    def peek(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        """What a qemu-io read entering at ``n`` returns, without doing it."""
        return iodata.read(g, n, off, length)

    def qemu_io_read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        """A qemu-io read entering at ``n``: its data, with what it does on the way."""
        return iodata.read(g, n, off, length)

    def storage_child(self, g: Graph, n: Node) -> Node | None:
        """The node whose bytes ``n`` hands a format above it unchanged, offsets included
        (``models.iodata.storage_leaf``): a ``storage_transparent`` filter's child."""
        return g.filtered(n) if self.storage_transparent else None

    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        """The bytes a read returns (None: unknown); raises ``iodata.IoFailed`` for EIO."""
        return None

    def known(self, g: Graph, n: Node) -> bool:
        return False

    def can_write(self, g: Graph, n: Node) -> bool:
        return False

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        raise AssertionError(f"write through {n.drv}: the fuzzer asks can_write() first")

    def write_zeroes(self, g: Graph, n: Node, off: int, length: int, may_unmap: bool) -> None:
        raise NotModeled(f"write zeroes through {n.drv}")

    def can_write_compressed(self, g: Graph, n: Node) -> bool:
        """A compress filter above the node can predict its writes."""
        return False

    def write_compressed(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        """``.bdrv_co_pwritev_compressed_part`` (through a compress filter)."""
        raise NotModeled("compressed writes into anything but a plain qcow2 node")


class Filter(BlockDriver):
    """A driver with ``.is_filter``: its length is its filtered child's."""

    is_filter = True
    # declared again: mypy would infer a one-child tuple, which blkverify's two would not fit
    children: ClassVar[tuple[tuple[str, str], ...]] = (("file", ROLE_FILTERED),)

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        node.cached_length = lengths.refreshed_length(op.g, node)


def write_child(g: Graph, parent: Node, child: Node, off: int, payload: bytes) -> None:
    """``bdrv_co_pwritev()`` of ``parent``'s child ``child``: :func:`check_request_end`, then
    the write."""
    check_request_end(g, parent, child, off + len(payload))
    iodata.write(g, child, off, payload)


def write_zeroes_child(g: Graph, parent: Node, child: Node, off: int, length: int,
                       may_unmap: bool) -> None:
    """``bdrv_co_pwrite_zeroes()`` of ``parent``'s child ``child``."""
    check_request_end(g, parent, child, off + length)
    iodata.write_zeroes(g, child, off, length, may_unmap, entry=False)


def check_request_end(g: Graph, parent: Node, child: Node, end: int) -> None:
    """``bdrv_co_write_req_prepare()`` of the child: a request past its length asserts unless
    ``parent`` holds RESIZE on it.  A parent sends one only when its cached length is behind
    a child that a reopen shrank or moved onto a shorter file: a known QEMU bug
    (``models.known_bugs.write_past_child_end``).  Permissions are computed only then."""
    if end > lengths.node_length(g, child):
        edge = next(c for c in parent.children if c.child == child.name)
        if not perms.Perms(g, {}, {}).edge[id(edge)][0] & perms.RESIZE:
            g.guard("write-past-child-end", parent=parent, child=child)


class PassThroughFilter(Filter):
    """A filter whose I/O goes to the filtered child unchanged (a subclass overrides what it
    does differently)."""

    def read(self, g: Graph, n: Node, off: int, length: int) -> bytes | None:
        return iodata.read(g, g.filtered(n), off, length)

    def known(self, g: Graph, n: Node) -> bool:
        return iodata.known(g, g.filtered(n))

    def can_write(self, g: Graph, n: Node) -> bool:
        return iodata.can_write(g, g.filtered(n))

    def write(self, g: Graph, n: Node, off: int, payload: bytes) -> None:
        write_child(g, n, g.filtered(n), off, payload)

    def write_zeroes(self, g: Graph, n: Node, off: int, length: int, may_unmap: bool) -> None:
        write_zeroes_child(g, n, g.filtered(n), off, length, may_unmap)
