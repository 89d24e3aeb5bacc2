"""Fetch the helper programs blockfuzz runs besides QEMU: Graphviz's ``dot``, which draws the
block graphs of ``report.html`` (``fuzz.report``), and ``redis-server``, which the tests run as
a real shared example database (``fuzz.database``, ``--database redis://...``).

Like QEMU (``fuzz.qemufetch``), each comes from Debian's packages (bookworm's ``graphviz`` and
``redis-server``, each with every package apt says it needs, the C library and its loader
included), fetched with the same private apt directory (``.qemu/apt/bookworm``) and unpacked
into the checkout; nothing is installed on the system::

    $ python -m fuzz.toolfetch fetch graphviz     # ~10 MB, a few seconds; prints bin/dot
    /work/main/.qemu/tools/graphviz/bin/dot
    $ python -m fuzz.toolfetch fetch redis        # prints bin/redis-server
    $ python -m fuzz.toolfetch path graphviz      # exit 1 if not fetched

Layout (under ``$BLOCKFUZZ_QEMU_DIR``, default ``<checkout>/.qemu``)::

    tools/graphviz/bin/dot        the program to run: a sh wrapper exec'ing the tree's loader
    tools/graphviz/plugins/       GVBINDIR: the two plugins used (core: svg and dot output;
                                  dot_layout) and the config that ``dot -c`` wrote for them
                                  (Debian's build calls it config6a)
    tools/graphviz/root/          every .deb unpacked with ``dpkg -x`` (the .debs are deleted)
    tools/graphviz/manifest.json  written last: its presence means "complete"
    tools/redis/bin/redis-server  the same for Redis (no plugins; apt's plan for redis-server
                                  also brings adduser's and init-system-helpers' perl, unused
                                  but kept so the tree is exactly what Debian installs)

Graphviz finds its plugins through a config file (``config6``, ``config6a`` in Debian) in its plugin directory, which
``dot -c`` writes; the wrapper points ``GVBINDIR`` at ``plugins/``, which holds only the core
and dot-layout plugins: no cairo/pango text layout, so no fontconfig reading the host's
``/etc/fonts``, and the same SVG on every machine (text widths from Graphviz's built-in font
metrics).  The config is written (and ``dot -Tsvg`` tried) once the tree is in its final
place, before the manifest.

:func:`find_dot` is what the report uses: ``$BLOCKFUZZ_DOT`` > the fetched tree > ``dot`` in
``$PATH`` > None.  :func:`redis_server_path` is what the tests use: the fetched tree only (a
host's redis-server of another version would make the tests depend on the machine).

Every tool is tried once unpacked, before the manifest is written: ``dot -Tsvg`` renders a
graph; ``redis-server`` starts on a private unix socket and answers PING.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import attrs

from . import qemufetch as Q
from .errors import ToolNotFetched

__all__ = ["TOOLS", "Tool", "ToolInstallation", "ToolNotFetched", "fetch", "find_dot", "installed",
           "redis_server_path", "tools_dir"]


@attrs.frozen
class Tool:
    """A program fetched from Debian packages into ``tools/<name>``."""

    name: str
    source: Q.Source        # the Debian release and the suites its package may come from
    package: str            # the root package, its dependencies come with it
    program: str            # relative to root/, the real binary
    plugins: tuple = ()     # Graphviz plugins (file names in the package's plugin dir) to enable


TOOLS = {
    "graphviz": Tool(
        "graphviz",
        Q.Source("bookworm", ("bookworm", "bookworm-updates", "bookworm-security")),
        "graphviz",
        "usr/bin/dot",
        plugins=("libgvplugin_core.so.6", "libgvplugin_dot_layout.so.6"),
    ),
    # redis-server is a symlink to redis-check-rdb (redis-tools), one binary that picks its
    # role from argv[0]; the wrapper runs the symlink, so argv[0] says redis-server.
    "redis": Tool(
        "redis",
        Q.Source("bookworm", ("bookworm", "bookworm-updates", "bookworm-security")),
        "redis-server",
        "usr/bin/redis-server",
    ),
}


_MANIFEST = "manifest.json"
_FORMAT = 1


def tools_dir() -> Path:
    return Q.qemu_dir() / "tools"


@attrs.frozen
class ToolInstallation:
    tool: Tool
    directory: Path
    loader: str
    library_path: tuple
    packages: dict
    version: str            # e.g. "dot - graphviz version 2.42.2 (0)"

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def binary(self) -> Path:
        return self.directory / "bin" / Path(self.tool.program).name

    @property
    def plugin_dir(self) -> Path:
        return self.directory / "plugins"


def _wrapper_text(directory: Path, tool: Tool, loader: str, library_path) -> str:
    root = directory / "root"
    q = lambda p: shlex.quote(os.fspath(p))  # noqa: E731
    lib = ":".join(os.fspath(root / d) for d in library_path)
    # Only Graphviz has plugins; its wrapper text must not change (installed() compares it).
    plugin_env = f"GVBINDIR={q(directory / 'plugins')}\nexport GVBINDIR\n" if tool.plugins else ""
    return (
        "#!/bin/sh\n"
        f"# {tool.name} run with its own C library (written by blockfuzz, fuzz/toolfetch.py)\n"
        + plugin_env
        + f"exec {q(root / loader)} --library-path {q(lib)} {q(root / tool.program)} \"$@\"\n"
    )


def installed(name: str = "graphviz") -> ToolInstallation | None:
    """The complete fetched tree of tool ``name``, or None."""
    tool = TOOLS[name]
    directory = tools_dir() / name
    try:
        data = json.loads((directory / _MANIFEST).read_text())
        if data.get("blockfuzz-tool") != _FORMAT or data.get("name") != name:
            return None
        inst = ToolInstallation(tool, directory, data["loader"], tuple(data["library-path"]),
                                dict(data["packages"]), data["version"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        if inst.binary.read_text() != _wrapper_text(directory, tool, inst.loader, inst.library_path):
            return None  # edited, or the tree was moved (absolute paths inside)
    except (OSError, UnicodeDecodeError):
        return None
    # resolve(): the program may be a symlink (redis-server), which must stay inside the tree.
    program = (inst.root / tool.program).resolve()
    if not (os.access(inst.binary, os.X_OK) and program.is_file()
            and program.is_relative_to(inst.root.resolve())
            and (not tool.plugins or any(inst.plugin_dir.glob("config6*")))):
        return None
    return inst


def find_dot() -> str | None:
    """The ``dot`` to run: ``$BLOCKFUZZ_DOT``, else the fetched tree's, else ``dot`` in $PATH."""
    env = os.environ.get("BLOCKFUZZ_DOT")
    if env:
        return env
    inst = installed("graphviz")
    if inst is not None:
        return str(inst.binary)
    return shutil.which("dot")


