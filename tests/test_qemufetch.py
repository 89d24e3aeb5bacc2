"""QEMU supply: the fetched trees work, and the harness picks the binary it was asked for.

The `qemu`-marked tests use the real fetched trees (`make qemu` runs before `make test`). They
fail, not skip, when a tree is missing: a suite that silently tests nothing is worse than a red
one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import cli, qemufetch
from fuzz.qemufetch import (
    DEFAULT_VERSION,
    KNOWN_VERSIONS,
    Dep,
    QemuNotFound,
    installed,
    parse_depends,
    qemu_env,
    qemu_version,
    resolve_qemu,
)

# ----------------------------------------------------------------------------------------------
# The real fetched trees


def _fetched(version: str) -> qemufetch.Installation:
    inst = installed(version)
    assert inst is not None, (
        f"QEMU {version} is not fetched under {qemufetch.qemu_dir()}: "
        f"run `make qemu` or `blockfuzz qemu fetch {version}`"
    )
    return inst


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
@pytest.mark.parametrize("which", ["system", "img", "io"])
def test_fetched_binary_finds_all_libraries(version, which):
    binary = _fetched(version).binary(which)
    env = qemu_env(binary)
    assert env, f"{binary} is not recognised as part of a fetched tree"
    out = subprocess.run(
        ["ldd", str(binary)], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout
    assert [ln for ln in out.splitlines() if "not found" in ln] == []


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
@pytest.mark.parametrize("which", ["system", "img", "io"])
def test_fetched_binary_reports_its_version(version, which):
    reported = qemu_version(_fetched(version).binary(which))
    assert reported.startswith(version + "."), reported


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_fetched_qemu_speaks_qmp_with_machine_none(version):
    # What the harness does: -M none, QMP on stdio. Also proves the firmware packages we skip
    # are not needed.
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
def test_default_selection_is_the_fetched_default_version(monkeypatch):
    for var in ("QEMU_PROG", "QEMU_IMG_PROG", "QEMU_IO_PROG"):
        monkeypatch.delenv(var, raising=False)
    inst = _fetched(DEFAULT_VERSION)
    q = resolve_qemu(None)
    assert (q.system, q.img, q.io) == tuple(str(inst.binary(w)) for w in ("system", "img", "io"))
    assert q.env == inst.env and q.env_for(q.img) == inst.env


# ----------------------------------------------------------------------------------------------
# Selection, against fake binaries and a fake fetched tree


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
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


@pytest.fixture
def default_tree(qdir):
    """A fake fetched DEFAULT_VERSION tree: the manifest format fetch() writes, fake binaries."""
    directory = qdir / DEFAULT_VERSION
    for rel in ("usr/bin/qemu-system-x86_64", "usr/bin/qemu-img", "usr/bin/qemu-io"):
        _executable(directory / "root" / rel)
    manifest = {
        "blockfuzz-qemu": 1,
        "version": DEFAULT_VERSION,
        "qemu-version": "QEMU emulator version 10.0.2 (fake)",
        "library-path": ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"],
        "module-dir": "usr/lib/x86_64-linux-gnu/qemu",
        "packages": {"qemu-system-x86": "1:10.0.2", "seabios": "1.16.2-1"},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory / "root"


@pytest.fixture
def system_dir(tmp_path):
    """A directory with a full set of 'system' QEMU binaries, like /usr/bin."""
    d = tmp_path / "sys"
    for name in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        _executable(d / name)
    return d


def test_default_is_the_fetched_tree(default_tree):
    q = resolve_qemu(None)
    assert q.system == str(default_tree / "usr/bin/qemu-system-x86_64")
    assert q.img == str(default_tree / "usr/bin/qemu-img")
    assert q.io == str(default_tree / "usr/bin/qemu-io")
    assert q.env == {
        "LD_LIBRARY_PATH": f"{default_tree}/usr/lib/x86_64-linux-gnu:"
        f"{default_tree}/lib/x86_64-linux-gnu",
        "QEMU_MODULE_DIR": f"{default_tree}/usr/lib/x86_64-linux-gnu/qemu",
    }


def test_qemu_prog_beats_default_and_brings_its_siblings(default_tree, system_dir, monkeypatch):
    monkeypatch.setenv("QEMU_PROG", str(system_dir / "qemu-system-x86_64"))
    q = resolve_qemu(None)
    assert q.system == str(system_dir / "qemu-system-x86_64")
    assert (q.img, q.io) == (str(system_dir / "qemu-img"), str(system_dir / "qemu-io"))
    assert q.env == {}  # not a fetched tree: run as is


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


def test_tools_fall_back_to_the_default_tree_without_siblings(default_tree, tmp_path):
    lonely = _executable(tmp_path / "lonely" / "qemu-system-x86_64")
    q = resolve_qemu(str(lonely))
    assert q.system == str(lonely) and q.env == {}
    assert q.img == str(default_tree / "usr/bin/qemu-img")
    # ... and such a tool needs the tree's environment, which env_for gives.
    assert q.env_for(q.img)["QEMU_MODULE_DIR"] == f"{default_tree}/usr/lib/x86_64-linux-gnu/qemu"


def test_bare_name_is_looked_up_in_path(default_tree, system_dir, monkeypatch):
    monkeypatch.setenv("PATH", f"{system_dir}{os.pathsep}{os.environ['PATH']}")
    assert resolve_qemu("qemu-system-x86_64").system == str(system_dir / "qemu-system-x86_64")


def test_qemu_env_follows_a_symlink_into_the_tree(default_tree, tmp_path):
    link = tmp_path / "bin" / "qemu"
    link.parent.mkdir()
    link.symlink_to(default_tree / "usr/bin/qemu-system-x86_64")
    assert qemu_env(link)["QEMU_MODULE_DIR"].startswith(str(default_tree))


def test_qemu_env_of_a_system_binary_is_empty(system_dir):
    assert qemu_env(system_dir / "qemu-system-x86_64") == {}


def test_tree_with_missing_binary_is_not_installed(default_tree):
    (default_tree / "usr/bin/qemu-io").unlink()
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
        "no QEMU: run `blockfuzz qemu fetch 10.0` or pass --qemu PATH"
    )


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_path_of_unknown_version_exits_2(qdir, capsys):
    assert cli.main(["qemu", "path", "9.9"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err.rstrip("\n")) == "blockfuzz: unknown QEMU version '9.9' (known: 7.2, 10.0)"


def test_cli_fetch_of_unknown_version_exits_2_without_fetching(qdir, capsys):
    assert cli.main(["qemu", "fetch", "9.9"]) == 2
    _one_line(capsys.readouterr().err.rstrip("\n"))
    assert list(qdir.iterdir()) == []  # did not even create the private apt directory


def test_cli_path_of_unfetched_version_exits_1(qdir, capsys):
    assert cli.main(["qemu", "path", "7.2"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err.rstrip("\n")) == (
        "blockfuzz: QEMU 7.2 is not fetched: run `blockfuzz qemu fetch 7.2`"
    )


def test_cli_path_and_fetch_of_a_fetched_version_print_the_path(default_tree, capsys):
    expected = f"{default_tree}/usr/bin/qemu-system-x86_64\n"
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


# ----------------------------------------------------------------------------------------------
# Dependency handling


def test_parse_depends():
    assert parse_depends(
        "libc6 (>= 2.34), qemu-system-any (= 1:10.0.2+ds-2) | qemu-utils (= 1:10.0.2+ds-2),"
        " libfoo:any, python3:amd64 (<< 3.12)"
    ) == [
        (Dep("libc6", ">=", "2.34"),),
        (Dep("qemu-system-any", "=", "1:10.0.2+ds-2"), Dep("qemu-utils", "=", "1:10.0.2+ds-2")),
        (Dep("libfoo"),),
        (Dep("python3", "<<", "3.12"),),
    ]
    assert parse_depends("") == []


def test_dep_version_ordering_is_debian_ordering():
    assert Dep("x", ">=", "1:7.2+dfsg-7").allows("1:10.0.2+ds-2")  # not string order
    assert not Dep("x", ">>", "1:10.0.2+ds~").allows("1:7.2+dfsg-7+deb12u18")
    assert Dep("x", ">>", "1.16.3-1~").allows("1.16.3-1~bpo12+1")
    assert Dep("x").allows("anything")


class FakeApt:
    """The three queries _resolve makes, over a tiny in-memory archive."""

    arch = "amd64"

    def __init__(self, archive, candidates):
        self.archive = archive  # (name, version) -> (suite, control fields)
        self.cands = candidates

    def versions(self, names):
        return {n: [(v, s) for (m, v), (s, _) in self.archive.items() if m == n] for n in names}

    def candidates(self, names):
        return {n: self.cands.get(n) for n in names}

    def show(self, name, version):
        return self.archive[(name, version)][1]


def _archive(roots_depends):
    q = "1:10.0.2+ds-2~bpo12+1"
    archive = {
        (name, v): ("bookworm-backports" if v == q else "bookworm", {})
        for name in qemufetch.ROOT_PACKAGES
        for v in (q, "1:7.2+dfsg-7")
    }
    for name, depends in roots_depends.items():
        archive[(name, q)] = ("bookworm-backports", {"Depends": depends})
    return archive, q


def test_resolve_follows_dependencies_recursively_and_respects_versions():
    archive, q = _archive(
        {
            "qemu-system-x86": "libpmem1 (>= 1.4), libc6, ipxe-qemu (>> 1.0.0), "
            "libnew (>= 2), qemu-system-common (= 1:10.0.2+ds-2~bpo12+1)",
            "qemu-block-extra": "qemu-system-any (= 1:10.0.2+ds-2~bpo12+1) | qemu-utils",
        }
    )
    archive[("qemu-system-x86", q)][1]["Provides"] = "qemu-system-any (= 1:10.0.2+ds-2~bpo12+1)"
    archive.update(
        {
            ("libpmem1", "1.12"): ("bookworm", {"Depends": "libndctl6 (>= 1), libc6"}),
            ("libndctl6", "76"): ("bookworm", {"Depends": "libkmod2"}),
            # the candidate (bookworm) is too old; backports has one that satisfies
            ("libnew", "1.0"): ("bookworm", {}),
            ("libnew", "2.1~bpo12+1"): ("bookworm-backports", {}),
            ("libc6", "2.36"): ("bookworm", {}),
            ("libkmod2", "30"): ("bookworm", {}),
        }
    )
    apt = FakeApt(archive, {"libpmem1": "1.12", "libndctl6": "76", "libnew": "1.0"})
    host = {"libc6": "2.36", "libkmod2": "30"}.get
    plan = qemufetch._resolve(apt, "10.0", lambda _: None, host=host)
    assert plan.packages == {
        **{name: q for name in qemufetch.ROOT_PACKAGES},
        "libpmem1": "1.12",
        "libndctl6": "76",  # only reachable through libpmem1
        "libnew": "2.1~bpo12+1",
    }
    assert plan.satisfied == {"libc6": "2.36", "libkmod2": "30"}
    assert set(plan.skipped) == {"ipxe-qemu"}


def test_resolve_pins_the_newest_build_of_the_version_from_its_suites():
    archive, _ = _archive({})
    archive[("qemu-utils", "1:7.2+dfsg-7+deb12u18")] = ("bookworm", {})
    archive[("qemu-utils", "1:7.2+dfsg-7+deb12u15")] = ("bookworm-security", {})
    archive[("qemu-utils", "1:7.20-1")] = ("bookworm", {})  # a different upstream version
    plan = qemufetch._resolve(FakeApt(archive, {}), "7.2", lambda _: None, host=lambda _: None)
    assert plan.packages["qemu-utils"] == "1:7.2+dfsg-7+deb12u18"
    assert plan.packages["qemu-system-x86"] == "1:7.2+dfsg-7"


def test_resolve_without_the_version_in_its_suite_is_one_line():
    archive, q = _archive({})
    del archive[("qemu-utils", q)]
    with pytest.raises(qemufetch.FetchError) as exc:
        qemufetch._resolve(FakeApt(archive, {}), "10.0", lambda _: None, host=lambda _: None)
    assert _one_line(str(exc.value)).startswith("no QEMU 10.0 build of qemu-utils in ")


def test_tree_fetched_without_seabios_is_refetched(default_tree):
    # trees fetched before the -M pc scenarios lack the BIOS: not usable as they are
    manifest = default_tree.parent / "manifest.json"
    data = json.loads(manifest.read_text())
    assert qemufetch.installed(DEFAULT_VERSION) is not None
    del data["packages"]["seabios"]
    manifest.write_text(json.dumps(data))
    assert qemufetch.installed(DEFAULT_VERSION) is None


@pytest.mark.qemu
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_fetched_qemu_starts_machine_pc_with_its_seabios(version, tmp_path):
    # the iothread scenarios run -M pc; the BIOS comes from the fetched seabios via -L
    from fuzz.qemu import QemuProcess
    from fuzz.qemufetch import resolve_qemu

    binaries = resolve_qemu(str(_fetched(version).binary("system")))
    with QemuProcess(binaries, str(tmp_path), machine="pc") as q:
        assert q.execute("device_add", {"driver": "virtio-scsi", "id": "scsi0"}).error is None
