"""``blockfuzz export TRACE --iotest DIR | --script FILE``: a trace as something upstream runs.

Two forms, both checking what QEMU *should* answer at every step:

* ``--iotest DIR`` writes a Python iotest in QEMU's own style, ``DIR/tests/<name>`` and its
  reference output ``DIR/tests/<name>.out`` (``DIR`` stands for ``tests/qemu-iotests`` of a QEMU
  tree; ``./check -qcow2 <name>`` runs it there). A ``iotests.QMPTestCase`` whose ``setUp``
  creates the trace's images with ``qemu_img``/``qemu_io`` and launches ``iotests.VM()``, and
  one test method with each step as ``self.vm.qmp(...)`` / ``self.vm.hmp_qemu_io(...)``
  followed by ``assert_qmp`` on the expected reply. The header says what the bug is and which
  versions it affects.
* ``--script FILE`` writes one standalone Python file that needs only ``qemu.qmp`` and the
  standard library: ``python3 FILE /path/to/qemu-system-x86_64`` creates the images, starts
  QEMU, runs the steps, prints per step what it expected and what it got, and exits 1 while
  the bug is there (a different reply, a crash, a hang), 0 once it is fixed, 2 if it could not
  run.

**What is expected.** A step's written ``expect`` (for the target version, ``by-version``
resolved as replay does), else what blockfuzz's model predicts for the target version (the
trace run through ``models.Model`` alone, as replay runs it). The target version is the one of
``--qemu PATH`` (default ``$QEMU_PROG``, then the fetched 11.1); its profile is chosen as a
session chooses it. qemu-io output lines are expected as written or predicted. A step the model
declines and that has no written expectation cannot be exported (exit 2).

**What is checked.** The reply of every QMP step (``return`` or error class and description),
the lines HMP ``qemu-io`` prints (iotest: read from the VM's log once it is shut down, as
iotest 245 does; script: after each command), the trace's ``assert`` steps (node fields, jobs,
graph snapshots), and that QEMU neither dies nor stops answering. The script also runs
``query-named-block-nodes`` after every step, as the fuzzer does (a crash in that query is the
step's); the iotest runs it where the trace reads the graph and once at the end. The whole
projected graph after every step, which replay compares too, is only checked with ``--graph``
(long literals; for a finding that shows only in the graph).

**Auto-generated node names.** QEMU names an anonymous node ``#block`` + counter + two random
digits; traces use the canonical ``#block<counter>``. Both forms resolve the real name at run
time from ``query-named-block-nodes`` (``auto_node()``) and canonicalise what they compare, so
such traces export as they are.

**Files.** Images keep the trace's plain names: QEMU and the tools run in the test directory
(``iotests.test_dir``; the script: a temporary directory), so every reported file name is the
one the trace expects. ``-M pc`` traces set the machine (``self.vm.set_machine('pc')``); the
iotest sets ``none`` otherwise, as blockfuzz ran it.

:func:`run_check` runs an exported iotest under ``tests/qemu-iotests/check`` of a QEMU source
tree (``fuzz.qemusource``) against a given QEMU, in a scratch copy patched for Debian's builds
(see its docstring). ``--check`` does that right after exporting.  The command line is
``fuzz.exportcmd``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import attrs

from models import Model, NotModeled, profile_for
from models.profiles import PROFILES, VersionProfile
from models.values import JOB_COMMANDS

from . import sandbox
from . import trace as T
from .errors import ExportError, QemuNotFound

__all__ = ["ExportError", "Plan", "plan_trace", "render_iotest", "render_script", "test_name",
           "run_check", "prepare_check", "export_finding", "write_file"]

#: the QEMU releases the corpus was observed on, per profile (the fetched builds)
OBSERVED = {"7.2": "7.2.22", "10.0": "10.0.2", "10.2": "10.2.2", "11.1": "11.1.3"}
#: seconds an iotest step may take before it counts as a hang (the harness allows 5), and quit
STEP_TIMEOUT = 10
QUIT_TIMEOUT = 30
_AUTO = re.compile(r"#block\d+")
_HMP_QEMU_IO = re.compile(r'qemu-io (-d )?([^\s"]+) "([^"]*)"')


# --------------------------------------------------------------------------------------------
# The plan: every step with what QEMU should answer


@attrs.define
class PlanStep:
    number: int               # 1-based, as replay's messages count
    step: dict
    #: qmp steps: {"return": ...} or {"error": {"class", "desc"}}, plus "stdout" for qemu-io
    expected: dict | None = None
    source: str = ""          # "trace" (written expect) or "model"
    #: with --graph: the projected query-named-block-nodes after the step (canonical names)
    graph: list | None = None


@attrs.define
class Plan:
    trace: T.Trace
    name: str                 # iotest name: lowercase, dashes
    profile: VersionProfile
    steps: list[PlanStep]
    origin: str = ""          # where the trace came from (a path), for the header
    graph: bool = False

    @property
    def qmp_steps(self) -> list[PlanStep]:
        return [s for s in self.steps if "qmp" in s.step]

    @property
    def first_job_step(self) -> int | None:
        """From this step on, every command waits for block jobs to settle (as the harness)."""
        return next((s.number for s in self.qmp_steps if s.step["qmp"] in JOB_COMMANDS), None)

    @property
    def uses_auto_names(self) -> bool:
        blob = json.dumps([s.step for s in self.steps] + [s.expected for s in self.steps])
        return "#block" in blob or self.graph

    @property
    def has_qemu_io(self) -> bool:
        return any(s.step["qmp"] == "human-monitor-command" for s in self.qmp_steps)

    @property
    def formats(self) -> list[str]:
        return list(dict.fromkeys(i.format for i in self.trace.images))

    @property
    def affects(self) -> list[str]:
        return list(self.trace.extra.get("affects", []))

    @property
    def test_format(self) -> str:
        """The IMGFMT the iotest declares (check -qcow2): qcow2 when the trace uses it."""
        return "qcow2" if "qcow2" in self.formats or not self.formats else self.formats[0]


def test_name(trace: T.Trace, path: str | None = None) -> str:
    """The iotest name: the trace file's name (else the trace's ``name``), lowercase with dashes,
    as QEMU names the tests in ``tests/qemu-iotests/tests/``."""
    base = Path(path).stem if path else trace.name
    name = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return name or "blockfuzz-trace"


def plan_trace(tr: T.Trace, profile: VersionProfile, *, origin: str = "", name: str | None = None,
               graph: bool = False) -> Plan:
    """Run the trace through the model alone and resolve what every step should answer."""
    for spec in tr.images:
        if (problem := sandbox.image_problem(spec)) is not None:
            raise ExportError(f"image {spec.file}: {problem.describe()}")
    model = Model(profile, tr.images, tr.machine)
    model_lost: int | None = None     # the step the model declined: later predictions unknown
    steps: list[PlanStep] = []
    for i, step in enumerate(tr.steps):
        if "assert" in step:
            step = T.assertion_for(step, profile.name)
        ps = PlanStep(i + 1, step)
        steps.append(ps)
        if "qmp" not in step:
            continue
        cmd, args = step["qmp"], step.get("args", {})
        if (problem := sandbox.step_problem(cmd, args)) is not None:
            raise ExportError(f"step {ps.number} ({cmd}): {problem.describe()}")
        written = T.expectation_for(step, profile.name)
        predicted = None
        if model_lost is None:
            try:
                predicted = model.execute(cmd, args).to_json()
            except NotModeled as e:
                model_lost = ps.number
                if written is None:
                    raise ExportError(f"step {ps.number} ({cmd}): not covered by the model ({e}) "
                                      "and no written expectation") from None
        if written is None and predicted is None:
            raise ExportError(f"step {ps.number} ({cmd}): no written expectation, and the model "
                              f"cannot predict it after declining step {model_lost}")
        if written is not None:
            exp = {k: v for k, v in written.items() if k in ("return", "error", "stdout")}
            if "stdout" not in exp and predicted is not None and predicted.get("stdout"):
                exp["stdout"] = predicted["stdout"]
            ps.expected, ps.source = exp, "trace"
        else:
            ps.expected, ps.source = predicted, "model"
        if cmd == "human-monitor-command":
            ps.expected.setdefault("stdout", [])
        if graph:
            if model_lost is not None:
                raise ExportError(f"--graph: the model declined step {model_lost}, so it cannot "
                                  "predict the graph")
            ps.graph = model.query_named_block_nodes()
    return Plan(tr, name or test_name(tr, origin or None), profile, steps, origin, graph)


def profile_of(binary: str | None) -> VersionProfile:
    """The model profile for ``binary`` (``--qemu``), else for $QEMU_PROG / the fetched default,
    else the default version's profile."""
    from .qemufetch import DEFAULT_VERSION, qemu_version, resolve_qemu

    try:
        system = resolve_qemu(binary).system
    except QemuNotFound:
        if binary:
            raise
        return PROFILES[DEFAULT_VERSION]
    try:
        version = qemu_version(system)
    except Exception as e:   # FetchError: no version banner
        raise ExportError(f"{system}: cannot tell its version: {e}") from None
    return profile_for(*(int(x) for x in version.split(".")))[0]


