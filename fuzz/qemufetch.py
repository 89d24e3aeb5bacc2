"""Fetch the QEMU builds blockfuzz tests against, and pick the one to run.

blockfuzz compares QEMU with a model whose expectations are written per QEMU version (a trace's
``"by-version"`` keys), so it runs *known* builds rather than whatever the host has: Debian's
``7.2`` (bookworm), ``10.0`` (bookworm-backports) and ``11.1`` (trixie-backports); the table
:data:`SOURCES` says where each comes from, and a new version is one entry there. They are
fetched as Debian packages and unpacked into the git-ignored ``.qemu/`` directory of the
checkout; nothing is installed and the system's apt configuration and state are left alone.

Fetching::

    $ blockfuzz qemu fetch 11.1          # ~50 MB, 10-20 s; prints the qemu-system-x86_64 to run
    /work/main/.qemu/11.1/bin/qemu-system-x86_64
    $ blockfuzz qemu path 7.2            # instant; exit 1 if 7.2 was never fetched
    $ blockfuzz qemu list                # every known version: suite, package, fetched, path

Layout (``$BLOCKFUZZ_QEMU_DIR`` moves the whole thing, default ``<checkout>/.qemu``)::

    .qemu/apt/<release>/        private apt state per Debian release (bookworm, trixie, ...):
                                sources.list, lists/, apt.conf, an empty dpkg status file
    .qemu/<ver>/bin/            qemu-system-x86_64, qemu-img, qemu-io: the programs to run
                                (sh wrappers, see below)
    .qemu/<ver>/share           -> root/usr/share, so bin/../share/seabios is the tree's BIOS
    .qemu/<ver>/debs/           the downloaded .debs, exact versions (see manifest.json)
    .qemu/<ver>/root/           every .deb unpacked with ``dpkg -x``
    .qemu/<ver>/manifest.json   written last: its presence means "complete"

A tree is built in ``.qemu/.<ver>.partial`` and renamed into place; fetches are serialised by
an flock on ``.qemu/.lock``.

What gets fetched: the QEMU packages (``ROOT_PACKAGES``) at the pinned version -- the newest
build of that upstream version in the version's suites -- and whatever ``apt-get install
--no-install-recommends`` pulls in for them on a system with *nothing* installed (apt runs
with an empty dpkg status file, and with ``-t`` for a backports version). So every library is
in the tree, the C library and its loader included, and a tree does not depend on the host's
libraries at all: a trixie QEMU needs trixie's glibc, which a bookworm host does not have.
Checked before the rename: every binary and every module in ``root/usr/lib/<triplet>/qemu``
is listed by the tree's loader (``ld.so --list``) with every library a file of the tree (the
loader would quietly fall back to the host's), and the three wrappers report the version.

Running: the files in ``bin/`` are POSIX sh wrappers that ``exec`` the tree's own loader
(``root/.../ld-linux-x86-64.so.2 --library-path <the tree's lib dirs> root/usr/bin/<prog>``)
with ``QEMU_MODULE_DIR`` pointing at the tree's modules. ``exec``, so the QEMU process is the
wrapper's pid. They need no environment, so :func:`qemu_env` and ``QemuBinaries.env`` are
``{}``; a binary under ``root/`` is not runnable on its own and is refused if given. QEMU
looks for firmware in its compiled-in ``/usr/share/qemu`` and ``/usr/share/seabios``, the
host's, not the tree's: pass ``-L`` (the harness passes ``bin/../share/seabios`` for
``-M pc``)::

    from fuzz.qemufetch import resolve_qemu
    q = resolve_qemu(args.qemu)                    # --qemu PATH, else $QEMU_PROG, else 10.0
    subprocess.run([q.system, "-M", "none", ...], env={**os.environ, **q.env})
    subprocess.run([q.img, "create", ...], env={**os.environ, **q.env_for(q.img)})

Selection precedence, per binary:

* system emulator: ``--qemu PATH`` > ``$QEMU_PROG`` > fetched ``DEFAULT_VERSION``
* ``qemu-img`` / ``qemu-io``: ``$QEMU_IMG_PROG`` / ``$QEMU_IO_PROG`` > the file of that name
  next to the system emulator > fetched ``DEFAULT_VERSION``

A path that is given but unusable is an error (:class:`QemuNotFound`), never a silent fallback:
a fuzzer that quietly tests a different QEMU than asked produces misleading findings.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import attrs

from fuzz.errors import FetchError, QemuNotFound

__all__ = [
    "DEFAULT_VERSION",
    "KNOWN_VERSIONS",
    "SOURCES",
    "FetchError",
    "Installation",
    "QemuBinaries",
    "QemuNotFound",
    "Source",
    "fetch",
    "installed",
    "pinned",
    "qemu_dir",
    "qemu_env",
    "qemu_version",
    "resolve_qemu",
]

_DEBIAN = "http://deb.debian.org/debian"
_DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
# Releases without -updates, -backports and -security suites.
_ROLLING = ("sid", "unstable")


@attrs.frozen
class Source:
    """Where the Debian packages of one QEMU version come from."""

    # The Debian release whose archive apt resolves against: its suites (the release itself,
    # -updates, -backports, -security; only itself for sid) make up the sources list, and each
    # release has its own private apt directory. Versions of one release share it.
    release: str
    # The suites whose builds of the QEMU packages may be pinned (the newest matching one is).
    suites: tuple[str, ...]
    # apt-get -t: a backports QEMU needs backports' newer libraries (and seabios).
    target: str | None = None
    mirror: str = _DEBIAN
    security_mirror: str = _DEBIAN_SECURITY

    @property
    def archive(self) -> tuple[tuple[str, str], ...]:
        """(mirror, suite) of every suite in this release's sources list."""
        r = self.release
        if r in _ROLLING:
            return ((self.mirror, r),)
        return (
            (self.mirror, r),
            (self.mirror, f"{r}-updates"),
            (self.mirror, f"{r}-backports"),
            (self.security_mirror, f"{r}-security"),
        )


