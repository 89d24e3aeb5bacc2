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

from .engine import Events, Runner
from .images import make_images
from .qemu import QemuProcess


class UnknownQemuVersion(UserWarning):
    pass


_PROFILE_CACHE: dict[str, tuple[VersionProfile, tuple[int, int, int]]] = {}


class Session:
    def __init__(self, binaries, images: Iterable[ImageSpec], events: Events | None = None,
                 timeout: float = 5.0, keep: bool = False, workdir_root: str | None = None,
                 machine: str = "none"):
        self.binaries = binaries
        self.images = tuple(images)
        self.events = events
        self.timeout = timeout
        self.keep = keep
        self.workdir_root = workdir_root
        self.machine = machine
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
            self.runner = Runner(Model(self.profile, self.images, self.machine), self.qemu, self.events)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _profile(self) -> VersionProfile:
        key = str(self.binaries.system)
        if key not in _PROFILE_CACHE:
            version = self.qemu.version()
            profile, exact = profile_for(version[0], version[1])
            if not exact:
                warnings.warn(f"QEMU {'.'.join(map(str, version))} has no version profile; "
                              f"using the nearest one ({profile.name})", UnknownQemuVersion, stacklevel=2)
            _PROFILE_CACHE[key] = (profile, version)
        return _PROFILE_CACHE[key][0]

    def __exit__(self, *exc) -> None:
        if self.qemu is not None:
            self.qemu.close()
        if self.workdir is not None and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
