"""report.html (fuzz.report), ``blockfuzz show`` and the fetched Graphviz (fuzz.toolfetch).

The unit tests build views by hand (no QEMU) and check what differs and how it is coloured, the
DOT text, and that the fetched ``dot`` renders it.  The ``qemu`` tests replay real traces.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from fuzz import report as R
from fuzz import toolfetch
from fuzz import trace as T
from fuzz.qemufetch import FetchError
from models import PROFILES, ImageSpec, Model

ROOT = os.path.join(os.path.dirname(__file__), "..")
BLOCKFUZZ = [sys.executable, "-m", "fuzz.cli"]


@pytest.fixture(scope="session")
def dot():
    """The project's own Graphviz (fetched into .qemu/tools/graphviz on first use, as a fresh
    CI machine has none); a failure, never a skip."""
    try:
        return str(toolfetch.fetch("graphviz").binary)
    except FetchError as e:
        pytest.fail(f"cannot fetch Graphviz: {e}")


def svg(s: str) -> str:
    """How Graphviz writes an id or class into SVG (it escapes '-')."""
    return s.replace("-", "&#45;")


def node(name, drv="qcow2", ro=False, file="hd0.img", size=3145728, **extra):
    n = {"node-name": name, "drv": drv, "ro": ro, "file": file,
         "image": {"virtual-size": size, "filename": file}}
    n.update(extra)
    return n


def views():
    """A model and a QEMU view that differ in one field, one node and one edge."""
    model = R.GraphView("model", [node("hd1"), node("hd1-file", "file", size=197120), node("hd0")],
                        [R.Edge("hd1", "file", "hd1-file"), R.Edge("hd1", "backing", "hd0")])
    qemu = R.GraphView("QEMU", [node("hd1", ro=True), node("hd1-file", "file", size=197120),
                                node("x9", "raw")],
                       [R.Edge("hd1", "file", "hd1-file", ("consistent-read",), ("write",)),
                        R.Edge("hd1", "backing", "x9")])
    return model, qemu


# --------------------------------------------------------------------------------------------
# the difference


def test_field_diffs_nested_absent_and_lists():
    a = {"ro": False, "image": {"virtual-size": 1, "limits": {"max": 4}}, "children": [{"c": "file"}]}
    b = {"ro": False, "image": {"virtual-size": 2}, "children": [{"c": "data"}], "active": True}
    d = {p: (x, y) for p, x, y in R.field_diffs(a, b)}
    assert set(d) == {"image/virtual-size", "image/limits", "children[0]/c", "active"}
    assert d["image/virtual-size"] == (1, 2)
    assert d["image/limits"][1] is R._ABSENT and d["active"][0] is R._ABSENT
    assert R.field_diffs(a, a) == []
    assert R.field_diffs({"x": 1}, {"x": True}) == [("x", 1, True)]   # bool is not int here


def test_comparison_finds_each_kind_of_difference():
    model, qemu = views()
    c = R.Comparison.of(model, qemu)
    assert c.differs
    assert c.node_order == ["hd1", "hd1-file", "hd0", "x9"]
    assert c.fields == {"hd1": [("ro", False, True)]}
    rows = c.rows()
    assert ("node", "hd0", "present", "absent") in rows
    assert ("node", "x9", "absent", "present") in rows
    assert ("field", "hd1: ro", "false", "true") in rows
    assert ("edge", "hd1 --backing--> hd0", "present", "absent") in rows
    assert ("edge", "hd1 --backing--> x9", "absent", "present") in rows
    # the file edge is the same edge on both sides (permissions are not compared)
    assert not any("file" in r[1] for r in rows if r[0] == "edge")
    same = R.Comparison.of(model, R.GraphView("q", list(model.nodes), list(model.edges)))
    assert not same.differs and same.rows() == []


def _dot_node(src: str, node_id: str) -> str:
    m = re.search(rf'^  \w+ \[id="{re.escape(node_id)}", (.*)\];$', src, re.M)
    assert m, f"{node_id} not in\n{src}"
    return m.group(1)


def test_dot_colours_the_difference_on_both_sides():
    model, qemu = views()
    c = R.Comparison.of(model, qemu)
    m, q = R.to_dot(c, "model"), R.to_dot(c, "qemu")
    # the changed node: orange on both sides, its ro row marked, each side with its own value
    for src, value in ((m, "ro: false"), (q, "ro: true")):
        attrs_ = _dot_node(src, ("m" if src is m else "q") + "-hd1")
        assert 'class="node-changed changed"' in attrs_
        assert R.COLOURS["changed-fill"] in attrs_
        assert f'BGCOLOR="{R.COLOURS["changed-row"]}"><FONT COLOR="#7a1500">{value}' in attrs_
    # the unchanged node: neutral, with what a block developer looks at
    same = _dot_node(m, "m-hd1-file")
    assert 'class="node-same"' in same and "changed-row" not in same
    for text in ("hd1-file", ">file\u00a0", "ro: false", "file: hd0.img", "virtual-size: 197120 (192.5 KiB)"):
        assert text in same, text
    # a node only one side has: red there, a dashed ghost on the other side
    assert 'class="node-only only"' in _dot_node(m, "m-hd0")
    assert 'class="node-ghost ghost"' in _dot_node(q, "q-hd0") and "dashed" in _dot_node(q, "q-hd0")
    assert 'class="node-only only"' in _dot_node(q, "q-x9")
    assert 'class="node-ghost ghost"' in _dot_node(m, "m-x9")
    # edges: labelled with the child role; the backing edge differs, the file edge does not
    assert re.search(r'-> \w+ \[id="m-e\d+", class="edge-only only".*<B>backing</B>', m)
    assert re.search(r'-> \w+ \[id="q-e\d+", class="edge-ghost ghost".*label="backing \(absent\)"', q)
    assert re.search(r'class="edge-same", label="file"', m)
    assert "perm: consistent-read" in q        # QEMU's permissions in the edge's tooltip
    # both pictures list the same nodes in the same order, so dot lays them out alike
    order = lambda src: re.findall(r'^  \w+ \[id="[mq]-([^"]+)"', src, re.M)  # noqa: E731
    assert order(m) == order(q) == ["hd1", "hd1-file", "hd0", "x9"]


def test_dot_shows_fields_that_differ_beyond_the_usual_ones():
    a = R.GraphView("m", [node("hd0", cache={"direct": False}, children=[{"child": "file", "node-name": "f"}])], [])
    b = R.GraphView("q", [node("hd0", cache={"direct": True}, children=[])], [])
    c = R.Comparison.of(a, b)
    q = _dot_node(R.to_dot(c, "qemu"), "q-hd0")
    assert "cache/direct: true" in q and "children: []" in q
    m = _dot_node(R.to_dot(c, "model"), "m-hd0")
    assert "cache/direct: false" in m and "children: file\u2192f" in m


def test_parents_jobs_and_backends():
    mv = R.GraphView("m", [node("hd0")], [R.Edge("job:s0", "main node", "hd0"),
                                         R.Edge("blk:(unnamed)>hd0#0", "root", "hd0")],
                     [R.Parent("job:s0", "job", "s0", (("type", "stream"), ("status", "pending"))),
                      R.Parent("blk:(unnamed)>hd0#0", "backend", "(unnamed)")])
    qv = R.GraphView("q", [node("hd0")], [R.Edge("job:s0", "main node", "hd0")],
                     [R.Parent("job:s0", "job", "s0", (("type", "stream"), ("status", "concluded")))])
    c = R.Comparison.of(mv, qv)
    assert c.parent_fields == {"job:s0": [("status", "pending", "concluded")]}
    rows = c.rows()
    assert ("parent", "BlockBackend (unnamed)", "present", "absent") in rows
    assert ("parent", "job s0: status", "pending", "concluded") in rows
    m = R.to_dot(c, "model")
    assert R.COLOURS["job-fill"] in m and R.COLOURS["backend-fill"] in m
    assert "status: pending" in _dot_node(m, "m-job_3as0")


def test_dot_escapes_awkward_names(dot):
    weird = 'json:{"driver": "raw", "file": "a<b>&c\\\\d"}'
    v = R.GraphView("m", [node("#block0", file=weird), node("n-1.x_y", "file")],
                    [R.Edge("#block0", "children.0", "n-1.x_y")])
    c = R.Comparison.of(v, R.GraphView("q", [node("#block0", file=weird + "!")], []))
    for side in ("model", "qemu"):
        out = R.render_svg(R.to_dot(c, side), dot)
        assert out.startswith("<svg") and "#block0" in out and "a&lt;b&gt;&amp;c" in out
    assert "children.0" in R.render_svg(R.to_dot(c, "model"), dot)


# --------------------------------------------------------------------------------------------
# gathering views


def test_model_view_has_the_models_edges():
    m = Model(PROFILES["10.0"], [ImageSpec("hd0.img", "qcow2", 1 << 20), ImageSpec("hd1.img", "qcow2", 1 << 20)])
    out = m.execute("blockdev-add", {"driver": "qcow2", "node-name": "hd1",
                                     "file": {"driver": "file", "filename": "hd1.img", "node-name": "hd1-file"},
                                     "backing": {"driver": "qcow2", "node-name": "hd0",
                                                 "file": {"driver": "file", "filename": "hd0.img"}}})
    assert out.error is None
    v = R.model_view(m)
    assert set(v.names) == {"hd1", "hd1-file", "hd0", "#block0"}
    assert {(e.parent, e.name, e.child) for e in v.edges} == {
        ("hd1", "backing", "hd0"), ("hd1", "file", "hd1-file"), ("hd0", "file", "#block0")}
    assert v.parents == []


class FakeQemu:
    """Answers x-debug-query-block-graph as 7.2 does for an active commit (recorded)."""

    def __init__(self, fail=False):
        self.fail = fail

    def execute(self, cmd, args=None):
        from models import Outcome, QmpError

        assert cmd == "x-debug-query-block-graph"
        if self.fail:
            return Outcome(None, QmpError("CommandNotFound", "no such command"), ())
        nodes = [{"name": "#block0", "type": "block-driver", "id": 6},
                 {"name": "hd2", "type": "block-driver", "id": 2},
                 {"name": "hd0", "type": "block-driver", "id": 5},
                 {"name": "commit0", "type": "block-job", "id": 3},
                 {"name": "", "type": "block-backend", "id": 1}]
        edges = [{"parent": 6, "name": "backing", "child": 5, "perm": [], "shared-perm": ["write"]},
                 {"parent": 5, "name": "file", "child": 2, "perm": ["write"], "shared-perm": []},
                 {"parent": 5, "name": "backing", "child": 2, "perm": [], "shared-perm": []},
                 {"parent": 3, "name": "main node", "child": 6, "perm": ["consistent-read"], "shared-perm": []},
                 {"parent": 1, "name": "root", "child": 2, "perm": ["write"], "shared-perm": []}]
        return Outcome({"nodes": nodes, "edges": edges}, None, ())


def test_qemu_view_from_x_debug_query_block_graph():
    nodes = [node("#block0", "mirror_top"), node("hd2"), node("hd0")]
    v = R.qemu_view(FakeQemu(), nodes, "QEMU 7.2", [{"id": "commit0", "type": "commit", "status": "ready"}])
    assert v.edges_from == "x-debug-query-block-graph"
    keys = [(e.parent, e.name, e.child) for e in v.edges]
    # newest first per parent, as QEMU keeps bs->children
    assert keys.index(("hd0", "backing", "hd2")) < keys.index(("hd0", "file", "hd2"))
    assert ("job:commit0", "main node", "#block0") in keys
    assert ("blk:(unnamed)>hd2#0", "root", "hd2") in keys
    job = next(p for p in v.parents if p.kind == "job")
    assert job.fields == (("type", "commit"), ("status", "ready"))
    assert next(e for e in v.edges if e.name == "file").perm == ("write",)


def test_qemu_view_prefers_children_and_survives_a_failing_query():
    nodes = [node("hd0", children=[{"child": "file", "node-name": "hd0-file"}]), node("hd0-file", "file", children=[])]
    v = R.qemu_view(FakeQemu(fail=True), nodes)
    assert [(e.parent, e.name, e.child) for e in v.edges] == [("hd0", "file", "hd0-file")]
    assert v.notes and "x-debug-query-block-graph failed" in v.notes[0]
    v = R.nodes_view([node("hd0")], "q")
    assert v.edges == [] and "no children" in v.notes[0]


# --------------------------------------------------------------------------------------------
# HTML


def _report(**kw):
    model, qemu = views()
    tr_steps = [{"qmp": "blockdev-add", "args": {"driver": "qcow2", "node-name": "hd1"}}]
    return R.Report("planted", 0, tr_steps[0], "after", model, qemu, steps=tr_steps, qemu_label="11.1.3",
                    profile="11.1", **kw)


def test_html_has_two_inline_svgs_legend_and_difference(dot, tmp_path):
    path = R.write_report(str(tmp_path / "r.html"), _report(), dot)
    text = open(path).read()
    assert text.count("<svg") == 2 and "<?xml" not in text and "DOCTYPE svg" not in text
    assert 'id="pic-model"' in text and 'id="pic-qemu"' in text
    assert "only on this side" in text and "fields differ" in text
    assert "<td>hd1: ro</td><td>false</td><td>true</td>" in text
    # the SVG node of the changed node carries its class and colour
    m = re.search(svg(r'<g id="q-hd1" class="node node-changed changed">(.*?)</g>\n</g>'), text, re.S)
    assert m and f'fill="{R.COLOURS["changed-fill"]}"' in m.group(1)
    assert os.stat(path).st_mode & 0o044  # readable by others, as any file the user writes


def test_html_without_dot_keeps_the_dot_source(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKFUZZ_DOT", str(tmp_path / "no-such-dot"))
    text = R.render_html(_report())
    assert "<svg" not in text and text.count("digraph blockgraph") == 2
    assert "no picture" in text


def test_find_dot_order(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOCKFUZZ_DOT", "/opt/dot")
    assert toolfetch.find_dot() == "/opt/dot"
    monkeypatch.delenv("BLOCKFUZZ_DOT")
    inst = toolfetch.installed("graphviz")
    assert toolfetch.find_dot() == (str(inst.binary) if inst else shutil.which("dot"))


def test_fetched_dot_renders_svg_from_its_own_tree(dot):
    assert dot.endswith("tools/graphviz/bin/dot")
    proc = subprocess.run([dot, "-Tsvg"], input="digraph { a -> b }", capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0 and "<svg" in proc.stdout and proc.stderr == ""
    inst = toolfetch.installed("graphviz")
    assert inst.packages["graphviz"].startswith("2.42")


def test_finding_report_never_raises(tmp_path):
    folder = tmp_path / "graph-0123"
    folder.mkdir()
    (folder / "minimal.json").write_text("{corrupt")
    path = R.write_finding_report(str(folder), binaries=None, error="step 1: graph differs")
    assert path == str(folder / "report.html")
    text = open(path).read()
    assert "No report for" in text and "corrupt JSON" in text and "graph differs" in text
    # not even a note can be written (the folder is a file): None, still no exception
    (tmp_path / "a-file").write_text("")
    assert R.write_finding_report(str(tmp_path / "a-file"), binaries=None) is None


# --------------------------------------------------------------------------------------------
# real QEMU


def blockfuzz(*args, cwd=ROOT):
    return subprocess.run([*BLOCKFUZZ, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.qemu
def test_show_seed_writes_two_inline_svgs(any_qemu, dot, tmp_path):
    out = tmp_path / "reopen.html"
    r = blockfuzz("show", os.path.join(ROOT, "corpus/seeds/test_reopen.json"), "--qemu", any_qemu.system,
                  "--step", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{out}: step 3: model and QEMU agree")
    text = out.read_text()
    assert text.count("<svg") == 2 and "no picture" not in text
    assert "The two graphs agree." in text
    # the edges are there on every version (7.2/10.0: from x-debug-query-block-graph)
    svg_q = text[text.index('id="pic-qemu"'):]
    assert ">backing</text>" in svg_q and ">file</text>" in svg_q
    assert "x-debug-query-block-graph" in svg_q


@pytest.mark.qemu
def test_show_step_and_default_output(qemu10, dot, tmp_path):
    seed = os.path.join(ROOT, "corpus/seeds/test_reopen.json")
    r = blockfuzz("show", seed, "--qemu", qemu10.system, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "test_reopen.html").read_text()
    # the last step by default: every node deleted
    assert "step 47 of 47" in text and text.count("<svg") == 2 and text.count(">no block nodes<") == 2


def test_show_bad_input_is_one_line_exit_2(tmp_path, qemu10):
    seed = os.path.join(ROOT, "corpus/seeds/test_reopen.json")
    for args in ((str(tmp_path / "nope.json"),), (seed, "--step", "0"), (seed, "--step", "48"),
                 (seed, "--qemu", str(tmp_path / "not-qemu"))):
        r = blockfuzz("show", *args, "-o", str(tmp_path / "x.html"))
        assert r.returncode == 2, args
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "x.html").exists()


PLANTED = T.Trace("planted", [ImageSpec("hd0.img", "qcow2", 1 << 20)], [
    {"qmp": "blockdev-add", "args": {"driver": "qcow2", "node-name": "hd0",
                                     "file": {"driver": "file", "node-name": "hd0-file", "filename": "hd0.img"}}},
    {"qmp": "blockdev-del", "args": {"node-name": "hd0"}},
])


@pytest.mark.qemu
def test_planted_graph_mismatch_colours_the_node(any_qemu, dot, tmp_path, monkeypatch):
    """The model is made to predict hd0 read-only: the report names step 1 and colours hd0
    (and only hd0) in both pictures."""
    real = Model.query_named_block_nodes

    def planted(self):
        return [dict(n, ro=True) if n["node-name"] == "hd0" else n for n in real(self)]

    monkeypatch.setattr(Model, "query_named_block_nodes", planted)
    rep = R.build_report(PLANTED, any_qemu)
    assert type(rep.error).__name__ == "GraphMismatch" and rep.index == 0 and rep.when == "after"
    comp = rep.comparison
    assert list(comp.fields) == ["hd0"] and [p for p, _, _ in comp.fields["hd0"]] == ["ro"]
    text = open(R.write_report(str(tmp_path / "report.html"), rep, dot)).read()
    for side in "mq":
        g = re.search(svg(rf'<g id="{side}-hd0" class="node node-changed changed">(.*?)</g>\n</g>'), text, re.S)
        assert g and f'fill="{R.COLOURS["changed-fill"]}"' in g.group(1)
        assert f'fill="{R.COLOURS["changed-row"]}"' in g.group(1)      # the ro row
        assert re.search(svg(rf'<g id="{side}-hd0-file" class="node node-same">'), text)
    assert "step 1 (blockdev-add): graph differs at hd0/ro" in text
    assert '<span class="del">-  &quot;ro&quot;: true,</span>' in text


@pytest.mark.qemu
def test_crash_report_shows_the_graph_before(dot, tmp_path):
    from tests.conftest import qemu_binaries

    folder = tmp_path / "crash-0000"
    folder.mkdir()
    shutil.copy(os.path.join(ROOT, "corpus/findings/reopen-closes-queued-node-segv.json"), folder / "minimal.json")
    path = R.write_finding_report(str(folder), qemu_binaries("11.1"), error="step 2: QEMU crashed")
    text = open(path).read()
    assert "QEMU killed by SIGSEGV" in text
    assert "Block graph before step 2" in text and "the last graph it reported" in text
    # the pair before the crash, and the model's prediction of the crashing step
    assert text.count("<svg") == 3 and 'id="pic-predicted"' in text
    assert re.search(svg(r'<g id="q-hd1" class="node node-same">'), text)


def test_finding_report_falls_back_to_the_findings_own_graphs(dot, tmp_path):
    """QEMU cannot even start: a graph finding is still drawn, from its expected/actual lists."""
    from fuzz.engine import GraphMismatch
    from fuzz.qemufetch import QemuBinaries

    folder = tmp_path / "graph-1111"
    folder.mkdir()
    T.save(PLANTED, str(folder / "minimal.json"))
    err = GraphMismatch(0, PLANTED.steps[0], [node("hd0", children=[])], [node("hd0", ro=True, children=[])], "hd0/ro")
    nowhere = str(tmp_path / "no-qemu")
    path = R.write_finding_report(str(folder), QemuBinaries(nowhere, nowhere, nowhere), error=err)
    text = open(path).read()
    assert text.count("<svg") == 2 and "the graphs are the finding&#x27;s own" in text
    assert re.search(svg(r'<g id="q-hd0" class="node node-changed changed">'), text)


@pytest.mark.qemu
def test_expectation_mismatch_names_the_written_expectation(dot, tmp_path):
    from tests.conftest import qemu_binaries

    tr = T.load(os.path.join(ROOT, "corpus/seeds/test_reopen.json"))
    tr.steps[0] = dict(tr.steps[0], expect={"error": {"class": "GenericError", "desc": "planted"}})
    rep = R.build_report(tr, qemu_binaries("11.1"))
    assert type(rep.error).__name__ == "ExpectationMismatch" and rep.index == 0
    text = R.render_html(rep, dot)
    assert "--- written expectation" in text and "+++ qemu" in text and "planted" in text
    assert text.count("<svg") == 2 and "The two graphs agree." in text