# Version -> where it comes from. 7.2 is bookworm's own QEMU (point releases and security updates
# included: take the highest); 10.0 exists only in bookworm-backports, 11.1 in trixie-backports
# (and sid). Adding a version is one line, e.g. "11.2": Source("sid", ("sid",)).
SOURCES = {
    "7.2": Source("bookworm", ("bookworm", "bookworm-updates", "bookworm-security")),
    "10.0": Source("bookworm", ("bookworm-backports",), target="bookworm-backports"),
    "11.1": Source("trixie", ("trixie-backports",), target="trixie-backports"),
}
KNOWN_VERSIONS = tuple(SOURCES)
# The current stable release: what users run, and what `make fuzz` fuzzes.
DEFAULT_VERSION = "11.1"

_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# The packages fetched at exactly the pinned QEMU version. qemu-block-extra carries the block
# driver modules (curl, iscsi, nfs, rbd, ssh, gluster): without them a fuzzed
# `blockdev-add driver=nfs` would fail with "unknown driver" instead of the driver's own error,
# which a real installation gives. The rest (seabios for `-M pc` among it) is apt's choice.
ROOT_PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-utils", "qemu-block-extra")

# which -> program name, in bin/ (the wrapper) and in root/usr/bin/ (the real binary).
_PROGRAMS = {
    "system": "qemu-system-x86_64",
    "img": "qemu-img",
    "io": "qemu-io",
}

_MANIFEST = "manifest.json"
# 1: binaries run from root/usr/bin with LD_LIBRARY_PATH and the host's libc; 2: bin/ wrappers
# and the tree's own loader and libc. Trees of another format are fetched again.
_MANIFEST_FORMAT = 2

# Debian architecture -> (multiarch triplet, i.e. the lib directory name; the loader's name).
# Only hosts whose libraries we can place are supported.
_ARCHES = {
    "amd64": ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
    "arm64": ("aarch64-linux-gnu", "ld-linux-aarch64.so.1"),
}


# --------------------------------------------------------------------------------------------
# Where things live


def repo_root() -> Path:
    # fuzz/qemufetch.py -> the checkout. blockfuzz is installed editable (`make venv`), so this
    # is the work tree, which is where the git-ignored .qemu/ belongs.
    return Path(__file__).resolve().parent.parent


def qemu_dir() -> Path:
    """The directory holding fetched QEMUs: ``$BLOCKFUZZ_QEMU_DIR`` or ``<checkout>/.qemu``."""
    # Read on every call, not at import, so tests (and users) can redirect it at any time.
    env = os.environ.get("BLOCKFUZZ_QEMU_DIR")
    return Path(env).expanduser().absolute() if env else repo_root() / ".qemu"


def check_version(version: str) -> str:
    if version not in KNOWN_VERSIONS:
        raise QemuNotFound(
            f"unknown QEMU version {version!r} (known: {', '.join(KNOWN_VERSIONS)})"
        )
    return version


# --------------------------------------------------------------------------------------------
# Installed trees


@attrs.frozen
class Installation:
    """A complete fetched tree, as described by its manifest."""

    version: str
    directory: Path  # .qemu/<version>
    loader: str  # the tree's ld.so, relative to root/
    library_path: tuple  # directories relative to root/, in --library-path order
    module_dir: str  # relative to root/
    packages: dict  # name -> exact Debian version, everything unpacked into root/
    qemu_version: str  # first line of `qemu-system-x86_64 --version`

    @property
    def root(self) -> Path:
        return self.directory / "root"

    def binary(self, which: str) -> Path:
        """The program to run (the wrapper in ``bin/``); ``which`` is "system", "img" or "io"."""
        return self.directory / "bin" / _PROGRAMS[which]

    def program(self, which: str) -> Path:
        """The real ELF binary the wrapper starts (not runnable on its own)."""
        return self.root / "usr/bin" / _PROGRAMS[which]

    @property
    def package_version(self) -> str:
        """The Debian version of the QEMU fetched, e.g. ``1:10.0.2+ds-2+deb13u1~bpo12+1``."""
        return self.packages.get("qemu-system-x86", "")

    @property
    def env(self) -> dict[str, str]:
        # The wrappers set up everything themselves.
        return {}


