"""Fetch the QEMU builds blockfuzz tests against, and pick the one to run.

blockfuzz compares QEMU with a model whose expectations are written per QEMU version (a trace's
``"by-version"`` keys), so it runs *known* builds rather than whatever the host has: Debian's
``7.2`` (bookworm) and ``10.0`` (bookworm-backports). They are fetched as Debian packages and
unpacked into the git-ignored ``.qemu/`` directory of the checkout; nothing is installed and the
system's apt configuration is left alone.

Fetching::

    $ blockfuzz qemu fetch 10.0          # ~35 MB, seconds; prints the qemu-system-x86_64 path
    /work/main/.qemu/10.0/root/usr/bin/qemu-system-x86_64
    $ blockfuzz qemu path 7.2            # instant; exit 1 if 7.2 was never fetched

Layout (``$BLOCKFUZZ_QEMU_DIR`` moves the whole thing, default ``<checkout>/.qemu``)::

    .qemu/apt/              private apt state: sources.list, lists/, cache/, apt.conf
    .qemu/<ver>/debs/       the downloaded .debs, exact versions (see manifest.json)
    .qemu/<ver>/root/       every .deb unpacked with ``dpkg -x``
    .qemu/<ver>/manifest.json   written last: its presence means "complete"

What gets fetched: the QEMU packages (``ROOT_PACKAGES``) at the pinned version plus, recursively,
every package they ``Depends`` on that the host does not already have installed. Libraries land
in ``root/usr/lib/<triplet>`` (and a few private subdirectories, e.g. ``ceph/``), so an unpacked
binary only runs with the environment returned by :func:`qemu_env`, which sets
``LD_LIBRARY_PATH`` and ``QEMU_MODULE_DIR``.

Running, from the harness::

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
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import attrs

__all__ = [
    "DEFAULT_VERSION",
    "KNOWN_VERSIONS",
    "FetchError",
    "Installation",
    "QemuBinaries",
    "QemuNotFound",
    "fetch",
    "installed",
    "parse_depends",
    "qemu_dir",
    "qemu_env",
    "qemu_version",
    "resolve_qemu",
]

KNOWN_VERSIONS = ("7.2", "10.0")
DEFAULT_VERSION = "10.0"

# Which archive suites may supply the QEMU packages of each version. 7.2 is bookworm's own QEMU
# (point releases and security updates included: take the highest); 10.0 exists only in
# backports.
_SUITES = {
    "7.2": ("bookworm", "bookworm-updates", "bookworm-security"),
    "10.0": ("bookworm-backports",),
}

_MIRRORS = (
    ("http://deb.debian.org/debian", ("bookworm", "bookworm-updates", "bookworm-backports")),
    ("http://deb.debian.org/debian-security", ("bookworm-security",)),
)
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# The packages fetched at exactly the pinned QEMU version. qemu-block-extra carries the block
# driver modules (curl, iscsi, nfs, rbd, ssh, gluster): without them a fuzzed
# `blockdev-add driver=nfs` would fail with "unknown driver" instead of the driver's own error,
# which a real installation gives.
ROOT_PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-utils", "qemu-block-extra")

# Dependencies deliberately not fetched. Each is data, not code: nothing in it is linked or
# dlopen()ed, so `ldd` cannot miss it. Most traces run `-M none`, which loads no firmware; the
# iothread scenarios need `-M pc` (PCI for virtio-scsi), whose BIOS comes from seabios, which
# *is* fetched and passed with `-L` (the binary's compiled-in /usr/share/... is not our tree).
SKIP = {
    "ipxe-qemu": "NIC option ROMs; blockfuzz machines have no NICs",
    "qemu-system-data": "ROMs, keymaps, icons; `-M none` and `-M pc -nodefaults` load none",
}

_BINARIES = {
    "system": "usr/bin/qemu-system-x86_64",
    "img": "usr/bin/qemu-img",
    "io": "usr/bin/qemu-io",
}

_MANIFEST = "manifest.json"
_MANIFEST_FORMAT = 1

# Debian architecture -> multiarch triplet, i.e. the lib directory name. Only hosts whose
# libraries we can place are supported.
_TRIPLETS = {
    "amd64": "x86_64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
}


class QemuNotFound(ValueError):
    """No usable QEMU binary; the message is one actionable line."""


class FetchError(RuntimeError):
    """Fetching or verifying a QEMU tree failed; the message is one line."""


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
    library_path: tuple  # directories relative to root/, in LD_LIBRARY_PATH order
    module_dir: str  # relative to root/
    packages: dict  # name -> exact Debian version, everything unpacked into root/
    qemu_version: str  # first line of `qemu-system-x86_64 --version`

    @property
    def root(self) -> Path:
        return self.directory / "root"

    def binary(self, which: str) -> Path:
        """``which`` is ``"system"``, ``"img"`` or ``"io"``."""
        return self.root / _BINARIES[which]

    @property
    def env(self) -> dict[str, str]:
        return _tree_env(self.root, self.library_path, self.module_dir)


def _tree_env(root: Path, library_path, module_dir: str) -> dict[str, str]:
    # LD_LIBRARY_PATH is replaced, not extended: an ambient value could shadow the tree's
    # libraries with other versions, and the binary would then be something we never verified.
    return {
        "LD_LIBRARY_PATH": ":".join(str(root / d) for d in library_path),
        # The module dir is compiled in as /usr/lib/<triplet>/qemu; without this QEMU would load
        # the host's modules (or none), which need not match the binary's build.
        "QEMU_MODULE_DIR": str(root / module_dir),
    }


def _read_manifest(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("blockfuzz-qemu") != _MANIFEST_FORMAT:
        return None
    return data


def installed(version: str) -> Installation | None:
    """The fetched tree of ``version``, or None if it is absent or incomplete."""
    check_version(version)
    directory = qemu_dir() / version
    data = _read_manifest(directory)
    if data is None or data.get("version") != version:
        return None
    inst = Installation(
        version=version,
        directory=directory,
        library_path=tuple(data["library-path"]),
        module_dir=data["module-dir"],
        packages=dict(data["packages"]),
        qemu_version=data["qemu-version"],
    )
    # A manifest whose binaries went missing (someone pruned root/) is not a usable tree; nor
    # is one fetched before seabios was (the `-M pc` traces need its BIOS).
    if not all(_is_executable(inst.binary(w)) for w in _BINARIES):
        return None
    if "seabios" not in inst.packages:
        return None
    return inst


def qemu_env(binary_path: str | os.PathLike) -> dict[str, str]:
    """Environment additions needed to run ``binary_path``.

    For a binary inside a fetched tree, the variables that make it find the tree's libraries
    and modules; for any other binary (a system or self-built QEMU), ``{}``. Merge the result
    over ``os.environ``.
    """
    path = Path(binary_path).absolute()
    # Follow symlinks too, so a ~/bin/qemu -> .qemu/10.0/root/usr/bin/... link still works.
    for candidate in dict.fromkeys((path, path.resolve())):
        for parent in candidate.parents:
            if parent.name != "root":
                continue
            data = _read_manifest(parent.parent)
            if data is not None:
                return _tree_env(parent, data["library-path"], data["module-dir"])
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

    ``env`` is what ``system`` needs merged over ``os.environ`` (``{}`` for a system QEMU).
    ``img`` and ``io`` may come from elsewhere (``$QEMU_IMG_PROG``), so use
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


def _validate(value: str, source: str) -> str:
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
# Debian control data


@attrs.frozen
class Dep:
    """One alternative of a ``Depends`` entry: ``name (op version)``."""

    name: str
    op: str | None = None
    version: str | None = None

    def allows(self, version: str) -> bool:
        return self.op is None or _version_satisfies(version, self.op, self.version)

    def __str__(self) -> str:
        return self.name if self.op is None else f"{self.name} ({self.op} {self.version})"


_DEP_RE = re.compile(
    r"^\s*(?P<name>[a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?"  # ":any"/":amd64" qualifier ignored
    r"\s*(?:\(\s*(?P<op><<|<=|=|>=|>>)\s*(?P<version>[^\s)]+)\s*\))?"
    r"\s*(?:\[[^]]*\])?\s*(?:<[^>]*>\s*)*$"  # arch / build-profile restrictions (source only)
)


def parse_depends(text: str) -> list[tuple[Dep, ...]]:
    """``"a (>= 1), b | c"`` -> ``[(Dep(a, '>=', '1'),), (Dep(b), Dep(c))]``."""
    groups = []
    for entry in text.split(","):
        if not entry.strip():
            continue
        alternatives = []
        for alt in entry.split("|"):
            m = _DEP_RE.match(alt)
            if m is None:
                raise FetchError(f"cannot parse dependency {alt.strip()!r}")
            alternatives.append(Dep(m["name"], m["op"], m["version"]))
        groups.append(tuple(alternatives))
    return groups


def _parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """RFC 822 control stanzas, continuation lines folded into their field."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


