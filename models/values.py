"""Value classes that the model and the harness share: what a command did (``Outcome``,
``QmpError``), the images a trace starts from (``ImageSpec``, ``Write``) and the node-name
canonicaliser.

This module imports nothing else of the model, so the harness (``fuzz.qemu``, ``fuzz.images``)
can use these without importing the model's semantics; an import-linter contract checks that.
Both sides produce the same ``Outcome`` so that comparing them is plain equality.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any, TypeVar

import attrs


@attrs.frozen
class QmpError:
    """A QMP error reply: ``{"error": {"class": cls, "desc": desc}}``."""

    cls: str
    desc: str


@attrs.frozen
class Outcome:
    """What a command did.

    ``ret`` is the QMP ``return`` value (``None`` when the command failed), ``error`` the error
    reply, ``stdout`` the lines QEMU printed on its stdout while the command ran (HMP qemu-io
    output, with the timing statistics lines removed).
    """

    ret: Any = None
    error: QmpError | None = None
    stdout: tuple[str, ...] = ()
    #: the job events QEMU emitted while the command ran, in order, as ``job_event_text()``
    #: writes them (transient pauses around drains folded away: ``fold_job_events()``)
    events: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def success(cls, ret: Any = None, stdout: tuple[str, ...] = ()) -> "Outcome":
        return cls(ret={} if ret is None else ret, error=None, stdout=tuple(stdout))

    @classmethod
    def failure(cls, desc: str, klass: str = "GenericError") -> "Outcome":
        return cls(ret=None, error=QmpError(klass, desc))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.error is None:
            d["return"] = self.ret
        else:
            d["error"] = {"class": self.error.cls, "desc": self.error.desc}
        if self.stdout:
            d["stdout"] = list(self.stdout)
        if self.events:
            d["events"] = list(self.events)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Outcome":
        stdout = tuple(d.get("stdout", ()))
        events = tuple(d.get("events", ()))
        if "error" in d:
            return cls(ret=None, error=QmpError(d["error"]["class"], d["error"]["desc"]), stdout=stdout,
                       events=events)
        return cls(ret=d.get("return"), error=None, stdout=stdout, events=events)


# QEMU names anonymous nodes "#block" + counter + two random digits (id_generate()).
_AUTO_NAME = re.compile(r"#block(\d+)(\d\d)(?!\d)")


def canonical_node_name(name: str) -> str:
    """``#block017`` -> ``#block0``: drop the two random digits QEMU appends."""
    m = _AUTO_NAME.fullmatch(name)
    return f"#block{m.group(1)}" if m else name


def canonicalize_text(text: str) -> str:
    """Canonicalise every auto-generated node name inside a message."""
    return _AUTO_NAME.sub(lambda m: f"#block{m.group(1)}", text)


FORMATS = ("qcow2", "raw")


# generic so that one validator serves both the ``str`` and the ``str | None`` fields
_Name = TypeVar("_Name", bound="str | None")


def _plain_name(_inst: object, attribute: attrs.Attribute[_Name], value: _Name) -> None:
    if value is None:
        return
    # A bare file name: relative to the work dir, and not mistaken for a command-line option.
    if not value or os.path.basename(value) != value or value in (".", "..") or value[0] == "-":
        raise ValueError(f"{attribute.name} must be a plain file name, got {value!r}")


@attrs.frozen
class Write:
    """``qemu-io -c "write -P PATTERN OFFSET LENGTH"``."""

    pattern: int = attrs.field(validator=attrs.validators.and_(
        attrs.validators.ge(0), attrs.validators.le(255)))
    offset: int = attrs.field(validator=attrs.validators.ge(0))
    length: int = attrs.field(validator=attrs.validators.gt(0))


def _writes(writes: Iterable[Write]) -> tuple[Write, ...]:
    # a named converter rather than ``converter=tuple``: the attrs plugin cannot solve the
    # generic ``tuple`` constructor against the field's type
    return tuple(writes)


@attrs.frozen
class ImageSpec:
    """One image of a trace's ``images`` list."""

    file: str = attrs.field(validator=_plain_name)
    format: str = attrs.field(validator=attrs.validators.in_(FORMATS))
    size: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.ge(0)))
    backing_file: str | None = attrs.field(default=None, validator=_plain_name)
    backing_format: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.in_(FORMATS)))
    writes: tuple[Write, ...] = attrs.field(default=(), converter=_writes)

    def __attrs_post_init__(self) -> None:
        if self.backing_file is not None and self.format != "qcow2":
            raise ValueError(f"{self.file}: only qcow2 images can have a backing file")
        if self.backing_file is None and self.backing_format is not None:
            raise ValueError(f"{self.file}: backing-format without backing-file")
        if self.size is None and self.backing_file is None:
            raise ValueError(f"{self.file}: size is required without a backing file")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ImageSpec":
        known = {"file", "format", "size", "backing-file", "backing-format", "writes"}
        if unknown := set(d) - known:
            raise ValueError(f"unknown image keys {sorted(unknown)}")
        try:
            return cls(
                file=d["file"], format=d["format"], size=d.get("size"),
                backing_file=d.get("backing-file"), backing_format=d.get("backing-format"),
                writes=tuple(Write(w["pattern"], w["offset"], w["length"]) for w in d.get("writes", ())),
            )
        except KeyError as e:
            raise ValueError(f"missing image key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            # attrs validators put the message first and their own details after it
            raise ValueError(str(e.args[0]) if e.args else str(e)) from None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "format": self.format}
        if self.size is not None:
            d["size"] = self.size
        if self.backing_file is not None:
            d["backing-file"] = self.backing_file
        if self.backing_format is not None:
            d["backing-format"] = self.backing_format
        if self.writes:   # omitted when empty, like models.ImageSpec.to_json
            d["writes"] = [{"pattern": w.pattern, "offset": w.offset, "length": w.length}
                           for w in self.writes]
        return d


