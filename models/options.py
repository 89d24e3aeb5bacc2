"""Option dictionaries as ``block.c`` handles them: flattened QDicts read through QemuOpts."""
from __future__ import annotations

from typing import Any


def bool_opt(v: Any, default: bool = False) -> bool:
    """Parse a QemuOpts boolean the way qemu_opt_get_bool() sees a flattened QDict value."""
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    return v == "on"


def qemu_opt_str(v: Any) -> str:
    """How a QObject scalar reads back from QemuOpts (qemu_opts_to_qdict() gives strings)."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def extract(options: dict, prefix: str) -> dict:
    """``qdict_extract_subqdict()``: move ``prefix.*`` keys out of ``options``."""
    out = {}
    for k in [k for k in options if k.startswith(prefix)]:
        out[k[len(prefix):]] = options.pop(k)
    return out


def array_entries(options: dict, prefix: str) -> int:
    """``qdict_array_entries()`` for the forms QAPI lets through: ``prefix.0``, ``prefix.1``..."""
    count = 0
    while any(k == f"{prefix}.{count}" or k.startswith(f"{prefix}.{count}.") for k in options):
        count += 1
    return count