# --------------------------------------------------------------------------------------------
# Rendering helpers


class _Code:
    """A Python expression inside a literal (rendered by its repr)."""

    def __init__(self, code: str):
        self.code = code

    def __repr__(self) -> str:
        return self.code


def _lit(value: Any, indent: int, width: int = 79, column: int | None = None,
         tail: int = 0) -> str:
    """``value`` as Python source starting at ``column`` (default ``indent``): on one line if it
    fits, else one item per line at ``indent + 4`` and the closing bracket at ``indent`` (long
    strings split into adjacent literals)."""
    column = indent if column is None else column
    one = repr(value)
    if column + len(one) + tail <= width:
        return one
    pad, inner = " " * (indent + 4), indent + 4
    if isinstance(value, dict) and value:
        items = []
        for k, v in value.items():
            key = f"{k!r}: "
            items.append(pad + key + _lit(v, inner, width, inner + len(key), 1) + ",")
        return "{\n" + "\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, (list, tuple)) and value:
        items = [pad + _lit(v, inner, width, tail=1) + "," for v in value]
        return "[\n" + "\n".join(items) + "\n" + " " * indent + "]"
    if isinstance(value, str) and len(value) > 20:
        parts = _split_str(value, max(20, width - inner - 1))
        if len(parts) > 1:
            return "(\n" + "\n".join(pad + repr(p) for p in parts) + "\n" + " " * indent + ")"
    return one


def _with_auto(value: Any, wrap) -> Any:
    """Replace canonical auto node names in ``value`` by ``wrap(name)`` expressions."""
    if isinstance(value, str) and _AUTO.fullmatch(value):
        return wrap(value)
    if isinstance(value, dict):
        return {k: _with_auto(v, wrap) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_auto(v, wrap) for v in value]
    return value


def _comment(text: str, indent: int = 0, width: int = 79) -> list[str]:
    pad = " " * indent + "# "
    out = []
    for para in text.split("\n"):
        if not para.strip():
            out.append(pad.rstrip())
            continue
        out += textwrap.wrap(para, width - len(pad), initial_indent=pad, subsequent_indent=pad,
                             break_long_words=False, break_on_hyphens=False)
    return out


def _versions(plan: Plan) -> str:
    affects = plan.affects
    if not affects:
        return "not recorded in the trace"
    text = ", ".join(f"{v} ({OBSERVED[v]})" if v in OBSERVED else v for v in affects)
    inter = plan.trace.extra.get("intermittent", [])
    if inter:
        text += f"; intermittent on {', '.join(inter)}"
    return text


def _summary(plan: Plan) -> str:
    return plan.trace.description.strip() or plan.trace.name


def _class_name(name: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]
    if words and words[0].lower() == "test":
        words = words[1:]
    return "Test" + "".join(w.capitalize() for w in words)


def _method_name(name: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w]
    return "test_" + "_".join(words) if words and words[0] != "test" else "_".join(words) or "test"


def _source_note(plan: Plan) -> str:
    origin = f" from {plan.origin}" if plan.origin else ""
    return (f"Exported by blockfuzz{origin}. Expected replies are the trace's written "
            f"expectations, else what blockfuzz's reference model predicts for QEMU "
            f"{plan.profile.name}; the test fails while the bug is there.")


# --------------------------------------------------------------------------------------------
# The iotest


