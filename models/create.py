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
from .qapi import MODELLED_DRIVERS, OTHER_DRIVERS, check_struct

#: BlockdevCreateOptions' variants: member -> (QAPI type, required), in schema order; the
#: other drivers have empty variants
_FILE = {"filename": ("str", True), "size": ("size", True),
         "preallocation": (("off", "metadata", "falloc", "full"), False),
         "nocow": ("bool", False), "extent-size-hint": ("size", False)}
_QCOW2 = {"file": ("ref", True), "data-file": ("ref", False), "data-file-raw": ("bool", False),
          "extended-l2": ("bool", False), "size": ("size", True),
          "version": (("v2", "v3"), False), "backing-file": ("str", False),
          "backing-fmt": (tuple(MODELLED_DRIVERS) + OTHER_DRIVERS, False), "encrypt": ("struct", False),
          "cluster-size": ("size", False),
          "preallocation": (("off", "metadata", "falloc", "full"), False),
          "lazy-refcounts": ("bool", False), "refcount-bits": ("int", False),
          "compression-type": (("zlib", "zstd"), False)}
_VARIANTS: dict[str, dict[str, tuple[Any, bool]]] = {"file": _FILE, "qcow2": _QCOW2}


def _visit_options(opts: Any) -> dict:
    """``BlockdevCreateOptions``: the discriminator, then the variant's members in order.
    Paths carry ``options.``, except an enum's value error (``visit_type_enum()`` names the
    member alone); a ``size`` takes a negative JSON integer as 2^64 + n."""
    if not isinstance(opts, dict):
        raise QmpFailure("Invalid parameter type for 'options', expected: object")
    if "driver" not in opts:
        raise QmpFailure("Parameter 'options.driver' is missing")
    drv = opts["driver"]
    if not isinstance(drv, str):
        raise QmpFailure("Invalid parameter type for 'options.driver', expected: string")
    if drv not in MODELLED_DRIVERS and drv not in OTHER_DRIVERS:
        raise QmpFailure(f"Parameter 'driver' does not accept value '{drv}'")
    if drv not in DRIVERS:
        raise NotModeled(f"blockdev-create for driver {drv!r}")
    members = _VARIANTS.get(drv, {})
    out = dict(opts)
    for name, (kind, required) in members.items():
        if name not in opts:
            if required:
                raise QmpFailure(f"Parameter 'options.{name}' is missing")
            continue
        v = opts[name]
        if kind == "size":
            if not isinstance(v, int) or isinstance(v, bool):
                raise QmpFailure(f"Parameter 'options.{name}' expects uint64")
            out[name] = v % (1 << 64)
        elif kind == "ref":
            if not isinstance(v, (str, dict)):
                raise NotModeled(f"blockdev-create {name} of type {type(v).__name__}")
        elif kind == "struct":
            raise NotModeled(f"blockdev-create option {name!r}")
        elif isinstance(kind, tuple):
            if not isinstance(v, str):
                raise QmpFailure(f"Invalid parameter type for 'options.{name}', expected: string")
            if v not in kind:
                raise QmpFailure(f"Parameter '{name}' does not accept value '{v}'")
        else:
            assert isinstance(kind, str)
            t = {"str": str, "bool": bool, "int": int}[kind]
            if not isinstance(v, t) or (t is int and isinstance(v, bool)):
                expected = {"str": "string", "bool": "boolean", "int": "integer"}[kind]
                raise QmpFailure(f"Invalid parameter type for 'options.{name}', expected: {expected}")
    check_struct(opts, {"driver", *members}, "options.")
    return out


def blockdev_create(g: Graph, args: Any) -> None:
    if not isinstance(args, dict) or "job-id" not in args:
        raise QmpFailure("Parameter 'job-id' is missing")
    if not isinstance(args["job-id"], str):
        raise QmpFailure("Invalid parameter type for 'job-id', expected: string")
    if "options" not in args:
        raise QmpFailure("Parameter 'options' is missing")
    opts = _visit_options(args["options"])
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
