"""``blockfuzz export``: traces as QEMU iotests and as standalone reproducer scripts.

The unmarked tests check the rendering (model only, no QEMU). The ``qemu``-marked ones run what
was exported the way upstream would:

* the iotest under QEMU's own ``tests/qemu-iotests/check`` from Debian's QEMU 10.0 source
  package (``blockfuzz qemu source 10.0``: fetched once into ``.qemu/src/10.0``, ~40 MB, ~10 s;
  instant afterwards) against the fetched QEMU 11.1. Debian's builds have no ``qtest``
  accelerator, which the iotests hard-code, so ``check`` runs from a scratch copy of the tree
  with this patch (``fuzz.export.CHECK_PATCH``; the exported test itself is untouched)::

      --- a/python/qemu/machine/qtest.py
      +++ b/python/qemu/machine/qtest.py
      -            '-accel', 'qtest'
      +            '-accel', 'tcg', '-S', '-qtest-log', '/dev/null'
      --- a/tests/qemu-iotests/testenv.py
      +++ b/tests/qemu-iotests/testenv.py
      -        self.qemu_options = '-nodefaults -display none -accel qtest'
      +        self.qemu_options = '-nodefaults -display none -accel tcg'

  (``-S``: no guest code runs; ``-qtest-log /dev/null``: without the accelerator the qtest
  chardev would log into the VM's log, which the test reads for qemu-io's output), and with
  ``QEMU_PROG`` (a wrapper adding ``-L`` for the tree's firmware), ``QEMU_IMG_PROG``,
  ``QEMU_IO_PROG``, ``QEMU_NBD_PROG`` and ``QSD_PROG`` pointing at the fetched tree (testenv.py
  exits unless all five exist). A crash finding must FAIL there, a seed must PASS.
* the script in a fresh venv holding nothing but ``qemu.qmp`` (from PyPI, once per session),
  run isolated (``python -I``) from outside the checkout: exit 1 for a finding, 0 for a seed.

About 15 s in all once the source tree is cached (each ``check`` run ~1-2 s, venv ~5 s).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import venv
from pathlib import Path

import pytest

from fuzz import cli
from fuzz import export as E
from fuzz import trace as T
from fuzz.qemusource import (SOURCE_ORIGINS, _SourceApt, choose_source, fetch_source,
                             source_installed)
from models import PROFILES

from conftest import qemu_binaries

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "corpus/seeds/test_reopen.json"
SEGV = ROOT / "corpus/findings/reopen-closes-queued-node-segv.json"
AUTO = ROOT / "corpus/findings/qemu72-reopen-detached-entry-abort.json"
JOBS = ROOT / "corpus/findings/active-commit-pending-qemu-io-hang.json"
PC = ROOT / "corpus/findings/throttle-over-iothread-node-segv.json"


def _plan(path: Path, version: str = "11.1", **kw) -> E.Plan:
    return E.plan_trace(T.load(str(path)), PROFILES[version], origin=str(path.relative_to(ROOT)), **kw)


# ----------------------------------------------------------------------------------------------
# Rendering (no QEMU)


def test_iotest_is_python_in_qemu_style_with_reference_output():
    test, out = E.render_iotest(_plan(SEGV))
    compile(test, "reopen-closes-queued-node-segv", "exec")
    lines = test.splitlines()
    assert lines[:2] == ["#!/usr/bin/env python3", "# group: rw quick"]
    assert "import iotests" in lines
    assert "class TestReopenClosesQueuedNodeSegv(iotests.QMPTestCase):" in lines
    assert "        self.vm = iotests.VM()" in lines
    assert "        self.vm.set_machine('none')" in lines
    assert "        qemu_img('create', '-f', 'qcow2', '-b', 'hd0.img', '-F', 'qcow2'," in lines
    assert "                 'hd1.img')" in lines
    assert all(len(line) <= 79 for line in lines)
    assert "        qemu_io('-f', 'qcow2', '-c', 'write -P 0xa0 0 1048576', 'hd0.img')" in lines
    assert "            result = self.vm.qmp('blockdev-reopen', {" in lines
    assert "        self.assertIsNone(self.node('hd0'))" in lines
    assert "iotests.main(supported_fmts=['qcow2']," in test
    # the header: the bug and the versions
    assert "# QEMU bug in 7.2.22 and 10.0.2: QEMU dies with SIGSEGV" in test
    assert "7.2 (7.2.22), 10.0 (10.0.2), 10.0.13,\n# 10.2 (10.2.2), 11.1 (11.1.3)." in test
    assert out == ".\n" + "-" * 70 + "\nRan 1 tests\n\nOK\n"


def test_expected_replies_come_from_the_trace_else_the_model():
    plan = _plan(SEED)
    qmp = plan.qmp_steps
    assert all(s.expected is not None for s in qmp)
    assert qmp[0].source == "trace" and qmp[0].expected == {"return": {}}
    # a written error is what the test asserts
    test, _ = E.render_iotest(plan)
    assert ("        self.assert_qmp(result, 'error/desc',\n"
            "                        \"Cannot change the option 'force-share'\")") in test
    # steps without an expectation: the model's prediction for the target version
    tr = T.load(str(SEED))
    for s in tr.steps:
        s.pop("expect", None)
    plan = E.plan_trace(tr, PROFILES["11.1"])
    assert {s.source for s in plan.qmp_steps} == {"model"}
    assert plan.qmp_steps[0].expected == {"return": {}}
    test, _ = E.render_iotest(plan)
    assert "reply as blockfuzz's model predicts for 11.1" in test


def test_qemu_io_steps_check_the_output_lines_in_the_log():
    plan = _plan(JOBS)
    test, _ = E.render_iotest(plan)
    assert "            result = self.vm.hmp_qemu_io('hd1', 'read -P 0xa1 1M 64k')" in test
    assert "        self.qemu_io_output += ['read 65536/65536 bytes at offset 1048576']" in test
    assert "        self.check_qemu_io_output()" in test
    # jobs: every command from the first job command on waits for them to settle
    assert test.count("self.wait_for_jobs()") == 3   # steps 2, 4 and 6
    assert "self.assertEqual(self.job_status('commit0'), 'pending')" in test


def test_auto_node_names_are_resolved_at_run_time():
    test, _ = E.render_iotest(_plan(AUTO, "7.2"))
    compile(test, "t", "exec")
    assert "'backing': self.auto_node('#block1')," in test
    assert "'file': self.auto_node('#block0')," in test
    assert "        result = canonical(result)" in test
    script = E.render_script(_plan(AUTO, "7.2"))
    compile(script, "t.py", "exec")
    assert "'file': '#block0'" in script   # the script translates at run time


def test_pc_traces_set_the_machine():
    test, _ = E.render_iotest(_plan(PC))
    assert "        self.vm.set_machine('pc')" in test
    assert "    iotests.verify_virtio_scsi_pci_or_ccw()" in test
    assert "MACHINE = 'pc'" in E.render_script(_plan(PC))


def test_script_is_standalone():
    script = E.render_script(_plan(SEGV), "repro.py")
    compile(script, "repro.py", "exec")
    assert script.splitlines()[1] == "# Usage: python3 repro.py /path/to/qemu-system-x86_64"
    imports = {l.split()[1] for l in script.splitlines() if l.startswith(("import ", "from "))}
    assert imports <= {"argparse", "asyncio", "json", "os", "re", "shutil", "signal",
                       "subprocess", "sys", "tempfile", "time"}
    assert "    from qemu.qmp import ExecuteError, QMPClient" in script


def test_untranslatable_traces_are_refused(tmp_path):
    tr = T.load(str(SEED))
    tr.steps.insert(0, {"qmp": "device_del", "args": {"id": "x"}})
    with pytest.raises(E.ExportError, match="step 1 .device_del.: not covered by the model"):
        E.plan_trace(tr, PROFILES["11.1"])
    tr = T.load(str(SEED))
    tr.steps[0]["args"]["file"]["filename"] = "/etc/passwd"
    with pytest.raises(E.ExportError, match="/etc/passwd"):
        E.plan_trace(tr, PROFILES["11.1"])


@pytest.mark.qemu   # the export asks a fetched QEMU for its version
def test_cli_writes_the_files(tmp_path, capsys):
    assert cli.main(["export", str(SEGV), "--iotest", str(tmp_path / "io"),
                     "--qemu", str(_any_fetched())]) == 0
    test = tmp_path / "io/tests/reopen-closes-queued-node-segv"
    assert capsys.readouterr().out.strip() == str(test)
    assert os.access(test, os.X_OK) and test.with_name(test.name + ".out").is_file()
    assert cli.main(["export", str(SEED), "--script", str(tmp_path / "s.py"), "--name", "x"]) == 0
    assert (tmp_path / "s.py").read_text().startswith("#!/usr/bin/env python3\n# Usage: python3 s.py ")
    assert cli.main(["export", str(tmp_path / "missing.json"), "--script", str(tmp_path / "t.py")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err


def _any_fetched() -> str:
    from fuzz.qemufetch import installed

    for v in ("11.1", "10.0", "7.2"):
        if (inst := installed(v)) is not None:
            return str(inst.binary("system"))
    pytest.fail("no fetched QEMU to take a version from: run `make qemu`")


def test_source_versions_are_chosen_from_the_origin_suites():
    found = [("1:10.0.13+ds-0+deb13u1", "trixie"), ("1:10.0.2+ds-1", "trixie"),
             ("1:11.1.3+ds-2~bpo13+1", "trixie-backports")]
    assert choose_source("10.0", found) == "1:10.0.13+ds-0+deb13u1"
    assert choose_source("11.1", found) == "1:11.1.3+ds-2~bpo13+1"
    with pytest.raises(Exception, match="no QEMU 10.0 source package"):
        choose_source("10.0", [("1:10.0.13+ds-0+deb13u1", "sid")])


def test_source_apt_has_its_own_directory_with_deb_src_only(tmp_path):
    apt = _SourceApt(tmp_path / "trixie-src", "amd64", SOURCE_ORIGINS["10.0"])
    lines = (tmp_path / "trixie-src/sources.list").read_text().splitlines()
    assert lines and all(l.startswith("deb-src [signed-by=") for l in lines)
    assert any(l.endswith(" trixie main") for l in lines)
    assert f"Dir::State::status={tmp_path / 'trixie-src' / 'status'}" in apt.options


# ----------------------------------------------------------------------------------------------
# Running it: QEMU's check, a fresh venv


@pytest.fixture(scope="session")
def source_tree():
    """Debian's QEMU 10.0 source, fetched once into .qemu/src/10.0 (idempotent)."""
    return fetch_source("10.0", log=lambda m: None)