def render_iotest(plan: Plan) -> tuple[str, str]:
    """(the test's source, its reference output)."""
    tr = plan.trace
    auto = plan.uses_auto_names
    jobs_from = plan.first_job_step
    L: list[str] = ["#!/usr/bin/env python3", "# group: rw quick", "#"]
    L += _comment(_summary(plan))
    L += ["#"]
    L += _comment(f"Affected QEMU versions (as observed): {_versions(plan)}.")
    L += ["#"]
    L += _comment(_source_note(plan))
    L += ["#", "# SPDX-License-Identifier: GPL-2.0-or-later", ""]
    imports = ["import os"] + (["import re"] if auto or plan.has_qemu_io else []) \
        + (["import time"] if jobs_from else [])
    tools = ["qemu_img"] * bool(tr.images) + ["qemu_io"] * any(i.writes for i in tr.images)
    L += imports + ["", "import iotests"]
    L += [f"from iotests import {', '.join(tools)}"] if tools else []
    L += ["", ""]
    files = list(dict.fromkeys(i.file for i in tr.images))
    L += [f"images = {_lit(files, 0, column=9)}"]
    if plan.has_qemu_io:
        L += ["", "# qemu-io's timing statistics (they differ on every run)",
              "stats = re.compile(r'\\S+ (bytes|[KMGTPE]iB), \\d+ ops; .* ops/sec\\)')"]
    if auto:
        L += ["", "",
              "def canonical(value):",
              "    \"\"\"QEMU names an anonymous node '#block' + a counter + two random",
              "    digits (id_generate()); compare such names by their counter:",
              "    '#block017' -> '#block0'\"\"\"",
              "    if isinstance(value, str):",
              "        return re.sub(r'#block(\\d+)\\d\\d(?!\\d)', r'#block\\1', value)",
              "    if isinstance(value, dict):",
              "        return {k: canonical(v) for k, v in value.items()}",
              "    if isinstance(value, list):",
              "        return [canonical(v) for v in value]",
              "    return value"]
    L += ["", "", f"class {_class_name(plan.name)}(iotests.QMPTestCase):", "    def setUp(self):"]
    L += ["        # The images have the plain names the steps use, and QEMU runs in their",
          "        # directory, so every file name it reports is the one expected below",
          "        self.cwd = os.getcwd()",
          "        os.chdir(iotests.test_dir)"]
    for spec in tr.images:
        args = ["create", "-f", spec.format]
        if spec.backing_file is not None:
            args += ["-b", spec.backing_file]
            if spec.backing_format is not None:
                args += ["-F", spec.backing_format]
        args.append(spec.file)
        if spec.size is not None:
            args.append(str(spec.size))
        L.append(_args_call("qemu_img", args))
        if spec.writes:
            io = ["-f", spec.format]
            for w in spec.writes:
                io += ["-c", f"write -P 0x{w.pattern:02x} {w.offset} {w.length}"]
            io.append(spec.file)
            L.append(_args_call("qemu_io", io))
    L += ["        self.vm = iotests.VM()", f"        self.vm.set_machine({tr.machine!r})",
          "        self.vm.launch()"]
    if plan.has_qemu_io:
        L += ["        # what each HMP qemu-io should print, in order",
              "        self.qemu_io_output = []"]
    if auto:
        L += ["        self.auto_names = {}"]
    L += ["", "    def tearDown(self):", "        try:",
          "            # a QEMU that does not quit is killed (and the test fails)",
          f"            with iotests.Timeout({QUIT_TIMEOUT}, 'QEMU did not quit'):",
          "                self.vm.shutdown()",
          "        finally:", "            for img in images:",
          "                if os.path.exists(img):", "                    os.remove(img)",
          "            os.chdir(self.cwd)"]
    # helpers, only those the steps use
    kinds = {s.step.get("assert") for s in plan.steps if "assert" in s.step}
    snapshots = any("snapshot" in s.step for s in plan.steps)
    if auto:
        L += ["", "    def auto_node(self, name):",
              "        \"\"\"The real name of the anonymous node `name` (canonical)\"\"\"",
              "        if name not in self.auto_names:",
              "            for node in self.vm.qmp('query-named-block-nodes')['return']:",
              "                if canonical(node['node-name']) != node['node-name']:",
              "                    name_ = node['node-name']",
              "                    self.auto_names[canonical(name_)] = name_",
              "        return self.auto_names.get(name, name)"]
    if "node" in kinds:
        L += ["", "    def node(self, name):",
              "        result = self.vm.qmp('query-named-block-nodes')"]
        if auto:
            L += ["        result = canonical(result)"]
        L += ["        return next((n for n in result['return']",
              "                     if n['node-name'] == name), None)"]
    if "job" in kinds:
        L += ["", "    def job_status(self, job_id):",
              "        jobs = self.vm.qmp('query-jobs')['return']",
              "        return next((j['status'] for j in jobs if j['id'] == job_id), None)"]
    if snapshots or plan.graph:
        L += ["", "    def graph(self):",
              "        \"\"\"query-named-block-nodes without image/actual-size (the host file",
              "        system's allocation)\"\"\"",
              "        def image(info):",
              "            info = {k: v for k, v in info.items() if k != 'actual-size'}",
              "            if 'backing-image' in info:",
              "                info['backing-image'] = image(info['backing-image'])",
              "            return info",
              "        nodes = self.vm.qmp('query-named-block-nodes')['return']",
              "        nodes = [dict(n, image=image(n['image'])) if 'image' in n else n",
              "                 for n in nodes]",
              f"        return {'canonical(nodes)' if auto else 'nodes'}"]
    if jobs_from:
        L += ["", "    def wait_for_jobs(self):",
              "        \"\"\"Wait until each block job is pending, ready or concluded\"\"\"",
              "        deadline = time.monotonic() + 10",
              "        while True:",
              "            jobs = self.vm.qmp('query-jobs')['return']",
              "            settled = ('pending', 'ready', 'concluded')",
              "            if all(j['status'] in settled for j in jobs):",
              "                return",
              "            self.assertLess(time.monotonic(), deadline,",
              "                            f'jobs never settled: {jobs}')",
              "            time.sleep(0.01)"]
    if plan.has_qemu_io:
        L += ["", "    def check_qemu_io_output(self):",
              "        \"\"\"HMP qemu-io prints to QEMU's stdout: the VM's log\"\"\"",
              f"        with iotests.Timeout({QUIT_TIMEOUT}, 'QEMU did not quit'):",
              "            self.vm.shutdown()",
              "        # (the log also has QEMU's own messages, e.g. warnings: not qemu-io's)",
              "        prog = os.path.basename(iotests.qemu_prog) + ': '",
              "        log = [line for line in self.vm.get_log().splitlines()",
              "               if not stats.fullmatch(line) and not line.startswith(prog)]",
              f"        self.assertEqual({'canonical(log)' if auto else 'log'}, self.qemu_io_output)"]
    L += ["", f"    def {_method_name(plan.name)}(self):"]
    body: list[str] = []
    wrap = lambda n: _Code(f"self.auto_node({n!r})")  # noqa: E731
    for ps in plan.steps:
        body += _iotest_step(ps, plan, wrap, jobs_from)
    body = body[1:]   # no blank line right after the def
    body += ["", "        # QEMU must still answer and report its block graph (blockfuzz",
             "        # queries it after every step)",
             "        self.assertIn('return', self.vm.qmp('query-named-block-nodes'))"]
    if plan.has_qemu_io:
        body += ["        self.check_qemu_io_output()"]
    L += body
    L += ["", "", "if __name__ == '__main__':",
          f"    iotests.main(supported_fmts=[{plan.test_format!r}],",
          "                 supported_protocols=['file'])", ""]
    if any(s.step.get("qmp") == "device_add" and "scsi" in str(s.step.get("args", {}).get("driver"))
           for s in plan.steps):
        L.insert(L.index("if __name__ == '__main__':") + 1,
                 "    iotests.verify_virtio_scsi_pci_or_ccw()")
    out = ".\n" + "-" * 70 + "\nRan 1 tests\n\nOK\n"
    return "\n".join(L), out


