"""The arguments of the QMP commands the model covers, as ``qapi/block-core.json`` declares
them: each command's members in schema order, the order its generated ``qmp_marshal_*()``
visits them (``models.qapi.visit_arguments``).

One table serves both sides of the fuzzer: the command modules validate against it and the
generator (``fuzz.boundary.argument_boundary``) breaks one member of it at a time, so a member
added here is checked and drawn at its boundaries without another edit.  Members a release
lacks are listed anyway and dropped by the command's profile check (``target-is-zero`` 10.1+,
``backing-mask-protocol`` 8.0+): an older QEMU rejects them with its own exact error.

blockdev-add, blockdev-reopen and blockdev-create take ``BlockdevOptions`` /
``BlockdevCreateOptions``, unions described by the drivers (``BlockDriver.members()``).
"""
from __future__ import annotations

from .qapitypes import BOOL, INT, STR, UINT32, Member, enum

#: BlockdevOnError
ON_ERROR = enum("report", "ignore", "enospc", "stop", "auto")

BLOCK_STREAM: tuple[Member, ...] = (
    ("job-id", STR, False), ("device", STR, True), ("base", STR, False),
    ("base-node", STR, False), ("backing-file", STR, False),
    ("backing-mask-protocol", BOOL, False), ("bottom", STR, False), ("speed", INT, False),
    ("on-error", ON_ERROR, False), ("filter-node-name", STR, False),
    ("auto-finalize", BOOL, False), ("auto-dismiss", BOOL, False))

BLOCK_COMMIT: tuple[Member, ...] = (
    ("job-id", STR, False), ("device", STR, True), ("base-node", STR, False),
    ("base", STR, False), ("top-node", STR, False), ("top", STR, False),
    ("backing-file", STR, False), ("backing-mask-protocol", BOOL, False),
    ("speed", INT, False), ("on-error", ON_ERROR, False), ("filter-node-name", STR, False),
    ("auto-finalize", BOOL, False), ("auto-dismiss", BOOL, False))

BLOCKDEV_MIRROR: tuple[Member, ...] = (
    ("job-id", STR, False), ("device", STR, True), ("target", STR, True),
    ("replaces", STR, False), ("sync", enum("top", "full", "none", "incremental", "bitmap"), True),
    ("speed", INT, False), ("granularity", UINT32, False), ("buf-size", INT, False),
    ("on-source-error", ON_ERROR, False), ("on-target-error", ON_ERROR, False),
    ("filter-node-name", STR, False), ("copy-mode", enum("background", "write-blocking"), False),
    ("auto-finalize", BOOL, False), ("auto-dismiss", BOOL, False), ("target-is-zero", BOOL, False))

BLOCK_RESIZE: tuple[Member, ...] = (
    ("device", STR, False), ("node-name", STR, False), ("size", INT, True))

BLOCKDEV_SNAPSHOT: tuple[Member, ...] = (("node", STR, True), ("overlay", STR, True))

X_BLOCKDEV_CHANGE: tuple[Member, ...] = (
    ("parent", STR, True), ("child", STR, False), ("node", STR, False))

#: the job verbs: ``job-*`` name the job by ``id``, ``block-job-*`` by ``device``
JOB_ID: tuple[Member, ...] = (("id", STR, True),)
BLOCK_JOB_DEVICE: tuple[Member, ...] = (("device", STR, True),)
BLOCK_JOB_CANCEL: tuple[Member, ...] = (("device", STR, True), ("force", BOOL, False))

#: command -> its members (the commands whose arguments are a plain struct)
COMMAND_ARGUMENTS: dict[str, tuple[Member, ...]] = {
    "block-stream": BLOCK_STREAM,
    "block-commit": BLOCK_COMMIT,
    "blockdev-mirror": BLOCKDEV_MIRROR,
    "block_resize": BLOCK_RESIZE,
    "blockdev-snapshot": BLOCKDEV_SNAPSHOT,
    "x-blockdev-change": X_BLOCKDEV_CHANGE,
    **{f"job-{verb}": JOB_ID for verb in ("finalize", "dismiss", "cancel", "pause", "resume",
                                          "complete")},
    **{f"block-job-{verb}": BLOCK_JOB_DEVICE for verb in ("complete", "pause", "resume")},
    "block-job-cancel": BLOCK_JOB_CANCEL,
}
