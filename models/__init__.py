"""blockfuzz's reference model of QEMU's block layer: pure Python, no I/O, deterministic.

Never imports ``fuzz``.  Start with ``models.model.Model``; ``ARCHITECTURE.md`` ("Layers of the
model") shows how the modules stack.

The names below load lazily (PEP 562), so that the harness, which imports only
``models.values`` and ``models.errors``, does not load the whole model with them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import KnownQemuBug, NeverAnswers, NotModeled, QmpFailure
    from .model import Model
    from .profiles import PROFILES, VersionProfile, profile_for
    from .values import ImageSpec, Outcome, QmpError, Write

_WHERE = {
    "KnownQemuBug": "errors", "NeverAnswers": "errors", "NotModeled": "errors",
    "QmpFailure": "errors",
    "Model": "model",
    "PROFILES": "profiles", "VersionProfile": "profiles", "profile_for": "profiles",
    "ImageSpec": "values", "Outcome": "values", "QmpError": "values", "Write": "values",
}

__all__ = ["ImageSpec", "KnownQemuBug", "Model", "NeverAnswers", "NotModeled", "Outcome", "PROFILES",
           "QmpError",
           "QmpFailure", "VersionProfile", "Write", "profile_for"]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
