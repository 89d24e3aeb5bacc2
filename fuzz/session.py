"""One example's world: a temporary work directory, its images, a QEMU and a model.

    with Session(binaries, images) as s:
        s.runner.run({"qmp": "blockdev-add", "args": {...}})

QEMU is killed and the directory removed on leaving the block, whatever happened (unless
``keep=True``, used to keep QEMU's logs with a finding).  The model's version profile comes from
QEMU's own ``query-version``; an unknown version gets the nearest profile and a warning.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterable

from models import ImageSpec, Model, profile_for
from models.profiles import VersionProfile
from models.query import known_fields

from .engine import Events, FieldFilter, Runner
from .images import make_images
from .qemu import QemuProcess


class UnknownQemuVersion(UserWarning):
    pass


class UnknownQemuFields(UserWarning):
    pass


#: per emulator path: (profile, QEMU version, exact?)
_PROFILE_CACHE: dict[str, tuple[VersionProfile, tuple[int, int, int], bool]] = {}
#: per emulator path: the unknown-field filter of a build without an exact profile
_FIELD_FILTERS: dict[str, FieldFilter] = {}


def _warn_unknown_fields(event) -> None:
    from .engine import UnknownFields

    if isinstance(event, UnknownFields):
        warnings.warn(f"QEMU {event.build} reports fields its profile does not know, left out "
                      f"of the comparison (--strict compares them): {', '.join(event.paths)}",
                      UnknownQemuFields, stacklevel=2)


class Session:
    def __init__(self, binaries, images: Iterable[ImageSpec], events: Events | None = None,
                 timeout: float = 5.0, keep: bool = False, workdir_root: str | None = None,
                 machine: str = "none", strict: bool = False):
        self.binaries = binaries
        self.images = tuple(images)
        self.events = events
        self.timeout = timeout
        self.keep = keep
        self.workdir_root = workdir_root
        self.machine = machine
        self.strict = strict
        self.workdir: str | None = None
        self.qemu: QemuProcess | None = None
        self.runner: Runner | None = None
        self.profile: VersionProfile | None = None

    def __enter__(self) -> "Session":
        self.workdir = tempfile.mkdtemp(prefix="blockfuzz-", dir=self.workdir_root)
        try:
            make_images(self.images, self.workdir, self.binaries)
            self.qemu = QemuProcess(self.binaries, self.workdir, timeout=self.timeout,
                                    machine=self.machine).start()
            self.profile = self._profile()
            self.runner = Runner(Model(self.profile, self.images, self.machine), self.qemu,
                                 self.events, field_filter=self._field_filter())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _profile(self) -> VersionProfile:
        key = str(self.binaries.system)
        if key not in _PROFILE_CACHE:
            version = self.qemu.version()
            profile, exact = profile_for(*version)
            if not exact:
                warnings.warn(f"QEMU {'.'.join(map(str, version))} has no version profile; "
                              f"using the nearest older one ({profile.name})", UnknownQemuVersion,
                              stacklevel=2)
            _PROFILE_CACHE[key] = (profile, version, exact)
        return _PROFILE_CACHE[key][0]

    @property
    def exact_profile(self) -> bool:
        return _PROFILE_CACHE[str(self.binaries.system)][2]

    def _field_filter(self) -> FieldFilter | None:
        """Known versions are compared on every field; a build without an exact profile gets
        its unknown fields named once and set aside, unless ``strict``."""
        if self.strict or self.exact_profile:
            return None
        key = str(self.binaries.system)
        if key not in _FIELD_FILTERS:
            profile, version, _ = _PROFILE_CACHE[key]
            flt = _FIELD_FILTERS[key] = FieldFilter(".".join(map(str, version)),
                                                    known_fields(profile))
            warn = Events()
            warn.subscribe(_warn_unknown_fields)
            flt.listeners.append(warn)
        flt = _FIELD_FILTERS[key]
        if self.events is not None and self.events not in flt.listeners:
            flt.listeners.append(self.events)
        return flt

    @staticmethod
    def unknown_fields() -> dict[str, list[str]]:
        """Every field set aside so far in this process, per build (for reports)."""
        return {f.build: sorted(f.found) for f in _FIELD_FILTERS.values() if f.found}

    def __exit__(self, *exc) -> None:
        if self.qemu is not None:
            self.qemu.close()
        if self.workdir is not None and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def report_unknown_fields() -> dict[str, list[str]]:
    """For a campaign's results: print the fields set aside per build (one line each) and
    return them for coverage.json."""
    found = Session.unknown_fields()
    for build, paths in sorted(found.items()):
        print(f"QEMU {build} has no exact profile; fields left out of the comparison "
              f"(--strict compares them): {', '.join(paths)}")
    return found
