"""Keeping a trace inside its work directory.

A trace is a file people send each other and QEMU runs as root, so replaying one must not touch
the host.  Two layers, both applied by :class:`fuzz.qemu.QemuProcess`:

1. **The check** (:func:`step_problem`) in ``QemuProcess.execute()``, the one door every QMP
   command passes (run, replay, diff), and :func:`image_problem` in ``make_images``.  A refused
   step raises ``fuzz.qemu.UnsafeStep`` before QEMU sees it.
2. **The chroot** (:func:`confinement`): QEMU runs with ``-run-with chroot=<workdir>`` (8.1+) or
   ``-chroot <workdir>`` (7.2), so a path the check misses still resolves inside the work dir.

The check looks at *every string* of the arguments, not at a list of path-valued members:
BlockdevOptions alone has some twenty (``filename``, ``config``, ``path``, ``dir``, ``logfile``,
``conf``, ...), object-add and other commands more, and new QEMUs add some; no string the
harness sends looks like a path escape.  Refused: absolute strings, ``..`` components, and
protocol prefixes (a ``:`` before the first ``/``, QEMU's ``path_has_protocol()``:
``file:/etc/passwd``, ``nbd:``, ``fat:``).  ``json:{...}`` strings are parsed and their strings
checked alike (unparsable ones are refused: QEMU's parser also takes single quotes).  Allowed
beyond plain relative names (``hd0.img``, ``sub/x.img``): ``null-co://``, ``null-aio://``,
``file:NAME`` as a ``backing-file`` (a header's backing name, as ``qemu-img create -b``
takes it), ``/dev/null`` as a ``config`` (blkdebug; in the chroot an empty file the harness provides, the
same for reading a config but not for a ``file`` node, hence nowhere else), and any ``config``
in ``blockdev-reopen``, which never opens nodes but compares the value (iotest 245 sends
``/non/existent`` to get "Cannot change the option 'config'").

HMP: only ``qemu-io``; other HMP commands write host files (``pmemsave``), open them
(``drive_add``), listen (``gdbserver``) or run programs (``migrate "exec:..."``), each with its
own grammar.  qemu-io's ``write -s FILE`` reads a host file into the image, so no qemu-io
argument may contain ``/``, ``:`` or ``..``.

What the chroot changes: block drivers built as modules (curl, iscsi, nfs, rbd, ssh, gluster,
blkio, dmg-bz2) cannot be loaded once it is in place, so ``blockdev-add`` answers
``Unknown driver 'nfs'`` instead of the driver's own error.  The model declines those drivers
(``NotModeled``), so neither run nor replay sends them.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from typing import Any

import attrs

from models.values import FILE_PREFIX, header_file

__all__ = [
    "Problem", "step_problem", "hmp_problem", "image_problem", "string_problem",
    "NO_CHROOT_ENV", "chroot_disabled", "chroot_style", "confinement", "userns_problem",
    "DEV_NULL", "make_dev_null", "remove_dev_null",
]

#: Set to a non-empty value other than ``0`` to run QEMU without the chroot (a QEMU without a
#: chroot option, a host where neither root nor user namespaces are available).  The path check
#: stays on.
NO_CHROOT_ENV = "BLOCKFUZZ_NO_CHROOT"

PSEUDO_FILENAMES = frozenset({"null-co://", "null-aio://"})
DEV_NULL = "/dev/null"


@attrs.frozen
class Problem:
    """Why a string of a step is refused: ``text`` is the offending string."""

    text: str
    why: str
    where: str = ""   # e.g. " in a json: filename"

    def describe(self) -> str:
        return f"{self.why} {self.text!r}{self.where}"


# -- layer 1: the check --------------------------------------------------------------------

def string_problem(s: str, key: str | None = None, reopen: bool = False) -> Problem | None:
    """The problem with one string (``key``: the member it is the value of), or None."""
    if "/" not in s and ":" not in s:
        return Problem(s, "parent directory") if s == ".." else None   # the fast path
    if s.startswith("json:"):
        return _json_problem(s)
    if key is not None:
        member = key.rpartition(".")[2]   # json: filenames may use flattened keys (image.config)
        if member == "config" and (reopen or s == DEV_NULL):
            return None
        if member == "backing-file" and s.startswith(FILE_PREFIX):
            # a name for an image header (blockdev-create, block-stream, block-commit): file:
            # names the same file as the rest, which is checked like any name
            return string_problem(s[len(FILE_PREFIX):])
    if s in PSEUDO_FILENAMES:
        return None
    if s[0] == "/":
        return Problem(s, "absolute path")
    colon, slash = s.find(":"), s.find("/")
    if colon >= 0 and (slash < 0 or colon < slash):
        return Problem(s, "protocol prefix in")
    if ".." in s.split("/"):
        return Problem(s, "'..' in path")
    return None


def _json_problem(s: str) -> Problem | None:
    pairs: list[tuple[str, Any]] = []

    def keep(items: list[tuple[str, Any]]) -> dict:
        pairs.extend(items)   # duplicate keys included: every value is checked
        return dict(items)

    try:
        json.loads(s[5:], object_pairs_hook=keep)
    except (ValueError, RecursionError):
        return Problem(s, "unparsable json: filename")
    for k, v in pairs:
        if (p := _walk(v, k, False)) is not None:
            return p if p.where else attrs.evolve(p, where=" in a json: filename")
    return None


def _walk(v: Any, key: str | None, reopen: bool) -> Problem | None:
    if isinstance(v, str):
        return string_problem(v, key, reopen)
    if isinstance(v, dict):
        for k, x in v.items():
            if (p := _walk(x, k, reopen)) is not None:
                return p
    elif isinstance(v, (list, tuple)):
        for x in v:
            if (p := _walk(x, key, reopen)) is not None:
                return p
    return None


def step_problem(cmd: str, args: Any) -> Problem | None:
    """Why QMP command ``cmd`` with ``args`` may not be sent to QEMU, or None."""
    if not args:
        return None
    if cmd == "human-monitor-command" and isinstance(args, dict):
        line = args.get("command-line")
        if isinstance(line, str) and (p := hmp_problem(line)) is not None:
            return p
        args = {k: v for k, v in args.items() if k != "command-line"}
    return _walk(args, None, cmd == "blockdev-reopen")


def hmp_problem(line: str) -> Problem | None:
    """An HMP command line: ``qemu-io [-d] DEVICE "COMMAND"`` with plain arguments only.

    Checked on the raw line: HMP's unquoting only turns backslash escapes into backslashes,
    quotes and line ends, so a ``/`` or ``:`` reaches qemu-io only if the line has one."""
    words = line.split(None, 1)
    if not words or words[0] != "qemu-io":
        return Problem(words[0] if words else line, "HMP command other than qemu-io:")
    if "/" in line or ":" in line or ".." in line:
        piece = next(w for w in line.split() if "/" in w or ":" in w or ".." in w)
        return Problem(piece.strip('"'), "file outside the work directory in qemu-io argument")
    return None


_PLAIN_NAME = re.compile(r"[^/:\x00]+")


def image_problem(spec: Any) -> Problem | None:
    """An image spec's ``file`` and ``backing_file``: plain file names only (a header backing
    name may carry ``file:``, which names the same plain file)."""
    for given, is_backing in ((spec.file, False), (spec.backing_file, True)):
        if given is None:
            continue
        name = header_file(given) if is_backing else given
        if not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
            return Problem(given, "not a plain file name:")
    return None


# -- layer 2: the chroot -------------------------------------------------------------------

def chroot_disabled() -> bool:
    """``$BLOCKFUZZ_NO_CHROOT`` is set (and not ``0``)."""
    return os.environ.get(NO_CHROOT_ENV, "") not in ("", "0")


def chroot_style(help_text: str) -> str | None:
    """From ``qemu-system-* -help``: ``"run-with"`` (8.1+), ``"chroot"`` (7.2) or None."""
    if re.search(r"^-run-with .*chroot=", help_text, re.M):
        return "run-with"
    if re.search(r"^-chroot ", help_text, re.M):
        return "chroot"
    return None


def confinement(style: str, workdir: str) -> tuple[list[str], list[str]]:
    """``(prefix, options)``: the argv prefix to run QEMU with (``unshare`` for a non-root
    user, who lacks CAP_SYS_CHROOT outside a user namespace) and QEMU's chroot options.

    QEMU chroots at the end of its start-up, after loading firmware (``-L``) and setting up the
    QMP socket, and then does ``chdir("/")``: relative names keep resolving in ``workdir``.
    It also runs in a network namespace of its own (``--net``: no interface but a down
    loopback), so a built-in network driver a trace names (``nbd``, ``http`` of a build with
    curl built in) reaches nothing; the QMP channel is a socketpair, not a network socket.
    ``unshare`` without ``--fork`` execs QEMU in its own process, so the pid stays QEMU's.
    """
    root = os.path.abspath(workdir)
    opts = (["-run-with", "chroot=" + root.replace(",", ",,")] if style == "run-with"
            else ["-chroot", root])
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return [_unshare(), *user, "--net"], opts


def _unshare() -> str:
    return shutil.which("unshare") or "unshare"


@functools.lru_cache(maxsize=None)
def userns_problem() -> str | None:
    """Why ``unshare --user --map-root-user`` does not work here (None: it does)."""
    if os.geteuid() == 0:
        return None
    try:
        p = subprocess.run([_unshare(), "--user", "--map-root-user", "--net", "true"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
    return None


def make_dev_null(workdir: str) -> bool:
    """Put the chroot's ``/dev/null`` (an empty file: blkdebug reads its config from it) in
    ``workdir``; True if it was created here (so :func:`remove_dev_null` takes it away)."""
    d = os.path.join(workdir, "dev")
    try:
        os.mkdir(d)
    except FileExistsError:
        return False
    with open(os.path.join(d, "null"), "wb"):
        pass
    return True


def remove_dev_null(workdir: str) -> None:
    d = os.path.join(workdir, "dev")
    try:
        os.unlink(os.path.join(d, "null"))
        os.rmdir(d)
    except OSError:
        pass   # something else lives there now: leave it
