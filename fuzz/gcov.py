"""Line and branch coverage of QEMU's block layer, from a gcov build (``qemu build --gcov``).

``blockfuzz run --coverage`` and ``blockfuzz replay --coverage`` against such a build collect
QEMU's counters of that run only, and report them with gcovr: an HTML report
(``coverage/index.html``), its JSON (``coverage/gcovr.json``) and a one-screen summary: line
and branch coverage of ``block.c``, ``blockdev.c`` and ``block/*.c``, and of the reopen path
function by function (:data:`REOPEN_PATH`).

How the counters of one run are kept apart: QEMU (libgcov) writes them when it exits, to the
object files' paths; ``GCOV_PREFIX`` and ``GCOV_PREFIX_STRIP`` send them to a directory of the
run's own instead (``DIR/gcov-data/``), so a second campaign on the same build, or the build's
own earlier runs, never mix in.  A QEMU killed by a signal (a crash, a hang, a QEMU the pool
discards) writes nothing: coverage is what the QEMUs that quit reached.  Before gcovr reads
them, each counter file gets its notes file (``.gcno``, from the build directory) beside it.

Coverage runs QEMU without the chroot (``BLOCKFUZZ_NO_CHROOT``): inside it the build
directory, where libgcov writes, does not exist.  The step path check (``fuzz.sandbox``)
still refuses every file name outside the work directory.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

from fuzz.errors import HarnessError

__all__ = ["GcovRun", "REOPEN_PATH", "gcov_run_for", "summary_text"]

#: the files of QEMU's block layer the report covers (relative to the source tree)
BLOCK_FILES = re.compile(r"^(block\.c|blockdev\.c|block/[^/]+\.c)$")
#: the reopen path: the generic reopen code, the QMP command, the child-replacing helpers and
#: every driver's .bdrv_reopen_prepare/commit/abort
REOPEN_PATH = re.compile(r"^(bdrv_reopen\w*|qmp_blockdev_reopen|bdrv_set_file_or_backing_noperm"
                         r"|bdrv_set_backing_noperm|\w+_reopen_(prepare|commit|abort))$")


@attrs.frozen
class FunctionCoverage:
    file: str
    name: str
    lines: int
    covered: int

    @property
    def reached(self) -> bool:
        return self.covered > 0


@attrs.define
class GcovRun:
    """The counters of one run of a gcov build: ``data`` is where QEMU writes them."""

    build_dir: Path
    source_dir: Path
    data: Path

    def env(self) -> dict[str, str]:
        # /work/x/build/libblock.a.p/block.c.gcda -> DATA/libblock.a.p/block.c.gcda
        strip = len(self.build_dir.resolve().parts) - 1
        return {"GCOV_PREFIX": str(self.data), "GCOV_PREFIX_STRIP": str(strip),
                "BLOCKFUZZ_NO_CHROOT": "1"}

    _saved: dict = attrs.field(factory=dict)

    def activate(self) -> None:
        """Set the environment for every QEMU this process (and its workers) start."""
        self.data.mkdir(parents=True, exist_ok=True)
        for k, v in self.env().items():
            self._saved.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def deactivate(self) -> None:
        """Back to the environment before :meth:`activate` (the QEMUs that minimize and
        report findings afterwards are not the run's)."""
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved.clear()

    def _pair_notes(self) -> int:
        """Link each counter file's notes file beside it; returns how many counter files."""
        n = 0
        build = self.build_dir.resolve()
        for gcda in self.data.rglob("*.gcda"):
            rel = gcda.relative_to(self.data)
            gcno = (build / rel).with_suffix(".gcno")
            link = gcda.with_suffix(".gcno")
            if gcno.is_file() and not link.exists():
                link.symlink_to(gcno)
            n += 1
        return n

    def report(self, out: Path) -> dict[str, Any]:
        """Run gcovr over this run's counters; write ``out/index.html`` (per file, per line)
        and ``out/gcovr.json``; return the summary (:func:`summary_of`)."""
        if self._pair_notes() == 0:
            raise HarnessError(f"no gcov counters in {self.data}: no QEMU of this run quit "
                               "normally (or the build is not a gcov build)")
        out.mkdir(parents=True, exist_ok=True)
        src = self.source_dir.resolve()
        filt = f"{re.escape(str(src))}/(block\\.c|blockdev\\.c|block/[^/]+\\.c)$"
        argv = [sys.executable, "-m", "gcovr", "--root", str(src), "--object-directory",
                str(self.build_dir.resolve()), "--filter", filt,
                "--gcov-ignore-parse-errors=negative_hits.warn_once_per_file",
                "--html-details", str(out / "index.html"), "--json", str(out / "gcovr.json"),
                "--json-pretty", str(self.data)]
        p = subprocess.run(argv, capture_output=True, text=True, cwd=self.build_dir)
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            raise HarnessError(f"gcovr failed: {last}")
        data = json.loads((out / "gcovr.json").read_text())
        summary = summary_of(data)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary


def gcov_run_for(system: str, data: Path) -> GcovRun:
    """The coverage collection for ``system``, which must be a gcov build; one line if not."""
    from fuzz.qemubuild import build_of

    b = build_of(system)
    if b is None or not b.gcov:
        raise HarnessError(f"--coverage: {system} is not a gcov build: line coverage needs "
                           "`blockfuzz qemu build VERSION --gcov` (its name then goes to --qemu)")
    src = Path(b.source.get("patched-tree") or b.source["tree"])
    return GcovRun(b.build_dir, src, data)


def _functions(data: dict) -> list[FunctionCoverage]:
    """Per function of the covered files: its lines and how many ran (gcovr's JSON: each
    line names its function)."""
    out: dict[tuple[str, str], list[int]] = {}
    for f in data.get("files", []):
        name = f.get("file", "")
        for line in f.get("lines", []):
            if line.get("gcovr/noncode"):
                continue
            func = line.get("function_name")
            if not func:
                continue
            acc = out.setdefault((name, func), [0, 0])
            acc[0] += 1
            acc[1] += line.get("count", 0) > 0
    return [FunctionCoverage(k[0], k[1], v[0], v[1]) for k, v in sorted(out.items())]


def summary_of(data: dict) -> dict[str, Any]:
    """Line and branch totals of the block files, and the reopen path per function."""
    totals = {"lines": 0, "lines-covered": 0, "branches": 0, "branches-covered": 0}
    per_file = {}
    for f in data.get("files", []):
        name = f.get("file", "")
        if not BLOCK_FILES.match(name):
            continue
        lines = [ln for ln in f.get("lines", []) if not ln.get("gcovr/noncode")]
        lc = sum(1 for ln in lines if ln.get("count", 0) > 0)
        branches = [b for ln in lines for b in ln.get("branches", [])]
        bc = sum(1 for b in branches if b.get("count", 0) > 0)
        per_file[name] = {"lines": len(lines), "lines-covered": lc, "branches": len(branches),
                          "branches-covered": bc}
        for k, v in per_file[name].items():
            totals[k] += v
    funcs = [fc for fc in _functions(data) if REOPEN_PATH.match(fc.name)]
    reopen = {"lines": sum(fc.lines for fc in funcs),
              "lines-covered": sum(fc.covered for fc in funcs),
              "functions": {f"{fc.file}:{fc.name}": [fc.covered, fc.lines] for fc in funcs}}
    return {"total": totals, "files": per_file, "reopen-path": reopen}


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:5.1f} %" if b else "    - "