# --------------------------------------------------------------------------------------------
# Private apt


class _Apt:
    """apt-get/apt-cache against our own sources and state, never the system's.

    Everything apt would write (lists, archives, locks) goes below ``directory``. The system's
    apt.conf.d is still read, on purpose: it may carry proxy or mirror settings a CI machine
    needs to reach the archive. The one thing from it we must not run is its hooks (e.g.
    APT::Update::Post-Invoke-Success refreshing the *system's* AppStream cache), so our
    apt.conf clears them (and a host-wide APT::Default-Release, which would steer candidate
    selection); it is passed with -c, which apt reads after the system files.
    """

    def __init__(self, directory: Path, arch: str):
        self.directory = directory
        self.arch = arch
        if not Path(_KEYRING).is_file():
            raise FetchError(f"{_KEYRING} is missing (Debian package debian-archive-keyring)")
        d = directory
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        sources = "".join(
            f"deb [signed-by={_KEYRING}] {uri} {suite} main\n"
            for uri, suites in _MIRRORS
            for suite in suites
        )
        _write_if_changed(d / "sources.list", sources)
        # Empty on purpose: the host's pins (e.g. a nodesource priority) must not steer our
        # candidate selection. Default priorities make backports 100 and the rest 500.
        _write_if_changed(d / "preferences", "")
        _write_if_changed(
            d / "apt.conf",
            "// blockfuzz private apt: drop the system's hooks and release pin (qemufetch.py)\n"
            + "".join(
                f"#clear {hook};\n"
                for hook in (
                    "APT::Update::Pre-Invoke",
                    "APT::Update::Post-Invoke",
                    "APT::Update::Post-Invoke-Success",
                    "DPkg::Pre-Invoke",
                    "DPkg::Post-Invoke",
                    "APT::Default-Release",
                )
            ),
        )
        self.options = [
            "-c", str(d / "apt.conf"),
            "-o", f"Dir::Etc::SourceList={d / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={d / 'sources.list.d'}",
            "-o", f"Dir::Etc::Preferences={d / 'preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={d / 'preferences.d'}",
            "-o", f"Dir::State::Lists={d / 'lists'}",
            "-o", f"Dir::Cache={d / 'cache'}",
            # We download into a directory the _apt sandbox user cannot write to; as root apt
            # then downloads unsandboxed anyway and says so. Ask for that directly.
            "-o", "APT::Sandbox::User=root",
            # The host may disable apt's binary cache (Debian's docker images do); we make many
            # small apt-cache queries, each ~0.5 s without it and ~10 ms with it.
            "-o", "Dir::Cache::pkgcache=pkgcache.bin",
            "-o", "Dir::Cache::srcpkgcache=srcpkgcache.bin",
        ]  # fmt: skip

    def get(self, *args: str, cwd: Path | None = None) -> str:
        argv = ["apt-get", "-q", *self.options, *args]
        return _run(argv, cwd=cwd, env=_apt_env(), what=f"apt-get {args[0]}")

    def cache(self, *args: str) -> str:
        argv = ["apt-cache", *self.options, *args]
        return _run(argv, env=_apt_env(), what=f"apt-cache {' '.join(args)}")

    def update(self) -> None:
        # Without --error-on=any an unreachable mirror is only a warning, and the failure would
        # surface later as a puzzling "no such version".
        self.get("update", "--error-on=any")

    def drop_caches(self) -> None:
        # ~75 MB that only speeds up the queries of one fetch; lists are kept for the next one.
        for name in ("pkgcache.bin", "srcpkgcache.bin"):
            (self.directory / "cache" / name).unlink(missing_ok=True)

    def versions(self, names: list[str]) -> dict[str, list[tuple[str, str]]]:
        """name -> [(version, suite)] for every version in our sources (native arch or all)."""
        out: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
        if not names:
            return out
        # madison exits 0 and prints nothing for unknown names.
        for line in self.cache("madison", *names).splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3 or parts[0] not in out:
                continue
            where = parts[2].split()  # "<uri> <suite>/<component> <arch> Packages"
            if len(where) >= 3 and where[-1] == "Packages" and where[-2] in (self.arch, "all"):
                out[parts[0]].append((parts[1], where[1].split("/")[0]))
        return out

    def candidates(self, names: list[str]) -> dict[str, str | None]:
        """name -> the version apt would install by default (None if none)."""
        out: dict[str, str | None] = {}
        current = None
        for line in self.cache("policy", *names).splitlines():
            if line and not line[0].isspace() and line.rstrip().endswith(":"):
                current = line.rstrip()[:-1].split(":")[0]  # "libfoo:" or "libfoo:amd64:"
            elif current is not None and line.strip().startswith("Candidate:"):
                value = line.split(":", 1)[1].strip()
                out[current] = None if value == "(none)" else value
        return out

    def show(self, name: str, version: str) -> dict[str, str]:
        for stanza in _parse_stanzas(self.cache("show", f"{name}={version}")):
            if stanza.get("Architecture") in (self.arch, "all"):
                return stanza
        raise FetchError(f"apt-cache show {name}={version}: no {self.arch} package")


