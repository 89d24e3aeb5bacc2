"""QEMU built from source, for sanitizer and coverage campaigns: ``blockfuzz qemu build``.

    $ blockfuzz qemu build 10.2 --asan          # Debian's 10.2.2 source, ASan + UBSan (~9 min)
    /work/main/.qemu/10.2-asan/bin/qemu-system-x86_64
    $ blockfuzz run --qemu 10.2-asan --time 600
    $ blockfuzz qemu build 10.2 --gcov           # gcov instrumentation: `run --coverage`
    $ blockfuzz qemu build 10.2 --asan --patch fix.patch     # a candidate fix, verified
    $ blockfuzz qemu build --src ~/qemu --asan   # a developer's own checkout (out of tree)

A build lands in ``$BLOCKFUZZ_QEMU_DIR/<name>/`` (default ``.qemu/``) and is then used like a
fetched QEMU: ``blockfuzz qemu list`` shows it, ``--qemu <name>`` (or the path of its
``bin/qemu-system-x86_64``) selects it, and the version profile comes from ``query-version``
as for any build.  Layout::

    .qemu/<name>/build/          meson/ninja build directory (gcov's .gcno files live here)
    .qemu/<name>/src/            the patched copy of the source (only with --patch)
    .qemu/<name>/bin/            qemu-system-x86_64, qemu-img, qemu-io (symlinks into build/)
    .qemu/<name>/share/seabios   the BIOS for -M pc (the +ds tarball has no firmware blobs:
                                 copied from a fetched tree's Debian seabios)
    .qemu/<name>/share/qemu      QEMU's own data files the build made (option ROMs)
    .qemu/<name>/build.log       configure and ninja output
    .qemu/<name>/manifest.json   written last: source version, configure line, patches,
                                 duration; its presence means "complete"

Sources: ``VERSION`` is one of :data:`fuzz.qemusource.SOURCE_ORIGINS` (Debian's source
package, fetched with ``blockfuzz qemu source``), or ``--src DIR`` (any QEMU checkout, built
out of tree; its ``git describe`` goes into the manifest; a rebuild of the same name runs
ninja again, so an edited checkout is rebuilt incrementally).

Configurations (QEMU's own configure options, the line is in the manifest):

* default: ``--target-list=x86_64-softmmu --enable-tools --disable-docs --disable-user
  --disable-install-blobs --disable-werror`` (all default devices: ``-M pc`` with virtio-scsi
  and scsi-hd works);
* ``--minimal``: also ``--without-default-devices``, which leaves only ``-M none`` (~3.5 min
  here instead of ~5);
* ``--asan``: ``--enable-asan --enable-ubsan``; ``--gcov``: ``--enable-gcov``.

Build dependencies (``make build-deps`` installs them): from Debian libglib2.0-dev,
libpixman-1-dev, libfdt-dev, device-tree-compiler, flex, bison, ninja-build and gcc; from PyPI
meson >= 1.5 and pycotap (the ``build`` extra, in the venv: configure runs with its Python, as
the ``+ds`` tarball strips QEMU's bundled wheels).  The ``+ds`` tarball also strips the
``pc-bios/edk2-*.fd.bz2`` blobs that meson insists on; an x86 build for ``-M none``/``-M pc``
with seabios never loads them, so a patched copy or the build directory gets empty
placeholders (never the fetched source tree itself).

Serialised by an flock on ``.qemu/.build.lock``; an interrupted build has no manifest and is
started again from scratch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import attrs

from fuzz import qemufetch
from fuzz.errors import CliError, FetchError, QemuNotFound

__all__ = ["Build", "BuildSpec", "build", "installed_builds", "build_installed",
           "add_build_parser", "BuildError"]

_MANIFEST = "manifest.json"
_MANIFEST_FORMAT = 1
_PROGRAMS = ("qemu-system-x86_64", "qemu-img", "qemu-io")
_BASE_CONFIGURE = ("--target-list=x86_64-softmmu", "--enable-tools", "--disable-docs",
                   "--disable-user", "--disable-install-blobs", "--disable-werror")
# what a fresh machine lacks most often, with the Debian package that has it
_PKGCONFIG_DEPS = {"glib-2.0": "libglib2.0-dev", "pixman-1": "libpixman-1-dev"}
# bookworm's libfdt-dev has no .pc file (QEMU's meson finds the library by hand)
_HEADER_DEPS = {"libfdt.h": "libfdt-dev"}
_TOOL_DEPS = {"flex": "flex", "bison": "bison", "dtc": "device-tree-compiler",
              "ninja": "ninja-build", "cc": "gcc", "pkg-config": "pkg-config"}


class BuildError(FetchError):
    """A build that could not be made (configure, ninja, a patch that does not apply)."""


@attrs.frozen
class BuildSpec:
    """What to build: a Debian source ``version`` or a checkout ``src``, and how."""

    version: str | None = None
    src: Path | None = None
    asan: bool = False
    gcov: bool = False
    minimal: bool = False
    patches: tuple[Path, ...] = ()
    name: str | None = None

    def configure_args(self) -> list[str]:
        args = list(_BASE_CONFIGURE)
        if self.minimal:
            args.append("--without-default-devices")
        if self.asan:
            args += ["--enable-asan", "--enable-ubsan"]
        if self.gcov:
            args.append("--enable-gcov")
        return args

    def patch_digest(self) -> str:
        h = hashlib.sha256()
        for p in self.patches:
            h.update(p.read_bytes())
        return h.hexdigest()[:8]

    def default_name(self) -> str:
        if self.src is not None:
            base = "src-" + re.sub(r"[^\w.+-]", "_", self.src.resolve().name or "qemu")
        else:
            assert self.version is not None
            base = self.version
        flags = [f for f, on in (("min", self.minimal), ("asan", self.asan),
                                 ("gcov", self.gcov)) if on]
        if self.patches:
            flags.append("p" + self.patch_digest())
        if not flags and base in qemufetch.KNOWN_VERSIONS:
            flags = ["src"]   # never the name of a fetched tree
        return "-".join([base, *flags])


@attrs.frozen
class Build:
    """A complete build, as its manifest describes it."""

    name: str
    directory: Path
    qemu_version: str          # "10.2.2" (the source's VERSION)
    source: dict               # {"kind": "debian", ...} or {"kind": "checkout", ...}
    configure: tuple[str, ...]
    asan: bool
    gcov: bool
    minimal: bool
    patches: tuple[dict, ...]  # [{"file": ..., "sha256": ...}]

    def binary(self, which: str = "qemu-system-x86_64") -> Path:
        return self.directory / "bin" / which

    @property
    def build_dir(self) -> Path:
        return self.directory / "build"

    @property
    def source_dir(self) -> Path:
        return Path(self.source["tree"])

    def describe(self) -> str:
        """One line for ``qemu list`` and for finding reports: the exact build."""
        src = self.source
        what = (f"Debian {src.get('package-version', '?')}" if src.get("kind") == "debian"
                else f"{src.get('tree')} {src.get('git', '')}".strip())
        flags = [f for f, on in (("minimal", self.minimal), ("asan+ubsan", self.asan),
                                 ("gcov", self.gcov)) if on]
        flags += [f"patch {Path(p['file']).name}" for p in self.patches]
        return f"QEMU {self.qemu_version} from {what}" + (f" ({', '.join(flags)})" if flags else "")


def _read(directory: Path) -> Build | None:
    try:
        data = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("blockfuzz-qemu-build") != _MANIFEST_FORMAT:
        return None
    try:
        b = Build(name=data["name"], directory=directory, qemu_version=data["qemu-version"],
                  source=dict(data["source"]), configure=tuple(data["configure"]),
                  asan=bool(data["asan"]), gcov=bool(data["gcov"]),
                  minimal=bool(data["minimal"]), patches=tuple(data["patches"]))
    except (KeyError, TypeError, ValueError):
        return None
    if b.name != directory.name:
        return None   # moved: the build directory's absolute paths no longer hold
    if not all(os.access(b.binary(p), os.X_OK) for p in _PROGRAMS):
        return None
    return b


def build_installed(name: str) -> Build | None:
    """The complete build called ``name``, or None."""
    if not name or "/" in name or name.startswith("."):
        return None
    return _read(qemufetch.qemu_dir() / name)


def installed_builds() -> list[Build]:
    """Every complete build under ``.qemu/``, by name."""
    base = qemufetch.qemu_dir()
    if not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and (d / _MANIFEST).is_file() and (b := _read(d)) is not None:
            out.append(b)
    return out


def build_of(system: str | os.PathLike) -> Build | None:
    """The build ``system`` (a qemu-system-x86_64 path) belongs to, or None."""
    try:
        path = Path(system).absolute()
    except (TypeError, ValueError):
        return None
    for cand in dict.fromkeys((path, path.resolve())):
        for parent in list(cand.parents)[:3]:   # <name>/bin/x or <name>/build/x
            if (parent / _MANIFEST).is_file() and (b := _read(parent)) is not None:
                return b
    return None


def describe_qemu(system: str | os.PathLike) -> str:
    """One line naming the exact QEMU ``system`` is: a build's source, configure options and
    patches; a fetched tree's Debian package; else the path ("" if there is none)."""
    if not system:
        return ""
    b = build_of(system)
    if b is not None:
        return f"{b.describe()}: {b.binary()}"
    for v in qemufetch.KNOWN_VERSIONS:
        try:
            inst = qemufetch.installed(v)
        except (OSError, ValueError):
            continue
        if inst is not None and Path(system).absolute() == inst.binary("system"):
            return f"QEMU {v} from Debian qemu-system-x86 {inst.package_version}: {system}"
    return str(system)