def _split_str(value: str, room: int) -> list[str]:
    """``value`` in pieces (at spaces) whose literals fit in ``room`` columns."""
    parts, cur = [], ""
    for w in re.findall(r"\S*\s*", value)[:-1] or [value]:
        if cur and len(repr(cur + w)) > room:
            parts.append(cur)
            cur = ""
        cur += w
    return parts + [cur]


def _call(prefix: str, value: Any, suffix: str, indent: int = 8, width: int = 79) -> str:
    """One statement of the test method: ``prefix`` + ``value`` as a literal + ``suffix``.
    A string that does not fit goes on the next line(s), aligned after the call's ``(``."""
    one = repr(value)
    if indent + len(prefix) + len(one) + len(suffix) <= width:
        return " " * indent + prefix + one + suffix
    if isinstance(value, str) and "(" in prefix:
        col = indent + prefix.index("(") + 1
        parts = _split_str(value, width - col - len(suffix))
        body = ("\n" + " " * col).join(repr(p) for p in parts)
        return " " * indent + prefix.rstrip() + "\n" + " " * col + body + suffix
    return " " * indent + prefix + _lit(value, indent, column=indent + len(prefix) + len(suffix)) \
        + suffix


def _args_call(func: str, args: list[str], indent: int = 8, width: int = 79) -> str:
    """``func('a', 'b', ...)``, wrapped after a comma where a line would get too long."""
    col = indent + len(func) + 1
    lines, cur = [], " " * indent + func + "("
    for i, a in enumerate(args):
        piece = repr(a) + ("," if i < len(args) - 1 else ")")
        if len(cur) + len(piece) + 1 > width and not cur.endswith("("):
            lines.append(cur.rstrip())
            cur = " " * col
        cur += piece + " "
    return "\n".join(lines + [cur.rstrip()])


def _iotest_step(ps: PlanStep, plan: Plan, wrap, jobs_from: int | None) -> list[str]:
    step = ps.step
    auto = plan.uses_auto_names
    out = [""]
    if "qmp" in step:
        cmd, args = step["qmp"], step.get("args", {})
        note = "" if ps.source == "trace" else \
            f" (reply as blockfuzz's model predicts for {plan.profile.name})"
        out.append(f"        # step {ps.number}: {cmd}{note}")
        exp = ps.expected or {}
        m = _HMP_QEMU_IO.fullmatch(args.get("command-line", "")) \
            if cmd == "human-monitor-command" else None
        # a hang is a failure of this step, not of the whole run
        out.append(f"        with iotests.Timeout({STEP_TIMEOUT}, 'step {ps.number} ({cmd}): "
                   "no reply'):")
        if m is not None:
            dev = wrap(m.group(2)) if _AUTO.fullmatch(m.group(2)) else m.group(2)
            qdev = ", qdev=True" if m.group(1) else ""
            out.append(f"            result = self.vm.hmp_qemu_io({dev!r}, {m.group(3)!r}{qdev})")
        elif cmd == "human-monitor-command":
            out.append(f"            result = self.vm.hmp({args.get('command-line', '')!r})")
        elif args:
            out.append(_call(f"result = self.vm.qmp({cmd!r}, ", _with_auto(args, wrap), ")",
                             indent=12))
        else:
            out.append(f"            result = self.vm.qmp({cmd!r})")
        if jobs_from is not None and ps.number >= jobs_from:
            out.append("            self.wait_for_jobs()")
        res = "result"
        if auto and "#block" in json.dumps(exp):
            out.append("        result = canonical(result)")
        if "error" in exp:
            out.append(f"        self.assert_qmp({res}, 'error/class', {exp['error']['class']!r})")
            out.append(_call(f"self.assert_qmp({res}, 'error/desc', ", exp["error"]["desc"], ")"))
        else:
            ret = exp.get("return")
            if isinstance(ret, list) and ret:
                out.append(_call(f"self.assertEqual({res}['return'], ", ret, ")"))
            else:
                out.append(_call(f"self.assert_qmp({res}, 'return', ", ret, ")"))
        if cmd == "human-monitor-command":
            lines = exp.get("stdout", [])
            out.append(_call("self.qemu_io_output += ", lines, ""))
        if plan.graph and ps.graph is not None:
            out.append(_call("self.assertEqual(self.graph(), ", ps.graph, ")"))
        return out
    if "snapshot" in step:
        var = "graph_" + re.sub(r"\W", "_", step["snapshot"])
        out.append(f"        # step {ps.number}: remember the graph as {step['snapshot']!r}")
        out.append(f"        {var} = self.graph()")
        return out
    kind = step["assert"]
    if kind == "graph-equals":
        var = "graph_" + re.sub(r"\W", "_", step["snapshot"])
        out.append(f"        # step {ps.number}: the graph is as it was at {step['snapshot']!r}")
        out.append(f"        self.assertEqual(self.graph(), {var})")
    elif kind == "job":
        out.append(f"        # step {ps.number}: job {step['id']}")
        if step.get("absent"):
            out.append(f"        self.assertIsNone(self.job_status({step['id']!r}))")
        else:
            out.append(f"        self.assertEqual(self.job_status({step['id']!r}), {step['status']!r})")
    else:
        node = step["node"]
        out.append(f"        # step {ps.number}: node {node}")
        if "path" not in step:
            check = "assertIsNone" if step.get("absent") else "assertIsNotNone"
            out.append(f"        self.{check}(self.node({node!r}))")
        elif step.get("absent"):
            out.append(_call(f"self.assert_qmp_absent(self.node({node!r}), ", step["path"], ")"))
        else:
            value = step["equals"]
            if isinstance(value, list) and value:
                out.append(_call(f"self.assertEqual(self.dictpath(self.node({node!r}), "
                                 f"{step['path']!r}), ", value, ")"))
            else:
                out.append(_call(f"self.assert_qmp(self.node({node!r}), {step['path']!r}, ",
                                 value, ")"))
    return out