#: QMP commands that may start or move a block job: after one, both the model and the harness
#: look at the jobs (the harness waits for them to settle, the engine compares query-jobs)
JOB_COMMANDS = frozenset({"block-stream", "block-commit", "job-finalize", "job-dismiss",
                          "job-cancel", "block-job-complete", "block-job-pause", "block-job-resume",
                          "job-pause", "job-resume", "blockdev-mirror", "job-complete",
                          "block-job-cancel", "blockdev-create"})
#: the commands that pause a job at the user's request, and those that end that pause; the
#: harness counts a job the user paused as settled only once it is paused (``standby``)
JOB_PAUSE_COMMANDS = {"block-job-pause": "device", "job-pause": "id"}
JOB_UNPAUSE_COMMANDS = {"block-job-resume": "device", "job-resume": "id", "job-cancel": "id",
                        "block-job-cancel": "device"}
#: the commands that make a ready job finish: it may still show ``ready`` for a moment after
#: the reply (it wakes and copies what is dirty first), so the harness waits until it left it.
#: ``job-cancel`` of a ready job too: its reply can come before the job wakes to abort (seen
#: on a 10.0.13 build and on 11.1.3, 2026-12-02: a ready active commit still ``ready`` in the
#: first poll, its aborting/concluded/null events after it, in about one replay of two)
JOB_COMPLETE_COMMANDS = {"block-job-complete": "device", "job-complete": "id",
                         "block-job-cancel": "device", "job-cancel": "id"}


# --------------------------------------------------------------------------------------------
# job events: one line each, the same for the model's prediction and QEMU's emission

#: the QAPI events of qapi/job.json and qapi/block-core.json that belong to a job
JOB_EVENTS = frozenset({"JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_PENDING",
                        "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR"})


def job_event_text(event: str, data: dict[str, Any]) -> str:
    """One job event as a line: ``JOB_STATUS_CHANGE j0 running``, ``BLOCK_JOB_READY commit j0``,
    ``BLOCK_JOB_COMPLETED stream j0 error=<text>``.

    Left out: ``len``, ``offset`` and ``speed`` (they count bytes the job visited, like the
    progress fields of query-jobs) and the timestamp."""
    if event == "JOB_STATUS_CHANGE":
        return f"{event} {data.get('id')} {data.get('status')}"
    if event == "BLOCK_JOB_PENDING":
        return f"{event} {data.get('type')} {data.get('id')}"
    if event == "BLOCK_JOB_ERROR":
        return f"{event} {data.get('device')} {data.get('operation')} {data.get('action')}"
    text = f"{event} {data.get('type')} {data.get('device')}"
    if "error" in data:
        text += f" error={data['error']}"
    return text


#: a job paused by a drain (``child_job_drained_begin()`` -> ``job_pause_point()``) and the
#: state it returns to at ``drained_end``
_DRAIN_PAUSE = {"paused": "running", "standby": "ready"}


def fold_job_events(lines: Iterable[str]) -> tuple[str, ...]:
    """Drop each drain's pause: ``JOB_STATUS_CHANGE J paused`` (``standby``) together with the
    next status change of J when it is back to ``running`` (``ready``).

    Whether a drain pauses a job at all is timing: ``job_pause()`` only asks, and the job
    pauses at its next ``job_pause_point()`` if the drained section has not ended by then.  A
    pause the job is still in when the step ends (block-job-pause) stays."""
    out: list[str | None] = []
    open_pause: dict[str, tuple[int, str]] = {}   # job id -> (index in out, state it returns to)
    for line in lines:
        parts = line.split(" ")
        if parts[0] == "JOB_STATUS_CHANGE" and len(parts) == 3:
            jid, status = parts[1], parts[2]
            pending = open_pause.pop(jid, None)
            if pending is not None and status == pending[1]:
                out[pending[0]] = None
                continue
            if status in _DRAIN_PAUSE:
                open_pause[jid] = (len(out), _DRAIN_PAUSE[status])
        out.append(line)
    return tuple(x for x in out if x is not None)


#: the protocol prefix a header backing name may carry (``qemu-img create -b file:base.img``):
#: the only one the sandbox lets through, and ``raw_parse_filename()`` strips it
FILE_PREFIX = "file:"


def header_file(name: str) -> str:
    """The image file a header backing name opens: ``file:base.img`` is ``base.img``."""
    return name[len(FILE_PREFIX):] if name.startswith(FILE_PREFIX) else name


def check_image_set(specs: list[ImageSpec]) -> None:
    """What ``qemu-img create`` needs of a trace's image list, in order: a backing file created
    before the image that names it (an image without ``size`` takes its backing file's).  A
    file listed again is created anew (iotest 245's test_reopen_raw does that).  Raises
    ``ValueError`` naming the image."""
    seen: set[str] = set()
    for spec in specs:
        if spec.backing_file is not None and header_file(spec.backing_file) not in seen:
            raise ValueError(f"{spec.file}: backing file {spec.backing_file} is not an image listed "
                             "before it")
        seen.add(spec.file)