# -- dependencies -------------------------------------------------------------------------------

def _venv_python() -> str:
    """The Python configure runs with: this one (the venv's), which must have meson >= 1.5 and
    pycotap (the ``build`` extra)."""
    return sys.executable


def missing_dependencies() -> list[str]:
    """What the build needs and this machine lacks, as Debian/PyPI package names."""
    missing = [pkg for tool, pkg in _TOOL_DEPS.items() if shutil.which(tool) is None]
    if shutil.which("pkg-config"):
        for mod, pkg in _PKGCONFIG_DEPS.items():
            if subprocess.run(["pkg-config", "--exists", mod]).returncode != 0:
                missing.append(pkg)
    for header, pkg in _HEADER_DEPS.items():
        if not any((Path(d) / header).is_file() for d in ("/usr/include", "/usr/local/include")):
            missing.append(pkg)
    try:
        import mesonbuild.coredata as md   # type: ignore[import-not-found]
        if tuple(int(x) for x in re.findall(r"\d+", md.version)[:2]) < (1, 5):
            missing.append("meson>=1.5 (PyPI)")
    except ImportError:
        missing.append("meson>=1.5 (PyPI)")
    try:
        import pycotap  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        missing.append("pycotap (PyPI)")
    return missing


# -- the build ----------------------------------------------------------------------------------

