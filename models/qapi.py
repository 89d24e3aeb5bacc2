"""QAPI input validation of ``BlockdevOptions`` (qapi/block-core.json).

Mirrors what the generated ``visit_type_BlockdevOptions()`` does with a QObject input visitor:
members are visited in schema order (union base first, then the variant's base, then the
variant's own members), a missing mandatory member or a wrong JSON type fails with the *full*
path of the member, enums and alternates report the *bare* member name, and leftover keys are
reported by ``visit_check_struct()`` after all known members.  ``blockdev-add`` is boxed, so its
paths have no prefix; ``blockdev-reopen`` elements are ``options[i].``.
"""
from __future__ import annotations

from typing import Any

import attrs

from .errors import NotModeled, QmpFailure
from .profiles import VersionProfile

# BlockdevDriver in 7.2 and 10.0 (Debian builds).  Only the first group is modelled; the rest are
# valid enum values the model refuses to predict.
MODELLED_DRIVERS = ("file", "qcow2", "raw", "throttle", "copy-on-read", "compress", "null-co",
                    "blkdebug", "quorum", "blkverify")
OTHER_DRIVERS = (
    "blklogwrites", "blkreplay", "bochs", "cloop",
    "copy-before-write", "dmg", "snapshot-access", "ftp", "ftps", "gluster",
    "host_cdrom", "host_device", "http", "https", "io_uring", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "nvme", "nvme-io_uring", "parallels", "preallocate", "qcow", "qed",
    "rbd", "replication", "ssh", "vdi", "vhdx", "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user", "virtio-blk-vhost-vdpa", "vmdk", "vpc", "vvfat",
)


@attrs.frozen
class T:
    """A QAPI type: kind is one of str/bool/int/enum/struct/ref/refornull."""

    kind: str
    values: tuple = ()
    members: tuple = ()  # for struct: ((name, T, required), ...)
    name: str = ""  # alternate name for messages


STR, BOOL, INT = T("str"), T("bool"), T("int")
REF = T("ref", name="BlockdevRef")
REF_OR_NULL = T("refornull", name="BlockdevRefOrNull")
CACHE = T("struct", members=(("direct", BOOL, False), ("no-flush", BOOL, False)))

BASE_MEMBERS = (
    ("driver", T("enum", values=MODELLED_DRIVERS + OTHER_DRIVERS), True),
    ("node-name", STR, False),
    ("discard", T("enum", values=("ignore", "unmap")), False),
    ("cache", CACHE, False),
    ("read-only", BOOL, False),
    ("auto-read-only", BOOL, False),
    ("force-share", BOOL, False),
    ("detect-zeroes", T("enum", values=("off", "on", "unmap")), False),
)

FILE_MEMBERS = (
    ("filename", STR, True),
    ("pr-manager", STR, False),
    ("locking", T("enum", values=("on", "off", "auto")), False),
    ("aio", T("enum", values=("threads", "native", "io_uring")), False),
    ("aio-max-batch", INT, False),
    ("drop-cache", BOOL, False),
    ("x-check-cache-dropped", BOOL, False),
)


def qcow2_members(profile: VersionProfile) -> tuple:
    members = [
        ("file", REF, True),
        ("backing", REF_OR_NULL, False),
        ("lazy-refcounts", BOOL, False),
        ("pass-discard-request", BOOL, False),
        ("pass-discard-snapshot", BOOL, False),
        ("pass-discard-other", BOOL, False),
    ]
    if profile.qcow2_discard_no_unref:
        members.append(("discard-no-unref", BOOL, False))
    members += [
        ("overlap-check", T("unmodelled"), False),
        ("cache-size", INT, False),
        ("l2-cache-size", INT, False),
        ("l2-cache-entry-size", INT, False),
        ("refcount-cache-size", INT, False),
        ("cache-clean-interval", INT, False),
        ("encrypt", T("unmodelled"), False),
        ("data-file", T("unmodelled"), False),
    ]
    return tuple(members)


RAW_MEMBERS = (("file", REF, True), ("offset", INT, False), ("size", INT, False))
THROTTLE_MEMBERS = (("throttle-group", STR, True), ("file", REF, True))
GENERIC_FORMAT_MEMBERS = (("file", REF, True),)
COR_MEMBERS = (("file", REF, True), ("bottom", T("unmodelled"), False))
NULL_MEMBERS = (("size", INT, False), ("latency-ns", T("unmodelled"), False), ("read-zeroes", BOOL, False))
BLKDEBUG_MEMBERS = (
    ("image", REF, True), ("config", STR, False), ("align", INT, False),
    ("max-transfer", T("unmodelled"), False), ("opt-write-zero", T("unmodelled"), False),
    ("max-write-zero", T("unmodelled"), False), ("opt-discard", T("unmodelled"), False),
    ("max-discard", T("unmodelled"), False), ("inject-error", T("unmodelled"), False),
    ("set-state", T("unmodelled"), False), ("take-child-perms", T("unmodelled"), False),
    ("unshare-child-perms", T("unmodelled"), False),
)
QUORUM_MEMBERS = (
    ("blkverify", T("unmodelled"), False), ("children", T("list", members=(REF,)), True),
    ("vote-threshold", INT, True), ("rewrite-corrupted", T("unmodelled"), False),
    ("read-pattern", T("unmodelled"), False),
)
BLKVERIFY_MEMBERS = (("test", REF, True), ("raw", REF, True))


def _path(prefix: str, name: str) -> str:
    return f"{prefix}{name}" if prefix else name