# --------------------------------------------------------------------------------------------
# The standalone script


def render_script(plan: Plan, filename: str = "reproducer.py") -> str:
    tr = plan.trace
    steps = []
    for ps in plan.steps:
        s = {k: v for k, v in ps.step.items() if k not in ("expect", "observed")}
        if ps.expected is not None:
            s["expect"] = ps.expected
        if ps.graph is not None:
            s["graph"] = ps.graph
        steps.append(s)
    images = [i.to_json() for i in tr.images]
    head = [
        "#!/usr/bin/env python3",
        f"# Usage: python3 {filename} /path/to/qemu-system-x86_64",
        "#",
    ]
    head += _comment(_summary(plan))
    head += ["#"]
    head += _comment(f"Affected QEMU versions (as observed): {_versions(plan)}.")
    head += ["#"]
    head += _comment(_source_note(plan).replace("the test fails", "this script exits 1"))
    head += [
        "#",
        "# Needs Python 3.8+ and the qemu.qmp package (pip install qemu.qmp), nothing else.",
        "# qemu-img and qemu-io: --qemu-img/--qemu-io, else $QEMU_IMG_PROG/$QEMU_IO_PROG, else",
        "# beside the emulator, else $PATH. Exit status: 0 QEMU answered every step as",
        "# expected (the bug is fixed), 1 it did not (a different reply, a crash or a hang),",
        "# 2 the reproducer could not run.",
        "",
        f"MACHINE = {tr.machine!r}",
        "",
        "# The disk images, created in order in an empty directory: qemu-img create -f FORMAT",
        "# [-b BACKING -F BACKING_FORMAT] FILE [SIZE], then qemu-io -c 'write -P PATTERN OFFSET",
        "# LENGTH' for each write",
        f"IMAGES = {_lit(images, 0, column=9)}",
        "",
        "# The steps: a QMP command and what QEMU should answer ('stdout': the lines HMP qemu-io",
        "# prints), or a check of query-named-block-nodes / query-jobs. '#block<N>' names the",
        "# N-th anonymous node (QEMU appends two random digits to it)",
        f"STEPS = {_lit(steps, 0, column=8)}",
        "",
    ]
    # the script stands alone, so it gets the harness's list of job commands as a literal
    jobs = ", ".join(json.dumps(c) for c in sorted(JOB_COMMANDS))
    return "\n".join(head) + _SCRIPT_RUNTIME.replace("@JOB_COMMANDS@", jobs)


