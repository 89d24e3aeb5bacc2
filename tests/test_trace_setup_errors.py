"""A trace the model or qemu-img cannot set up is one ``ERROR`` line and exit 2 in replay,
never a traceback (which would read as a finding)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _replay(tmp_path, images, *extra_args):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"blockfuzz-trace": 1, "name": "t", "images": images, "steps": [
        {"qmp": "blockdev-add", "args": {"driver": "file", "node-name": "f", "filename": "b.img"}}]}))
    return subprocess.run([sys.executable, "-m", "fuzz.cli", "replay", str(p), *extra_args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("images, message", [
    ([{"file": "b.img", "format": "vmdk", "size": 1 << 20}],
     "bad image entry: 'format' must be in ('qcow2', 'raw') (got 'vmdk')"),
    ([{"file": "a.img", "format": "qcow2", "backing-file": "b.img", "backing-format": "qcow2"}],
     "bad image entry: a.img: backing file b.img is not an image listed before it"),
    ([{"file": "b.img", "format": "qcow2"}],
     "bad image entry: b.img: size is required without a backing file"),
    ([{"format": "qcow2", "size": 512}], "bad image entry: missing image key 'file'"),
])
def test_an_image_list_the_model_cannot_set_up_is_one_error_line(tmp_path, images, message):
    r = _replay(tmp_path, images, "--qemu", "/bin/true")  # refused before any QEMU is asked
    assert r.returncode == 2, r.stderr
    assert r.stdout.splitlines() == [f"ERROR {tmp_path / 't.json'}: {message}"]
    assert "Traceback" not in r.stderr


def test_a_failing_image_tool_is_one_error_line(tmp_path, qemu10):
    # a write past the end of a raw image: qemu-io fails (EIO), and its stderr is folded in
    r = _replay(tmp_path, [{"file": "b.img", "format": "raw", "size": 1 << 20,
                            "writes": [{"pattern": 1, "offset": 2 << 20, "length": 512}]}],
                "--qemu", "10.0")
    assert r.returncode == 2, r.stderr
    [line] = r.stdout.splitlines()
    assert line.startswith(f"ERROR {tmp_path / 't.json'}: ") and "qemu-io" in line
    assert line.endswith("| write failed: Input/output error")