def _log_run(argv: list[str], log, cwd: Path, what: str, env: dict | None = None) -> None:
    log.write(f"\n$ {' '.join(argv)}   (in {cwd})\n")
    log.flush()
    try:
        # its own process group, so that a stop takes configure's or ninja's compilers too
        p = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
                             preexec_fn=lambda: os.nice(5), start_new_session=True)
    except OSError as e:
        raise BuildError(f"{what}: {e}") from None
    try:
        rc = p.wait()
    except BaseException:   # Ctrl-C or SIGTERM (_build_command): no compiler left running
        _kill_group(p)
        raise
    if rc != 0:
        raise BuildError(f"{what} failed (exit {rc}); see {log.name}")


def _kill_group(p: subprocess.Popen) -> None:
    import signal
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _copy_firmware(into: Path, build_dir: Path) -> None:
    """share/seabios from a fetched tree (Debian's seabios; fetched if none is), share/qemu
    with the option ROMs the build made."""
    seabios = into / "share" / "seabios"
    seabios.mkdir(parents=True, exist_ok=True)
    src = None
    for v in (qemufetch.DEFAULT_VERSION, *qemufetch.KNOWN_VERSIONS):
        inst = qemufetch.installed(v)
        if inst is not None and (inst.directory / "share" / "seabios").is_dir():
            src = (inst.directory / "share" / "seabios").resolve()
            break
    if src is None:
        inst = qemufetch.fetch(qemufetch.DEFAULT_VERSION)
        src = (inst.directory / "share" / "seabios").resolve()
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, seabios / f.name)
    data = into / "share" / "qemu"
    data.mkdir(parents=True, exist_ok=True)
    for f in (build_dir / "pc-bios").rglob("*.bin"):
        if f.is_file() and f.stat().st_size > 0:
            shutil.copy2(f, data / f.name)


