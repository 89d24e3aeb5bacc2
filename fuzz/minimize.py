"""Trace minimization: the smallest trace that still fails the same way.

Hypothesis shrinks the *choices* behind an example; what a QEMU developer wants is the shortest
list of QMP commands with the fewest options, on the fewest, smallest images.  This module is
delta debugging over a trace, driven by a predicate, in the manner of syzkaller's
``prog.Minimize(p, idx, pred)``::

    small = minimize(trace, still_fails)        # still_fails(candidate: Trace) -> bool

``minimize`` assumes ``trace`` fails (it does not ask the predicate about it) and only ever
proposes candidates that are *simpler* than the best trace so far; the first candidate the
predicate accepts becomes the new best.  It never runs QEMU itself: :class:`QemuPredicate` is the
predicate that does (a fresh QEMU and model per candidate, the failure's key compared), and the
unit tests use pure functions.

Passes (``PASSES``, run in this order, repeated until a whole round changes nothing):

``steps``
    delete steps, ddmin-style: chunks of half the list, then smaller chunks, then single steps,
    repeated until no single step can go (1-minimal).
``machine``
    ``"machine": "pc"`` -> the default ``-M none``.
``images``
    delete images no step names (a file name not found in any step) and no kept image has as
    backing file; cut an image's header backing link (the overlay gets the base's size), after
    which the base may go too; delete image writes (all, then ddmin).
``options``
    shorten a ``blockdev-reopen``'s ``options`` list (ddmin, at least one element).
``keys``
    delete keys of QMP arguments, outer dicts first (all droppable keys at once, then ddmin),
    then inside what is left.  Keys a command cannot do without are not tried, to save replays:
    ``driver`` (and ``filename`` of a ``file`` node), the top-level ``node-name`` of
    ``blockdev-add``/``-del`` and of each reopen element, ``qom-type``/``id`` of objects,
    ``command-line``, ``options``, a job's ``device``/``id``.  Everything else is tried.
``references``
    replace an inline child (a dict with ``driver`` below the top of a ``blockdev-add`` or a
    reopen element) by the name of a node an earlier ``blockdev-add`` defined explicitly with
    the same driver (the same file name first; up to three names per child).
``qemu-io``
    in ``qemu-io NODE "read|write ..."``: delete flags (``-P N``, ``-z``, ``-u``, ...), then
    bring offset and length down (offset 0, 512, 4k, 64k, 1M or half; lengths from 512 up).
``numbers``
    image sizes down (images of one size together first, as a job wants a chain of equal
    sizes, then each; 512, 4k, 64k, 1M or half, never below what its writes need), and image
    writes' offsets and lengths down, as for qemu-io.

The failure a candidate must show (:func:`failure_key`): the finding's ``signature()`` and,
for a crash, how QEMU died (signal, and the assertion it printed), so a SIGSEGV does not wander
off to another crash of the same command.  A candidate that cannot run (``TraceError``,
``NotModeled``, ``UnsafeStep``/``HarnessError``, an exception in the model) does not fail; a
harness error is retried twice first (QEMU slow to start on a loaded host).

What is kept: ``expect`` is never added and never dropped: where the original trace had one it
is a person's statement of what QEMU should do (for a corpus finding, on the failing step, *the*
bug), and it must stay true of the minimized trace.  Before the failing step the replay that
accepts a candidate checks every ``expect`` on both sides (a change that falsifies one changes
the failure and is rejected); at the failing step, where QEMU crashed, hung or disagreed,
:class:`QemuPredicate` checks it against the model's answer, whenever the input's model answer
satisfied it (so ``read -P 0xa1 1M 64k`` with its expected output cannot become ``read 0
512`` under the old output).  ``observed`` is noise to the search: it is stripped before the
first candidate; :class:`QemuPredicate` records it again from the replay that proved the final
trace fails, so a minimized finding shows what each side answered to *its* steps.  ``name``,
``description`` and other top-level keys (``affects``, ``intermittent``) are kept as they are.

Interruption (``KeyboardInterrupt`` out of the predicate; ``blockfuzz minimize`` raises it
between replays on SIGINT/SIGTERM) stops the search and raises :class:`MinimizeInterrupted`
carrying the best trace so far; a budget (``deadline``, ``max_runs``) stops it quietly and
returns the best trace.

``minimize(tr, binaries, signature, timeout=..., budget=...)`` (a signature string third)
replays on QEMU and only deletes steps; ``minimize_finding()``, what a campaign calls, runs
every pass.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from models import NotModeled

from . import trace as T
from .errors import (ExpectationMismatch, Finding, HarnessError, MinimizeInterrupted, QemuCrash,
                     UnsafeStep, generalise)

Predicate = Callable[[T.Trace], bool]

KiB, MiB = 1 << 10, 1 << 20


# --------------------------------------------------------------------------------------------
# public types

@attrs.define
class Stats:
    """What a search did; ``minimize(stats=...)`` fills it in as it goes."""

    started: float = attrs.field(factory=time.monotonic)
    runs: int = 0           # predicate calls
    cached: int = 0         # candidates seen before (not asked again)
    invalid: int = 0        # candidates that are no valid trace (never asked)
    improvements: int = 0
    pass_name: str = ""
    stopped: str = ""       # "", "budget", "interrupted"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@attrs.frozen
class Size:
    """How big a trace is, for progress lines and reports."""

    steps: int
    images: int
    image_bytes: int
    writes: int
    trace_bytes: int

    @classmethod
    def of(cls, tr: T.Trace | dict) -> "Size":
        d = tr.to_json() if isinstance(tr, T.Trace) else tr
        d = _strip_observed(d)
        sizes: dict[str, int] = {}
        for im in d["images"]:
            sizes[im["file"]] = im["size"] if im.get("size") is not None else sizes.get(im.get("backing-file"), 0)
        return cls(len(d["steps"]), len(d["images"]), sum(sizes.values()),
                   sum(len(im.get("writes", ())) for im in d["images"]),
                   len(json.dumps(d, separators=(",", ":"))))

    def __str__(self) -> str:
        return (f"{self.steps} steps, {self.images} images ({_human(self.image_bytes)}, "
                f"{self.writes} writes), {self.trace_bytes} B")


def _human(n: int) -> str:
    for unit, size in (("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------------------------
# the search

class _OutOfBudget(Exception):
    pass


def trace_key(tr: T.Trace | dict) -> str:
    """A candidate's identity: its JSON, key order kept (QMP argument order matters)."""
    d = tr.to_json() if isinstance(tr, T.Trace) else tr
    return json.dumps(_strip_observed(d))