def _apt_env() -> dict[str, str]:
    # Parsable output regardless of the user's locale; no debconf prompts ever.
    return {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _installed_versions(names: list[str]) -> dict[str, str]:
    """name -> installed version, for those of ``names`` dpkg has fully installed."""
    if not names:
        return {}
    # Exit status is 1 if any name is unknown to dpkg; the known ones are still printed.
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Version}\n", *names],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    out = {}
    for line in proc.stdout.splitlines():
        name, _, rest = line.partition("\t")
        status, _, version = rest.partition("\t")
        if "install ok installed" in status:
            out[name.split(":")[0]] = version
    return out


# --------------------------------------------------------------------------------------------
# Resolution


@attrs.frozen
class _Plan:
    packages: dict  # name -> version to download
    satisfied: dict  # name -> installed version that satisfies every constraint seen
    skipped: dict  # name -> reason


def _pin_roots(apt: _Apt, version: str) -> dict[str, str]:
    """The exact version of each root package: the highest ``version`` build in its suites."""
    upstream = re.compile(rf"^{re.escape(version)}(?:[.+~]|$)")
    pins = {}
    for name, found in apt.versions(list(ROOT_PACKAGES)).items():
        matching = [
            v
            for v, suite in found
            if suite in _SUITES[version]
            # "1:7.2+dfsg-7+deb12u18+b3" -> upstream "7.2+dfsg": drop epoch and Debian revision.
            and upstream.match(v.split(":", 1)[-1].rsplit("-", 1)[0])
        ]
        if not matching:
            seen = ", ".join(f"{v} ({s})" for v, s in found) or "none"
            raise FetchError(
                f"no QEMU {version} build of {name} in {'/'.join(_SUITES[version])}"
                f" (archive has: {seen})"
            )
        pins[name] = _newest(matching)
    return pins