def redis_server_path() -> Path:
    """The fetched ``redis-server`` wrapper; :class:`ToolNotFetched` if there is none."""
    inst = installed("redis")
    if inst is None:
        raise ToolNotFetched(
            f"redis-server is not fetched into {tools_dir() / 'redis'}: run `make tools`"
            " (or `python -m fuzz.toolfetch fetch redis`)")
    return inst.binary


def _log(message: str) -> None:
    print(f"blockfuzz: {message}", file=sys.stderr, flush=True)


def _newest_in(builds: list[tuple[str, str]], suites: tuple) -> str | None:
    matching = [v for v, suite in builds if suite in suites]
    return Q._newest(matching) if matching else None


def fetch(name: str = "graphviz", *, force: bool = False,
          log: Callable[[str], None] = _log) -> ToolInstallation:
    """Make sure tool ``name`` is fetched, unpacked and working; return it.  Idempotent.
    Raises ``qemufetch.FetchError`` (one line) on failure."""
    tool = TOOLS[name]
    if not force and (inst := installed(name)) is not None:
        return inst
    base = Q.qemu_dir()
    if ":" in os.fspath(base):
        raise Q.FetchError(f"{base}: the QEMU directory must not contain ':'")
    # The same lock as QEMU's fetches: the private apt directory of the release is shared.
    with Q._locked(base):
        if not force and (inst := installed(name)) is not None:
            return inst
        started = time.monotonic()
        arch, triplet, loader_name = Q._host_arch()
        apt = Q._Apt(base / "apt" / tool.source.release, arch, tool.source)
        tools = tools_dir()
        tools.mkdir(parents=True, exist_ok=True)
        staging = tools / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        debs, root = staging / "debs", staging / "root"
        debs.mkdir(parents=True)
        log(f"updating the private package lists ({apt.directory})")
        try:
            apt.update()
            version = _newest_in(apt.versions([tool.package])[tool.package], tool.source.suites)
            if version is None:
                raise Q.FetchError(f"no {tool.package} in {'/'.join(tool.source.suites)}")
            pins = {tool.package: version}
            plan = apt.plan(pins)
            log(f"{tool.package} {version}: downloading {len(plan)} packages")
            apt.download(pins, debs)
        finally:
            apt.drop_caches()
        files = sorted(debs.glob("*.deb"))
        got = {}
        for deb in files:
            fields = Q._run(["dpkg-deb", "-f", str(deb), "Package", "Version"])
            info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
            got[info["Package"]] = info["Version"]
        if got != plan:
            wrong = sorted(set(got.items()) ^ set(plan.items()))
            raise Q.FetchError(f"apt-get download: not the planned package set, differences: {wrong}")
        root.mkdir()
        for deb in files:
            Q._run(["dpkg", "-x", str(deb), str(root)])
        shutil.rmtree(debs)  # ~30 MB that only a re-fetch would read
        loader = Q._find_loader(root, triplet, loader_name)
        program = root / tool.program
        if not program.resolve().is_relative_to(root.resolve()) or not program.resolve().is_file():
            raise Q.FetchError(f"{tool.program} is missing from the unpacked {tool.package}"
                               " (or is a link leaving the tree)")
        plugin_src = root / "usr/lib" / triplet / "graphviz"
        plugins = staging / "plugins"
        plugins.mkdir()
        for plugin in tool.plugins:
            if not (plugin_src / plugin).is_file():
                raise Q.FetchError(f"{plugin} is missing from the unpacked {tool.package}")
            # relative, so the link survives the rename
            (plugins / plugin).symlink_to(Path("..", "root", "usr/lib", triplet, "graphviz", plugin))
        library_path = _library_path(root, triplet, loader,
                                     [root / tool.program, *(plugin_src / p for p in tool.plugins)])
        final = tools / name
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        wrapper = final / "bin" / Path(tool.program).name
        wrapper.parent.mkdir()
        wrapper.write_text(_wrapper_text(final, tool, loader, library_path))
        wrapper.chmod(0o755)
        banner = _CHECKS[name](wrapper)
        manifest = {
            "blockfuzz-tool": _FORMAT,
            "name": name,
            "version": banner,
            "debian": {"release": tool.source.release, "suites": list(tool.source.suites)},
            "loader": loader,
            "library-path": library_path,
            "packages": got,
            "fetched-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = final / (_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, final / _MANIFEST)
        log(f"{name} ready in {time.monotonic() - started:.0f}s ({len(got)} packages): {banner}")
    inst = installed(name)
    if inst is None:  # pragma: no cover
        raise Q.FetchError(f"{name} disappeared from {tools_dir()} right after fetching")
    return inst


def _library_path(root: Path, triplet: str, loader: str, targets: list[Path]) -> list[str]:
    """The --library-path (relative to root) under which ``targets`` load with every library a
    file of the tree (the loader would quietly fall back to the host's)."""
    path = [d for d in (f"usr/lib/{triplet}", f"lib/{triplet}") if (root / d).is_dir()]
    real_root = root.resolve()
    for target in targets:
        loaded, missing = Q._list_libraries(root, loader, path, target)
        if missing:
            raise Q.FetchError(f"{target.relative_to(root)} needs {missing}: no fetched package provides it")
        for soname, file in loaded.items():
            if not Path(file).resolve().is_relative_to(real_root):
                raise Q.FetchError(f"{target.relative_to(root)} loads {soname} from the host ({file})")
    return path


def _check_dot(wrapper: Path) -> str:
    """Write the plugin config (``dot -c``) and check that ``dot -Tsvg`` works; the banner."""
    env = Q._clean_env()
    for argv in ([str(wrapper), "-c"],):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=60)
        if proc.returncode != 0:
            raise Q.FetchError(f"dot -c: {(proc.stderr.strip().splitlines() or ['failed'])[0]}")
    proc = subprocess.run([str(wrapper), "-Tsvg"], input="digraph { a -> b [label=x] }",
                          capture_output=True, text=True, env=env, timeout=60)
    if proc.returncode != 0 or "<svg" not in proc.stdout or proc.stderr.strip():
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise Q.FetchError(f"the fetched dot cannot render SVG: {detail}")
    proc = subprocess.run([str(wrapper), "-V"], capture_output=True, text=True, env=env, timeout=60)
    return (proc.stderr.strip().splitlines() or ["dot"])[0]


