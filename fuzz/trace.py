"""Traces: the replayable record of an example (format in ARCHITECTURE.md).

Loading validates at the boundary: a corrupt or malformed file raises ``TraceError`` with one
line naming the file and what is wrong, so ``blockfuzz replay`` can print it and exit 2.
Saving is atomic (write a temporary file in the same directory, fsync, rename): a finding
written while QEMU is crashing, or while the fuzzer is killed, is either whole or absent.
"""
from __future__ import annotations

import re

import json
import os
import tempfile
from typing import Any

import attrs

from models.values import ImageSpec, check_image_set

from .errors import TraceError

FORMAT_KEY = "blockfuzz-trace"
FORMAT_VERSION = 1
QMP_COMMANDS = ("blockdev-add", "blockdev-reopen", "blockdev-del", "human-monitor-command",
                "object-add", "object-del", "block-stream", "block-commit", "job-finalize",
                "job-dismiss", "job-cancel", "block-job-complete", "device_add", "device_del",
                "x-blockdev-change", "block-job-pause", "block-job-resume", "job-pause",
                "job-resume", "blockdev-snapshot", "block_resize", "blockdev-mirror",
                "job-complete", "block-job-cancel", "blockdev-create")
#: QEMU machine types a trace may ask for: ``none`` (default) has no buses; ``pc`` (with
#: ``-accel tcg -S``) has PCI for virtio-scsi controllers, which the iothread scenarios need.
MACHINES = ("none", "pc")
JOB_STATUSES = ("created", "running", "paused", "ready", "standby", "waiting", "pending",
                "aborting", "concluded", "undefined", "null")


@attrs.define
class Trace:
    name: str
    images: list
    steps: list
    description: str = ""
    extra: dict = attrs.field(factory=dict)

    @property
    def machine(self) -> str:
        """The QEMU machine type the trace needs (``MACHINES``)."""
        return self.extra.get("machine", "none")

    def to_json(self) -> dict:
        d: dict[str, Any] = {FORMAT_KEY: FORMAT_VERSION, "name": self.name,
                             "description": self.description,
                             "images": [i.to_json() for i in self.images],
                             "steps": self.steps}
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Any, path: str = "<trace>") -> "Trace":
        if not isinstance(d, dict) or d.get(FORMAT_KEY) != FORMAT_VERSION:
            raise TraceError(path, f"not a blockfuzz trace (missing \"{FORMAT_KEY}\": {FORMAT_VERSION})")
        for key, typ in (("name", str), ("images", list), ("steps", list)):
            if not isinstance(d.get(key), typ):
                raise TraceError(path, f"\"{key}\" must be a {typ.__name__}")
        try:
            images = [ImageSpec.from_json(i) for i in d["images"]]
            check_image_set(images)
        except (KeyError, TypeError, ValueError) as e:
            raise TraceError(path, f"bad image entry: {e}") from None
        for i, step in enumerate(d["steps"]):
            _check_step(path, i, step)
        if d.get("machine", "none") not in MACHINES:
            raise TraceError(path, f"\"machine\" must be one of {', '.join(MACHINES)}")
        extra = {k: v for k, v in d.items() if k not in (FORMAT_KEY, "name", "description", "images", "steps")}
        return cls(d["name"], images, d["steps"], d.get("description", ""), extra)


def _check_step(path: str, i: int, step: Any) -> None:
    where = f"step {i + 1}"
    if not isinstance(step, dict):
        raise TraceError(path, f"{where} is not an object")
    if "qmp" in step:
        if step["qmp"] not in QMP_COMMANDS:
            raise TraceError(path, f"{where}: unknown command {step['qmp']!r}")
        if not isinstance(step.get("args", {}), dict):
            raise TraceError(path, f"{where}: \"args\" must be an object")
        exp = step.get("expect")
        if exp is not None:
            cases = exp.get("by-version", {"*": exp}) if isinstance(exp, dict) else None
            if not isinstance(cases, dict) or not all(
                    isinstance(c, dict) and ("return" in c or "error" in c) for c in cases.values()):
                raise TraceError(path, f"{where}: \"expect\" needs \"return\" or \"error\"")
            bad = [k for k in cases if k != "*" and not re.fullmatch(r"\d+\.\d+", k)]
            if bad:
                raise TraceError(path, f"{where}: \"by-version\" key {bad[0]!r} is not a "
                                       "version such as \"10.0\"")
    elif "assert" in step:
        if step["assert"] not in ("node", "graph-equals", "job"):
            raise TraceError(path, f"{where}: unknown assertion {step['assert']!r}")
        if step["assert"] == "node" and not isinstance(step.get("node"), str):
            raise TraceError(path, f"{where}: node assertion without \"node\"")
        if step["assert"] == "job" and (not isinstance(step.get("id"), str) or (
                not step.get("absent") and step.get("status") not in JOB_STATUSES)):
            raise TraceError(path, f"{where}: job assertion needs \"id\" and a \"status\" or \"absent\"")
        if step["assert"] == "graph-equals" and not isinstance(step.get("snapshot"), str):
            raise TraceError(path, f"{where}: graph-equals without \"snapshot\"")
    elif "snapshot" in step:
        if not isinstance(step["snapshot"], str):
            raise TraceError(path, f"{where}: \"snapshot\" must be a name")
    else:
        raise TraceError(path, f"{where} is neither a qmp, assert nor snapshot step")


def load(path: str) -> Trace:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise TraceError(path, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, "is a directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TraceError(path, f"corrupt JSON: {e}") from None
    return Trace.from_json(d, path)


def dumps(trace: Trace) -> str:
    """The file text of ``trace``."""
    return json.dumps(trace.to_json(), indent=1) + "\n"


def save(trace: Trace, path: str) -> None:
    """Atomically write ``trace`` to ``path``."""
    write_atomically(path, dumps(trace))


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a crash) sees the old file or the whole
    new one, never a part: a temporary file beside it, fsync, rename.  The file gets the
    usual permissions (umask), not mkstemp's 0600, so findings can be shared and served."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def expectation_for(step: dict, version: str) -> dict | None:
    """The step's ``expect`` for a profile name, resolving ``by-version``.

    A ``by-version`` key holds from that version on: a profile takes the entry of the newest
    key not newer than itself (``{"7.2": a, "11.1": b}`` gives 10.0 ``a``), so a difference
    written down once carries over to later releases instead of going unchecked there.
    """
    exp = step.get("expect")
    if exp is None or "by-version" not in exp:
        return exp
    want = _version_key(version)
    keys = [k for k in exp["by-version"] if _version_key(k) <= want]
    return exp["by-version"][max(keys, key=_version_key)] if keys else None


def assertion_for(step: dict, version: str) -> dict:
    """An ``assert`` step for a profile name: a ``by-version`` map (same rule as ``expect``'s)
    gives the ``equals`` / ``absent`` / ``status`` of the newest key not newer than the
    version, where the versions differ (a length 10.0 leaves stale, say)."""
    cases = step.get("by-version")
    if not cases:
        return step
    want = _version_key(version)
    keys = [k for k in cases if _version_key(k) <= want]
    if not keys:
        return step
    out = {k: v for k, v in step.items() if k not in ("by-version", "equals", "absent", "status")}
    out.update(cases[max(keys, key=_version_key)])
    return out


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in name.split("."))


def get_path(node: dict, path: str) -> tuple[bool, Any]:
    """Follow a ``/``-separated path into a node dict: (present, value)."""
    cur: Any = node
    for part in path.split("/"):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur
