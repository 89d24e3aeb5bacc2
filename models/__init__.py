"""blockfuzz's reference model of QEMU's block layer: pure Python, no I/O, deterministic.

Never imports ``fuzz``.  Start with ``models.model.Model``.
"""
from .errors import KnownQemuBug, NotModeled, QmpFailure
from .model import Model
from .values import ImageSpec, Outcome, QmpError, Write
from .profiles import PROFILES, VersionProfile, profile_for

__all__ = ["ImageSpec", "KnownQemuBug", "Model", "NotModeled", "Outcome", "PROFILES", "QmpError", "QmpFailure",
           "VersionProfile", "Write", "profile_for"]
