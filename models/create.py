"""blockdev-create: ``qmp_blockdev_create()`` (block/create.c) and its job of type
``create``, which runs the driver's ``.bdrv_co_create`` (``BlockDriver.create``: file and
qcow2 among the modelled drivers).

Probed on 7.2.22, 10.0.2 and 11.1.3 (iotest 206 as seeds): the versions answer alike.  The job
is no block job: only JOB_STATUS_CHANGE events, no BLOCK_JOB_* ones; it finalizes itself and
waits in ``concluded`` for ``job-dismiss``.  A failure of the create itself fails the job, not
the command: the command returns ``{}`` and the error is in query-jobs.
"""
from __future__ import annotations

from typing import Any

from .drivers import DRIVERS
from .errors import NotModeled, QmpFailure
from .graph import Graph
from .jobs import Job, _register, _start, _transition, _job_id
from .profiles import VersionProfile
from .qapi import MODELLED_DRIVERS, OTHER_DRIVERS, check_struct, visit_members
from .qapitypes import BOOL, INT, REF, SIZE, STR, UNMODELLED, Member, enum

#: BlockdevCreateOptions: the union base, then the variant of each driver the model creates
#: (the others' variants are empty), in schema order
_BASE: tuple[Member, ...] = (("driver", enum(*MODELLED_DRIVERS, *OTHER_DRIVERS), True),)
_PREALLOC = enum("off", "metadata", "falloc", "full")
_FILE: tuple[Member, ...] = (
    ("filename", STR, True), ("size", SIZE, True), ("preallocation", _PREALLOC, False),
    ("nocow", BOOL, False), ("extent-size-hint", SIZE, False))
_QCOW2: tuple[Member, ...] = (
    ("file", REF, True), ("data-file", REF, False), ("data-file-raw", BOOL, False),
    ("extended-l2", BOOL, False), ("size", SIZE, True), ("version", enum("v2", "v3"), False),
    ("backing-file", STR, False), ("backing-fmt", enum(*MODELLED_DRIVERS, *OTHER_DRIVERS), False),
    ("encrypt", UNMODELLED, False), ("cluster-size", SIZE, False),
    ("preallocation", _PREALLOC, False), ("lazy-refcounts", BOOL, False),
    ("refcount-bits", INT, False), ("compression-type", enum("zlib", "zstd"), False))
_VARIANTS: dict[str, tuple[Member, ...]] = {"file": _FILE, "qcow2": _QCOW2}


def _visit_options(opts: Any, profile: VersionProfile) -> dict:
    """``visit_type_BlockdevCreateOptions()`` with the shared member visitor (``models.qapi``):
    paths carry ``options.``; returns the options with each ``size`` as the uint64 QEMU
    reads (a negative JSON integer is 2^64 + n)."""
    if not isinstance(opts, dict):
        raise QmpFailure("Invalid parameter type for 'options', expected: object")
    visit_members(opts, _BASE, "options.", profile)
    drv = opts["driver"]
    if drv not in DRIVERS:
        raise NotModeled(f"blockdev-create for driver {drv!r}")
    members = _VARIANTS.get(drv, ())
    visit_members(opts, members, "options.", profile)
    check_struct(opts, {"driver", *(m[0] for m in members)}, "options.")
    sizes = {m[0] for m in members if m[1] is SIZE}
    return {k: v % (1 << 64) if k in sizes else v for k, v in opts.items()}


def blockdev_create(g: Graph, args: Any) -> None:
    if not isinstance(args, dict) or "job-id" not in args:
        raise QmpFailure("Parameter 'job-id' is missing")
    if not isinstance(args["job-id"], str):
        raise QmpFailure("Invalid parameter type for 'job-id', expected: string")
    if "options" not in args:
        raise QmpFailure("Parameter 'options' is missing")
    assert g.profile is not None   # the Model's graph always has one
    opts = _visit_options(args["options"], g.profile)
    check_struct(args, {"job-id", "options"}, "")
    d = DRIVERS[opts["driver"]]
    if not d.can_create:
        raise QmpFailure("Driver does not support blockdev-create")
    job = Job("", "create", "created", auto_finalize=True, auto_dismiss=False)
    job.id = _job_id(g, args["job-id"])
    _register(g, job)
    _start(g, job)
    try:
        d.create(g, opts)
    except QmpFailure as e:
        # job_completed() with an error: aborting, then concluded with the error kept
        _transition(g, job, "aborting")
        job.error = e.desc
        _transition(g, job, "concluded")
        return
    _transition(g, job, "waiting")
    _transition(g, job, "pending")
    _transition(g, job, "concluded")
