"""Exceptions of the model.

``QmpFailure`` is not an error of the model: it is the model *predicting* that QEMU answers a
command with an error reply.  ``NotModeled`` is the model saying it cannot predict a command (a
driver or option outside its scope); callers must not generate such commands, and replay reports
them as ERROR rather than guessing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # only for the annotation: the graph module imports this one
    from .graph import Graph


class QmpFailure(Exception):
    """The command fails with ``{"error": {"class": cls, "desc": desc}}``."""

    def __init__(self, desc: str, cls: str = "GenericError", hint: str = "") -> None:
        super().__init__(desc)
        self.desc = desc
        self.cls = cls
        #: ``error_append_hint()``: not part of a QMP error, but printed by HMP commands
        self.hint = hint
        #: a failure that QEMU does not roll back completely carries the state it leaves
        #: (``models.jobs``); ``None``: the command changed nothing
        self.state: Graph | None = None
        #: (node, perm, shared) of a BlockBackend the failing command leaks (a QEMU bug, see
        #: ``models.jobs.leak_blk``); ``None``: nothing leaks
        self.leaked_blk: tuple[str, int, int] | None = None


class NotModeled(NotImplementedError):
    """The model does not cover this command or option (yet)."""


class KnownQemuBug(NotModeled):
    """A campaign guard: the command would run into a QEMU bug that ``corpus/findings`` already
    documents (a crash, a hang), so the fuzzer does not find it again and again.  Raised only
    while ``Graph.guard_known_crashes`` is on (campaigns); replay predicts normally."""


class NeverAnswers(NotModeled):
    """The model predicting that QEMU never answers this command: a known QEMU hang whose right
    answer nobody knows yet (``models.known_bugs``).  Still a decline for every caller that
    only asks whether the model declined; the harness sends such a step to a real QEMU anyway
    and finds the hang (``fuzz.engine.Runner``), and an answer is a decline after QEMU ran the
    step.  Campaigns never get here: the bug's guard refuses the step first."""