def _missing_blobs(tree: Path) -> list[Path]:
    """The ``pc-bios/edk2-*.fd.bz2`` that pc-bios/meson.build names and the tree lacks (the
    ``+ds`` tarball strips them)."""
    mb = tree / "pc-bios" / "meson.build"
    text = mb.read_text() if mb.is_file() else ""
    blobs = (tree / "pc-bios" / f"{n}.bz2" for n in sorted(set(re.findall(r"'(edk2-[\w.-]+\.fd)'", text))))
    return [b for b in blobs if not b.exists()]


def build(spec: BuildSpec, *, force: bool = False,
          log: Callable[[str], None] = qemufetch._stderr_log) -> Build:
    """Build (or look up) the QEMU ``spec`` describes; return it. Raises :class:`BuildError`
    (a failed step, with the log's path), :class:`FetchError` or :class:`QemuNotFound`."""
    if (spec.version is None) == (spec.src is None):
        raise QemuNotFound("give a VERSION or --src DIR (one of them)")
    for p in spec.patches:
        if not p.is_file():
            raise QemuNotFound(f"--patch {p}: no such file")
    if spec.src is not None and not (spec.src / "VERSION").is_file():
        raise QemuNotFound(f"--src {spec.src}: not a QEMU source tree (no VERSION file)")
    name = spec.name or spec.default_name()
    if not re.fullmatch(r"[\w][\w.+-]*", name) or name in qemufetch.KNOWN_VERSIONS \
            or name in ("src", "apt", "tools"):
        raise QemuNotFound(f"--name {name!r}: not a usable build name")
    base = qemufetch.qemu_dir()
    directory = base / name
    if not force and spec.src is None and (b := _read(directory)) is not None:
        return b
    missing = missing_dependencies()
    if missing:
        raise QemuNotFound("missing build dependencies: " + ", ".join(missing)
                           + " (run `make build-deps`)")
    base.mkdir(parents=True, exist_ok=True)
    with qemufetch._locked(base):
        previous = _read(directory)
        if not force and spec.src is None and previous is not None:
            return previous
        started = time.monotonic()
        if spec.src is not None:
            tree = spec.src.resolve()
            upstream = (tree / "VERSION").read_text().strip()
            git = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"],
                                 capture_output=True, text=True)
            source = {"kind": "checkout", "tree": str(tree),
                      "git": git.stdout.strip() if git.returncode == 0 else ""}
        else:
            from fuzz.qemusource import fetch_source
            assert spec.version is not None
            st = fetch_source(spec.version, log=log)
            tree, upstream = st.tree, st.upstream_version
            source = {"kind": "debian", "version": spec.version, "tree": str(tree),
                      "package-version": st.package_version}
        incremental = spec.src is not None and previous is not None and not force \
            and list(previous.configure[1:-1]) == spec.configure_args() \
            and (directory / "build" / "build.ninja").is_file()
        if not incremental:
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _MANIFEST).unlink(missing_ok=True)
        build_dir = directory / "build"
        build_dir.mkdir(exist_ok=True)
        with open(directory / "build.log", "a") as out:
            if spec.patches or (spec.src is None and _missing_blobs(tree)):
                # never edit the fetched tree itself: patch (and fill in) a copy
                if not incremental:
                    log(f"copying {tree} to {directory / 'src'}")
                    shutil.copytree(tree, directory / "src", symlinks=True,
                                    ignore=shutil.ignore_patterns("build"))
                    for p in spec.patches:
                        log(f"applying {p}")
                        _log_run(["patch", "-p1", "--forward", "--batch", "-i", str(p.resolve())],
                                 out, directory / "src", f"patch {p}")
                    made = _missing_blobs(directory / "src")
                    for blob in made:
                        blob.touch()   # an x86 build for -M none / -M pc never loads them
                    if made:
                        log(f"empty placeholders for {len(made)} stripped edk2 blobs")
                tree = directory / "src"
                source["patched-tree"] = str(tree)
            configure = [str(tree / "configure"), *spec.configure_args(),
                         f"--python={_venv_python()}"]
            if not incremental:
                log(f"configuring: {' '.join(configure[1:])}")
                _log_run(configure, out, build_dir, "configure")
            jobs = str(os.cpu_count() or 2)
            log(f"building qemu-system-x86_64, qemu-img, qemu-io (ninja -j{jobs}; "
                f"log: {directory / 'build.log'})")
            _log_run(["ninja", "-j", jobs, *_PROGRAMS], out, build_dir, "ninja")
        bindir = directory / "bin"
        bindir.mkdir(exist_ok=True)
        for prog in _PROGRAMS:
            link = bindir / prog
            link.unlink(missing_ok=True)
            link.symlink_to(Path("..") / "build" / prog)
        _copy_firmware(directory, build_dir)
        patches = [{"file": str(p.resolve()),
                    "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in spec.patches]
        manifest = {
            "blockfuzz-qemu-build": _MANIFEST_FORMAT,
            "name": name,
            "qemu-version": upstream,
            "source": source,
            "configure": configure,
            "asan": spec.asan, "gcov": spec.gcov, "minimal": spec.minimal,
            "patches": patches,
            "built-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration-s": round(time.monotonic() - started, 1),
        }
        tmp = directory / (_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(directory / _MANIFEST)
        log(f"QEMU {upstream} built as {name} in {time.monotonic() - started:.0f}s")
    b = _read(directory)
    if b is None:   # pragma: no cover - only if the tree vanished under us
        raise BuildError(f"the build {name} is not complete after building it")
    return b


# -- command line ---------------------------------------------------------------------------

def add_build_parser(qemu_actions) -> None:
    """``qemu build VERSION|--src DIR [--asan] [--gcov] [--minimal] [--patch F]...``."""
    from fuzz.qemusource import SOURCE_ORIGINS
    p = qemu_actions.add_parser(
        "build", help="build QEMU from source into .qemu/<name>/ (ASan, gcov, patches, "
        "your own checkout); prints its qemu-system-x86_64",
        description="Build qemu-system-x86_64, qemu-img and qemu-io from Debian's source "
        "package of VERSION (or from --src DIR) into $BLOCKFUZZ_QEMU_DIR/<name>/, usable as "
        "--qemu <name>. A complete build of the same name is reused.")
    p.add_argument("version", nargs="?", metavar="|".join(SOURCE_ORIGINS))
    p.add_argument("--src", type=Path, metavar="DIR", help="a QEMU checkout to build out of tree")
    p.add_argument("--asan", action="store_true", help="--enable-asan --enable-ubsan")
    p.add_argument("--gcov", action="store_true", help="--enable-gcov (for run --coverage)")
    p.add_argument("--minimal", action="store_true",
                   help="--without-default-devices: -M none only, quicker")
    p.add_argument("--patch", type=Path, action="append", default=[], metavar="FILE",
                   help="apply FILE with patch -p1 first (repeatable)")
    p.add_argument("--name", help="the build's name (default: from version and options)")
    p.add_argument("--force", action="store_true", help="build again even if complete")
    p.set_defaults(handler=_build_command)


def _build_command(args) -> int:
    from fuzz.qemusource import SOURCE_ORIGINS
    if args.version is not None and args.version not in SOURCE_ORIGINS:
        raise CliError(f"no QEMU source known for {args.version!r} (known: "
                       f"{', '.join(SOURCE_ORIGINS)}; or --src DIR)", 2)
    spec = BuildSpec(version=args.version, src=args.src, asan=args.asan, gcov=args.gcov,
                     minimal=args.minimal, patches=tuple(args.patch), name=args.name)
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        b = build(spec, force=args.force)
    except QemuNotFound as e:
        raise CliError(str(e), 2) from None
    except (FetchError, OSError) as e:
        raise CliError(f"building QEMU failed: {e}", 2) from None
    except KeyboardInterrupt:
        # no manifest: the next `qemu build` of this name starts again from scratch
        raise CliError("build stopped; it is incomplete and will be built again next time",
                       2) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(b.binary())
    return 0