_SCRIPT_RUNTIME = r'''
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    from qemu.qmp import ExecuteError, QMPClient
except ImportError:
    sys.exit("this reproducer needs the qemu.qmp package: pip install qemu.qmp")

JOB_COMMANDS = {@JOB_COMMANDS@}
SETTLED = {"pending", "ready", "concluded"}
STATS = re.compile(r"\S+ (bytes|[KMGTPE]iB), \d+ ops; .* ops/sec\)"
                   r"|\d+,\d+,[\d:.]+,[\d.einfa]+,[\d.einfa]+")
REAL_AUTO = re.compile(r"#block(\d+)\d\d(?!\d)")
CANONICAL_AUTO = re.compile(r"#block\d+")


class Failed(Exception):
    """QEMU died or hung: no further step can run."""


def canonical(value):
    if isinstance(value, str):
        return REAL_AUTO.sub(r"#block\1", value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def projected(nodes):
    """query-named-block-nodes as compared: canonical names, no image/actual-size"""
    def image(info):
        info = {k: v for k, v in info.items() if k != "actual-size"}
        if "backing-image" in info:
            info["backing-image"] = image(info["backing-image"])
        return info
    return canonical([dict(n, image=image(n["image"])) if "image" in n else n for n in nodes])


def dictpath(d, path):
    for part in path.split("/"):
        if not isinstance(d, dict) or part not in d:
            return False, None
        d = d[part]
    return True, d


def show(value):
    return json.dumps(value, sort_keys=True)


def tool(name, explicit, env, qemu):
    if explicit:
        return explicit
    if os.environ.get(env):
        return os.environ[env]
    beside = os.path.join(os.path.dirname(os.path.abspath(qemu)), name)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found: pass --{name} PATH or set ${env}")
    return found


def make_images(workdir, qemu_img, qemu_io):
    for spec in IMAGES:
        argv = [qemu_img, "create", "-q", "-f", spec["format"]]
        if spec.get("backing-file"):
            argv += ["-b", spec["backing-file"]]
            if spec.get("backing-format"):
                argv += ["-F", spec["backing-format"]]
        argv.append(spec["file"])
        if spec.get("size") is not None:
            argv.append(str(spec["size"]))
        run_tool(argv, workdir)
        if spec.get("writes"):
            argv = [qemu_io, "-f", spec["format"]]
            for w in spec["writes"]:
                argv += ["-c", f"write -P 0x{w['pattern']:02x} {w['offset']} {w['length']}"]
            run_tool(argv + [spec["file"]], workdir)


def run_tool(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"cannot create the images: {' '.join(argv)}: {p.stdout}{p.stderr}", file=sys.stderr)
        sys.exit(2)


class Qemu:
    def __init__(self, binary, workdir, timeout):
        self.binary, self.workdir, self.timeout = binary, workdir, timeout
        self.sockdir = tempfile.mkdtemp(prefix="qmp-")
        self.sock = os.path.join(self.sockdir, "qmp.sock")
        self.stdout_path = os.path.join(workdir, "qemu.stdout.log")
        self.stderr_path = os.path.join(workdir, "qemu.stderr.log")
        self.names = {}        # canonical -> real auto node names
        self.jobs_possible = False
        self.hung = False
        self.proc = None
        self.qmp = QMPClient("reproducer")

    def argv(self):
        argv = [self.binary, "-M", MACHINE, "-nodefaults", "-display", "none",
                "-qmp", f"unix:{self.sock},server=on,wait=off"]
        if MACHINE != "none":
            # the guest never runs; a relocated installation's firmware is in ../share
            argv += ["-accel", "tcg", "-S"]
            share = os.path.join(os.path.dirname(os.path.abspath(self.binary)), "..", "share")
            for data in ("seabios", "qemu"):
                if os.path.isdir(os.path.join(share, data)):
                    argv += ["-L", os.path.normpath(os.path.join(share, data))]
        return argv

    async def start(self):
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                print(f"QEMU did not start (exit status {self.proc.returncode}):\n"
                      f"{self.stderr_tail()}", file=sys.stderr)
                sys.exit(2)
            try:
                await self.qmp.connect(self.sock)
                return
            except Exception:
                if time.monotonic() > deadline:
                    print("QEMU's QMP socket never answered", file=sys.stderr)
                    sys.exit(2)
                await asyncio.sleep(0.02)

    def stderr_tail(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def died(self, during):
        try:
            rc = self.proc.wait(1)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is not None and rc < 0:
            try:
                how = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                how = f"killed by signal {-rc}"
        else:
            how = f"exited with status {rc}" if rc is not None else "closed its QMP socket"
        tail = self.stderr_tail().strip()
        return Failed(f"QEMU {how} during {during}" + (f"\n  stderr: {tail}" if tail else ""))

    async def raw(self, cmd, args=None):
        """The reply as QMP sends it: {"return": ...} or {"error": {...}}"""
        try:
            ret = await asyncio.wait_for(self.qmp.execute(cmd, args), self.timeout)
            reply = {"return": ret}
        except ExecuteError as e:
            reply = {"error": {"class": e.received["error"]["class"],
                               "desc": e.received["error"]["desc"]}}
        except asyncio.TimeoutError:
            self.hung = True
            raise Failed(f"QEMU did not answer {cmd} within {self.timeout:g} s (hang)") from None
        except Exception:
            raise self.died(cmd) from None
        if self.proc.poll() is not None and cmd != "quit":
            raise self.died(cmd)
        return reply

    def to_real(self, value):
        if isinstance(value, str):
            return self.names.get(value, value)
        if isinstance(value, dict):
            return {k: self.to_real(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.to_real(v) for v in value]
        return value

    def mentions(self, value):
        if isinstance(value, str):
            return [value] if CANONICAL_AUTO.fullmatch(value) else []
        if isinstance(value, dict):
            return [m for v in value.values() for m in self.mentions(v)]
        if isinstance(value, list):
            return [m for v in value for m in self.mentions(v)]
        return []

    async def nodes(self, during):
        """The projected graph, or None (printed) if QEMU cannot report it"""
        reply = await self.raw("query-named-block-nodes")
        if "return" not in reply:
            print(f"{during}: query-named-block-nodes failed: {show(canonical(reply))}: DIFFERENT")
            return None
        for node in reply["return"]:
            name = node.get("node-name", "")
            if canonical(name) != name:
                self.names[canonical(name)] = name
        return projected(reply["return"])

    async def command(self, cmd, args):
        """Run one step's command: (canonical reply, qemu-io lines)"""
        hmp = cmd == "human-monitor-command"
        line = args.get("command-line", "") if hmp else ""
        head, quote, rest = line.partition('"')
        wanted = self.mentions(args) + (CANONICAL_AUTO.findall(head) if hmp else [])
        if any(n not in self.names for n in wanted):
            await self.nodes(f"the names for {cmd}")
        wire = self.to_real(args)
        if hmp:
            head = CANONICAL_AUTO.sub(lambda m: self.names.get(m[0], m[0]), head)
            wire = dict(wire, **{"command-line": head + quote + rest})
        before = os.path.getsize(self.stdout_path)
        reply = await self.raw(cmd, wire or None)
        if cmd in JOB_COMMANDS and "return" in reply:
            self.jobs_possible = True
        if self.jobs_possible:
            await self.settle(cmd)
        with open(self.stdout_path, "rb") as f:
            f.seek(before)
            text = f.read().decode("utf-8", "replace")
        lines = [l for l in text.split("\n")[:-1] if not STATS.fullmatch(l)] if text else []
        return canonical(reply), canonical(lines)

    async def settle(self, cmd):
        """Wait until each block job is pending, ready or concluded, or gone"""
        deadline = time.monotonic() + self.timeout
        while True:
            jobs = (await self.raw("query-jobs")).get("return", [])
            if not jobs:
                self.jobs_possible = False
                return
            if all(j.get("status") in SETTLED for j in jobs):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{j.get('id')}={j.get('status')}" for j in jobs)
                self.hung = True
                raise Failed(f"block jobs never settled after {cmd} (hang): {states}")
            await asyncio.sleep(0.005)

    async def stop(self):
        """quit; a crash on the way out is a failure too"""
        failure = None
        if self.proc.poll() is None and not self.hung:
            try:
                await asyncio.wait_for(self.qmp.execute("quit"), self.timeout)
            except Exception:
                pass
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                failure = Failed("QEMU did not exit after quit")
        if self.proc.poll() is not None and self.proc.returncode < 0 and failure is None:
            failure = self.died("quit")
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            await self.qmp.disconnect()
        except Exception:
            pass
        shutil.rmtree(self.sockdir, ignore_errors=True)
        return failure


async def run_steps(qemu):
    """Run every step; returns the number of differences"""
    differences = 0
    snapshots = {}
    await qemu.start()
    try:
        for number, step in enumerate(STEPS, 1):
            if "qmp" in step:
                cmd = step["qmp"]
                what = f"step {number} ({cmd})"
                want = {k: v for k, v in step["expect"].items() if k in ("return", "error")}
                if "stdout" in step["expect"]:
                    want["stdout"] = step["expect"]["stdout"]
                try:
                    reply, lines = await qemu.command(cmd, step.get("args", {}))
                except Failed as e:
                    print(f"{what}: expected {show(want)}, got: {e}")
                    raise
                got = dict(reply)
                if "stdout" in want:
                    got["stdout"] = lines
                print(f"{what}: expected {show(want)}, got {show(got)}: "
                      f"{'ok' if got == want else 'DIFFERENT'}")
                # as the fuzzer does: the graph query belongs to the step
                graph = await qemu.nodes(what)
                same = got == want and graph is not None
                if "graph" in step:
                    same_graph = graph == step["graph"]
                    print(f"{what}: query-named-block-nodes "
                          f"{'as expected' if same_graph else 'DIFFERENT: ' + show(graph)}")
                    same = same and same_graph
                differences += not same
                continue
            what = f"step {number}"
            if "snapshot" in step:
                snapshots[step["snapshot"]] = await qemu.nodes(what)
                print(f"{what}: remember the graph as {step['snapshot']!r}")
                continue
            kind = step["assert"]
            if kind == "job":
                jobs = (await qemu.raw("query-jobs")).get("return", [])
                job = next((j for j in jobs if j.get("id") == step["id"]), None)
                got = None if job is None else job.get("status")
                want = None if step.get("absent") else step["status"]
                label = f"job {step['id']} status"
            elif kind == "graph-equals":
                got = await qemu.nodes(what)
                want = snapshots.get(step["snapshot"])
                label = f"graph equals {step['snapshot']!r}"
            else:
                nodes = await qemu.nodes(what) or []
                node = next((n for n in nodes if n.get("node-name") == step["node"]), None)
                if "path" not in step:
                    got = "absent" if node is None else "present"
                    want = "absent" if step.get("absent") else "present"
                    label = f"node {step['node']}"
                else:
                    present, value = dictpath(node, step["path"]) if node else (False, None)
                    got = value if present else "<absent>"
                    want = "<absent>" if step.get("absent") else step["equals"]
                    label = f"node {step['node']} {step['path']}"
            same = got == want and type(got) is type(want)
            shown = (lambda v: "(the snapshot)") if kind == "graph-equals" else show
            print(f"{what}: {label}: expected {shown(want)}, got {shown(got) if not same else shown(want)}: "
                  f"{'ok' if same else 'DIFFERENT'}")
            differences += not same
    finally:
        failure = await qemu.stop()
    if failure is not None:
        raise failure
    return differences


def main():
    p = argparse.ArgumentParser(description=__doc__ or "blockfuzz reproducer")
    p.add_argument("qemu", help="the qemu-system-x86_64 to test")
    p.add_argument("--qemu-img", help="qemu-img (default: $QEMU_IMG_PROG, beside QEMU, $PATH)")
    p.add_argument("--qemu-io", help="qemu-io (default: $QEMU_IO_PROG, beside QEMU, $PATH)")
    p.add_argument("--timeout", type=float, default=10.0, help="per command (default 10 s)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (images, logs)")
    args = p.parse_args()
    if os.sep not in args.qemu:
        args.qemu = shutil.which(args.qemu) or args.qemu
    if not os.access(args.qemu, os.X_OK):
        sys.exit(f"{args.qemu}: not an executable")
    args.qemu = os.path.abspath(args.qemu)   # QEMU and the tools run in the work directory
    qemu_img = os.path.abspath(tool("qemu-img", args.qemu_img, "QEMU_IMG_PROG", args.qemu))
    qemu_io = os.path.abspath(tool("qemu-io", args.qemu_io, "QEMU_IO_PROG", args.qemu))
    workdir = tempfile.mkdtemp(prefix="blockfuzz-repro-")
    status = 2
    try:
        make_images(workdir, qemu_img, qemu_io)
        try:
            differences = asyncio.run(run_steps(Qemu(args.qemu, workdir, args.timeout)))
        except Failed as e:
            print(f"FAILED: {str(e).splitlines()[0]}")
            status = 1
        else:
            if differences:
                print(f"FAILED: {differences} step(s) not as expected: the bug is there")
                status = 1
            else:
                print("PASSED: every step as expected")
                status = 0
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
'''