def _resolve(
    apt: _Apt,
    version: str,
    log: Callable[[str], None],
    host: Callable[[str], str | None] | None = None,
) -> _Plan:
    """Everything to fetch: roots at their pins plus the transitive ``Depends`` closure.

    Mirrors what ``apt-get install`` would pull in on a bookworm host, minus what the host
    already has: for each dependency take the apt candidate if it satisfies every version
    constraint seen, else the newest version that does (this is how a backports QEMU gets the
    newer libraries it needs). An alternative group ``a | b`` is satisfied by any member we
    already have; otherwise its first member is taken, as apt does. ``host(name)`` gives the
    installed version or None (default: ask dpkg).
    """
    if host is None:
        host = lambda name: _installed_versions([name]).get(name)  # noqa: E731
    pins = _pin_roots(apt, version)
    log(f"QEMU {version}: " + ", ".join(f"{n} {v}" for n, v in sorted(pins.items())))
    selected: dict[str, str] = {}
    stanzas: dict[str, dict[str, str]] = {}
    constraints: dict[str, list[Dep]] = {}
    provides: dict[str, str] = {}  # virtual name -> selected provider
    satisfied: dict[str, str] = {}
    skipped: dict[str, str] = {}
    installed_cache: dict[str, str | None] = {}
    queue: list[str] = []

    def select(name: str, chosen: str) -> None:
        selected[name] = chosen
        stanzas[name] = apt.show(name, chosen)
        # Register what it provides right away, so that whether `a | b` is already satisfied
        # does not depend on the order packages are expanded in.
        for virtual in parse_depends(stanzas[name].get("Provides", "")):
            provides.setdefault(virtual[0].name, name)
        satisfied.pop(name, None)
        queue.append(name)

    for name in sorted(pins):
        select(name, pins[name])

    def host_version(name: str) -> str | None:
        if name not in installed_cache:
            installed_cache[name] = host(name)
        return installed_cache[name]

    def have(dep: Dep) -> bool:
        if dep.name in selected:
            return dep.allows(selected[dep.name])
        if dep.name in provides or dep.name in skipped:
            return True
        inst = host_version(dep.name)
        if inst is not None and dep.allows(inst):
            satisfied[dep.name] = inst
            return True
        return False

    def choose(name: str) -> str | None:
        """Version to fetch for ``name`` under its constraints; None if the host's will do."""
        wanted = constraints[name]
        inst = host_version(name)
        if inst is not None and all(d.allows(inst) for d in wanted):
            satisfied[name] = inst
            return None
        candidate = apt.candidates([name]).get(name)
        if candidate is not None and all(d.allows(candidate) for d in wanted):
            return candidate
        ok = [v for v, _ in apt.versions([name])[name] if all(d.allows(v) for d in wanted)]
        if not ok:
            why = ", ".join(str(d) for d in wanted)
            raise FetchError(f"no version of {name} satisfies {why}")
        return _newest(ok)

    while queue:
        name = queue.pop(0)
        fields = stanzas[name]
        for group in parse_depends(
            ", ".join(filter(None, (fields.get("Pre-Depends"), fields.get("Depends"))))
        ):
            if any(have(d) for d in group):
                continue
            if group[0].name in SKIP:
                skipped[group[0].name] = SKIP[group[0].name]
                continue
            # The first alternative that is a real package (a virtual name has no versions of
            # its own; we do not guess among its providers).
            dep = next((d for d in group if apt.versions([d.name])[d.name]), None)
            if dep is None:
                alts = " | ".join(str(d) for d in group)
                raise FetchError(f"{name} needs {alts}: no such package in the archive")
            if dep.name in pins:
                raise FetchError(
                    f"{name} {selected[name]} needs {dep}, but {dep.name} is pinned at "
                    f"{pins[dep.name]}"
                )
            constraints.setdefault(dep.name, []).append(dep)
            chosen = choose(dep.name)
            if chosen is not None and selected.get(dep.name) != chosen:
                # New, or an earlier pick violates a constraint seen now: (re)expand it.
                select(dep.name, chosen)
    return _Plan(
        packages=dict(sorted(selected.items())),
        satisfied=dict(sorted(satisfied.items())),
        skipped=dict(sorted(skipped.items())),
    )


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


