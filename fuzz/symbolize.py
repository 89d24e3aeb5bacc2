"""Symbolize a sanitizer report after the fact.

QEMU runs chrooted into the example's work directory (``fuzz.sandbox``), where neither its own
binary nor ``llvm-symbolizer`` can be found, so ASan prints bare frames::

    #0 0x56482445ad20  (/work/main/.qemu/10.2-asan/build/qemu-system-x86_64+0x4a0fd20)

:func:`symbolize` turns each into what ASan prints when it can symbolize, with one line per
inlined function (innermost first, the same frame number), using binutils' ``addr2line`` on
the module outside the chroot::

    #0 0x56482445ad20 in bdrv_reopen_multiple block.c:4669

(file names from QEMU's top directory on, as a build in the tree's ``build/`` prints them).
Frames of the system's libraries (glib, libc, libasan) stay as they were.  One
``addr2line`` run per module (~0.2 s for a 250 MB ASan QEMU).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from fuzz.errors import _QEMU_PATH

__all__ = ["symbolize"]

_SYSTEM_LIBS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")

# "    #3 0x55d0c0a1b2c3  (/path/to/module+0x4a0fd20)"
_BARE = re.compile(r"^(?P<head>\s*#(?P<n>\d+) (?P<pc>0x[0-9a-fA-F]+))\s+"
                   r"\((?P<module>/[^()]+?)\+(?P<off>0x[0-9a-fA-F]+)\)\s*$", re.M)


def _addr2line(module: str, offsets: list[str]) -> dict[str, list[tuple[str, str]]]:
    """offset -> [(function, file:line), ...] innermost inline first; missing if unknown."""
    tool = shutil.which("addr2line")
    if tool is None or not os.path.isfile(module):
        return {}
    try:
        p = subprocess.run([tool, "-f", "-i", "-C", "-a", "-e", module, *offsets],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    lines = p.stdout.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.fullmatch(r"0x[0-9a-fA-F]+", line):
            current = out.setdefault(hex(int(line, 16)), [])
            i += 1
            continue
        if current is not None and i + 1 < len(lines):
            func, where = line, lines[i + 1]
            if func != "??":
                path, _, num = where.rpartition(":")
                num = num.split()[0] if num else num   # "123 (discriminator 2)"
                # the path from QEMU's top directory on (block/io.c), as a build in ../ prints it
                path = _QEMU_PATH.sub(r"\1", os.path.normpath(path)) if path else path
                current.append((func, f"{path}:{num}" if path else where))
        i += 2
    return {k: v for k, v in out.items() if v}


def symbolize(report: str) -> str:
    """``report`` with every bare frame of a module that has debug information symbolized."""
    frames = list(_BARE.finditer(report))
    if not frames:
        return report
    by_module: dict[str, list[str]] = {}
    for m in frames:
        if m["module"].startswith(_SYSTEM_LIBS):
            continue   # glib, libc, libasan: no debug information here, and not QEMU's code
        by_module.setdefault(m["module"], []).append(m["off"])
    known: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for module, offs in by_module.items():
        unique = list(dict.fromkeys(offs))
        for off, entries in _addr2line(module, unique).items():
            known[(module, off)] = entries

    def line_for(m: re.Match) -> str:
        entries = known.get((m["module"], hex(int(m["off"], 16))))
        if not entries:
            return m.group(0)
        return "\n".join(f"{m['head']} in {func} {where}" for func, where in entries)

    return _BARE.sub(line_for, report)
