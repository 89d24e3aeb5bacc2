"""QEMU supply: the fetched trees work, and the harness picks the binary it was asked for.

The `qemu`-marked tests use the real fetched trees (`make qemu` runs before `make test`). They
fail, not skip, when a tree is missing: a suite that silently tests nothing is worse than a red
one. One of them fetches QEMU afresh into an empty directory (network, ~20 s).
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

import pytest

from fuzz import cli, qemufetch
from fuzz.qemufetch import (
    DEFAULT_VERSION,
    KNOWN_VERSIONS,
    SOURCES,
    FetchError,
    QemuNotFound,
    choose_pins,
    installed,
    parse_madison,
    parse_simulation,
    qemu_env,
    qemu_version,
    resolve_qemu,
)

PROGRAMS = {"system": "qemu-system-x86_64", "img": "qemu-img", "io": "qemu-io"}

# ----------------------------------------------------------------------------------------------
# The real fetched trees


def _fetched(version: str) -> qemufetch.Installation:
    inst = installed(version)
    assert inst is not None, (
        f"QEMU {version} is not fetched under {qemufetch.qemu_dir()}: "
        f"run `make qemu` or `blockfuzz qemu fetch {version}`"
    )
    return inst


def _inside(path: str | Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
@pytest.mark.parametrize("which", ["system", "img", "io"])
def test_wrapper_reports_its_version(version, which):
    inst = _fetched(version)
    wrapper = inst.binary(which)
    assert wrapper == inst.directory / "bin" / PROGRAMS[which]
    reported = qemu_version(wrapper)
    assert reported.startswith(version + "."), reported
    assert inst.qemu_version.startswith(f"QEMU emulator version {version}.")


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_wrapper_ignores_the_hosts_library_path(version):
    # With the host's libraries first in LD_LIBRARY_PATH, a binary started the ordinary way
    # would load the host's libc (for 11.1: "symbol lookup error"); the wrapper's loader
    # ignores the variable.
    host_libs = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib:/usr/lib"
    out = subprocess.run(
        [str(_fetched(version).binary("img")), "--version"],
        env={**os.environ, "LD_LIBRARY_PATH": host_libs},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"version {version}." in out


def _loader_list(inst: qemufetch.Installation, target: Path) -> subprocess.CompletedProcess:
    root = inst.root
    return subprocess.run(
        [
            str(root / inst.loader), "--list",
            "--library-path", ":".join(str(root / d) for d in inst.library_path), str(target),
        ],
        capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
    )  # fmt: skip


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_every_binary_and_module_loads_through_the_trees_loader(version):
    inst = _fetched(version)
    modules = sorted((inst.root / inst.module_dir).glob("*.so"))
    # the block driver modules are there (qemu-block-extra), so this is not vacuous
    names = {m.name for m in modules}
    assert {"block-curl.so", "block-nfs.so", "block-iscsi.so", "block-rbd.so"} <= names, names
    for target in [inst.program(w) for w in PROGRAMS] + modules:
        proc = _loader_list(inst, target)
        assert proc.returncode == 0, f"{target.name}: {proc.stderr.strip()}"
        loaded = re.findall(r"=> (\S+) \(0x", proc.stdout)
        if target.suffix == ".so" and proc.stdout.strip() == "statically linked":
            continue  # a module that needs no library (beyond what QEMU has loaded)
        assert loaded, proc.stdout
        assert "not found" not in proc.stdout, proc.stdout
        # every library is the tree's own, libc included: none comes from the host
        outside = [p for p in loaded if not _inside(p, inst.root)]
        assert outside == [], f"{target.name} loads host files {outside}"
        if target.name == "qemu-system-x86_64":
            assert any(Path(p).name == "libc.so.6" for p in loaded)


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_block_modules_load_at_run_time(version):
    # The driver's own error means its module was dlopen()ed with all its libraries; a module
    # that does not load gives "Unable to load module ..." or "Unknown protocol".
    img = str(_fetched(version).binary("img"))
    for url, expected in [
        ("http://127.0.0.1:9/x", "CURL"),
        ("nfs://127.0.0.1:9/x", "nfs"),
        ("ssh://127.0.0.1:9/x", "127.0.0.1"),
    ]:
        proc = subprocess.run([img, "info", url], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert "module" not in proc.stderr and "Unknown protocol" not in proc.stderr, proc.stderr
        assert expected in proc.stderr, proc.stderr


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_device_help_loads_every_device_module(version):
    # `-device help` loads all QOM modules (display, usb, ...) of the tree
    proc = subprocess.run(
        [str(_fetched(version).binary("system")), "-M", "none", "-device", "help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "virtio-scsi-pci" in proc.stdout
    assert "module" not in proc.stderr.lower(), proc.stderr


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_qemu_is_the_wrappers_process_and_maps_only_the_trees_libraries(version):
    inst = _fetched(version)
    proc = subprocess.Popen(
        [str(inst.binary("system")), "-M", "none", "-nodefaults", "-display", "none",
         "-qmp", "stdio"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline())["QMP"]  # the greeting: QEMU is up
        # exec: the pid the harness holds is QEMU itself (run by the tree's loader), no shell
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode() == str(inst.root / inst.loader)
        assert cmdline[3].decode() == str(inst.program("system"))
        assert Path(f"/proc/{proc.pid}/exe").resolve() == (inst.root / inst.loader).resolve()
        maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
        libraries = {ln.split(maxsplit=5)[5] for ln in maps if ".so" in ln.split(maxsplit=5)[-1]}
        assert any(Path(p).name == "libc.so.6" for p in libraries)
        assert [p for p in libraries if not _inside(p, inst.root)] == []
    finally:
        proc.communicate('{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n', timeout=60)
    assert proc.returncode == 0


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_fetched_qemu_speaks_qmp_with_machine_none(version):
    # What the harness does: -M none, QMP on stdio.
    binary = _fetched(version).binary("system")
    commands = ['{"execute": "qmp_capabilities"}', '{"execute": "quit"}']
    proc = subprocess.run(
        [str(binary), "-M", "none", "-nodefaults", "-display", "none", "-qmp", "stdio"],
        input="\n".join(commands) + "\n",
        env={**os.environ, **qemu_env(binary)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    greeting = replies[0]["QMP"]["version"]["qemu"]
    assert f"{greeting['major']}.{greeting['minor']}" == version
    assert [r for r in replies[1:] if "return" in r] == [{"return": {}}, {"return": {}}]


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_fetched_qemu_starts_machine_pc_with_its_seabios(version, tmp_path):
    # the iothread scenarios run -M pc; the BIOS comes from the fetched seabios, found by the
    # harness as bin/../share/seabios and passed with -L
    from fuzz.qemu import QemuProcess

    inst = _fetched(version)
    assert (inst.directory / "share" / "seabios" / "bios-256k.bin").is_file()
    binaries = resolve_qemu(str(inst.binary("system")))
    with QemuProcess(binaries, str(tmp_path), machine="pc") as q:
        assert "-L" in q.machine_args()
        assert q.execute("device_add", {"driver": "virtio-scsi", "id": "scsi0"}).error is None


@pytest.mark.qemu
def test_default_selection_is_the_fetched_default_version(monkeypatch):
    for var in ("QEMU_PROG", "QEMU_IMG_PROG", "QEMU_IO_PROG"):
        monkeypatch.delenv(var, raising=False)
    inst = _fetched(DEFAULT_VERSION)
    q = resolve_qemu(None)
    assert (q.system, q.img, q.io) == tuple(str(inst.binary(w)) for w in PROGRAMS)
    assert q.env == {} and q.env_for(q.img) == {}


@pytest.mark.qemu
def test_11_1_has_trixies_c_library():
    inst = _fetched("11.1")
    assert inst.packages["libc6"].startswith("2.41"), inst.packages["libc6"]
    assert inst.package_version.endswith("~bpo13+1")
    # seabios > 1.17 came from trixie-backports (-t), not trixie's own 1.16
    out = subprocess.run(["dpkg", "--compare-versions", inst.packages["seabios"], "ge", "1.17"])
    assert out.returncode == 0, inst.packages["seabios"]


def _system_apt_state() -> dict[str, str]:
    """A fingerprint of the host's apt and dpkg state, which fetching must not touch."""
    state = {}
    for path in ("/var/lib/dpkg/status", "/etc/apt/sources.list", "/etc/apt/preferences"):
        p = Path(path)
        state[path] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-"
    for directory in ("/var/lib/apt/lists", "/var/cache/apt/archives", "/etc/apt/sources.list.d"):
        d = Path(directory)
        state[directory] = repr(sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()
        ) if d.is_dir() else "-")  # fmt: skip
    return state


