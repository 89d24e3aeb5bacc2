"""QEMU source trees from Debian's source packages, for running (and later building) upstream's
own tests: ``blockfuzz qemu source 10.0``.

The exported iotests (``blockfuzz export --iotest``) run under QEMU's own runner,
``tests/qemu-iotests/check``, which needs a QEMU source tree; a later step builds QEMU from the
same tree. The tree is Debian's source package of that QEMU version (upstream's tarball plus
Debian's patches, exactly what the Debian binaries were built from), fetched the way
``fuzz.qemufetch`` fetches binaries: apt against a *private* directory of its own, never the
system's apt state::

    $ blockfuzz qemu source 10.0       # ~40 MB download, ~30 s; prints the tree
    /work/main/.qemu/src/10.0/tree
    $ blockfuzz qemu source 10.0       # idempotent: a complete tree is only looked up

Layout (under ``$BLOCKFUZZ_QEMU_DIR``, default ``<checkout>/.qemu``)::

    .qemu/apt/<release>-src/     private apt state with deb-src lines only (Sources indices)
    .qemu/src/<version>/dl/      the .dsc, .orig.tar.xz and .debian.tar.xz apt downloaded
                                 (apt checks them against the signed Sources index)
    .qemu/src/<version>/tree/    the unpacked source tree, Debian's patches applied
    .qemu/src/<version>/manifest.json   written last: its presence means "complete"

Built in ``.qemu/src/.<version>.partial`` and renamed into place, serialised by an flock on
``.qemu/src/.lock``, so an interrupted fetch never looks complete and two fetches never race.

Which source package: the one the fetched binaries of that version were built from, if the
version's suites (:data:`SOURCE_ORIGINS`) have it, else the newest source version of ``qemu``
there whose upstream version starts with the wanted one (a newer upload's files may not be on
every mirror yet, and the source of what blockfuzz runs is the one to test and build). 10.0 is trixie's own
QEMU (10.0.x point releases; the binaries blockfuzz runs as "10.0" are bookworm-backports'
10.0.2, the same upstream series), 11.1 is trixie-backports' (the very version of the fetched
11.1 binaries). Adding one is one entry, e.g. ``"10.2": Source("sid", ("sid",))``.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import attrs

from fuzz import qemufetch
from fuzz.errors import CliError, FetchError, QemuNotFound
from fuzz.qemufetch import Source, _Apt

__all__ = ["SOURCE_ORIGINS", "SourceTree", "fetch_source", "source_installed",
           "add_source_parser"]

# version -> where its source package comes from (suites searched for the newest build).
SOURCE_ORIGINS = {
    "10.0": Source("trixie", ("trixie", "trixie-updates", "trixie-security")),
    "11.1": Source("trixie", ("trixie-backports",)),
    # no binaries: built from source (`blockfuzz qemu build 10.2`); sid still lists 10.2.2
    "10.2": Source("sid", ("sid",)),
}
SOURCE_PACKAGE = "qemu"
_MANIFEST = "manifest.json"
_MANIFEST_FORMAT = 1


@attrs.frozen
class SourceTree:
    """A complete fetched source tree, as its manifest describes it."""

    version: str            # "10.0"
    directory: Path         # .qemu/src/<version>
    package_version: str    # "1:10.0.13+ds-0+deb13u1"
    upstream_version: str   # "10.0.13" (the VERSION file of the tree)

    @property
    def tree(self) -> Path:
        return self.directory / "tree"

    @property
    def iotests(self) -> Path:
        return self.tree / "tests" / "qemu-iotests"


def src_dir() -> Path:
    return qemufetch.qemu_dir() / "src"


def _check(version: str) -> str:
    if version not in SOURCE_ORIGINS:
        raise QemuNotFound(f"no QEMU source known for {version!r} (known: "
                                     f"{', '.join(SOURCE_ORIGINS)})")
    return version


def source_installed(version: str) -> SourceTree | None:
    """The complete source tree of ``version``, or None."""
    _check(version)
    directory = src_dir() / version
    try:
        data = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("blockfuzz-qemu-source") != _MANIFEST_FORMAT \
            or data.get("version") != version:
        return None
    st = SourceTree(version, directory, str(data.get("package-version", "")),
                    str(data.get("upstream-version", "")))
    if not (st.iotests / "check").is_file() or not (st.tree / "VERSION").is_file():
        return None   # pruned
    return st


class _SourceApt(_Apt):
    """``qemufetch._Apt`` whose sources list has deb-src lines only: the Sources indices are
    all ``apt-get source`` needs. Its own directory (``.qemu/apt/<release>-src``), so the
    binary fetch's lists are never touched."""

    def __init__(self, directory: Path, arch: str, source: Source):
        super().__init__(directory, arch, source, create=True)
        keyring = qemufetch._KEYRING
        text = "".join(f"deb-src [signed-by={keyring}] {uri} {suite} main\n"
                       for uri, suite in source.archive)
        qemufetch._write_if_changed(directory / "sources.list", text)

    def source_versions(self) -> list[tuple[str, str]]:
        """[(version, suite)] of the ``qemu`` source package in our lists."""
        out = self.cache("madison", SOURCE_PACKAGE)
        found = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3 or parts[0] != SOURCE_PACKAGE:
                continue
            where = parts[2].split()   # "<uri> <suite>/main Sources"
            if where and where[-1] == "Sources" and len(where) >= 2:
                found.append((parts[1], where[1].split("/")[0]))
        return found


