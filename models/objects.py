"""QOM objects the block layer uses: ``object-add`` / ``object-del`` of throttle groups and
iothreads.

``user_creatable_add_type()`` (qom/object_interfaces.c) checks, in order: the id is well
formed, the properties (QAPI ``ObjectOptions``; a throttle group's limits are validated as
``throttle_is_valid()`` does, and 7.2 and 10.0 do it here), then that the id is free under
``/objects`` (``object_property_try_add_child()``).  ``object-del`` refuses an
object somebody holds a reference to (``throttle_group_can_be_deleted()``): a throttle node is
a member of its group until the node is closed or reopened into another group.
"""
from __future__ import annotations

from typing import Any

import attrs

from .errors import NotModeled, QmpFailure
from .graph import Graph, id_wellformed
from .qapi import check_struct

#: ThrottleLimits members the model knows (all QAPI 'int'); burst lengths and iops-size are not
LIMITS = ("iops-total", "iops-read", "iops-write", "bps-total", "bps-read", "bps-write",
          "iops-total-max", "iops-read-max", "iops-write-max", "bps-total-max", "bps-read-max",
          "bps-write-max")
THROTTLE_VALUE_MAX = 1000000000000000
QOM_TYPES = ("throttle-group", "iothread")


@attrs.frozen
class QomObject:
    id: str
    qom_type: str
    props: dict[str, Any] = attrs.field(factory=dict, eq=False)


def _check_limits(limits: object) -> None:
    """QAPI ``ThrottleLimits`` then ``throttle_is_valid()``'s first checks."""
    if not isinstance(limits, dict):
        raise QmpFailure("Invalid parameter type for 'limits', expected: object")
    for k, v in limits.items():
        if k not in LIMITS:
            raise NotModeled(f"throttle limit {k!r}")
        if not isinstance(v, int) or isinstance(v, bool):
            raise QmpFailure(f"Invalid parameter type for 'limits.{k}', expected: integer")
    avg = {k: limits.get(k, 0) % 2**64 for k in LIMITS}   # the buckets are uint64
    for kind in ("bps", "iops"):
        for suffix in ("", "-max"):
            if avg[f"{kind}-total{suffix}"] and (avg[f"{kind}-read{suffix}"] or avg[f"{kind}-write{suffix}"]):
                raise QmpFailure("bps/iops/max total values and read/write values cannot be used at the same time")
    # then bucket by bucket (THROTTLE_BPS_TOTAL, _READ, _WRITE, THROTTLE_OPS_TOTAL, ...)
    for kind in ("bps", "iops"):
        for d in ("total", "read", "write"):
            a, mx = avg[f"{kind}-{d}"], avg[f"{kind}-{d}-max"]
            if a > THROTTLE_VALUE_MAX or mx > THROTTLE_VALUE_MAX:
                raise QmpFailure(f"bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]")
            if mx and not a:
                raise QmpFailure("bps_max/iops_max require corresponding bps/iops values")
            if mx and mx < a:
                raise QmpFailure("bps_max/iops_max cannot be lower than bps/iops")


def object_add(g: Graph, args: object) -> None:
    if not isinstance(args, dict):
        raise QmpFailure("Invalid parameter type for 'qom-type', expected: string")
    if "qom-type" not in args:
        raise QmpFailure("Parameter 'qom-type' is missing")
    qom_type = args["qom-type"]
    if not isinstance(qom_type, str):
        raise QmpFailure("Invalid parameter type for 'qom-type', expected: string")
    if qom_type not in QOM_TYPES:
        raise NotModeled(f"qom-type {qom_type!r}")
    if "id" not in args:
        raise QmpFailure("Parameter 'id' is missing")
    oid = args["id"]
    if not isinstance(oid, str):
        raise QmpFailure("Invalid parameter type for 'id', expected: string")
    props = {k: v for k, v in args.items() if k not in ("qom-type", "id")}
    allowed = {"throttle-group": ("limits",), "iothread": ()}[qom_type]
    check_struct(props, set(allowed), "")
    if qom_type == "throttle-group" and "limits" in props:
        if not isinstance(props["limits"], dict):
            raise QmpFailure("Invalid parameter type for 'limits', expected: object")
    if not id_wellformed(oid):
        raise QmpFailure("Parameter 'id' expects an identifier")
    if qom_type == "throttle-group":
        # observed on 7.2 and 10.0: the limits are validated while the property is set, before
        # the object is added under /objects
        _check_limits(props.get("limits", {}))
    if oid in g.objects:
        raise QmpFailure(f"attempt to add duplicate property '{oid}' to object (type 'container')")
    g.objects[oid] = QomObject(oid, qom_type, props)


def in_use(g: Graph, oid: str) -> bool:
    return any(n.throttle_group == oid for n in g.nodes.values())


def object_del(g: Graph, args: object) -> None:
    if not isinstance(args, dict) or "id" not in args:
        raise QmpFailure("Parameter 'id' is missing")
    oid = args["id"]
    if not isinstance(oid, str):
        raise QmpFailure("Invalid parameter type for 'id', expected: string")
    check_struct(args, {"id"}, "")
    obj = g.objects.get(oid)
    if obj is None:
        raise QmpFailure(f"object '{oid}' not found")
    if in_use(g, oid):
        raise QmpFailure(g.qemu_profile.throttle_group_del_error.format(id=oid))
    del g.objects[oid]
