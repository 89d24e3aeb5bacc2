"""Boundary values at the QAPI layer, worked out from the members a driver declares.

``qapi_boundary`` takes blockdev-add (or one blockdev-reopen element's) options, walks into the
top level or a nested child, and breaks one thing there the way a QAPI input visitor sees it:

* a member of the wrong JSON type (an integer as a string, a float, an integer past int64; a
  string, enum or boolean as a number; an object, reference or list as a scalar);
* an enum value outside the enum;
* a required member left out;
* one member the schema does not have (two would be reported in GHashTable order, which the
  model declines on purpose);
* a string member well typed but at its boundary: empty, longer than any name QEMU keeps
  (node names stop at 31 characters, file names at 255 per component), or with characters
  no identifier takes.

The members come from ``BlockDriver.members()`` and ``models.qapi.BASE_MEMBERS``, the same table
the model validates against, so a new driver gets its boundaries without an edit here.  The
model predicts each error exactly (``models.qapi``), with QEMU's member path.  Only values a
QAPI visitor rejects are drawn: what a driver does with a well-typed extreme value (a negative
size, a huge cache) is a question for the driver's own model, not for this layer.
"""
from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from models.arguments import COMMAND_ARGUMENTS
from models.drivers import DRIVERS
from models.profiles import PROFILES
from models.qapi import BASE_MEMBERS, SAME_MEMBERS
from models.qapitypes import Member

from .draws import pick

#: the members do not depend on the version except for qcow2's discard-no-unref (8.1+); the
#: newest profile lists every member any version has, and an older one rejects the extra
#: member with its own exact error
_PROFILE = PROFILES[max(PROFILES, key=lambda v: PROFILES[v].version)]

#: well-typed strings at the edges: empty, 32 characters (one past a node name's 31), 300
#: (past NAME_MAX), and characters id_wellformed() refuses
_STRINGS = ("", "n" * 32, "f" * 300, "a b", "a,b", "\u00e9t\u00e9", "-x")

#: JSON values a QAPI input visitor refuses for each kind, with QEMU's "expected: ..." word
_WRONG: dict[str, tuple[Any, ...]] = {
    "int": ("1", True, 1.5, 2**63, -(2**63) - 1),
    "size": ("1", 1.5, 2**64),
    "uint32": ("1", True, 2**64),
    "str": (7, True),
    "enum": (3, False),
    "bool": ("on", 1),
    "struct": ("x", 0),
    "ref": (5, True),
    "refornull": (5, False),
    "list": ("x", 0),
}


def members_of(options: dict) -> tuple[Member, ...] | None:
    """Base and variant members of one BlockdevOptions dict, or None for a driver the model
    does not cover (nothing is drawn for it)."""
    name = options.get("driver")
    if not isinstance(name, str):
        return None
    d = DRIVERS.get(SAME_MEMBERS.get(name, name))
    if d is None or d.job_filter:
        return None
    return BASE_MEMBERS + d.members(_PROFILE)


def _targets(options: dict, members: tuple[Member, ...]) -> list[dict]:
    """The dicts one boundary may go into: ``options`` itself and every inline child tree."""
    out = [options]
    for name, t, _required in members:
        v = options.get(name)
        if t.kind in ("ref", "refornull") and isinstance(v, dict) and members_of(v) is not None:
            out += _targets(v, members_of(v) or ())
    return out


#: well-typed integers at the edges of an int64 / uint32 member: zero, -1, the type's limits
#: and one past a uint32's (the model answers each: a command's own range checks, or the
#: visitor's ``expects uint32_t``)
_INTEGERS: dict[str, tuple[int, ...]] = {
    "int": (0, -1, 2**63 - 1, -(2**63)),
    "uint32": (0, -1, 2**32 - 1, 2**32),
}


def _break_one(draw: Any, target: dict, members: tuple[Member, ...], kinds: list[str],
               unknown: list[str]) -> None:
    """Break one thing of ``target`` (a struct with ``members``) as a QAPI visitor sees it:
    a member's JSON type, an enum value, a required member, one unknown member (a name from
    ``unknown``), a well-typed string at its edge, or (kind ``integer``) a well-typed
    integer at its type's edge."""
    kind = pick(draw, kinds)
    present = [(n, t) for n, t, _r in members if n in target and t.kind in _WRONG]
    strings = [n for n, t, _r in members if n in target and t.kind == "str"]
    integers = [(n, t) for n, t, _r in members if t.kind in _INTEGERS]
    enums = [n for n, t, _r in members if t.kind == "enum"]
    required = [n for n, _t, r in members if r and n in target]
    if kind == "string" and strings:
        name = pick(draw, strings)
        target[name] = pick(draw, [v for v in _STRINGS if v != target[name]])
    elif kind == "integer" and integers:
        name, t = pick(draw, integers)
        target[name] = pick(draw, _INTEGERS[t.kind])
    elif kind == "type" and present:
        name, t = pick(draw, present)
        target[name] = pick(draw, _WRONG[t.kind])
    elif kind == "enum" and enums:
        target[pick(draw, enums)] = pick(draw, ["bogus", "", "ON"])
    elif kind == "missing" and required:
        del target[pick(draw, required)]
    else:
        target[pick(draw, unknown)] = pick(draw, [1, "x", None, {}])


@st.composite
def qapi_boundary(draw: Any, options: dict) -> dict:
    """``options`` with one thing broken at the QAPI layer (see the module docstring)."""
    members = members_of(options)
    if members is None:
        return options
    out = copy.deepcopy(options)
    target = pick(draw, _targets(out, members))
    _break_one(draw, target, members_of(target) or (),
               ["type", "type", "enum", "missing", "unknown", "string"],
               ["bogus", "x-unknown", "Driver"])
    return out


@st.composite
def argument_boundary(draw: Any, command: str, args: dict) -> dict:
    """A command's ``args`` with one member broken at the QAPI layer, or a well-typed integer
    member at its type's edge; the members are ``models.arguments.COMMAND_ARGUMENTS`` (schema
    order), the table the model validates against."""
    members = COMMAND_ARGUMENTS.get(command)
    if members is None:
        return args
    out = dict(args)
    _break_one(draw, out, members,
               ["type", "type", "enum", "missing", "unknown", "string", "integer"],
               ["bogus", "x-unknown", "Device"])
    return out
