"""Findings of a campaign: their folders, their signatures, and the bugs already known.

A *finding* is a failing example: a disagreement (model vs QEMU, or build vs build), a crash or
a hang.  Its ``signature()`` (``fuzz.engine``) names the bug, not the path to it; the folder is
``OUT/<kind>-<sha1(signature)[:12]>/`` so the same bug lands in the same folder whichever
worker, example or night found it.

* :class:`FindingWriter` listens for :class:`FailureSeen` and writes the folder at once,
  atomically: ``first.json`` (the first example that showed the bug, never overwritten),
  ``minimal.json`` (replaced only by a trace that is not longer), ``summary.txt``.  Several
  worker processes may write one folder: every file goes through a rename, and ``first.json``
  through a link that fails when it exists.  It then emits a :class:`FindingEvent`.
* :class:`KnownBugs` is the table of ``corpus/findings/*.json``: each trace records its
  ``signature`` and the versions it ``affects``.  A finding with a listed signature on a
  listed version is *known* (counted, exit status 0); on another version it is a
  *regression*, which is new.
* :func:`distinct` gives each signature its own exception class, because Hypothesis tells
  failures apart by exception type and raising line: two bugs must be two failures to it, so
  that each is shrunk on its own.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import traceback
from typing import Any

import attrs

from . import trace as T

__all__ = ["FailureSeen", "FindingEvent", "FindingWriter", "KnownBugs", "distinct",
           "folder_name", "internal_signature"]


@attrs.frozen
class FailureSeen:
    """Event: an example failed.  ``trace`` is the example so far (images and recorded steps),
    ``error`` the finding (or, for an internal error, the exception), ``build`` the version
    label the known-bug table is looked up with."""

    error: BaseException
    trace: T.Trace
    signature: str
    build: str
    internal: bool = False


@attrs.frozen
class FindingEvent:
    """Event: a finding was written.  ``first`` is true the first time this process saw the
    signature; ``known`` names the corpus trace of a known bug, ``regression`` the corpus trace
    whose signature this is on a version it is not listed for."""

    signature: str
    kind: str
    folder: str
    summary: str
    steps: int
    build: str
    first: bool
    known: str | None = None
    regression: str | None = None
    internal: bool = False

    @property
    def new(self) -> bool:
        return self.known is None and not self.internal

    def to_json(self) -> dict:
        return {"signature": self.signature, "kind": self.kind, "folder": self.folder,
                "summary": self.summary, "steps": self.steps, "build": self.build,
                "known": self.known, "regression": self.regression, "internal": self.internal}


def folder_name(kind: str, signature: str) -> str:
    return f"{kind}-{hashlib.sha1(signature.encode()).hexdigest()[:12]}"


def internal_signature(error: BaseException) -> str:
    """A blockfuzz bug is named by its exception type and where it was raised."""
    tb = traceback.extract_tb(error.__traceback__)
    where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else "?"
    return f"internal:{type(error).__name__}:{where}"


_DISTINCT: dict[tuple[type, str], type] = {}


def distinct(error: BaseException, signature: str) -> BaseException:
    """``error`` re-classed to a subclass of its own class that is unique to ``signature``
    (``isinstance`` checks keep working; Hypothesis sees one exception type per bug)."""
    base = type(error)
    cls = _DISTINCT.get((base, signature))
    if cls is None:
        digest = hashlib.sha1(signature.encode()).hexdigest()[:12]
        cls = type(f"{base.__name__}_{digest}", (base,), {"signature_text": signature,
                                                          "__module__": base.__module__})
        _DISTINCT[(base, signature)] = cls
    error.__class__ = cls
    return error


class KnownBugs:
    """``signature -> (trace name, versions it affects)``, from finding traces.

    ``build`` is a version profile's name (``"10.0"``): a developer's 11.1.90 runs with the
    11.1 profile, so a bug known on 11.1 is known there too."""

    def __init__(self, entries: dict[str, tuple[str, tuple[str, ...]]] | None = None):
        self.entries = dict(entries or {})

    @classmethod
    def from_corpus(cls, folder: str) -> "KnownBugs":
        entries: dict[str, tuple[str, tuple[str, ...]]] = {}
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            tr = T.load(path)
            for sig in recorded_signatures(tr.extra.get("signature")):
                entries[sig] = (tr.name, tuple(tr.extra.get("affects", ())))
        return cls(entries)

    def lookup(self, signature: str, build: str) -> tuple[str | None, str | None]:
        """(known, regression): the corpus trace's name in one of the two, or (None, None)."""
        entry = self.entries.get(signature)
        if entry is None:
            return None, None
        name, versions = entry
        return (name, None) if build in versions else (None, name)

    def __len__(self) -> int:
        return len(self.entries)


