"""The result of one command, as predicted by the model or observed on QEMU.

Both sides produce the same value class so that comparing them is plain equality.
"""
from __future__ import annotations

import re
from typing import Any

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

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def success(cls, ret: Any = None, stdout: tuple[str, ...] = ()) -> "Outcome":
        return cls(ret={} if ret is None else ret, error=None, stdout=tuple(stdout))

    @classmethod
    def failure(cls, desc: str, klass: str = "GenericError") -> "Outcome":
        return cls(ret=None, error=QmpError(klass, desc))

    def to_json(self) -> dict:
        d: dict[str, Any] = {}
        if self.error is None:
            d["return"] = self.ret
        else:
            d["error"] = {"class": self.error.cls, "desc": self.error.desc}
        if self.stdout:
            d["stdout"] = list(self.stdout)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Outcome":
        stdout = tuple(d.get("stdout", ()))
        if "error" in d:
            return cls(ret=None, error=QmpError(d["error"]["class"], d["error"]["desc"]), stdout=stdout)
        return cls(ret=d.get("return"), error=None, stdout=stdout)


# QEMU names anonymous nodes "#block" + counter + two random digits (id_generate()).
_AUTO_NAME = re.compile(r"#block(\d+)(\d\d)(?!\d)")


def canonical_node_name(name: str) -> str:
    """``#block017`` -> ``#block0``: drop the two random digits QEMU appends."""
    m = _AUTO_NAME.fullmatch(name)
    return f"#block{m.group(1)}" if m else name


def canonicalize_text(text: str) -> str:
    """Canonicalise every auto-generated node name inside a message."""
    return _AUTO_NAME.sub(lambda m: f"#block{m.group(1)}", text)