def _strip_observed(d: dict) -> dict:
    if not any(isinstance(s, dict) and "observed" in s for s in d.get("steps", ())):
        return d
    return dict(d, steps=[{k: v for k, v in s.items() if k != "observed"} for s in d["steps"]])


class _Search:
    def __init__(self, tr: T.Trace, still_fails: Predicate, on_improvement, deadline, max_runs,
                 stats: Stats):
        self.best: dict = copy.deepcopy(_strip_observed(tr.to_json()))
        self.name = tr.name
        self.still_fails = still_fails
        self.on_improvement = on_improvement
        self.deadline = deadline
        self.max_runs = max_runs
        self.stats = stats
        self.cache: dict[str, bool] = {trace_key(self.best): True}

    def best_trace(self) -> T.Trace:
        return T.Trace.from_json(copy.deepcopy(self.best), f"<minimized {self.name}>")

    def test(self, cand: dict) -> bool:
        """Ask the predicate about ``cand`` (once per distinct candidate); on success it becomes
        the best trace."""
        key = json.dumps(cand)
        if key in self.cache:
            self.stats.cached += 1
            return self.cache[key]
        try:
            tr = T.Trace.from_json(copy.deepcopy(cand), "<candidate>")
        except T.TraceError:
            self.stats.invalid += 1
            self.cache[key] = False
            return False
        if (self.deadline is not None and time.monotonic() >= self.deadline) or (
                self.max_runs is not None and self.stats.runs >= self.max_runs):
            raise _OutOfBudget()
        self.stats.runs += 1
        ok = bool(self.still_fails(tr))
        self.cache[key] = ok
        if ok:
            self.best = cand
            self.stats.improvements += 1
            if self.on_improvement is not None:
                self.on_improvement(self.best_trace(), self.stats)
        return ok

    # helpers for passes: edit a deep copy of the best trace at a path
    def get(self, path: Sequence) -> Any:
        return _get(self.best, path)

    def with_value(self, path: Sequence, value: Any) -> dict:
        cand = copy.deepcopy(self.best)
        _set(cand, path, value)
        return cand