def _json_type_ok(kind: str, value: Any) -> bool:
    if kind == "str" or kind == "enum":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    raise AssertionError(kind)


_EXPECTED = {"str": "string", "enum": "string", "bool": "boolean", "int": "integer"}


def _visit(value: Any, t: T, name: str, path: str, profile: VersionProfile) -> None:
    if t.kind in ("str", "bool", "int", "enum"):
        if not _json_type_ok(t.kind, value):
            raise QmpFailure(f"Invalid parameter type for '{path}', expected: {_EXPECTED[t.kind]}")
        if t.kind == "enum" and value not in t.values:
            raise QmpFailure(f"Parameter '{name}' does not accept value '{value}'")
        if t.kind == "int" and not (-(2**63) <= value < 2**63):
            raise QmpFailure(f"Invalid parameter type for '{path}', expected: integer")
        return
    if t.kind in ("ref", "refornull"):
        if isinstance(value, str):
            return
        if value is None and t.kind == "refornull":
            return
        if isinstance(value, dict):
            visit_blockdev_options(value, path + ".", profile)
            return
        raise QmpFailure(f"Invalid parameter type for '{name}', expected: {t.name}")
    if t.kind == "struct":
        if not isinstance(value, dict):
            raise QmpFailure(f"Invalid parameter type for '{path}', expected: object")
        _visit_members(value, t.members, path + ".", profile)
        _check_struct(value, {m[0] for m in t.members}, path + ".")
        return
    if t.kind == "list":
        if not isinstance(value, list):
            raise QmpFailure(f"Invalid parameter type for '{path}', expected: array")
        for i, element in enumerate(value):
            _visit(element, t.members[0], f"{name}[{i}]", f"{path}[{i}]", profile)
        return
    if t.kind == "unmodelled":
        raise NotModeled(f"option '{path}' is not modelled")
    raise AssertionError(t.kind)


def _visit_members(d: dict, members: tuple, prefix: str, profile: VersionProfile) -> None:
    for name, t, required in members:
        if name not in d:
            if required:
                raise QmpFailure(f"Parameter '{_path(prefix, name)}' is missing")
            continue
        _visit(d[name], t, name, _path(prefix, name), profile)


def _check_struct(d: dict, known: set[str], prefix: str) -> None:
    """``visit_check_struct()``: it reports the first key left in a GLib hash table, whose
    iteration order the model does not reproduce; with two or more leftovers it declines."""
    unexpected = [key for key in d if key not in known]
    if len(unexpected) > 1:
        raise NotModeled(f"several unexpected keys {unexpected}: GHashTable order")
    if unexpected:
        raise QmpFailure(f"Parameter '{_path(prefix, unexpected[0])}' is unexpected")


def variant_members(driver: str, profile: VersionProfile) -> tuple:
    if driver in ("file", "host_device", "host_cdrom"):
        return FILE_MEMBERS
    if driver == "qcow2":
        return qcow2_members(profile)
    if driver == "raw":
        return RAW_MEMBERS
    if driver == "throttle":
        return THROTTLE_MEMBERS
    if driver == "compress":
        return GENERIC_FORMAT_MEMBERS
    if driver == "copy-on-read":
        return COR_MEMBERS
    if driver == "null-co":
        return NULL_MEMBERS
    if driver == "blkdebug":
        return BLKDEBUG_MEMBERS
    if driver == "quorum":
        return QUORUM_MEMBERS
    if driver == "blkverify":
        return BLKVERIFY_MEMBERS
    raise NotModeled(f"driver '{driver}' is not modelled")


def visit_blockdev_options(d: Any, prefix: str, profile: VersionProfile, name: str = "") -> None:
    """Validate one ``BlockdevOptions`` object; ``prefix`` is ``''``, ``'options[0].'``, ..."""
    if not isinstance(d, dict):
        raise QmpFailure(f"Invalid parameter type for '{prefix[:-1] or name}', expected: object")
    _visit_members(d, BASE_MEMBERS, prefix, profile)
    members = variant_members(d["driver"], profile)
    _visit_members(d, members, prefix, profile)
    _check_struct(d, {m[0] for m in BASE_MEMBERS} | {m[0] for m in members}, prefix)


def validate_blockdev_add(args: Any, profile: VersionProfile) -> None:
    visit_blockdev_options(args, "", profile)


def validate_blockdev_reopen(args: Any, profile: VersionProfile) -> list[dict]:
    if not isinstance(args, dict) or "options" not in args:
        raise QmpFailure("Parameter 'options' is missing")
    _check_struct(args, {"options"}, "")
    opts = args["options"]
    if not isinstance(opts, list):
        raise QmpFailure("Invalid parameter type for 'options', expected: array")
    for i, element in enumerate(opts):
        if not isinstance(element, dict):
            raise QmpFailure(f"Invalid parameter type for 'options[{i}]', expected: object")
        visit_blockdev_options(element, f"options[{i}].", profile)
    return opts


def validate_blockdev_del(args: Any) -> str:
    if not isinstance(args, dict) or "node-name" not in args:
        raise QmpFailure("Parameter 'node-name' is missing")
    _check_struct(args, {"node-name"}, "")
    if not isinstance(args["node-name"], str):
        raise QmpFailure("Invalid parameter type for 'node-name', expected: string")
    return args["node-name"]


def flatten(d: dict, prefix: str = "") -> dict:
    """``qdict_flatten()``: nested dicts become dotted keys, list elements ``key.N``."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, list):
            v = {str(i): e for i, e in enumerate(v)}
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