def choose_source(version: str, found: list[tuple[str, str]], prefer: str = "") -> str:
    """The source version to fetch: ``prefer`` (the source of the fetched binaries, when the
    origin's suites have it), else the newest one there whose upstream part is ``version``."""
    suites = SOURCE_ORIGINS[version].suites
    upstream = re.compile(rf"^{re.escape(version)}(?:[.+~]|$)")
    matching = [v for v, s in found
                if s in suites and upstream.match(v.split(":", 1)[-1].rsplit("-", 1)[0])]
    if not matching:
        seen = ", ".join(f"{v} ({s})" for v, s in found) or "none"
        raise FetchError(f"no QEMU {version} source package in {'/'.join(suites)} "
                         f"(archive has: {seen})")
    if prefer in matching:
        return prefer
    return qemufetch._newest(matching)


def _binary_source_version(version: str) -> str:
    """The source version the fetched ``version`` binaries were built from ("" if none): the
    binary package's version without a binNMU suffix (``+b3``)."""
    if version not in qemufetch.KNOWN_VERSIONS:
        return ""
    inst = qemufetch.installed(version)
    return re.sub(r"\+b\d+$", "", inst.package_version) if inst is not None else ""


def _unpack(dsc: Path, into: Path) -> None:
    """``dpkg-source -x`` (checks the files against the .dsc, applies Debian's patches);
    without dpkg-dev, the same by hand: the orig tarball, the debian tarball and the quilt
    series applied with ``patch -p1``."""
    if shutil.which("dpkg-source"):
        qemufetch._run(["dpkg-source", "--no-check", "-x", str(dsc), str(into)],
                       cwd=dsc.parent, what="dpkg-source -x")
        return
    dl = dsc.parent
    orig = sorted(dl.glob("*.orig.tar.*"))
    deb = sorted(dl.glob("*.debian.tar.*"))
    if len(orig) != 1 or len(deb) != 1:
        raise FetchError(f"{dl}: expected one orig and one debian tarball")
    into.mkdir()
    qemufetch._run(["tar", "-xf", str(orig[0]), "-C", str(into), "--strip-components=1"])
    qemufetch._run(["tar", "-xf", str(deb[0]), "-C", str(into)])
    series = into / "debian" / "patches" / "series"
    if series.is_file():
        for line in series.read_text().splitlines():
            name = line.split("#", 1)[0].strip().split()
            if name:
                qemufetch._run(["patch", "-p1", "-s", "-i", str(into / "debian/patches" / name[0])],
                               cwd=into, what=f"patch {name[0]}")