def _wrapper_text(directory: Path, which: str, loader: str, library_path, module_dir: str) -> str:
    """The sh script ``directory/bin/<program>``: exec the tree's loader on the real binary.

    Absolute paths, so it runs from anywhere; a moved tree no longer matches what
    :func:`installed` expects and is fetched again.
    """
    root = directory / "root"
    q = lambda p: shlex.quote(os.fspath(p))  # noqa: E731 - POSIX sh single quoting
    lib = ":".join(os.fspath(root / d) for d in library_path)
    return (
        "#!/bin/sh\n"
        f"# QEMU {directory.name} run with its own C library (written by blockfuzz, "
        "fuzz/qemufetch.py)\n"
        # The module dir is compiled in as /usr/lib/<triplet>/qemu; without this QEMU would load
        # the host's modules (or none), which need not match the binary's build.
        f"QEMU_MODULE_DIR={q(root / module_dir)}\n"
        "export QEMU_MODULE_DIR\n"
        # --library-path replaces $LD_LIBRARY_PATH for this process: an ambient value cannot
        # shadow the tree's libraries. exec: the QEMU process keeps the wrapper's pid.
        f"exec {q(root / loader)} --library-path {q(lib)} {q(root / 'usr/bin' / _PROGRAMS[which])}"
        ' "$@"\n'
    )


def _write_wrappers(
    directory: Path, loader: str, library_path, module_dir: str, *, at: Path | None = None
) -> None:
    """Write ``directory/bin/*`` naming the tree's files as they are at ``at`` (default:
    ``directory``; a staging directory gets the final place's paths before its rename)."""
    bindir = directory / "bin"
    bindir.mkdir(exist_ok=True)
    for which, name in _PROGRAMS.items():
        path = bindir / name
        path.write_text(_wrapper_text(at or directory, which, loader, library_path, module_dir))
        path.chmod(0o755)