# --------------------------------------------------------------------------------------------
# Running an exported iotest under QEMU's check

#: The patch a Debian QEMU needs under ``check``: its builds have no ``qtest`` accelerator, which
#: the iotests hard-code, so a scratch copy of the tree uses TCG with the CPUs stopped (no guest
#: code runs; the ``-qtest`` chardev itself works without the accelerator, but then logs to
#: stderr, i.e. into the VM's log, unless told otherwise, which the qtest accelerator's default
#: does):
#:
#:   --- a/python/qemu/machine/qtest.py
#:   +++ b/python/qemu/machine/qtest.py
#:   -            '-accel', 'qtest'
#:   +            '-accel', 'tcg', '-S', '-qtest-log', '/dev/null'
#:   --- a/tests/qemu-iotests/testenv.py
#:   +++ b/tests/qemu-iotests/testenv.py
#:   -        self.qemu_options = '-nodefaults -display none -accel qtest'
#:   +        self.qemu_options = '-nodefaults -display none -accel tcg'
CHECK_PATCH = (
    ("python/qemu/machine/qtest.py", "'-accel', 'qtest'",
     "'-accel', 'tcg', '-S', '-qtest-log', '/dev/null'"),
    ("tests/qemu-iotests/testenv.py", "-accel qtest", "-accel tcg"),
)


def _wrapper(path: Path, argv: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n# written by blockfuzz (fuzz/export.py) for tests/qemu-iotests/check\n"
                    f"exec {' '.join(shlex.quote(a) for a in argv)} \"$@\"\n")
    path.chmod(0o755)