def fetch_source(version: str, *, force: bool = False,
                 log: Callable[[str], None] = qemufetch._stderr_log) -> SourceTree:
    """Make sure the source tree of ``version`` is fetched and unpacked; return it.

    Idempotent (a complete tree is returned at once; ``force`` fetches again). Needs network
    access to the Debian archive and apt-get on the host; dpkg-source if present.
    """
    _check(version)
    if not force and (st := source_installed(version)) is not None:
        return st
    base = src_dir()
    with qemufetch._locked(base):
        if not force and (st := source_installed(version)) is not None:
            return st
        started = time.monotonic()
        arch, _, _ = qemufetch._host_arch()
        origin = SOURCE_ORIGINS[version]
        apt = _SourceApt(qemufetch.qemu_dir() / "apt" / f"{origin.release}-src", arch, origin)
        staging = base / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        dl = staging / "dl"
        dl.mkdir(parents=True)
        log(f"updating the private source lists ({apt.directory})")
        try:
            apt.update()
            pkg = choose_source(version, apt.source_versions(), _binary_source_version(version))
            log(f"QEMU {version} source: {SOURCE_PACKAGE} {pkg}, downloading")
            apt.get("source", "--download-only", "--only-source", f"{SOURCE_PACKAGE}={pkg}",
                    cwd=dl)
        finally:
            apt.drop_caches()
        dscs = sorted(dl.glob("*.dsc"))
        if len(dscs) != 1:
            raise FetchError(f"apt-get source left {len(dscs)} .dsc files in {dl}")
        log(f"unpacking {dscs[0].name}")
        _unpack(dscs[0], staging / "tree")
        upstream = (staging / "tree" / "VERSION").read_text().strip()
        if not re.match(rf"{re.escape(version)}(\.|$)", upstream):
            raise FetchError(f"the unpacked tree says VERSION {upstream!r}, expected {version}")
        if not (staging / "tree" / "tests" / "qemu-iotests" / "check").is_file():
            raise FetchError("the unpacked tree has no tests/qemu-iotests/check")
        manifest = {
            "blockfuzz-qemu-source": _MANIFEST_FORMAT,
            "version": version,
            "package": SOURCE_PACKAGE,
            "package-version": pkg,
            "upstream-version": upstream,
            "debian": {"release": origin.release, "suites": list(origin.suites)},
            "files": {p.name: p.stat().st_size for p in sorted(dl.iterdir()) if p.is_file()},
            "fetched-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        final = base / version
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        log(f"QEMU {version} source ready in {time.monotonic() - started:.0f}s: {upstream}")
    st = source_installed(version)
    if st is None:   # pragma: no cover - only if the tree vanished under us
        raise FetchError(f"the QEMU {version} source disappeared from {base}")
    return st


# -- command line ---------------------------------------------------------------------------

def add_source_parser(qemu_actions) -> None:
    """``qemu source VERSION [--force]`` on the ``qemu`` command's sub-parsers."""
    p = qemu_actions.add_parser(
        "source", help="download Debian's QEMU source package into .qemu/src/ and print the tree",
        description="Fetch and unpack Debian's source package of a QEMU version (upstream "
        "tarball plus Debian's patches) into $BLOCKFUZZ_QEMU_DIR/src/<version>/tree, with a "
        "private apt directory. Does nothing if already complete.")
    p.add_argument("version", metavar="|".join(SOURCE_ORIGINS))
    p.add_argument("--force", action="store_true", help="fetch again even if complete")
    p.set_defaults(handler=_source_command)


def _source_command(args) -> int:

    try:
        _check(args.version)
        st = fetch_source(args.version, force=args.force)
    except QemuNotFound as e:
        raise CliError(str(e), 2) from None
    except (FetchError, OSError) as e:
        raise CliError(f"fetching the QEMU {args.version} source failed: {e}", 2) from None
    print(st.tree)
    return 0


if __name__ == "__main__":   # python -m fuzz.qemusource VERSION
    st = fetch_source(sys.argv[1] if len(sys.argv) > 1 else "10.0")
    print(st.tree)