def _host_arch() -> tuple[str, str]:
    arch = _run(["dpkg", "--print-architecture"]).strip()
    if arch not in _TRIPLETS:
        supported = ", ".join(_TRIPLETS)
        raise FetchError(f"unsupported host architecture {arch!r} (supported: {supported})")
    return arch, _TRIPLETS[arch]


def fetch(
    version: str, *, force: bool = False, log: Callable[[str], None] = _stderr_log
) -> Installation:
    """Make sure QEMU ``version`` is fetched, unpacked and verified; return it.

    Idempotent: a complete tree is returned as is (``force`` re-fetches). Needs network access
    to deb.debian.org through apt, and dpkg, apt-get and ldd on the host.
    """
    check_version(version)
    if not force and (inst := installed(version)) is not None:
        return inst
    base = qemu_dir()
    with _locked(base):
        # Another process may have finished the same fetch while we waited for the lock.
        if not force and (inst := installed(version)) is not None:
            return inst
        started = time.monotonic()
        arch, triplet = _host_arch()
        apt = _Apt(base / "apt", arch)
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
            plan = _resolve(apt, version, log)
            log(f"downloading {len(plan.packages)} packages")
            apt.get("download", *(f"{n}={v}" for n, v in plan.packages.items()), cwd=debs)
        finally:
            apt.drop_caches()
        files = sorted(debs.glob("*.deb"))
        got = {}
        for deb in files:
            fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"])
            info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
            got[info["Package"]] = info["Version"]
        if got != plan.packages:
            wrong = sorted(set(got.items()) ^ set(plan.packages.items()))
            raise FetchError(f"apt-get download: unexpected package set, differences: {wrong}")
        for deb in files:
            # dpkg -x only unpacks the data archive: no maintainer scripts, no dpkg database.
            _run(["dpkg", "-x", str(deb), str(root)])

        module_dir = f"usr/lib/{triplet}/qemu"
        library_path = _library_path(root, triplet, module_dir)
        env = {**os.environ, **_tree_env(root, library_path, module_dir)}
        banner = _run([str(root / _BINARIES["system"]), "--version"], env=env).splitlines()[0]
        if not re.search(rf"version {re.escape(version)}(?:\.|\s|$)", banner):
            raise FetchError(f"unpacked QEMU reports {banner!r}, expected version {version}")

        manifest = {
            "blockfuzz-qemu": _MANIFEST_FORMAT,
            "version": version,
            "qemu-version": banner,
            "library-path": library_path,
            "module-dir": module_dir,
            "binaries": {k: f"root/{v}" for k, v in _BINARIES.items()},
            "packages": plan.packages,
            "host-satisfied": plan.satisfied,
            "skipped": plan.skipped,
            "fetched-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        final = base / version
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        log(f"QEMU {version} ready in {time.monotonic() - started:.0f}s: {banner}")
    inst = installed(version)
    if inst is None:  # pragma: no cover - only if the tree vanished under us
        raise FetchError(f"QEMU {version} disappeared from {base} right after fetching")
    return inst


def _library_path(root: Path, triplet: str, module_dir: str) -> list[str]:
    """The LD_LIBRARY_PATH (relative to root) under which every binary and module loads.

    Covers the three binaries and the QEMU modules: modules are dlopen()ed only when a command
    needs them (e.g. the first `blockdev-add driver=rbd`), so a missing library would otherwise
    surface as a puzzling behaviour difference in the middle of a fuzzing run.

    Starts with the multiarch directories. Some libraries find their private helpers through an
    absolute RUNPATH (librados2 -> /usr/lib/<triplet>/ceph/libceph-common.so.2), which points
    at the host, not the tree; for a library that `ldd` reports missing but the tree contains,
    its directory is appended. Anything still missing is an error.
    """
    path = [f"usr/lib/{triplet}", f"lib/{triplet}"]
    targets = [root / p for p in _BINARIES.values()]
    targets += sorted((root / module_dir).glob("*.so"))
    for target in targets:
        if not target.exists():
            raise FetchError(f"{target.relative_to(root)} is missing from the unpacked packages")
    while True:
        env = {**os.environ, **_tree_env(root, path, module_dir)}
        missing: dict[str, Path] = {}  # soname -> first object needing it
        for target in targets:
            for line in _run(["ldd", str(target)], env=env).splitlines():
                if "not found" in line:
                    missing.setdefault(line.split()[0], target)
        if not missing:
            return path
        added = False
        for soname, target in missing.items():
            found = sorted(p for p in root.rglob(soname) if p.is_file() or p.is_symlink())
            if not found:
                raise FetchError(
                    f"{target.relative_to(root)} cannot find {soname}"
                    " (no fetched package provides it)"
                )
            directory = str(found[0].parent.relative_to(root))
            if directory not in path:
                path.append(directory)
                added = True
        if not added:  # found in a directory already searched, yet ldd cannot load it
            soname, target = next(iter(missing.items()))
            raise FetchError(f"{target.relative_to(root)} cannot load {soname}")