@pytest.fixture(scope="session")
def qemu11():
    return qemu_binaries("11.1")


@pytest.mark.qemu
def test_qemu_source_is_idempotent(source_tree, capsys):
    manifest = source_tree.directory / "manifest.json"
    before = manifest.stat().st_mtime_ns
    started = time.monotonic()
    assert cli.main(["qemu", "source", "10.0"]) == 0
    assert capsys.readouterr().out.strip() == str(source_tree.tree)
    assert time.monotonic() - started < 5 and manifest.stat().st_mtime_ns == before
    data = json.loads(manifest.read_text())
    assert data["upstream-version"].startswith("10.0.") and data["package"] == "qemu"
    assert source_installed("10.0") == source_tree
    assert (source_tree.iotests / "iotests.py").is_file()


def _export_iotest(trace: Path, tmp_path: Path, binaries) -> Path:
    profile = E.profile_of(binaries.system)
    plan = E.plan_trace(T.load(str(trace)), profile, origin=str(trace))
    test, out = E.render_iotest(plan)
    path = tmp_path / "iotests" / "tests" / plan.name
    path.parent.mkdir(parents=True)
    path.write_text(test)
    path.with_name(plan.name + ".out").write_text(out)
    return path


@pytest.mark.qemu
def test_exported_iotest_fails_under_check_for_a_crash(source_tree, qemu11, tmp_path):
    test = _export_iotest(SEGV, tmp_path, qemu11)
    p = E.run_check(test, qemu11, source_tree.tree, tmp_path / "scratch", timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "Failures: reopen-closes-queued-node-segv" in out
    assert "qemu received signal 11" in out   # SIGSEGV, as replay reports it


@pytest.mark.qemu
def test_exported_iotest_passes_under_check_for_a_seed(source_tree, qemu11, tmp_path):
    test = _export_iotest(SEED, tmp_path, qemu11)
    p = E.run_check(test, qemu11, source_tree.tree, tmp_path / "scratch", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Passed all 1 iotests" in p.stdout


@pytest.fixture(scope="session")
def qmp_only_python(tmp_path_factory):
    """A fresh venv with nothing but qemu.qmp (pip from PyPI), made once per session."""
    where = tmp_path_factory.mktemp("qmp-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    p = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "qemu.qmp"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    probe = subprocess.run([str(python), "-I", "-c", "import qemu.qmp, importlib.util as u; "
                            "print(u.find_spec('fuzz'), u.find_spec('models'), "
                            "u.find_spec('attrs'))"],
                           capture_output=True, text=True, cwd=where)
    assert probe.stdout.split() == ["None", "None", "None"], probe.stdout + probe.stderr
    return python


def _run_script(trace: Path, tmp_path: Path, python: Path, binaries) -> subprocess.CompletedProcess:
    script = tmp_path / f"{trace.stem}.py"
    assert cli.main(["export", str(trace), "--script", str(script),
                     "--qemu", str(binaries.system)]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QEMU_", "PYTHON"))}
    return subprocess.run([str(python), "-I", str(script), str(binaries.system)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.qemu
def test_exported_script_exits_1_for_a_finding(qmp_only_python, qemu11, tmp_path):
    p = _run_script(SEGV, tmp_path, qmp_only_python, qemu11)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "step 1 (blockdev-add): expected {\"return\": {}}, got {\"return\": {}}: ok" in p.stdout
    assert "step 2 (blockdev-reopen): expected {\"return\": {}}, got: QEMU killed by SIGSEGV" in p.stdout


@pytest.mark.qemu
def test_exported_script_exits_0_for_a_seed(qmp_only_python, qemu11, tmp_path):
    p = _run_script(SEED, tmp_path, qmp_only_python, qemu11)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == "PASSED: every step as expected"
    assert "DIFFERENT" not in p.stdout
