"""QAPI input validation of ``BlockdevOptions`` (qapi/block-core.json).

Mirrors what the generated ``visit_type_BlockdevOptions()`` does with a QObject input visitor:
members are visited in schema order (union base first, then the variant's base, then the
variant's own members), a missing mandatory member or a wrong JSON type fails with the *full*
path of the member, enums and alternates report the *bare* member name, and leftover keys are
reported by ``visitcheck_struct()`` after all known members.  ``blockdev-add`` is boxed, so its
paths have no prefix; ``blockdev-reopen`` elements are ``options[i].``.
"""
from __future__ import annotations

from typing import Any

from .drivers import DRIVERS
from .errors import NotModeled, QmpFailure
from .profiles import VersionProfile
from .qapitypes import BOOL, CACHE, STR, Member, T, enum

#: BlockdevDriver values the model does not cover (7.2, 10.0 and 11.1 Debian builds): valid
#: enum values whose commands the model refuses to predict.  The covered ones are the drivers
#: of ``models.drivers`` (job filters are not in the enum).
OTHER_DRIVERS = (
    "blklogwrites", "blkreplay", "bochs", "cloop",
    "copy-before-write", "dmg", "snapshot-access", "ftp", "ftps", "gluster",
    "host_cdrom", "host_device", "http", "https", "io_uring", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "nvme", "nvme-io_uring", "parallels", "preallocate", "qcow", "qed",
    "rbd", "replication", "ssh", "vdi", "vhdx", "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user", "virtio-blk-vhost-vdpa", "vmdk", "vpc", "vvfat",
)
MODELLED_DRIVERS = tuple(name for name, d in DRIVERS.items() if not d.job_filter)
#: drivers that share another's variant members (BlockdevOptionsFile)
SAME_MEMBERS = {"host_device": "file", "host_cdrom": "file"}

BASE_MEMBERS: tuple[Member, ...] = (
    ("driver", enum(*MODELLED_DRIVERS, *OTHER_DRIVERS), True),
    ("node-name", STR, False),
    ("discard", enum("ignore", "unmap"), False),
    ("cache", CACHE, False),
    ("read-only", BOOL, False),
    ("auto-read-only", BOOL, False),
    ("force-share", BOOL, False),
    ("detect-zeroes", enum("off", "on", "unmap"), False),
)


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
    if t.kind in ("size", "uint32"):
        # qobject_input_type_uint64(): past int64/uint64 QEMU's JSON parser makes a double,
        # which no integer visitor takes; a negative integer is 2^64 + n
        if not (_json_type_ok("int", value) and -(2**63) <= value < 2**64):
            raise QmpFailure(f"Parameter '{path}' expects uint64")
        if t.kind == "uint32" and value % (1 << 64) >= 1 << 32:
            # visit_type_uintN() names the member, not its path
            raise QmpFailure(f"Parameter '{name}' expects uint32_t")
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
        visit_members(value, t.members, path + ".", profile)
        check_struct(value, {m[0] for m in t.members}, path + ".")
        return
    if t.kind == "list":
        if not isinstance(value, list):
            raise QmpFailure(f"Invalid parameter type for '{path}', expected: array")
        for i, element in enumerate(value):
            # a list element has no name of its own: the messages that print the member's
            # name rather than its path (an alternate's type, an enum's value) print 'null'
            # (probed: "Invalid parameter type for 'null', expected: BlockdevRef" for any
            # wrong element of a quorum's children, on 7.2, 10.0 and 11.1)
            _visit(element, t.members[0], "null", f"{path}[{i}]", profile)
        return
    if t.kind == "unmodelled":
        raise NotModeled(f"option '{path}' is not modelled")
    raise AssertionError(t.kind)


def visit_members(d: dict, members: tuple, prefix: str, profile: VersionProfile) -> None:
    """The generated ``visit_type_*_members()``: each member in schema order; ``prefix`` is
    the path of the struct (``'options.'``) or ``''``."""
    for name, t, required in members:
        if name not in d:
            if required:
                raise QmpFailure(f"Parameter '{_path(prefix, name)}' is missing")
            continue
        _visit(d[name], t, name, _path(prefix, name), profile)


def visit_arguments(args: dict, members: tuple[Member, ...], profile: VersionProfile) -> dict:
    """A command's arguments as its generated ``qmp_marshal_*()`` visits them: the members in
    schema order (missing, then type), then the leftovers (``visit_check_struct()``)."""
    visit_members(args, members, "", profile)
    check_struct(args, {m[0] for m in members}, "")
    return args


def check_struct(d: dict, known: set[str], prefix: str) -> None:
    """``visitcheck_struct()``: it reports the first key left in a GLib hash table, whose
    iteration order the model does not reproduce; with two or more leftovers it declines."""
    unexpected = [key for key in d if key not in known]
    if len(unexpected) > 1:
        raise NotModeled(f"several unexpected keys {unexpected}: GHashTable order")
    if unexpected:
        raise QmpFailure(f"Parameter '{_path(prefix, unexpected[0])}' is unexpected")


def variant_members(driver: str, profile: VersionProfile) -> tuple[Member, ...]:
    """The members of ``driver``'s variant (``BlockDriver.members``)."""
    d = DRIVERS.get(SAME_MEMBERS.get(driver, driver))
    if d is None or d.job_filter:
        raise NotModeled(f"driver '{driver}' is not modelled")
    return d.members(profile)


def visit_blockdev_options(d: Any, prefix: str, profile: VersionProfile,
                           name: str = "") -> None:
    """Validate one ``BlockdevOptions`` object; ``prefix`` is ``''``, ``'options[0].'``, ..."""
    if not isinstance(d, dict):
        raise QmpFailure(f"Invalid parameter type for '{prefix[:-1] or name}', expected: object")
    visit_members(d, BASE_MEMBERS, prefix, profile)
    members = variant_members(d["driver"], profile)
    visit_members(d, members, prefix, profile)
    check_struct(d, {m[0] for m in BASE_MEMBERS} | {m[0] for m in members}, prefix)


def validate_blockdev_add(args: Any, profile: VersionProfile) -> None:
    visit_blockdev_options(args, "", profile)


def validate_blockdev_reopen(args: Any, profile: VersionProfile) -> list[dict]:
    if not isinstance(args, dict) or "options" not in args:
        raise QmpFailure("Parameter 'options' is missing")
    check_struct(args, {"options"}, "")
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
    check_struct(args, {"node-name"}, "")
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