def _extra_tool(binaries, name: str, scratch: Path) -> list[str]:
    """argv of qemu-nbd / qemu-storage-daemon for ``binaries``: testenv.py insists they exist.
    A fetched tree has them unwrapped (its bin/ wraps three programs): run them the way the
    tree's wrappers run theirs. Otherwise beside the emulator, else a stub that fails."""
    system = Path(binaries.system)
    beside = system.parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    img_wrapper = Path(binaries.img)
    try:
        text = img_wrapper.read_text()
    except (OSError, UnicodeDecodeError):
        text = ""
    m = re.search(r"^exec (.*)/usr/bin/qemu-img' \"\$@\"$", text, re.M)
    if m and "QEMU_MODULE_DIR=" in text:
        line = m.group(0).replace("/usr/bin/qemu-img'", f"/usr/bin/{name}'")
        real = re.search(r"'([^']*/usr/bin/" + re.escape(name) + ")'", line)
        if real and os.access(real.group(1), os.X_OK):
            body = "\n".join(l for l in text.splitlines() if l.startswith(("QEMU_MODULE_DIR", "export")))
            path = scratch / "tools" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"#!/bin/sh\n{body}\n{line}\n")
            path.chmod(0o755)
            return [str(path)]
    stub = scratch / "tools" / name
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(f"#!/bin/sh\necho '{name}: not available here' >&2\nexit 1\n")
    stub.chmod(0o755)
    return [str(stub)]


def prepare_check(tree: Path, binaries, scratch: Path) -> tuple[Path, dict[str, str]]:
    """A scratch copy of ``tree``'s iotests set up to run against ``binaries``.

    Copies ``tests/qemu-iotests`` and ``python`` (all ``check`` and ``iotests.py`` use) into
    ``scratch``, applies :data:`CHECK_PATCH`, and writes the programs testenv.py wants:
    ``QEMU_PROG`` (a wrapper adding ``-L`` for a fetched tree's firmware, as the harness does),
    ``QEMU_IMG_PROG``, ``QEMU_IO_PROG``, ``QEMU_NBD_PROG``, ``QSD_PROG`` (testenv.py exits if
    any is missing, though these tests use neither of the last two). Returns the iotests
    directory to run ``check`` in and the environment to run it with (``TEST_DIR`` and
    ``SOCK_DIR`` inside ``scratch``; the socket directory is short, for AF_UNIX's path limit).
    """
    tree, scratch = Path(tree), Path(scratch)
    iotests = scratch / "tests" / "qemu-iotests"
    if not iotests.exists():
        shutil.copytree(tree / "tests" / "qemu-iotests", iotests, symlinks=True)
        shutil.copytree(tree / "python", scratch / "python", symlinks=True)
        for rel, old, new in CHECK_PATCH:
            path = scratch / rel
            text = path.read_text()
            if text.count(old) != 1:
                raise ExportError(f"{rel}: cannot apply the check patch ({old!r} found "
                                  f"{text.count(old)} times)")
            path.write_text(text.replace(old, new))
    system = Path(binaries.system)
    share = system.parent.parent / "share"
    firmware = [a for d in ("seabios", "qemu") if (share / d).is_dir()
                for a in ("-L", str((share / d).resolve()))]
    _wrapper(scratch / "tools" / "qemu-system-x86_64", [str(system), *firmware])
    sock = Path(tempfile.mkdtemp(prefix="bf-sock-"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("QEMU_", "IMG"))},
           "QEMU_PROG": str(scratch / "tools" / "qemu-system-x86_64"),
           "QEMU_IMG_PROG": str(binaries.img), "QEMU_IO_PROG": str(binaries.io),
           "QEMU_NBD_PROG": _extra_tool(binaries, "qemu-nbd", scratch)[0],
           "QSD_PROG": _extra_tool(binaries, "qemu-storage-daemon", scratch)[0],
           "TEST_DIR": str(scratch / "scratch"), "SOCK_DIR": str(sock)}
    return iotests, env


def run_check(test: Path, binaries, tree: Path, scratch: Path, *, fmt: str = "qcow2",
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the exported iotest ``test`` (``.../tests/<name>``, its ``.out`` beside it) under
    ``check`` in a scratch copy of ``tree`` (:func:`prepare_check`); ``check``'s exit status
    is 0 when it passes."""
    test = Path(test)
    iotests, env = prepare_check(tree, binaries, scratch)
    for suffix in ("", ".out"):
        src = test.with_name(test.name + suffix)
        dst = iotests / "tests" / src.name
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if not suffix else 0o644)
    argv = [sys.executable, "check", f"-{fmt}", test.name]
    # its own session: on a timeout the whole tree (check, the test, QEMU) goes
    proc = subprocess.Popen(argv, cwd=iotests, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\nblockfuzz: check did not finish within {timeout:g} s, killed\n"
        proc.returncode = -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(env["SOCK_DIR"], ignore_errors=True)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# --------------------------------------------------------------------------------------------
# A campaign's finding


def export_finding(folder: str, binaries) -> None:
    """A campaign's finding folder gets its reproducers beside the trace: ``reproducer.py``
    (needs only qemu.qmp) and ``iotest/tests/<name>`` (+ ``.out``) for QEMU's ``check``, both
    expecting what the campaign build's profile predicts.  Never raises: a trace the model
    cannot plan (a declined step without a written expectation) just gets none, with a note."""
    try:
        tr = T.load(os.path.join(folder, "minimal.json"))
        plan = plan_trace(tr, profile_of(str(binaries.system)),
                          origin=os.path.join(folder, "minimal.json"),
                          name="blockfuzz-" + os.path.basename(folder))
        write_file(Path(folder) / "reproducer.py", render_script(plan), 0o755)
        test, out = render_iotest(plan)
        path = Path(folder) / "iotest" / "tests" / plan.name
        write_file(path, test, 0o755)
        write_file(path.with_name(plan.name + ".out"), out, 0o644)
    except Exception as e:   # noqa: BLE001 - the finding itself is already on disk
        write_file(Path(folder) / "reproducer.txt",
               f"no reproducer exported: {type(e).__name__}: {e}\n", 0o644)


def write_file(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.chmod(mode)
    os.replace(tmp, path)
