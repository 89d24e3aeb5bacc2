"""QEMU's QDict iteration order.

Which option QEMU names in ``Cannot change the option '%s'`` or ``Option '%s' cannot be reset to
its default value`` is the *first* offending key in QDict iteration order, and JSON
pseudo-filenames (``json:{...}``) print their keys in that order too.  A QDict is a hash table of
``QDICT_BUCKET_MAX`` (512) buckets walked from 0 to 511; inside a bucket the most recently
inserted key comes first (``qdict_put_obj`` uses ``QLIST_INSERT_HEAD``).
"""
from __future__ import annotations

from collections.abc import Iterable

QDICT_BUCKET_MAX = 512
_MASK = 0xFFFFFFFF


def tdb_hash(key: str) -> int:
    """``tdb_hash()`` from qobject/qdict.c, in 32-bit unsigned arithmetic."""
    data = key.encode()
    value = (0x238F13AF * len(data)) & _MASK
    for i, c in enumerate(data):
        value = (value + (c << (i * 5 % 24))) & _MASK
    return (1103515243 * value + 12345) & _MASK


def bucket(key: str) -> int:
    return tdb_hash(key) % QDICT_BUCKET_MAX


def qdict_order(keys_in_insertion_order: Iterable[str]) -> list[str]:
    """The order in which QEMU iterates a QDict whose keys were inserted in the given order."""
    keys = list(keys_in_insertion_order)
    index = {k: i for i, k in enumerate(keys)}
    return sorted(keys, key=lambda k: (bucket(k), -index[k]))


def to_json(value: object) -> str:
    """``qobject_to_json()``: compact-ish JSON with QDict key order and ``", "``/``": "``."""
    if isinstance(value, dict):
        items = [f'"{k}": {to_json(value[k])}' for k in qdict_order(value)]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot encode {value!r}")
