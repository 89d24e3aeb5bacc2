"""Disk images for one example: specs, creation with qemu-img / qemu-io, and a template cache.

A trace's ``images`` list (see ARCHITECTURE.md) becomes a tuple of :class:`ImageSpec`::

    specs = [ImageSpec.from_json(d) for d in trace["images"]]
    make_images(specs, workdir, binaries)

which, in ``workdir`` and in order, runs what iotest 245's setUp does::

    qemu-img create -f qcow2 hd0.img 3145728
    qemu-img create -f qcow2 -b hd0.img -F qcow2 hd1.img
    qemu-io -f qcow2 -c "write -P 0xa0 0 1048576" hd0.img

Names are relative and the commands run with ``cwd=workdir``, so image headers store relative
backing names and nothing depends on the temporary directory's path.

Every example needs its images and most examples use the same few image sets, while each
``qemu-img`` / ``qemu-io`` run costs several milliseconds. So the first creation of a set is
kept in a per-process template directory (keyed by the specs and the binaries) and later
requests copy the files. The copy keeps holes, so a cached image is indistinguishable from a
fresh one, allocation included (``actual-size``, ``qemu-io map``).
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import Iterable


from fuzz import sandbox
from fuzz.errors import HarnessError, UnsafeStep
from fuzz.qemu import QemuBinaries, binaries_env
from models.values import ImageSpec, Write

__all__ = ["Write", "ImageSpec", "make_images", "refill_images"]

_TOOL_TIMEOUT = 60.0
_CACHE_MAX_SETS = 64   # FIFO-evicted; fuzzers draw from few image sets, this is a safety cap


def _write_command(w: Write) -> str:
    """``qemu-io -c`` for one Write of an image spec."""
    return f"write -P 0x{w.pattern:02x} {w.offset} {w.length}"


def make_images(specs: Iterable[ImageSpec], workdir: str | os.PathLike[str],
                binaries: QemuBinaries, *, cache: bool = True) -> None:
    """Create the images of ``specs`` in ``workdir`` (from the template cache when possible).

    Raises :class:`fuzz.errors.HarnessError` if a tool fails (a bad spec, e.g. a write beyond the
    image's end, is the caller's error, not a QEMU finding), :class:`fuzz.errors.UnsafeStep`
    before running anything if a ``file`` or ``backing-file`` is not a plain file name
    (``fuzz.sandbox.image_problem``: the tools run unconfined).
    """
    specs = tuple(specs)
    for s in specs:
        if (problem := sandbox.image_problem(s)) is not None:
            raise UnsafeStep(f"refused image spec: {problem.describe()} (a trace may only name "
                             "files inside its work directory)", command="images",
                             path=problem.text)
    workdir = os.fspath(workdir)
    # A file may appear twice: entries run in order and a later one re-creates the file (the
    # seed's test_reopen_raw turns hd0.img into a raw image after setUp made it qcow2).
    if not specs:
        return
    if not cache:
        _create(specs, workdir, binaries)
        return
    template = _TEMPLATES.lookup(specs, binaries)
    if template is None:
        _create(specs, workdir, binaries)
        _TEMPLATES.store(specs, binaries, workdir)
    else:
        for s in {s.file: s for s in specs}.values():
            _sparse_copy(os.path.join(template, s.file), os.path.join(workdir, s.file))


def refill_images(specs: Iterable[ImageSpec], workdir: str | os.PathLike[str],
                  binaries: QemuBinaries, *, keep: Iterable[str] = ()) -> None:
    """Empty an existing work directory (all but the names in ``keep``) and make ``specs``'
    images in it: for a QEMU that is reused across examples, which is chrooted into this very
    directory, so its images must be replaced in place.  Old files are unlinked before the new
    ones are written, so nothing still open on an old image (there should be nothing) could
    see the new data."""
    specs = tuple(specs)
    workdir = os.fspath(workdir)
    for s in specs:   # refuse before touching anything, as make_images does
        if (problem := sandbox.image_problem(s)) is not None:
            raise UnsafeStep(f"refused image spec: {problem.describe()} (a trace may only name "
                             "files inside its work directory)", command="images",
                             path=problem.text)
    keep = set(keep)
    with os.scandir(workdir) as entries:
        for e in entries:
            if e.name in keep:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
    make_images(specs, workdir, binaries)


# -- creation -------------------------------------------------------------------------------

def _create(specs: tuple[ImageSpec, ...], workdir: str, binaries: QemuBinaries) -> None:
    img_env = binaries_env(binaries, binaries.img)
    io_env = binaries_env(binaries, binaries.io)
    for s in specs:
        argv = [os.fspath(binaries.img), "create", "-q", "-f", s.format]
        if s.backing_file is not None:
            argv += ["-b", s.backing_file]
            if s.backing_format is not None:
                argv += ["-F", s.backing_format]
        argv.append(s.file)
        if s.size is not None:
            argv.append(str(s.size))
        _run(argv, workdir, img_env)
        if s.writes:
            # One qemu-io run for all writes of an image: same effect as one run each, fewer
            # process start-ups. "-c" commands run in order.
            argv = [os.fspath(binaries.io), "-f", s.format]
            for w in s.writes:
                argv += ["-c", _write_command(w)]
            argv.append(s.file)
            out = _run(argv, workdir, io_env)
            wrote = [line for line in out.splitlines() if line.startswith("wrote ")]
            if len(wrote) != len(s.writes):   # qemu-io's exit status is not reliable everywhere
                raise HarnessError(f"qemu-io did not complete the writes to {s.file}:\n{out}")


def _run(argv: list[str], cwd: str, env: dict[str, str]) -> str:
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=_TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"cannot run {argv[0]}: {e}") from e
    if p.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed with status {p.returncode}\n{p.stdout}",
                           stderr_tail=p.stderr[-4096:])
    return p.stdout


# -- template cache -------------------------------------------------------------------------

class _TemplateCache:
    """Image sets already built in this process, in a private temp dir removed at exit."""

    def __init__(self) -> None:
        self._root: str | None = None
        self._owner = 0
        self._sets: dict[str, str] = {}    # key -> directory, insertion ordered for eviction

    @staticmethod
    def _key(specs: tuple[ImageSpec, ...], binaries: QemuBinaries) -> str:
        # Different QEMU builds may write different headers: the tools are part of the key.
        blob = json.dumps({"images": [s.to_json() for s in specs],
                           "img": os.fspath(binaries.img), "io": os.fspath(binaries.io)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def lookup(self, specs: tuple[ImageSpec, ...], binaries: QemuBinaries) -> str | None:
        return self._sets.get(self._key(specs, binaries)) if self._root_ok() else None

    def store(self, specs: tuple[ImageSpec, ...], binaries: QemuBinaries, workdir: str) -> None:
        key = self._key(specs, binaries)
        root = self._ensure_root()
        target = os.path.join(root, key)
        staging = tempfile.mkdtemp(dir=root, prefix=".new-")
        try:
            for s in specs:
                _sparse_copy(os.path.join(workdir, s.file), os.path.join(staging, s.file))
            os.rename(staging, target)   # a set is visible only when complete
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._sets[key] = target
        while len(self._sets) > _CACHE_MAX_SETS:
            oldest = next(iter(self._sets))
            shutil.rmtree(self._sets.pop(oldest), ignore_errors=True)

    def clear(self) -> None:
        if self._root is not None and self._owner == os.getpid():
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None
        self._sets.clear()

    def _root_ok(self) -> bool:
        # After fork() the child must not share (or delete) the parent's directory.
        return self._root is not None and self._owner == os.getpid()

    def _ensure_root(self) -> str:
        if not self._root_ok():
            self._sets.clear()
            _sweep_stale_roots()
            self._root = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-")
            self._owner = os.getpid()
        assert self._root is not None
        return self._root


_ROOT_PREFIX = "blockfuzz-images-"


def _sweep_stale_roots() -> None:
    """Remove template dirs of processes that died without running atexit (SIGTERM/SIGKILL)."""
    tmp = tempfile.gettempdir()
    try:
        entries = os.listdir(tmp)
    except OSError:
        return
    for name in entries:
        if not name.startswith(_ROOT_PREFIX):
            continue
        pid = name[len(_ROOT_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        except OSError:
            pass   # alive but not ours (EPERM): leave it


_TEMPLATES = _TemplateCache()
atexit.register(_TEMPLATES.clear)


def clear_templates() -> None:
    """Forget (and remove) this process's image templates.  ``fuzz.campaign.run_campaign``
    calls it when its temporary root goes: the templates a worker in the campaign's own
    process built live under that root, and the post-processing of the findings (replays,
    minimization, reports) must build new ones rather than copy from removed directories."""
    _TEMPLATES.clear()


def _sparse_copy(src: str, dst: str) -> None:
    """Copy a file keeping its holes (SEEK_DATA/SEEK_HOLE); plain copy where unsupported.

    shutil.copyfile would write the holes of a sparse raw image as zeros: slower for big images
    and observable through actual-size and block-status.
    """
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fi, fo = fin.fileno(), fout.fileno()
        size = os.fstat(fi).st_size
        try:
            extents = list(_data_extents(fi, size))
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            extents = [(0, size)]          # filesystem without SEEK_DATA: copy everything
        for start, end in extents:
            _copy_extent(fi, fo, start, end - start)
        os.ftruncate(fo, size)             # trailing hole


def _data_extents(fd: int, size: int):
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:     # only a hole from here on
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _copy_extent(fi: int, fo: int, offset: int, count: int) -> None:
    while count:
        try:
            n = os.copy_file_range(fi, fo, count, offset, offset)   # in-kernel, may reflink
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = os.pwrite(fo, os.pread(fi, min(count, 1 << 20), offset), offset)
        if n == 0:
            raise OSError(errno.EIO, "short copy: source file shrank while copying")
        offset += n
        count -= n
