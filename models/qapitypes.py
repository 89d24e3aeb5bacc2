"""QAPI types, as values: what ``qapi/block-core.json`` declares for a member.

The drivers (``models.drivers``) describe their ``BlockdevOptions`` variant members with these,
``models.qapi`` validates input against them in the order of the generated visitors, and the
generator (``fuzz.statemachine``) draws from the same description.
"""
from __future__ import annotations

import attrs


@attrs.frozen
class T:
    """A QAPI type: kind is one of str/bool/int/size/uint32/enum/struct/list/ref/refornull/unmodelled."""

    kind: str
    values: tuple = ()
    members: tuple = ()  # struct: ((name, T, required), ...); list: (element type,)
    name: str = ""  # alternate name for messages


#: one member of a struct or union variant: (name, type, required)
Member = tuple[str, T, bool]

STR, BOOL, INT = T("str"), T("bool"), T("int")
#: ``size`` (uint64): ``qobject_input_type_uint64()`` takes any JSON integer QEMU's parser keeps
#: exact, a negative one as 2^64 + n ("for backward compatibility")
SIZE = T("size")
#: ``uint32``: visited as uint64, then ``visit_type_uintN()`` checks the maximum
UINT32 = T("uint32")
REF = T("ref", name="BlockdevRef")
REF_OR_NULL = T("refornull", name="BlockdevRefOrNull")
CACHE = T("struct", members=(("direct", BOOL, False), ("no-flush", BOOL, False)))
#: a member the model does not cover: giving it is NotModeled
UNMODELLED = T("unmodelled")


def enum(*values: str) -> T:
    return T("enum", values=values)


def list_of(element: T) -> T:
    return T("list", members=(element,))
