"""Per-driver facts: how each BlockDriver opens, reopens, names its children and reports itself.

One ``Driver`` per ``BlockDriver`` the model covers.  The fields mirror the C structure's members
that decide graph behaviour, so a QEMU developer can check a row against ``block/<driver>.c``:

* ``protocol`` -- ``.protocol_name`` is set.  ``bdrv_open_inherit()`` opens a non-protocol
  node's ``file`` child *before* the node itself (and so names it first); protocol drivers open
  their children inside ``.bdrv_open``, after the node got its name.
* ``is_filter`` -- ``.is_filter``: the filtered child is shown as ``backing-image``, the node
  never takes its child's plain filename, and a ``backing`` child cannot be added by reopen.
* ``reopen`` -- ``.bdrv_reopen_prepare`` exists; without it every reopen of the node fails with
  ``Block format '%s' used by node '%s' does not support reopening files``.
* ``mutable`` -- ``.mutable_opts``: options that may be omitted on reopen (reset to default).
* ``strong`` -- ``.strong_runtime_opts`` (``bdrv_refresh_filename()``); a trailing ``.`` is a
  prefix.
* ``absorbed`` -- options the driver's reopen-prepare consumes, so they are not compared by the
  final "Cannot change the option" check.
* ``children`` -- child names in the order the driver opens them, with their BdrvChildRole.
"""
from __future__ import annotations

import attrs

from .graph import ROLE_DATA, ROLE_FILTERED, ROLE_STORAGE


@attrs.frozen
class Driver:
    name: str
    protocol: bool
    is_filter: bool = False
    supports_backing: bool = False
    reopen: bool = True
    mutable: tuple = ()
    strong: tuple = ()
    absorbed: tuple = ()
    children: tuple = ()   # ((name, role), ...) in open order; quorum's are generated


QCOW2_RUNTIME = ("lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
                 "pass-discard-other", "discard-no-unref", "overlap-check", "cache-size",
                 "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size",
                 "cache-clean-interval")

DRIVERS: dict[str, Driver] = {d.name: d for d in (
    # block/file-posix.c
    Driver("file", protocol=True, mutable=("x-check-cache-dropped",)),
    # block/qcow2.c (file is opened by bdrv_open_inherit(); role DATA|METADATA|PRIMARY)
    Driver("qcow2", protocol=False, supports_backing=True, mutable=QCOW2_RUNTIME,
           children=(("file", ROLE_STORAGE),)),
    # block/raw-format.c (role decided by offset/size, see blockdev._Opener)
    Driver("raw", protocol=False, mutable=("offset", "size"), strong=("offset", "size"),
           children=(("file", ROLE_FILTERED),)),
    # block/throttle.c
    Driver("throttle", protocol=False, is_filter=True, strong=("throttle-group",),
           absorbed=("throttle-group",), children=(("file", ROLE_FILTERED),)),
    # block/copy-on-read.c: no .bdrv_reopen_prepare
    Driver("copy-on-read", protocol=False, is_filter=True, reopen=False,
           children=(("file", ROLE_FILTERED),)),
    # block/filter-compress.c: no .bdrv_reopen_prepare
    Driver("compress", protocol=False, is_filter=True, reopen=False,
           children=(("file", ROLE_FILTERED),)),
    # block/null.c
    Driver("null-co", protocol=True, strong=("size", "read-zeroes")),
    # block/blkdebug.c: "image" via bdrv_open_file_child() (bs->file)
    Driver("blkdebug", protocol=True, is_filter=True,
           strong=("config", "inject-error.", "set-state.", "align", "max-transfer",
                   "opt-write-zero", "max-write-zero", "opt-discard", "max-discard"),
           children=(("image", ROLE_FILTERED),)),
    # block/quorum.c: children.0, children.1, ... (BDRV_CHILD_DATA); no reopen
    Driver("quorum", protocol=False, reopen=False,
           strong=("vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern")),
    # block/blkverify.c: "raw" is bs->file (opened first), "test" is DATA; no reopen
    Driver("blkverify", protocol=True, is_filter=True, reopen=False,
           children=(("raw", ROLE_FILTERED), ("test", ROLE_DATA))),
    # job filters (block/commit.c, block/mirror.c): created by jobs only, filtered child is
    # "backing", no reopen; their filename is their child's
    Driver("commit_top", protocol=False, is_filter=True, reopen=False,
           children=(("backing", ROLE_FILTERED),)),
    Driver("mirror_top", protocol=False, is_filter=True, reopen=False,
           children=(("backing", ROLE_FILTERED),)),
)}

#: drivers that open through a ``file`` child named before the node (non-protocol, with file)
FILE_FIRST = tuple(d.name for d in DRIVERS.values()
                   if not d.protocol and any(c[0] == "file" for c in d.children))


def filtered_child_name(drv: str) -> str | None:
    """``bdrv_filter_child()``: the child a filter passes I/O to (``bs->file`` for these)."""
    d = DRIVERS[drv]
    if not d.is_filter:
        return None
    return d.children[0][0]