def _read_manifest(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("blockfuzz-qemu") != _MANIFEST_FORMAT:
        return None
    return data


def installed(version: str) -> Installation | None:
    """The fetched tree of ``version``, or None if it is absent, incomplete or out of date."""
    check_version(version)
    directory = qemu_dir() / version
    data = _read_manifest(directory)
    if data is None or data.get("version") != version:
        return None
    try:
        inst = Installation(
            version=version,
            directory=directory,
            loader=data["loader"],
            library_path=tuple(data["library-path"]),
            module_dir=data["module-dir"],
            packages=dict(data["packages"]),
            qemu_version=data["qemu-version"],
        )
    except (KeyError, TypeError, ValueError):
        return None
    # A manifest whose files went missing (someone pruned root/ or bin/) is not a usable tree.
    if not _is_executable(inst.root / inst.loader):
        return None
    for which in _PROGRAMS:
        if not _is_executable(inst.program(which)):
            return None
        wrapper = inst.binary(which)
        expected = _wrapper_text(directory, which, inst.loader, inst.library_path, inst.module_dir)
        try:
            if not _is_executable(wrapper) or wrapper.read_text() != expected:
                return None  # missing, edited, or the tree was moved (absolute paths inside)
        except (OSError, UnicodeDecodeError):
            return None
    # The `-M pc` traces need the BIOS, found through bin/../share/seabios.
    if "seabios" not in inst.packages or not (directory / "share" / "seabios").is_dir():
        return None
    return inst


def qemu_env(binary_path: str | os.PathLike) -> dict[str, str]:
    """Environment additions needed to run ``binary_path``: merge the result over os.environ.

    Always ``{}`` now: a fetched tree's programs (``bin/`` wrappers) set up their libraries and
    modules themselves, and a system or self-built QEMU runs as is. Kept for callers.
    """
    return {}


def qemu_version(binary_path: str | os.PathLike) -> str:
    """``"10.0.2"`` from ``<binary> --version`` (works for qemu-system-*, qemu-img, qemu-io)."""
    out = _run([os.fspath(binary_path), "--version"], env={**os.environ, **qemu_env(binary_path)})
    m = re.search(r"version (\d+\.\d+\.\d+)", out)
    if m is None:
        raise FetchError(f"{binary_path} --version: no version in {out.splitlines()[:1]}")
    return m.group(1)


# --------------------------------------------------------------------------------------------
# Selection for the harness


@attrs.frozen
class QemuBinaries:
    """The three programs the harness runs. Paths are absolute strings.

    ``env`` is what ``system`` needs merged over ``os.environ`` (``{}``: fetched trees run
    through wrappers). ``img`` and ``io`` may come from elsewhere (``$QEMU_IMG_PROG``), so use
    :meth:`env_for` for them.
    """

    system: str
    img: str
    io: str
    env: dict = attrs.field(factory=dict)

    def env_for(self, binary: str) -> dict[str, str]:
        return qemu_env(binary)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _inside_a_tree(path: Path) -> Path | None:
    """The wrapper to use instead, if ``path`` is a binary inside a fetched tree's root/."""
    for candidate in dict.fromkeys((path, path.resolve())):
        for parent in candidate.parents:
            if parent.name == "root" and (parent.parent / _MANIFEST).is_file():
                return parent.parent / "bin" / candidate.name
    return None


def _validate(value: str, source: str) -> str:
    # A fetched version by its name ("--qemu 10.0"): its tree's system emulator.
    if value in KNOWN_VERSIONS:
        inst = installed(value)
        if inst is None:
            raise QemuNotFound(f"{source} {value!r}: not fetched: run `blockfuzz qemu fetch {value}`")
        return str(inst.binary("system"))
    # A build's name ("--qemu 10.2-asan", `blockfuzz qemu build`): its system emulator.
    if os.sep not in value and (qemu_dir() / value / _MANIFEST).is_file():
        from fuzz.qemubuild import build_installed
        b = build_installed(value)
        if b is None:
            raise QemuNotFound(f"{source} {value!r}: an incomplete build: run "
                               f"`blockfuzz qemu build` again")
        return str(b.binary())
    # A bare name ("qemu-system-x86_64") is looked up in $PATH like a shell would.
    if os.sep not in value:
        found = shutil.which(value)
        if found is None:
            raise QemuNotFound(f"{source} {value!r}: not found in $PATH")
        value = found
    path = Path(value).absolute()
    if not path.exists():
        raise QemuNotFound(f"{source} {value!r}: no such file")
    if not _is_executable(path):
        raise QemuNotFound(f"{source} {value!r}: not an executable file")
    wrapper = _inside_a_tree(path)
    if wrapper is not None:
        # It would start with the host's loader and C library, not the ones it was built for.
        raise QemuNotFound(
            f"{source} {value!r}: a fetched QEMU runs only through its wrapper, use {wrapper}"
        )
    return str(path)


def _default(which: str, what: str) -> str:
    inst = installed(DEFAULT_VERSION)
    if inst is None:
        hint = "pass --qemu PATH" if which == "system" else f"set ${_ENV_VARS[which]}"
        raise QemuNotFound(f"no {what}: run `blockfuzz qemu fetch {DEFAULT_VERSION}` or {hint}")
    return str(inst.binary(which))


_ENV_VARS = {"system": "QEMU_PROG", "img": "QEMU_IMG_PROG", "io": "QEMU_IO_PROG"}


def resolve_qemu(explicit: str | None = None) -> QemuBinaries:
    """Pick the QEMU to run; ``explicit`` is the ``--qemu`` option (or None).

    Raises :class:`QemuNotFound` with a one-line message if a requested binary is unusable or
    nothing is available.
    """
    if explicit:
        system = _validate(explicit, "--qemu")
    elif os.environ.get("QEMU_PROG"):
        system = _validate(os.environ["QEMU_PROG"], "$QEMU_PROG")
    else:
        system = _default("system", "QEMU")

    def tool(which: str, name: str) -> str:
        var = _ENV_VARS[which]
        if os.environ.get(var):
            return _validate(os.environ[var], f"${var}")
        # The tools shipped with the emulator are the ones built from the same source; prefer
        # them to an unrelated default so image set-up matches the QEMU under test.
        sibling = Path(system).parent / name
        if _is_executable(sibling):
            return str(sibling)
        return _default(which, name)

    return QemuBinaries(
        system=system,
        img=tool("img", "qemu-img"),
        io=tool("io", "qemu-io"),
        env=qemu_env(system),
    )


# --------------------------------------------------------------------------------------------
# Subprocess helpers


def _run(
    argv: list[str], *, cwd: Path | None = None, env: dict | None = None, what: str = ""
) -> str:
    """Run, return stdout; on failure raise FetchError naming the most telling stderr line.

    ``what`` names the step in that message (default: the program and its first argument).
    """
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise FetchError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        # apt reports the actual problem on an "E:" line, after any number of warnings.
        errors = [ln for ln in lines if ln.startswith("E:")]
        detail = (errors or lines or [f"exit status {proc.returncode}"])[0]
        what = what or " ".join([Path(argv[0]).name, *argv[1:2]])
        raise FetchError(f"{what}: {detail}")
    return proc.stdout


@functools.lru_cache(maxsize=None)
def _version_satisfies(version: str, op: str, wanted: str) -> bool:
    # dpkg is the reference implementation of Debian version ordering (epochs, ~, +b1 ...).
    return (
        subprocess.run(
            ["dpkg", "--compare-versions", version, op, wanted], stdin=subprocess.DEVNULL
        ).returncode
        == 0
    )


def _newest(versions: list[str]) -> str:
    best = versions[0]
    for v in versions[1:]:
        if _version_satisfies(v, ">>", best):
            best = v
    return best


# --------------------------------------------------------------------------------------------
# Private apt


class _Apt:
    """apt-get/apt-cache against our own sources and state, never the system's.

    One instance per Debian release (``directory`` is ``.qemu/apt/<release>``). Everything apt
    would read as state or write (lists, archives, locks, the dpkg status, logs) is below
    ``directory``; the dpkg status file is empty, so apt plans as for a system with nothing
    installed and downloads every dependency. The system's apt.conf.d is still read, on
    purpose: it may carry proxy or mirror settings a CI machine needs to reach the archive. The
    one thing from it we must not run is its hooks (e.g. APT::Update::Post-Invoke-Success
    refreshing the *system's* AppStream cache), so our apt.conf clears them (and a host-wide
    APT::Default-Release, which would steer candidate selection, and foreign architectures); it
    is passed with -c, which apt reads after the system files.
    """

    def __init__(self, directory: Path, arch: str, source: Source, *, create: bool = True):
        self.directory = d = directory
        self.arch = arch
        self.source = source
        if create:
            if not Path(_KEYRING).is_file():
                raise FetchError(f"{_KEYRING} is missing (Debian package debian-archive-keyring)")
            for sub in ("lists/partial", "cache", "state", "log", "sources.list.d",
                        "preferences.d"):  # fmt: skip
                (d / sub).mkdir(parents=True, exist_ok=True)
            # Only the Packages indices: no translations, no AppStream data a host may enable.
            sources = "".join(
                f"deb [signed-by={_KEYRING} arch={arch} target=Packages] {uri} {suite} main\n"
                for uri, suite in source.archive
            )
            _write_if_changed(d / "sources.list", sources)
            # Empty on purpose: the host's pins (e.g. a nodesource priority) must not steer our
            # candidate selection. Default priorities make backports 100 and the rest 500.
            _write_if_changed(d / "preferences", "")
            _write_if_changed(d / "status", "")
            _write_if_changed(
                d / "apt.conf",
                "// blockfuzz private apt: drop the system's hooks, release pin and foreign\n"
                "// architectures (fuzz/qemufetch.py)\n"
                + "".join(
                    f"#clear {name};\n"
                    for name in (
                        "APT::Update::Pre-Invoke",
                        "APT::Update::Post-Invoke",
                        "APT::Update::Post-Invoke-Success",
                        "DPkg::Pre-Invoke",
                        "DPkg::Post-Invoke",
                        "APT::Default-Release",
                        "APT::Architectures",
                    )
                )
                + f'APT::Architectures {{ "{arch}"; }};\n',
            )
        self.options = [
            "-c", str(d / "apt.conf"),
            "-o", f"Dir::Etc::SourceList={d / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={d / 'sources.list.d'}",
            "-o", f"Dir::Etc::Preferences={d / 'preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={d / 'preferences.d'}",
            "-o", f"Dir::State={d / 'state'}",
            "-o", f"Dir::State::Lists={d / 'lists'}",
            # Nothing is installed, as far as this apt knows.
            "-o", f"Dir::State::status={d / 'status'}",
            "-o", f"Dir::Cache={d / 'cache'}",
            "-o", f"Dir::Log={d / 'log'}",
            "-o", "Acquire::Languages=none",
            # We download into a directory the _apt sandbox user cannot write to; as root apt
            # then downloads unsandboxed anyway and says so. Ask for that directly.
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        if create:
            # The host may disable apt's binary cache (Debian's docker images do); a fetch runs
            # apt three times over the same lists, each ~2 s slower without it.
            self.options += ["-o", "Dir::Cache::pkgcache=pkgcache.bin",
                             "-o", "Dir::Cache::srcpkgcache=srcpkgcache.bin"]  # fmt: skip
        else:
            # Read-only use (`qemu list`): no binary cache files written next to a fetch.
            self.options += ["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]

    @property
    def has_lists(self) -> bool:
        return any((self.directory / "lists").glob("*_Packages*"))

    def get(self, *args: str, cwd: Path | None = None) -> str:
        argv = ["apt-get", "-q", *self.options, *args]
        return _run(argv, cwd=cwd, env=_apt_env(), what=f"apt-get {args[0]}")

    def cache(self, *args: str) -> str:
        argv = ["apt-cache", *self.options, *args]
        return _run(argv, env=_apt_env(), what=f"apt-cache {args[0]}")

    def update(self) -> None:
        # Without --error-on=any an unreachable mirror is only a warning, and the failure would
        # surface later as a puzzling "no such version".
        self.get("update", "--error-on=any")

    def drop_caches(self) -> None:
        # ~100 MB that only speed up the apt runs of one fetch; lists are kept for the next.
        for name in ("pkgcache.bin", "srcpkgcache.bin"):
            (self.directory / "cache" / name).unlink(missing_ok=True)

    def versions(self, names: list[str]) -> dict[str, list[tuple[str, str]]]:
        """name -> [(version, suite)] for every version in our sources (native arch or all)."""
        return parse_madison(self.cache("madison", *names), names, self.arch)

    def _install(self, pins: dict[str, str], *extra: str) -> str:
        target = ["-t", self.source.target] if self.source.target else []
        return self.get(
            "install", *target, *extra, "-y", "--no-install-recommends",
            *(f"{n}={v}" for n, v in sorted(pins.items())),
        )  # fmt: skip

    def plan(self, pins: dict[str, str]) -> dict[str, str]:
        """name -> version of every package ``apt-get install`` of ``pins`` would unpack."""
        plan = parse_simulation(self._install(pins, "--simulate"))
        if not plan:
            raise FetchError("apt-get install --simulate: planned to install nothing")
        return plan

    def download(self, pins: dict[str, str], into: Path) -> None:
        (into / "partial").mkdir(parents=True, exist_ok=True)
        self._install(pins, "--download-only", "-o", f"Dir::Cache::archives={into}")
        shutil.rmtree(into / "partial", ignore_errors=True)
        (into / "lock").unlink(missing_ok=True)


def parse_madison(text: str, names: list[str], arch: str) -> dict[str, list[tuple[str, str]]]:
    """``apt-cache madison`` output -> name -> [(version, suite)], binary packages of ``arch``
    (or ``all``) only."""
    out: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
    # madison exits 0 and prints nothing for unknown names.
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or parts[0] not in out:
            continue
        where = parts[2].split()  # "<uri> <suite>/<component> <arch> Packages"
        if len(where) >= 3 and where[-1] == "Packages" and where[-2] in (arch, "all"):
            out[parts[0]].append((parts[1], where[1].split("/")[0]))
    return out


_INST_RE = re.compile(r"^Inst (?P<name>[^\s:]+)(?::\S+)? (?:\[[^]]*\] )?\((?P<version>\S+) ")


def parse_simulation(text: str) -> dict[str, str]:
    """``apt-get install --simulate`` output -> name -> version of each ``Inst`` line."""
    return dict(sorted((m["name"], m["version"]) for m in map(_INST_RE.match, text.splitlines())
                       if m is not None))  # fmt: skip


def choose_pins(version: str, found: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """The exact version of each root package: the newest ``version`` build in its suites.

    ``found`` is :func:`parse_madison`'s answer for the root packages.
    """
    suites = SOURCES[version].suites
    upstream = re.compile(rf"^{re.escape(version)}(?:[.+~]|$)")
    pins = {}
    for name, builds in found.items():
        matching = [
            v
            for v, suite in builds
            if suite in suites
            # "1:7.2+dfsg-7+deb12u18+b3" -> upstream "7.2+dfsg": drop epoch and Debian revision.
            and upstream.match(v.split(":", 1)[-1].rsplit("-", 1)[0])
        ]
        if not matching:
            seen = ", ".join(f"{v} ({s})" for v, s in builds) or "none"
            raise FetchError(
                f"no QEMU {version} build of {name} in {'/'.join(suites)} (archive has: {seen})"
            )
        pins[name] = _newest(matching)
    return pins


def _apt_env() -> dict[str, str]:
    # Parsable output regardless of the user's locale; no debconf prompts ever.
    return {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _apt_for(base: Path, version: str, arch: str, *, create: bool = True) -> _Apt:
    source = SOURCES[version]
    return _Apt(base / "apt" / source.release, arch, source, create=create)


# Left in .qemu/apt/ by manifest format 1, which had one apt directory for bookworm only.
_LEGACY_APT = ("lists", "cache", "sources.list", "sources.list.d", "preferences",
               "preferences.d", "apt.conf")  # fmt: skip


def _drop_legacy_apt(apt_dir: Path) -> None:
    for name in _LEGACY_APT:
        path = apt_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def pinned(version: str) -> str | None:
    """The QEMU package version a fetch of ``version`` would take now, from the private package
    lists as they are (no network, nothing written); None if there are none or no build."""
    check_version(version)
    try:
        arch, _, _ = _host_arch()
        apt = _apt_for(qemu_dir(), version, arch, create=False)
        if not apt.has_lists or not (apt.directory / "status").is_file():
            return None
        return choose_pins(version, apt.versions(["qemu-system-x86"]))["qemu-system-x86"]
    except (FetchError, OSError):
        return None


# --------------------------------------------------------------------------------------------
# Fetch


def _stderr_log(message: str) -> None:
    print(f"blockfuzz: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Two fetches at once would fight over apt's list lock and the staging directory.
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=None)
def _host_arch() -> tuple[str, str, str]:
    """(Debian architecture, multiarch triplet, loader name) of the host."""
    arch = _run(["dpkg", "--print-architecture"]).strip()
    if arch not in _ARCHES:
        supported = ", ".join(_ARCHES)
        raise FetchError(f"unsupported host architecture {arch!r} (supported: {supported})")
    return (arch, *_ARCHES[arch])


def fetch(
    version: str, *, force: bool = False, log: Callable[[str], None] = _stderr_log
) -> Installation:
    """Make sure QEMU ``version`` is fetched, unpacked and verified; return it.

    Idempotent: a complete tree is returned as is (``force`` re-fetches). Needs network access
    to the Debian archive through apt, and dpkg and apt-get on the host.
    """
    check_version(version)
    if not force and (inst := installed(version)) is not None:
        return inst
    base = qemu_dir()
    if ":" in os.fspath(base):
        # The loader's --library-path is ':'-separated; it cannot name such directories.
        raise FetchError(f"{base}: the QEMU directory must not contain ':'")
    with _locked(base):
        # Another process may have finished the same fetch while we waited for the lock.
        if not force and (inst := installed(version)) is not None:
            return inst
        started = time.monotonic()
        arch, triplet, loader_name = _host_arch()
        _drop_legacy_apt(base / "apt")
        apt = _apt_for(base, version, arch)
        # Build beside the final place and rename at the end, so an interrupted fetch never
        # leaves something that looks complete. (A failed one stays here for inspection until
        # the next fetch.)
        staging = base / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        debs, root = staging / "debs", staging / "root"
        debs.mkdir(parents=True)
        log(f"updating the private package lists ({apt.directory})")
        try:
            apt.update()
            pins = choose_pins(version, apt.versions(list(ROOT_PACKAGES)))
            log(f"QEMU {version}: " + ", ".join(f"{n} {v}" for n, v in sorted(pins.items())))
            plan = apt.plan(pins)
            log(f"downloading {len(plan)} packages")
            apt.download(pins, debs)
        finally:
            apt.drop_caches()
        files = sorted(debs.glob("*.deb"))
        got = {}
        for deb in files:
            fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"])
            info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
            got[info["Package"]] = info["Version"]
        if got != plan:
            wrong = sorted(set(got.items()) ^ set(plan.items()))
            raise FetchError(f"apt-get download: not the planned package set, differences: {wrong}")
        if "seabios" not in got:
            raise FetchError("apt did not fetch seabios (needed for -M pc)")
        size = sum(f.stat().st_size for f in files)
        log(f"unpacking {len(files)} packages ({size / 1e6:.0f} MB)")
        root.mkdir()
        # dpkg -x only unpacks the data archive: no maintainer scripts, no dpkg database. The
        # packages of one consistent installation ship disjoint files, so the order does not
        # matter; in parallel, because decompressing is most of a fetch's CPU time.
        import concurrent.futures   # here: only a fetch needs threads, not every start

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
            for _ in ex.map(lambda deb: _run(["dpkg", "-x", str(deb), str(root)]), files):
                pass

        module_dir = f"usr/lib/{triplet}/qemu"
        loader = _find_loader(root, triplet, loader_name)
        library_path = _library_path(root, triplet, loader, module_dir)
        (staging / "share").symlink_to("root/usr/share")
        # Run what will be run: the wrappers, here with the staging paths baked in.
        _write_wrappers(staging, loader, library_path, module_dir)
        banner = ""
        for name in _PROGRAMS.values():
            out = _run([str(staging / "bin" / name), "--version"], env=_clean_env())
            first = (out.splitlines() or [""])[0]
            if not re.search(rf"version {re.escape(version)}(?:\.|\s|$)", first):
                raise FetchError(f"unpacked {name} reports {first!r}, expected version {version}")
            banner = banner or first
        final = base / version
        _write_wrappers(staging, loader, library_path, module_dir, at=final)

        source = SOURCES[version]
        manifest = {
            "blockfuzz-qemu": _MANIFEST_FORMAT,
            "version": version,
            "qemu-version": banner,
            "debian": {"release": source.release, "suites": list(source.suites),
                       "target": source.target},  # fmt: skip
            "loader": loader,
            "library-path": library_path,
            "module-dir": module_dir,
            "binaries": {k: f"bin/{v}" for k, v in _PROGRAMS.items()},
            "packages": got,
            "download-bytes": size,
            "fetched-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        log(
            f"QEMU {version} ready in {time.monotonic() - started:.0f}s"
            f" ({len(got)} packages): {banner}"
        )
    inst = installed(version)
    if inst is None:  # pragma: no cover - only if the tree vanished under us
        raise FetchError(f"QEMU {version} disappeared from {base} right after fetching")
    return inst


def _clean_env() -> dict[str, str]:
    # What the host may have set for its own programs must not reach the tree's loader.
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}


def _find_loader(root: Path, triplet: str, name: str) -> str:
    """The tree's dynamic loader, relative to root (bookworm's libc6 has it in /lib, later
    releases in /usr/lib)."""
    for rel in (f"usr/lib/{triplet}/{name}", f"lib/{triplet}/{name}"):
        path = root / rel
        # Not a symlink leaving the tree (libc6's /lib64/ld-linux-x86-64.so.2 is an absolute one).
        if _is_executable(path) and path.resolve().is_relative_to(root.resolve()):
            return rel
    raise FetchError(f"no {name} in the unpacked packages (is libc6 among them?)")


_LISTED_RE = re.compile(r"^\s*(?P<soname>\S+) => (?P<path>.+?)(?: \(0x[0-9a-f]+\))?$")
_LOAD_ERROR_RE = re.compile(r"error while loading shared libraries: (?P<soname>[^:]+):")


def _list_libraries(root: Path, loader: str, path: list[str], target: Path) -> tuple[dict, str]:
    """``ld.so --list`` of ``target`` under the tree's loader and ``path`` (relative to root).

    Returns ({soname: file it loads}, the soname it cannot find or "").
    """
    argv = [
        str(root / loader), "--list",
        "--library-path", ":".join(str(root / d) for d in path), str(target),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env=_clean_env(),
                          stdin=subprocess.DEVNULL)  # fmt: skip
    loaded, missing = {}, ""
    for line in proc.stdout.splitlines():
        m = _LISTED_RE.match(line)
        if m is None:
            continue  # linux-vdso.so.1 and the like: no file
        if m["path"] == "not found":
            missing = missing or m["soname"]
        else:
            loaded[m["soname"]] = m["path"]
    if not missing and (m := _LOAD_ERROR_RE.search(proc.stderr)):
        missing = m["soname"]
    if proc.returncode != 0 and not missing:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise FetchError(f"{target.relative_to(root)}: the tree's loader cannot list it: {detail}")
    return loaded, missing


def _library_path(root: Path, triplet: str, loader: str, module_dir: str) -> list[str]:
    """The --library-path (relative to root) under which every binary and module loads.

    Covers the three binaries and the QEMU modules: modules are dlopen()ed only when a command
    needs them (e.g. the first `blockdev-add driver=rbd`), so a missing library would otherwise
    surface as a puzzling behaviour difference in the middle of a fuzzing run. Checked with the
    tree's own loader, as the wrappers run them, and every library must be a file of the tree:
    the loader falls back to the host's directories, which would hide a library apt did not
    fetch.

    Starts with the multiarch directories. Some libraries find their private helpers through an
    absolute RUNPATH (librados2 -> /usr/lib/<triplet>/ceph/libceph-common.so.2), which points
    at the host, not the tree; for a library the loader cannot find but the tree contains, its
    directory is appended. Anything still missing is an error.
    """
    path = [d for d in (f"usr/lib/{triplet}", f"lib/{triplet}") if (root / d).is_dir()]
    targets = [root / "usr/bin" / p for p in _PROGRAMS.values()]
    targets += sorted((root / module_dir).glob("*.so"))
    for target in targets:
        if not target.exists():
            raise FetchError(f"{target.relative_to(root)} is missing from the unpacked packages")
    real_root = root.resolve()
    while True:
        missing: dict[str, Path] = {}  # soname -> first object needing it
        host: dict[str, str] = {}  # soname -> the host's file the loader found instead
        for target in targets:
            loaded, soname = _list_libraries(root, loader, path, target)
            if soname:
                missing.setdefault(soname, target)
            for name, file in loaded.items():
                if not Path(file).resolve().is_relative_to(real_root):
                    host[name] = file
                    missing.setdefault(name, target)
        if not missing:
            return path
        added = False
        for soname, target in missing.items():
            found = sorted(p for p in root.rglob(soname) if p.is_file())
            if not found:
                where = f"loads it from the host ({host[soname]})" if soname in host else (
                    "cannot find it")
                raise FetchError(
                    f"{target.relative_to(root)} needs {soname} and {where}:"
                    " no fetched package provides it"
                )
            directory = str(found[0].parent.relative_to(root))
            if directory not in path:
                path.append(directory)
                added = True
        if not added:  # found in a directory already searched, yet the loader cannot load it
            soname, target = next(iter(missing.items()))
            raise FetchError(f"{target.relative_to(root)} cannot load {soname}")