def _check_redis(wrapper: Path) -> str:
    """Start the fetched redis-server on a unix socket in a temporary directory (no TCP port: a
    fetch must not collide with anything listening) and PING it; the version banner."""
    env = Q._clean_env()
    proc = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60)
    banner = (proc.stdout.strip().splitlines() or [""])[0]
    if proc.returncode != 0 or not banner.startswith("Redis server"):
        detail = (proc.stderr.strip().splitlines() or [banner or f"exit status {proc.returncode}"])[0]
        raise Q.FetchError(f"the fetched redis-server does not run: {detail}")
    # /tmp, not the tree: a unix socket path must stay under ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="blockfuzz-redis-check-") as tmp:
        sock_path = os.path.join(tmp, "redis.sock")
        log_path = os.path.join(tmp, "redis.log")
        server = subprocess.Popen(
            [str(wrapper), "--port", "0", "--unixsocket", sock_path, "--save", "",
             "--appendonly", "no", "--dir", tmp, "--logfile", log_path],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            reply = b""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.settimeout(5)
                        s.connect(sock_path)
                        s.sendall(b"PING\r\n")
                        reply = s.recv(64)
                    break
                except OSError:
                    time.sleep(0.05)
            if reply != b"+PONG\r\n":
                try:
                    detail = Path(log_path).read_text().strip().splitlines()[-1]
                except (OSError, IndexError):
                    detail = f"exit status {server.poll()}" if server.poll() is not None else "no answer"
                raise Q.FetchError(f"the fetched redis-server does not answer PING: {detail}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return banner


_CHECKS = {"graphviz": _check_dot, "redis": _check_redis}


def main(argv: list[str] | None = None) -> int:
    """``python -m fuzz.toolfetch fetch|path graphviz|redis``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("fetch", "path") or args[1] not in TOOLS:
        print(f"usage: python -m fuzz.toolfetch fetch|path {'|'.join(TOOLS)}", file=sys.stderr)
        return 2
    action, name = args
    if action == "path":
        inst = installed(name)
        if inst is None:
            print(f"blockfuzz: {name} is not fetched: run `python -m fuzz.toolfetch fetch {name}`",
                  file=sys.stderr)
            return 1
        print(inst.binary)
        return 0
    try:
        inst = fetch(name)
    except (Q.FetchError, OSError, subprocess.SubprocessError) as e:
        print(f"blockfuzz: fetching {name} failed: {e}".splitlines()[0], file=sys.stderr)
        return 2
    print(inst.binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