def summary_text(summary: dict[str, Any], top: int = 8) -> str:
    """The one-screen summary."""
    t, r = summary["total"], summary["reopen-path"]
    out = [f"QEMU block layer (block.c, blockdev.c, block/*.c): lines "
           f"{t['lines-covered']}/{t['lines']} ({_pct(t['lines-covered'], t['lines']).strip()}), "
           f"branches {t['branches-covered']}/{t['branches']} "
           f"({_pct(t['branches-covered'], t['branches']).strip()})"]
    files = sorted(summary["files"].items(), key=lambda kv: -kv[1]["lines-covered"])
    out.append(f"  {'file':28s} {'lines':>13s} {'':>7s} {'branches':>13s}")
    for name, f in files[:top]:
        out.append(f"  {name:28s} {f['lines-covered']:6d}/{f['lines']:<6d} "
                   f"{_pct(f['lines-covered'], f['lines'])} "
                   f"{f['branches-covered']:6d}/{f['branches']:<6d} "
                   f"{_pct(f['branches-covered'], f['branches'])}")
    funcs = r["functions"]
    never = sorted(k for k, (c, _) in funcs.items() if c == 0)
    out.append(f"reopen path: {r['lines-covered']}/{r['lines']} lines "
               f"({_pct(r['lines-covered'], r['lines']).strip()}) in {len(funcs)} functions, "
               f"{len(funcs) - len(never)} reached")
    for k, (c, n) in sorted(funcs.items(), key=lambda kv: kv[0].split(":")[1]):
        if k.startswith("block.c:") or k.startswith("blockdev.c:"):
            out.append(f"  {k.split(':', 1)[1]:40s} {c:4d}/{n:<4d} {_pct(c, n)}")
    if never:
        out.append("  never reached: " + ", ".join(k.split(":", 1)[1] for k in never))
    return "\n".join(out)