def _get(obj: Any, path: Sequence) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _set(obj: Any, path: Sequence, value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def _exists(obj: Any, path: Sequence) -> bool:
    try:
        _get(obj, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def ddmin(items: Sequence, test: Callable[[list], bool], allow_empty: bool = False) -> list:
    """Delete elements of ``items`` while ``test(kept)`` holds: everything at once (if
    ``allow_empty``), then chunks of half the list, quarters, ..., single elements; single
    elements again until none can go (1-minimal).  ``test(items)`` is assumed to hold."""
    items = list(items)
    if allow_empty and items and test([]):
        return []
    chunk = max(1, len(items) // 2)
    while items:
        removed = False
        i = 0
        while i < len(items):
            cand = items[:i] + items[i + chunk:]
            if (cand or allow_empty) and test(cand):
                items = cand
                removed = True
            else:
                i += chunk
        if chunk > 1:
            chunk = max(1, min(chunk // 2, len(items) // 2))
        elif not removed:
            break
    return items


# --------------------------------------------------------------------------------------------
# passes

def _pass_steps(s: _Search) -> None:
    ddmin(s.best["steps"], lambda kept: s.test(dict(copy.deepcopy(s.best), steps=copy.deepcopy(kept))))


def _pass_machine(s: _Search) -> None:
    if s.best.get("machine", "none") != "none":
        cand = copy.deepcopy(s.best)
        del cand["machine"]
        s.test(cand)


def _referenced_files(d: dict) -> str:
    return json.dumps(d["steps"])


def _drop_images(s: _Search) -> None:
    steps_text = _referenced_files(s.best)
    images = s.best["images"]
    removable = [i for i, im in enumerate(images) if im["file"] not in steps_text]
    if not removable:
        return

    def test(kept: list[int]) -> bool:
        keep = set(kept)
        new = [im for i, im in enumerate(images) if i not in removable or i in keep]
        # a kept image's backing file must stay (else qemu-img fails: a harness error)
        gone = {im["file"] for im in images} - {im["file"] for im in new}
        if any(im.get("backing-file") in gone for im in new):
            return False
        return s.test(dict(copy.deepcopy(s.best), images=copy.deepcopy(new)))

    ddmin(removable, test, allow_empty=True)


def _image_size(images: list[dict], index: int) -> int | None:
    sizes: dict[str, int | None] = {}
    for im in images[:index + 1]:
        sizes[im["file"]] = im["size"] if im.get("size") is not None else sizes.get(im.get("backing-file"))
    return sizes[images[index]["file"]]


def _unlink_backing(s: _Search) -> None:
    i = 0
    while i < len(s.best["images"]):
        im = s.best["images"][i]
        if im.get("backing-file") is not None:
            size = _image_size(s.best["images"], i)
            new = {k: v for k, v in im.items() if k not in ("backing-file", "backing-format")}
            if size is not None:
                new["size"] = size
                # keep the key order of the format: file, format, size, writes
                new = {k: new[k] for k in ("file", "format", "size", "writes") if k in new}
                s.test(s.with_value(("images", i), new))
        i += 1


def _drop_writes(s: _Search) -> None:
    for i in range(len(s.best["images"])):
        if not s.best["images"][i].get("writes"):
            continue

        def test(kept: list, i=i) -> bool:
            im = {k: v for k, v in s.best["images"][i].items() if k != "writes"}
            if kept:
                im["writes"] = copy.deepcopy(kept)
            return s.test(s.with_value(("images", i), im))

        ddmin(s.best["images"][i]["writes"], test, allow_empty=True)


def _pass_images(s: _Search) -> None:
    _drop_images(s)
    _unlink_backing(s)
    _drop_images(s)
    _drop_writes(s)


def _pass_options(s: _Search) -> None:
    for i, step in enumerate(s.best["steps"]):
        opts = step.get("args", {}).get("options") if step.get("qmp") == "blockdev-reopen" else None
        if isinstance(opts, list) and len(opts) > 1:
            path = ("steps", i, "args", "options")
            ddmin(opts, lambda kept, path=path: s.test(s.with_value(path, copy.deepcopy(kept))))


#: top-level argument keys a command cannot do without (not tried, to save replays)
_REQUIRED_TOP = {
    "blockdev-add": {"driver", "node-name"}, "blockdev-del": {"node-name"},
    "blockdev-reopen": {"options"}, "human-monitor-command": {"command-line"},
    "object-add": {"qom-type", "id"}, "object-del": {"id"}, "device_add": {"driver"},
    "device_del": {"id"}, "block-stream": {"device"}, "block-commit": {"device"},
    "job-finalize": {"id"}, "job-dismiss": {"id"}, "job-cancel": {"id"},
    "block-job-complete": {"device"},
}
_FILE_DRIVERS = ("file", "host_device", "host_cdrom")


def _required(cmd: str, where: tuple, d: dict) -> set[str]:
    req: set[str] = set()
    if where == ():
        req |= _REQUIRED_TOP.get(cmd, set())
    if cmd == "blockdev-reopen" and len(where) == 2 and where[0] == "options":
        req |= {"node-name", "driver"}
    if "driver" in d:
        req.add("driver")
        if d["driver"] in _FILE_DRIVERS:
            req.add("filename")
    return req


def _pass_keys(s: _Search) -> None:
    for i in range(len(s.best["steps"])):
        step = s.best["steps"][i]
        if "qmp" not in step or not isinstance(step.get("args"), dict):
            continue
        cmd = step["qmp"]
        base = ("steps", i, "args")
        work: list[tuple] = [()]
        while work:
            where = work.pop(0)
            if not _exists(s.best, base + where):
                continue
            d = s.get(base + where)
            if isinstance(d, list):
                work[:0] = [where + (j,) for j, v in enumerate(d) if isinstance(v, (dict, list))]
                continue
            if not isinstance(d, dict):
                continue
            droppable = [k for k in d if k not in _required(cmd, where, d)]
            if droppable:
                def test(kept: list, where=where, droppable=droppable) -> bool:
                    cur = s.get(base + where)
                    new = {k: copy.deepcopy(v) for k, v in cur.items()
                           if k not in droppable or k in kept}
                    return s.test(s.with_value(base + where, new))

                ddmin(droppable, test, allow_empty=True)
            d = s.get(base + where)
            work[:0] = [where + (k,) for k, v in d.items() if isinstance(v, (dict, list))]


def _defined_nodes(steps: list[dict], upto: int) -> list[tuple[str, str, Any]]:
    """(node-name, driver, filename) of every node an earlier blockdev-add names explicitly,
    without the ones an earlier blockdev-del deletes."""
    found: list[tuple[str, str, Any]] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if isinstance(v.get("node-name"), str) and isinstance(v.get("driver"), str):
                found.append((v["node-name"], v["driver"], v.get("filename")))
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    deleted: set[str] = set()
    for step in steps[:upto]:
        if step.get("qmp") == "blockdev-add":
            walk(step.get("args"))
        elif step.get("qmp") == "blockdev-del":
            deleted.add(step.get("args", {}).get("node-name"))
    return [f for f in found if f[0] not in deleted]


def _inline_children(v: Any, where: tuple) -> Iterable[tuple]:
    """Paths (relative to a node's options) of inline child nodes: dicts with a driver."""
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, dict) and "driver" in x:
                yield where + (k,)
            yield from _inline_children(x, where + (k,))
    elif isinstance(v, list):
        for j, x in enumerate(v):
            if isinstance(x, dict) and "driver" in x:
                yield where + (j,)
            yield from _inline_children(x, where + (j,))


def _pass_references(s: _Search) -> None:
    for i in range(len(s.best["steps"])):
        step = s.best["steps"][i]
        roots: list[tuple] = []
        if step.get("qmp") == "blockdev-add" and isinstance(step.get("args"), dict):
            roots = [("steps", i, "args")]
        elif step.get("qmp") == "blockdev-reopen" and isinstance(step.get("args", {}).get("options"), list):
            roots = [("steps", i, "args", "options", j) for j in range(len(step["args"]["options"]))]
        for root in roots:
            done: set[tuple] = set()
            while True:
                if not _exists(s.best, root):
                    break
                todo = [p for p in _inline_children(s.get(root), ()) if p not in done]
                if not todo:
                    break
                rel = todo[0]
                done.add(rel)
                child = s.get(root + rel)
                names = _defined_nodes(s.best["steps"], i)
                same = [n for n, drv, fn in names if drv == child.get("driver")
                        and fn is not None and fn == child.get("filename")]
                alike = [n for n, drv, fn in names if drv == child.get("driver") and n not in same]
                for name in list(dict.fromkeys(same + alike))[:3]:
                    if s.test(s.with_value(root + rel, name)):
                        break


_QEMU_IO = re.compile(r'qemu-io ([^\s"]+) "([^"]*)"')
_NUM = re.compile(r"(0[xX][0-9a-fA-F]+|\d+)([bBkKmMgGtT]?)")
_SUFFIX = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": 1 << 30, "t": 1 << 40}


def _parse_num(text: str) -> int | None:
    m = _NUM.fullmatch(text)
    return int(m.group(1), 0) * _SUFFIX[m.group(2).lower()] if m else None


def _fmt_num(v: int) -> str:
    if v and v % MiB == 0:
        return f"{v // MiB}M"
    if v and v % KiB == 0:
        return f"{v // KiB}k"
    return str(v)


def _smaller(v: int, lo: int, offsets: bool) -> list[int]:
    """Simpler values than ``v``, simplest first: 0 (offsets), round sizes, half."""
    cands = ([0] if offsets else []) + [512, 4 * KiB, 64 * KiB, MiB, (v // 2) // 512 * 512]
    return sorted({c for c in cands if lo <= c < v and (offsets or c > 0)})


def _first_success(s: _Search, values: list, make: Callable[[Any], dict | None]) -> None:
    for v in values:
        cand = make(v)
        if cand is not None and s.test(cand):
            return


def _pass_qemu_io(s: _Search) -> None:
    for i in range(len(s.best["steps"])):
        if s.best["steps"][i].get("qmp") != "human-monitor-command":
            continue
        path = ("steps", i, "args", "command-line")

        def parts() -> tuple[str, list[str]] | None:
            line = s.get(path) if _exists(s.best, path) else None
            m = _QEMU_IO.fullmatch(line) if isinstance(line, str) else None
            if not m:
                return None
            try:
                return m.group(1), shlex.split(m.group(2))
            except ValueError:
                return None

        def line_of(dev: str, words: list[str]) -> dict:
            return s.with_value(path, f'qemu-io {dev} "{" ".join(words)}"')

        p = parts()
        if p is None or len(p[1]) < 3:
            continue
        # flags, last first: -P N (with its value) or a bare -z, -u, ...
        k = 0
        while True:
            dev, words = parts()
            groups = _flag_groups(words)
            if k >= len(groups):
                break
            start, end = groups[len(groups) - 1 - k]
            if not s.test(line_of(dev, words[:start] + words[end:])):
                k += 1
        # offset, then length
        for pos, offsets in ((-2, True), (-1, False)):
            dev, words = parts()
            v = _parse_num(words[pos])
            if v is None:
                continue

            def make(c: int, dev=dev, words=words, pos=pos) -> dict:
                new = list(words)
                new[pos] = _fmt_num(c)
                return line_of(dev, new)

            _first_success(s, _smaller(v, 0, offsets), make)


#: qemu-io read/write flags that take a value
_VALUE_FLAGS = ("-P", "-s", "-l")


def _flag_groups(words: list[str]) -> list[tuple[int, int]]:
    """(start, end) of each flag (with its value) between the command and offset, length."""
    groups, i = [], 1
    while i < len(words) - 2:
        if words[i] in _VALUE_FLAGS and i + 1 < len(words) - 2:
            groups.append((i, i + 2))
            i += 2
        else:
            if words[i].startswith("-"):
                groups.append((i, i + 1))
            i += 1
    return groups


def _size_need(im: dict) -> int:
    need = max((w["offset"] + w["length"] for w in im.get("writes", ())), default=0)
    return max(-(-need // 512) * 512, 512)


def _pass_numbers(s: _Search) -> None:
    # images of one size together first (a job wants a chain of equal sizes), then each
    by_size: dict[int, list[int]] = {}
    for i, im in enumerate(s.best["images"]):
        if im.get("size") is not None:
            by_size.setdefault(im["size"], []).append(i)
    for size, group in by_size.items():
        if len(group) < 2:
            continue
        need = max(_size_need(s.best["images"][i]) for i in group)

        def resize(c: int, group=group) -> dict:
            cand = copy.deepcopy(s.best)
            for i in group:
                cand["images"][i]["size"] = c
            return cand

        _first_success(s, _smaller(size, need, offsets=False), resize)
    for i in range(len(s.best["images"])):
        im = s.best["images"][i]
        if im.get("size") is None:
            continue
        _first_success(s, _smaller(im["size"], _size_need(im), offsets=False),
                       lambda c, i=i: s.with_value(("images", i, "size"), c))
    for i in range(len(s.best["images"])):
        for j in range(len(s.best["images"][i].get("writes", ()))):
            for key, offsets in (("offset", True), ("length", False)):
                path = ("images", i, "writes", j, key)
                _first_success(s, _smaller(s.get(path), 0, offsets),
                               lambda c, path=path: s.with_value(path, c))


PASSES: dict[str, Callable[[_Search], None]] = {
    "steps": _pass_steps,
    "machine": _pass_machine,
    "images": _pass_images,
    "options": _pass_options,
    "keys": _pass_keys,
    "references": _pass_references,
    "qemu-io": _pass_qemu_io,
    "numbers": _pass_numbers,
}


# --------------------------------------------------------------------------------------------
# the entry point

def minimize(trace: T.Trace, still_fails, signature: str | None = None, timeout: float = 2.0,
             budget: int = 400, *, passes: Iterable[str] | None = None,
             on_improvement: Callable[[T.Trace, Stats], None] | None = None,
             deadline: float | None = None, max_runs: int | None = None,
             stats: Stats | None = None, rounds: int = 5) -> T.Trace:
    """The smallest trace found that ``still_fails`` (a predicate on a candidate Trace).

    ``passes`` names the passes to run (default: all of ``PASSES``, in that order), for up to
    ``rounds`` rounds, until a round changes nothing.  ``on_improvement(best, stats)`` is called
    on every accepted candidate.  ``deadline`` (``time.monotonic()``) and ``max_runs``
    (predicate calls) bound the search: it then returns the best trace so far.  An interrupt
    raises :class:`MinimizeInterrupted` with it.

    The form ``minimize(tr, binaries, signature, timeout=2.0, budget=400)`` (a signature
    string third) replays on QEMU, deletes steps only, and returns the trace with each step's
    ``observed``; see :func:`minimize_finding` for all passes.
    """
    if signature is not None:
        return _minimize_steps(trace, still_fails, signature, timeout, budget)
    stats = stats if stats is not None else Stats()
    names = list(PASSES) if passes is None else list(passes)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ValueError(f"unknown minimization pass {unknown[0]!r}")
    s = _Search(trace, still_fails, on_improvement, deadline, max_runs, stats)
    try:
        for _ in range(rounds):
            before = json.dumps(s.best)
            for name in names:
                stats.pass_name = name
                PASSES[name](s)
            if json.dumps(s.best) == before:
                break
    except _OutOfBudget:
        stats.stopped = "budget"
    except KeyboardInterrupt:
        stats.stopped = "interrupted"
        raise MinimizeInterrupted(s.best_trace(), stats) from None
    return s.best_trace()


# --------------------------------------------------------------------------------------------
# QEMU-backed predicate

def failure_key(err: BaseException) -> str:
    """What a candidate must fail with to count: the finding's ``signature()``, and for a crash
    also how QEMU died (the signal, or the assertion it printed), so that a minimized SIGSEGV
    does not wander off to another crash of the same command."""
    sig = err.signature()
    if isinstance(err, QemuCrash):
        sig += ":" + _death(err)
    return sig


def _death(crash: QemuCrash) -> str:
    tail = crash.stderr_tail or ""
    m = re.search(r"(\w+): Assertion `(.*?)' failed", tail)
    signum = crash.signal
    how = "fatal"
    if signum is not None:
        import signal as _signal
        try:
            how = _signal.Signals(signum).name
        except ValueError:
            how = f"signal {signum}"
    elif crash.returncode is not None:
        how = f"status {crash.returncode}"
    if m:
        how += f" {m.group(1)}: {generalise(m.group(2))}"
    return how


@attrs.frozen
class Replay:
    """One replay of a candidate (:func:`run_candidate`)."""

    #: the finding it raised (a fuzz.errors.Finding), or None
    error: BaseException | None
    #: the steps that ran, each with what each side answered (``observed``)
    record: list
    #: why it could not run (NotModeled, HarnessError, ...), or None
    cannot_run: BaseException | None = None
    #: whether the model's answer at the failing step satisfies that step's written ``expect``
    #: (None: no failure, or the step has none)
    model_keeps_expect: bool | None = None


def run_candidate(tr: T.Trace, binaries, timeout: float, strict: bool = False) -> Replay:
    """Replay ``tr`` on a fresh QEMU and model.  A trace that cannot run (the model declines a
    step, an unsafe step, a harness error, bad images, an exception in the model) is no
    finding: its ``Replay`` has ``cannot_run`` set."""
    from .session import Session

    s = Session(binaries, tr.images, timeout=timeout, machine=tr.machine, strict=strict)
    try:
        with s:
            for step in tr.steps:
                s.runner.run(step)
    except Finding as e:
        return Replay(e, _record(s), None, _model_keeps_expect(s.runner, e))
    except (NotModeled, HarnessError, T.TraceError, OSError, ValueError) as e:
        return Replay(None, _record(s), e)
    except Exception as e:  # noqa: BLE001 - a candidate that trips up the model cannot run
        return Replay(None, _record(s), e)
    return Replay(None, _record(s))


def _model_keeps_expect(runner, err) -> bool | None:
    """Does the model's answer at the failing step satisfy the ``expect`` written there?  The
    replay stopped at that step, so QEMU's side of it is the finding, and only the model can
    tell whether the statement is still true of the (changed) candidate."""
    from models import Outcome

    from .engine import Runner

    step, index = err.step, err.step_index
    if "qmp" in step:
        exp = T.expectation_for(step, runner.profile_name)
        if exp is None:
            return None
        seen = (runner.observed[index] or {}).get("model") if index < len(runner.observed) else None
        if seen is None:
            return False
        got, want = Outcome.from_json(seen), Outcome.from_json(exp)
        return (got.ret, got.error) == (want.ret, want.error) and (
            "stdout" not in exp or got.stdout == want.stdout) and (
            "events" not in exp or got.events == want.events)
    if "assert" in step:
        model_only = Runner(runner.model, None)
        model_only.snapshots = dict(runner.snapshots)
        try:
            model_only.run(step)
        except ExpectationMismatch:
            return False
        return True
    return None


def _record(s) -> list[dict]:
    r = s.runner
    if r is None:
        return []
    return [dict(st, observed=o) if o else dict(st) for st, o in zip(r.done, r.observed)]


def failure_of(tr: T.Trace, binaries, timeout: float, record: list | None = None) -> BaseException | None:
    """Replay ``tr``; the finding it raises, or None when it passes or the model cannot run it.
    With ``record``, the steps are appended to it with what each side answered.  (A harness
    error propagates.)"""
    from .session import Session

    s = Session(binaries, tr.images, timeout=timeout, machine=tr.machine)
    try:
        with s:
            for step in tr.steps:
                s.runner.run(step)
    except Finding as e:
        return e
    except NotModeled:
        return None
    finally:
        if record is not None:
            record.extend(_record(s))
    return None


class QemuPredicate:
    """``still_fails`` on real QEMU: a candidate fails when its replay (fresh QEMU and model,
    ``fuzz.session.Session``) raises a finding with the target key (:func:`failure_key`, or
    the plain ``signature()`` with ``match="signature"``), in any of ``tries`` runs.

    The failing step's written ``expect`` must stay true: when the input's model answer at its
    failing step satisfies the ``expect`` there, a candidate's must too (else the minimized
    trace would state an outcome nobody checked).  The replay of every accepted candidate is
    kept (``observed`` per step) for :meth:`with_observed`."""

    def __init__(self, binaries, timeout: float = 5.0, tries: int = 1, strict: bool = False,
                 target: str | None = None, match: str = "key"):
        self.binaries = binaries
        self.timeout = timeout
        self.tries = max(1, tries)
        self.strict = strict
        self.target = target
        self.match = match
        self.keep_expect = False
        self.records: dict[str, list[dict]] = {}
        self.runs = 0
        self.unrunnable = 0

    def key(self, err: BaseException) -> str:
        return failure_key(err) if self.match == "key" else err.signature()

    def _replay(self, tr: T.Trace) -> Replay:
        """One replay; a harness error (QEMU not ready in time on a loaded host, say) is tried
        twice more before the candidate counts as unable to run.  An unsafe step is not."""
        for _attempt in range(3):
            self.runs += 1
            r = run_candidate(tr, self.binaries, self.timeout, self.strict)
            if not isinstance(r.cannot_run, HarnessError) or isinstance(r.cannot_run, UnsafeStep):
                break
        return r

    def check(self, tr: T.Trace) -> BaseException | None:
        """Run the input (up to ``tries`` times) and take its failure as the target.  Returns
        the failure, or None if it passes; raises what made it impossible to run
        (``NotModeled``, ``HarnessError``, ...) when it never failed."""
        reason = None
        for _ in range(self.tries):
            r = self._replay(tr)
            if r.error is not None:
                if self.target is None:
                    self.target = self.key(r.error)
                elif self.key(r.error) != self.target:
                    continue
                self.keep_expect = r.model_keeps_expect is True
                self.records[trace_key(tr)] = r.record
                return r.error
            reason = r.cannot_run or reason
        if reason is not None:
            raise reason
        return None

    def __call__(self, tr: T.Trace) -> bool:
        if self.target is None:
            raise RuntimeError("QemuPredicate: no target (call check() on the input first)")
        for _ in range(self.tries):
            r = self._replay(tr)
            if r.error is not None and self.key(r.error) == self.target:
                if self.keep_expect and r.model_keeps_expect is False:
                    return False
                self.records[trace_key(tr)] = r.record
                return True
            if r.cannot_run is not None:
                self.unrunnable += 1
                return False
        return False

    def with_observed(self, tr: T.Trace) -> T.Trace:
        """``tr`` with each step's ``observed`` from the replay that showed it fails (steps
        the replay did not reach, after the failing one, have none)."""
        record = self.records.get(trace_key(tr)) or []
        steps = []
        for i, st in enumerate(tr.steps):
            st = {k: v for k, v in st.items() if k != "observed"}
            if i < len(record) and record[i].get("observed"):
                st["observed"] = record[i]["observed"]
            steps.append(st)
        return T.Trace(tr.name, list(tr.images), steps, tr.description, dict(tr.extra))


def minimize_finding(tr: T.Trace, binaries, signature: str, timeout: float = 2.0,
                     time_budget: float | None = 120.0, max_runs: int | None = 1000,
                     on_improvement=None, why_not=None) -> T.Trace:
    """The campaign's post-processing with every pass: ``tr`` minimized on ``binaries`` while
    it fails with ``signature`` (how a crash dies is held too when the first replay shows the
    same signature), with ``observed`` on every step.  ``tr`` unchanged if its replay does not
    fail that way (a flaky finding) or cannot run; then ``why_not`` (a callable, if given)
    gets one line saying which."""
    pred = QemuPredicate(binaries, timeout=timeout)
    try:
        err = pred.check(tr)
    except (NotModeled, HarnessError, OSError, ValueError) as e:
        if why_not is not None:
            first = next((line for line in str(e).splitlines() if line.strip()), "")
            why_not(f"its replay could not run: {type(e).__name__}: {first}")
        return tr
    if err is None or err.signature() != signature:
        if why_not is not None:
            why_not("its replay on a fresh QEMU passed" if err is None else
                    f"its replay on a fresh QEMU failed otherwise: {err.signature()}")
        return tr
    deadline = None if time_budget is None else time.monotonic() + time_budget
    try:
        small = minimize(tr, pred, deadline=deadline, max_runs=max_runs, on_improvement=on_improvement)
    except MinimizeInterrupted as e:
        small = e.best
    return pred.with_observed(small)


def _minimize_steps(tr: T.Trace, binaries, signature: str, timeout: float, budget: int) -> T.Trace:
    """``minimize(tr, binaries, signature, ...)``: delete steps only, within ``budget`` replays."""
    pred = QemuPredicate(binaries, timeout=timeout, target=signature, match="signature")
    small = minimize(tr, pred, passes=("steps",), max_runs=budget)
    if trace_key(small) not in pred.records:
        try:    # nothing went: replay the input to record what each side answered
            pred.check(small)
        except Exception:  # noqa: BLE001 - as failure_of: a trace that cannot run has no record
            pass
    return pred.with_observed(small)