@pytest.mark.qemu
def test_fetch_into_an_empty_directory(tmp_path, monkeypatch, capsys):
    # From nothing: private apt state, package lists, download, unpack, verify, wrappers. Two
    # fetches at once: one does the work under the lock, the other then finds it done.
    qdir = tmp_path / "qemu dir"  # a space: the wrappers must quote
    monkeypatch.setenv("BLOCKFUZZ_QEMU_DIR", str(qdir))
    before = _system_apt_state()
    argv = [sys.executable, "-m", "fuzz.cli", "qemu", "fetch", "11.1"]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    wrapper = qdir / "11.1" / "bin" / "qemu-system-x86_64"
    for status, out, err in results:
        assert (status, out) == (0, f"{wrapper}\n"), err
    # exactly one of them downloaded
    assert sorted("downloading" in err for _, _, err in results) == [False, True]
    assert _system_apt_state() == before
    assert sorted(p.name for p in qdir.iterdir()) == [".lock", "11.1", "apt"]
    assert sorted(p.name for p in (qdir / "apt").iterdir()) == ["trixie"]

    inst = installed("11.1")
    assert inst is not None and inst.directory == qdir / "11.1"
    assert qemu_version(wrapper) == "11.1.3"
    manifest = json.loads((inst.directory / "manifest.json").read_text())
    debs = sorted(p.name.split("_")[0] for p in (inst.directory / "debs").glob("*.deb"))
    assert debs == sorted(manifest["packages"]) and len(debs) > 50
    assert {"libc6", "seabios", *qemufetch.ROOT_PACKAGES} <= set(debs)

    # the listing of that directory
    assert cli.main(["qemu", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = r"^11\.1 \(default\) +trixie-backports +1:11\.1\.3\S+ +yes +"
    assert re.match(row + re.escape(str(wrapper)) + "$", lines[3]), lines

    # a fetch of a complete tree is a no-op
    started = time.monotonic()
    assert qemufetch.fetch("11.1", log=pytest.fail) == inst
    assert time.monotonic() - started < 2


# ----------------------------------------------------------------------------------------------
# Selection, against fake binaries and a fake fetched tree


def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def qdir(tmp_path, monkeypatch):
    """An empty BLOCKFUZZ_QEMU_DIR and no QEMU_* variables."""
    for var in ("QEMU_PROG", "QEMU_IMG_PROG", "QEMU_IO_PROG"):
        monkeypatch.delenv(var, raising=False)
    d = tmp_path / "qemu-dir"
    d.mkdir()
    monkeypatch.setenv("BLOCKFUZZ_QEMU_DIR", str(d))
    return d


LOADER = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
LIBRARY_PATH = ["usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu/ceph"]
MODULE_DIR = "usr/lib/x86_64-linux-gnu/qemu"


def _fake_tree(qdir: Path, version: str) -> Path:
    """A fake fetched tree as fetch() lays it out (manifest, wrappers, share), fake binaries."""
    directory = qdir / version
    root = directory / "root"
    for rel in (LOADER, *(f"usr/bin/{p}" for p in PROGRAMS.values())):
        _executable(root / rel)
    (root / "usr/share/seabios").mkdir(parents=True)
    (directory / "share").symlink_to("root/usr/share")
    qemufetch._write_wrappers(directory, LOADER, LIBRARY_PATH, MODULE_DIR)
    manifest = {
        "blockfuzz-qemu": 2,
        "version": version,
        "qemu-version": f"QEMU emulator version {version}.9 (fake)",
        "loader": LOADER,
        "library-path": LIBRARY_PATH,
        "module-dir": MODULE_DIR,
        "packages": {"qemu-system-x86": f"1:{version}.9+ds-1", "seabios": "1.16.2-1"},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def default_tree(qdir):
    return _fake_tree(qdir, DEFAULT_VERSION)


@pytest.fixture
def system_dir(tmp_path):
    """A directory with a full set of 'system' QEMU binaries, like /usr/bin."""
    d = tmp_path / "sys"
    for name in PROGRAMS.values():
        _executable(d / name)
    return d


def test_default_is_the_fetched_trees_wrappers(default_tree):
    q = resolve_qemu(None)
    assert q.system == str(default_tree / "bin/qemu-system-x86_64")
    assert q.img == str(default_tree / "bin/qemu-img")
    assert q.io == str(default_tree / "bin/qemu-io")
    assert q.env == {}  # the wrappers need no environment


def test_wrapper_text(default_tree):
    root = default_tree / "root"
    assert (default_tree / "bin/qemu-io").read_text() == (
        "#!/bin/sh\n"
        f"# QEMU {DEFAULT_VERSION} run with its own C library (written by blockfuzz, "
        "fuzz/qemufetch.py)\n"
        f"QEMU_MODULE_DIR={root}/{MODULE_DIR}\n"
        "export QEMU_MODULE_DIR\n"
        f"exec {root}/{LOADER} --library-path {root}/{LIBRARY_PATH[0]}:{root}/{LIBRARY_PATH[1]}"
        f' {root}/usr/bin/qemu-io "$@"\n'
    )


def test_wrapper_quotes_and_execs_for_real(tmp_path):
    # A tree whose "loader" is the host's ld.so and whose "qemu-img" is env(1), in a directory
    # whose name needs quoting: the wrapper must hand over its arguments unchanged and set
    # QEMU_MODULE_DIR.
    arch, triplet, loader_name = qemufetch._host_arch()
    directory = tmp_path / """it's a "tree" $HOME `x` \\"""
    root = directory / "root"
    lib = root / "usr/lib" / triplet
    lib.mkdir(parents=True)
    host_loader = Path("/lib64", loader_name).resolve()
    shutil.copy2(host_loader, lib / loader_name)
    shutil.copy2(Path(f"/lib/{triplet}/libc.so.6").resolve(), lib / "libc.so.6")
    (root / "usr/bin").mkdir()
    shutil.copy2(shutil.which("env"), root / "usr/bin/qemu-img")
    qemufetch._write_wrappers(directory, f"usr/lib/{triplet}/{loader_name}",
                              [f"usr/lib/{triplet}"], MODULE_DIR)  # fmt: skip
    wrapper = str(directory / "bin/qemu-img")
    out = subprocess.run([wrapper], capture_output=True, text=True, check=True).stdout
    assert f"QEMU_MODULE_DIR={root}/{MODULE_DIR}" in out.splitlines()
    args = ["a b", "'", '"', "$HOME", "*", "", "--version"]
    out = subprocess.run([wrapper, "printf", "[%s]\\n", *args], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out.splitlines() == [f"[{a}]" for a in args]


def test_qemu_prog_beats_default_and_brings_its_siblings(default_tree, system_dir, monkeypatch):
    monkeypatch.setenv("QEMU_PROG", str(system_dir / "qemu-system-x86_64"))
    q = resolve_qemu(None)
    assert q.system == str(system_dir / "qemu-system-x86_64")
    assert (q.img, q.io) == (str(system_dir / "qemu-img"), str(system_dir / "qemu-io"))
    assert q.env == {}


def test_explicit_beats_qemu_prog(default_tree, system_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QEMU_PROG", str(system_dir / "qemu-system-x86_64"))
    mine = _executable(tmp_path / "mine" / "qemu-system-x86_64")
    assert resolve_qemu(str(mine)).system == str(mine)


def test_explicit_beats_a_broken_qemu_prog(default_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("QEMU_PROG", str(tmp_path / "nonexistent"))
    mine = _executable(tmp_path / "mine" / "qemu-system-x86_64")
    assert resolve_qemu(str(mine)).system == str(mine)


def test_tool_variables_beat_siblings(default_tree, system_dir, tmp_path, monkeypatch):
    img = _executable(tmp_path / "tools" / "my-qemu-img")
    io = _executable(tmp_path / "tools" / "my-qemu-io")
    monkeypatch.setenv("QEMU_IMG_PROG", str(img))
    monkeypatch.setenv("QEMU_IO_PROG", str(io))
    q = resolve_qemu(str(system_dir / "qemu-system-x86_64"))
    assert (q.img, q.io) == (str(img), str(io))


def test_tools_fall_back_to_the_default_trees_wrappers_without_siblings(default_tree, tmp_path):
    lonely = _executable(tmp_path / "lonely" / "qemu-system-x86_64")
    q = resolve_qemu(str(lonely))
    assert q.system == str(lonely) and q.env == {}
    assert q.img == str(default_tree / "bin/qemu-img")
    assert q.env_for(q.img) == {}


def test_another_versions_wrapper_brings_its_own_siblings(default_tree, qdir):
    other = _fake_tree(qdir, "7.2")
    q = resolve_qemu(str(other / "bin/qemu-system-x86_64"))
    assert (q.img, q.io) == (str(other / "bin/qemu-img"), str(other / "bin/qemu-io"))


def test_bare_name_is_looked_up_in_path(default_tree, system_dir, monkeypatch):
    monkeypatch.setenv("PATH", f"{system_dir}{os.pathsep}{os.environ['PATH']}")
    assert resolve_qemu("qemu-system-x86_64").system == str(system_dir / "qemu-system-x86_64")


@pytest.mark.parametrize("how", ["directly", "symlink"])
def test_a_binary_inside_a_tree_is_refused_with_the_wrapper_to_use(default_tree, tmp_path, how):
    raw = default_tree / "root/usr/bin/qemu-system-x86_64"
    given = raw
    if how == "symlink":
        given = tmp_path / "qemu-system-x86_64"
        given.symlink_to(raw)
    with pytest.raises(QemuNotFound) as exc:
        resolve_qemu(str(given))
    assert _one_line(str(exc.value)) == (
        f"--qemu '{given}': a fetched QEMU runs only through its wrapper,"
        f" use {default_tree}/bin/qemu-system-x86_64"
    )


def test_qemu_env_is_empty(default_tree, system_dir):
    assert qemu_env(default_tree / "bin/qemu-system-x86_64") == {}
    assert qemu_env(system_dir / "qemu-system-x86_64") == {}


def test_complete_fake_tree_is_installed(default_tree):
    inst = installed(DEFAULT_VERSION)
    assert inst is not None
    assert inst.binary("io") == default_tree / "bin/qemu-io"
    assert inst.program("io") == default_tree / "root/usr/bin/qemu-io"
    assert inst.package_version == f"1:{DEFAULT_VERSION}.9+ds-1"


@pytest.mark.parametrize(
    "damage",
    ["wrapper missing", "wrapper edited", "wrapper not executable", "binary missing",
     "loader missing", "no seabios package", "no share link", "format 1", "other version",
     "manifest garbage", "manifest lacks a field"],
)  # fmt: skip
def test_damaged_or_outdated_tree_is_not_installed(default_tree, damage):
    manifest = default_tree / "manifest.json"
    data = json.loads(manifest.read_text())
    if damage == "wrapper missing":
        (default_tree / "bin/qemu-io").unlink()
    elif damage == "wrapper edited":
        with open(default_tree / "bin/qemu-img", "a") as fh:
            fh.write("# local change\n")
    elif damage == "wrapper not executable":
        (default_tree / "bin/qemu-system-x86_64").chmod(0o644)
    elif damage == "binary missing":
        (default_tree / "root/usr/bin/qemu-io").unlink()
    elif damage == "loader missing":
        (default_tree / "root" / LOADER).unlink()
    elif damage == "no seabios package":
        del data["packages"]["seabios"]
    elif damage == "no share link":
        (default_tree / "share").unlink()
    elif damage == "format 1":  # trees fetched before the wrappers: fetched again
        data["blockfuzz-qemu"] = 1
    elif damage == "other version":
        data["version"] = "7.2"
    elif damage == "manifest garbage":
        data = "not a manifest"
    elif damage == "manifest lacks a field":
        del data["loader"]
    manifest.write_text(json.dumps(data))
    assert installed(DEFAULT_VERSION) is None


def test_a_moved_tree_is_not_installed(default_tree, qdir, tmp_path, monkeypatch):
    # the wrappers hold absolute paths: after a move they would run the old place's files
    moved = tmp_path / "elsewhere"
    qdir.rename(moved)
    monkeypatch.setenv("BLOCKFUZZ_QEMU_DIR", str(moved))
    assert installed(DEFAULT_VERSION) is None


# ----------------------------------------------------------------------------------------------
# Errors: one actionable line


def _one_line(message: str) -> str:
    assert message and "\n" not in message, repr(message)
    return message


@pytest.mark.parametrize("kind", ["missing", "not-executable", "directory"])
def test_bad_explicit_path_is_one_line(default_tree, tmp_path, kind):
    bad = tmp_path / "bad-qemu"
    if kind == "not-executable":
        bad.write_text("")
        bad.chmod(0o644)
    elif kind == "directory":
        bad.mkdir()
    with pytest.raises(QemuNotFound) as exc:
        resolve_qemu(str(bad))
    message = _one_line(str(exc.value))
    assert message.startswith("--qemu ") and str(bad) in message


def test_bad_qemu_prog_does_not_fall_back_to_the_default(default_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("QEMU_PROG", str(tmp_path / "nonexistent"))
    with pytest.raises(QemuNotFound, match=r"^\$QEMU_PROG .*nonexistent.*: no such file$"):
        resolve_qemu(None)


def test_bad_tool_variable_is_reported(default_tree, system_dir, monkeypatch):
    monkeypatch.setenv("QEMU_IMG_PROG", "/nonexistent/qemu-img")
    with pytest.raises(QemuNotFound, match=r"^\$QEMU_IMG_PROG "):
        resolve_qemu(str(system_dir / "qemu-system-x86_64"))


def test_nothing_available_says_what_to_do(qdir):
    with pytest.raises(QemuNotFound) as exc:
        resolve_qemu(None)
    assert _one_line(str(exc.value)) == (
        "no QEMU: run `blockfuzz qemu fetch 11.1` or pass --qemu PATH"
    )


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_path_of_unknown_version_exits_2(qdir, capsys):
    assert cli.main(["qemu", "path", "9.9"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err.rstrip("\n")) == (
        "blockfuzz: unknown QEMU version '9.9' (known: 7.2, 10.0, 11.1)"
    )


def test_cli_fetch_of_unknown_version_exits_2_without_fetching(qdir, capsys):
    assert cli.main(["qemu", "fetch", "9.9"]) == 2
    _one_line(capsys.readouterr().err.rstrip("\n"))
    assert list(qdir.iterdir()) == []  # did not even create the private apt directory


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_cli_path_of_unfetched_version_exits_1(qdir, capsys, version):
    assert cli.main(["qemu", "path", version]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err.rstrip("\n")) == (
        f"blockfuzz: QEMU {version} is not fetched: run `blockfuzz qemu fetch {version}`"
    )


def test_cli_path_and_fetch_of_a_fetched_version_print_the_wrapper(default_tree, capsys):
    expected = f"{default_tree}/bin/qemu-system-x86_64\n"
    assert cli.main(["qemu", "path", DEFAULT_VERSION]) == 0
    assert capsys.readouterr().out == expected
    # fetch of a complete tree does nothing else (no apt: this tree's manifest is fake).
    assert cli.main(["qemu", "fetch", DEFAULT_VERSION]) == 0
    assert capsys.readouterr() == (expected, "")


def test_cli_entry_point_runs_as_a_program(qdir):
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.cli", "qemu", "path", "9.9"], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert len(proc.stderr.splitlines()) == 1


def _table(out: str) -> list[list[str]]:
    # columns are separated by two or more spaces; the path (last) may be "-"
    return [re.split(r"  +", line.rstrip()) for line in out.splitlines()]


def test_cli_list(qdir, capsys):
    _fake_tree(qdir, "7.2")
    stale = qdir / "11.1"  # a tree of the old format: there, but to be fetched again
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"blockfuzz-qemu": 1, "version": "11.1"}))
    assert cli.main(["qemu", "list"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert _table(out) == [
        ["VERSION", "DEBIAN", "PACKAGE", "FETCHED", "QEMU-SYSTEM-X86_64"],
        ["7.2", "bookworm,bookworm-updates,bookworm-security", "1:7.2.9+ds-1", "yes",
         f"{qdir}/7.2/bin/qemu-system-x86_64"],
        ["10.0", "bookworm-backports", "-", "no", "-"],
        ["11.1 (default)", "trixie-backports", "-", "outdated", "-"],
    ]  # fmt: skip
    assert list((qdir).iterdir()) != [] and not (qdir / "apt").exists()  # wrote nothing


def test_cli_list_of_a_missing_directory_is_a_table(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKFUZZ_QEMU_DIR", str(tmp_path / "nothing" / "here"))
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.cli", "qemu", "list"], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    rows = _table(proc.stdout)
    assert [r[0].split()[0] for r in rows[1:]] == list(KNOWN_VERSIONS)
    assert all(r[3] == "no" and r[4] == "-" for r in rows[1:])
    assert not (tmp_path / "nothing").exists()


@pytest.mark.qemu
def test_cli_list_of_the_real_trees(capsys, monkeypatch):
    monkeypatch.delenv("BLOCKFUZZ_QEMU_DIR", raising=False)
    assert cli.main(["qemu", "list"]) == 0
    rows = _table(capsys.readouterr().out)[1:]
    # builds from source (`blockfuzz qemu build`) follow the fetched versions
    fetched, built = rows[:len(KNOWN_VERSIONS)], rows[len(KNOWN_VERSIONS):]
    assert all(r[3] == "built" for r in built), built
    for row, version in zip(fetched, KNOWN_VERSIONS, strict=True):
        inst = _fetched(version)
        assert row == [
            f"{version} (default)" if version == DEFAULT_VERSION else version,
            ",".join(SOURCES[version].suites),
            inst.packages["qemu-system-x86"],
            "yes",
            str(inst.binary("system")),
        ]


# ----------------------------------------------------------------------------------------------
# The version table and apt's answers


def test_versions_of_one_release_share_its_sources():
    # one private apt directory per release: its versions must agree on what is in it
    by_release: dict[str, set] = {}
    for version, source in SOURCES.items():
        by_release.setdefault(source.release, set()).add(source.archive)
        assert set(source.suites) <= {suite for _, suite in source.archive}, version
        assert source.target is None or source.target in source.suites, version
    assert all(len(archives) == 1 for archives in by_release.values()), by_release
    assert SOURCES["11.1"].archive == (
        ("http://deb.debian.org/debian", "trixie"),
        ("http://deb.debian.org/debian", "trixie-updates"),
        ("http://deb.debian.org/debian", "trixie-backports"),
        ("http://deb.debian.org/debian-security", "trixie-security"),
    )
    assert qemufetch.Source("sid", ("sid",)).archive == (("http://deb.debian.org/debian", "sid"),)


MADISON = """\
qemu-utils | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
qemu-utils | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-utils | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
qemu-utils | 1:7.20-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-utils | 1:7.2+dfsg-7+deb12u99 | http://deb.debian.org/debian bookworm/main arm64 Packages
   seabios |   1.16.2-1 | http://deb.debian.org/debian bookworm/main all Packages
"""  # noqa: E501 - apt-cache madison's own lines


def test_parse_madison():
    found = parse_madison(MADISON, ["qemu-utils", "seabios", "nosuch"], "amd64")
    assert found == {
        "qemu-utils": [
            ("1:10.0.2+ds-2+deb13u1~bpo12+1", "bookworm-backports"),
            ("1:7.2+dfsg-7+deb12u18+b3", "bookworm"),
            ("1:7.2+dfsg-7+deb12u15", "bookworm-security"),
            ("1:7.20-1", "bookworm"),
        ],  # the arm64 line is another architecture's
        "seabios": [("1.16.2-1", "bookworm")],
        "nosuch": [],
    }


def test_pin_is_the_newest_build_of_the_version_from_its_suites():
    found = parse_madison(MADISON, ["qemu-utils"], "amd64")
    # 7.20 is another upstream version; deb12u18+b3 > deb12u15 in Debian (not string) order
    assert choose_pins("7.2", found) == {"qemu-utils": "1:7.2+dfsg-7+deb12u18+b3"}
    assert choose_pins("10.0", found) == {"qemu-utils": "1:10.0.2+ds-2+deb13u1~bpo12+1"}
    newer = {"qemu-utils": [*found["qemu-utils"], ("1:7.2+dfsg-7+deb12u16", "bookworm-security")]}
    assert choose_pins("7.2", newer) == {"qemu-utils": "1:7.2+dfsg-7+deb12u18+b3"}


def test_pin_without_the_version_in_its_suites_is_one_line():
    found = parse_madison(MADISON, ["qemu-utils"], "amd64")
    with pytest.raises(FetchError) as exc:
        choose_pins("11.1", found)  # bookworm's lists have no 11.1, and not in trixie-backports
    assert _one_line(str(exc.value)).startswith(
        "no QEMU 11.1 build of qemu-utils in trixie-backports (archive has: 1:10.0.2"
    )


def test_parse_simulation():
    text = """\
Reading package lists...
The following NEW packages will be installed:
  libc6 qemu-utils seabios
Inst libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64]) []
Inst libpcre2-8-0 (10.46-1~deb13u3 Debian:13.8/stable, Debian-Security:13/stable-security [amd64])
Inst seabios (1.17.0-1~bpo13+1 Debian Backports:stable-backports [all])
Inst qemu-utils (1:11.1.3+ds-1~bpo13+1 Debian Backports:stable-backports [amd64])
Conf libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64])
"""
    assert parse_simulation(text) == {
        "libc6": "2.41-12+deb13u5",
        "libpcre2-8-0": "10.46-1~deb13u3",
        "qemu-utils": "1:11.1.3+ds-1~bpo13+1",
        "seabios": "1.17.0-1~bpo13+1",
    }