def recorded_signatures(value: Any) -> list[str]:
    """A trace's ``signature``: one string, or per version ``{"7.2": "...", ...}`` when the
    same bug dies differently on different versions, a version's entry a list where the bug
    is intermittent there (``["hang:...", "crash:..."]``)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        found: set[str] = set()
        for v in value.values():
            found.update([v] if isinstance(v, str) else
                         [x for x in v if isinstance(x, str)] if isinstance(v, list) else [])
        return sorted(found)
    return []


class FindingWriter:
    """Writes each failing example to disk at once, and emits a :class:`FindingEvent`.

    ``events`` is the bus the finding is announced on; ``replay_command`` is how
    ``summary.txt`` says to replay (diff mode names both builds)."""

    def __init__(self, out: str, events: Any = None, known: KnownBugs | None = None,
                 replay_command: str = "blockfuzz replay", qemu_build: str = ""):
        self.out = out
        #: the exact QEMU build, one line (``fuzz.qemubuild.describe_qemu``)
        self.qemu_build = qemu_build
        self.events = events
        self.known = known or KnownBugs()
        self.replay_command = replay_command
        #: folder -> signature, for every folder written by this process
        self.signatures: dict[str, str] = {}
        self.internal: set[str] = set()

    @property
    def seen(self) -> dict[str, str]:
        return dict(self.signatures)

    def __call__(self, event: Any) -> None:
        if isinstance(event, FailureSeen):
            self.record(event)

    def record(self, event: FailureSeen) -> FindingEvent:
        error, sig = event.error, event.signature
        kind = "internal-error" if event.internal else getattr(error, "kind", "finding")
        known, regression = (None, None) if event.internal else self.known.lookup(sig, event.build)
        base = os.path.join(self.out, "known") if known else self.out
        folder = os.path.join(base, folder_name(kind, sig))
        os.makedirs(folder, exist_ok=True)
        first = folder not in self.signatures
        digest = folder_name(kind, sig).rsplit("-", 1)[1]
        tr = attrs.evolve(event.trace, name=f"finding {digest}", description=f"{sig}\n{error}")
        _create_exclusive(os.path.join(folder, "first.json"), T.dumps(tr))
        minimal = os.path.join(folder, "minimal.json")
        if not _shorter_on_disk(minimal, len(tr.steps)):
            T.save(tr, minimal)
        self.signatures[folder] = sig
        if event.internal:
            self.internal.add(folder)
        detail = "".join(traceback.format_exception(error)) if event.internal else f"{error}\n"
        note = (f"known: the QEMU bug of corpus/findings/{known}.json\n" if known else
                f"regression: corpus/findings/{regression}.json shows this bug, but does not "
                f"list {event.build} among the versions it affects\n" if regression else "")
        report = getattr(error, "sanitizer", "")
        if report:   # a sanitizer build's report, whole (it is also in summary.txt)
            T.write_atomically(os.path.join(folder, "sanitizer.txt"), report)
        qemu = f"qemu: {self.qemu_build}\n" if self.qemu_build else ""
        T.write_atomically(os.path.join(folder, "summary.txt"),
                           f"{detail}signature: {sig}\nbuild: {event.build}\n{qemu}{note}"
                           f"replay: {self.replay_command} {minimal}\n")
        summary = next((l for l in str(error).splitlines() if l.strip()), "")
        if event.internal:
            # (an exception without a message, models.iodata.IoFailed say, still says what)
            summary = f"{type(error).__name__}: {summary}" if summary else type(error).__name__
        out = FindingEvent(signature=sig, kind=kind, folder=folder, summary=summary[:500],
                           steps=len(tr.steps), build=event.build, first=first, known=known,
                           regression=regression, internal=event.internal)
        if self.events is not None:
            self.events.emit(out)
        return out


def _create_exclusive(path: str, text: str) -> bool:
    """Write ``path`` atomically unless it exists (another worker, or an earlier campaign into
    the same folder, found the bug first: its first example stays)."""
    if os.path.exists(path):
        return False
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _shorter_on_disk(path: str, steps: int) -> bool:
    """Whether ``path`` holds a trace with fewer steps (kept: the same bug, shorter)."""
    try:
        with open(path) as f:
            return len(json.load(f).get("steps", [])) < steps
    except (OSError, ValueError, AttributeError):
        return False
