"""Pictures of the block graph for a finding or any trace: ``report.html``.

A report shows one step of a trace: the step, what each side answered, the text difference, and
the block graph as the model predicted it and as QEMU reported it, side by side, drawn by
Graphviz (``dot -Tsvg``, inlined), with what differs coloured:

* a node or edge only one side has: red (drawn solid where it is, dashed as a ghost on the
  other side, so both pictures keep the same layout);
* a node both have whose fields differ: orange, with the differing fields' rows marked;
* job and BlockBackend parents (not compared by the fuzzer, drawn for context): purple / blue.

A node's label: node-name, driver, ``ro``, ``file`` and ``image.virtual-size``, then every field
that differs.  Edges carry the child role (``file``, ``backing``, ``children.0``, ``root``,
``main node``...) and, in their tooltip, the permissions QEMU reports.  The model's edges come
from its graph (``models.graph.Child``); QEMU's from ``query-named-block-nodes``' ``children``
(11.1) or, where that is missing (7.2, 10.0), from ``x-debug-query-block-graph``, which also
gives the jobs and BlockBackends on every version.

Entry points::

    report = build_report(trace, binaries, step=None)   # replay and gather both graphs
    write_report("report.html", report)                  # render (runs dot) and write atomically
    write_finding_report(folder, binaries)               # for a finding folder; never raises

``build_report`` replays the trace on a fresh QEMU and model up to ``step`` (0-based; default:
the first failing step, else the last one).  At a disagreement both graphs are those after the
step; when QEMU dies (crash, hang) they are the last ones before it: the trace is replayed a
second time up to the step before, so the extra queries a picture needs never run in the
replay that reproduces the finding (they run only once the shown step is over); a crash report
also draws the model's prediction of the crashing step, coloured against the graph before it.
Graphviz: ``fuzz.toolfetch.find_dot()`` (the fetched ``.qemu/tools/graphviz``, ``$BLOCKFUZZ_DOT``
or ``dot`` in ``$PATH``); without one the report carries the DOT text instead of pictures.
"""
from __future__ import annotations

import difflib
import html
import json
import os
import re
import subprocess
import traceback
from typing import Any

import attrs

from . import trace as T
from .errors import Disagreement, DotMissing, ExpectationMismatch, HarnessError, QemuFailure
from .errors import one_line as _one_line

# --------------------------------------------------------------------------------------------
# what a picture shows


@attrs.frozen
class Edge:
    """``parent`` uses ``child`` as ``name``; ``parent`` is a node-name or a Parent key."""

    parent: str
    name: str
    child: str
    perm: tuple | None = None     # permission names, where the side reports them
    shared: tuple | None = None


@attrs.frozen
class Parent:
    """A parent that is not a node: a block job or a BlockBackend (a guest disk, a job's)."""

    key: str                       # "job:commit0", "blk:scsi-disk0", "blk:(unnamed)>hd2#0"
    kind: str                      # "job" | "backend"
    title: str                     # "commit0", "/machine/peripheral-anon/device[0]"
    fields: tuple = ()             # ((name, value), ...), compared between the sides


@attrs.define
class GraphView:
    """One side's graph at one moment."""

    title: str
    nodes: list                    # query-named-block-nodes as compared (projected)
    edges: list                    # [Edge] between nodes and from parents to nodes
    parents: list = attrs.field(factory=list)   # [Parent]
    jobs: list = attrs.field(factory=list)      # query-jobs as compared
    edges_from: str = ""           # where the edges come from
    notes: list = attrs.field(factory=list)
    #: nodes hold only some fields (node-name, drv, ro): compare only the fields both have
    partial: bool = False

    @property
    def names(self) -> list[str]:
        return [n.get("node-name", "?") for n in self.nodes]


_PERM_BITS = ((1, "consistent-read"), (2, "write"), (4, "write-unchanged"), (8, "resize"))


def _perm_names(bits: int) -> tuple:
    return tuple(name for bit, name in _PERM_BITS if bits & bit)


def _anon_key(child: str, seen: dict) -> str:
    k = seen.get(child, 0)
    seen[child] = k + 1
    return f"blk:(unnamed)>{child}#{k}"


def model_view(model, title: str = "model") -> GraphView:
    """The model's graph: nodes as it predicts ``query-named-block-nodes``, edges from its
    BdrvChild list, jobs and BlockBackends (jobs' and guest disks') as parents."""
    g = model.graph
    notes = []
    try:
        nodes = model.query_named_block_nodes()
    except Exception as e:  # noqa: BLE001 - e.g. a state where QEMU's query crashes too
        notes.append(f"the model cannot answer query-named-block-nodes here ({type(e).__name__}: "
                     f"{_one_line(e)}): nodes show only what its graph holds")
        nodes = [{"node-name": n.name, "drv": n.drv, "ro": n.read_only}
                 for n in sorted(g.nodes.values(), key=lambda n: n.seq, reverse=True)]
    order = [n["node-name"] for n in nodes]
    edges = []
    for name in order:
        n = g.nodes.get(name)
        for c in (n.children if n is not None else ()):
            edges.append(Edge(c.parent, c.name, c.child))
    try:
        jobs = model.query_jobs()
    except Exception as e:  # noqa: BLE001
        notes.append(f"the model cannot answer query-jobs here ({type(e).__name__})")
        jobs = []
    status = {j["id"]: j for j in jobs}
    parents, anon = [], {}
    for j in g.jobs.values():
        q = status.get(j.id, {})
        parents.append(Parent(f"job:{j.id}", "job", j.id,
                              (("type", q.get("type", j.type)), ("status", q.get("status", j.status)))))
        for p in sorted(j.parents, key=lambda p: p.seq):
            if p.blk:
                key = _anon_key(p.node, anon)
                parents.append(Parent(key, "backend", "(unnamed)"))
                edges.append(Edge(key, p.child_name, p.node, _perm_names(p.perm), _perm_names(p.shared)))
            else:
                edges.append(Edge(f"job:{j.id}", p.child_name, p.node, _perm_names(p.perm),
                                  _perm_names(p.shared)))
    for d in g.devices.values():
        p = getattr(d, "parent", None)
        if p is None:
            continue
        m = re.search(r"'(.*)'", p.desc)
        name = m.group(1) if m else (getattr(d, "id", None) or "")
        key = f"blk:{name}" if name else _anon_key(p.node, anon)
        parents.append(Parent(key, "backend", name or "(unnamed)"))
        edges.append(Edge(key, p.child_name, p.node, _perm_names(p.perm), _perm_names(p.shared)))
    return GraphView(title, nodes, edges, parents, jobs, "the model's graph", notes, partial=bool(notes))


def nodes_view(nodes: list[dict], title: str, jobs: list | None = None) -> GraphView:
    """A view from a ``query-named-block-nodes`` list alone: edges from ``children`` (11.1);
    without it the picture has nodes only."""
    edges = [Edge(n["node-name"], c.get("child", "?"), c.get("node-name", "?"))
             for n in nodes for c in (n.get("children") or ())]
    has = any("children" in n for n in nodes)
    view = GraphView(title, list(nodes), edges, [], list(jobs or []),
                     "query-named-block-nodes: children" if has else "")
    if nodes and not has:
        view.notes.append("no edges: this query-named-block-nodes has no children lists")
    return view


def qemu_view(qemu, nodes: list[dict], title: str = "QEMU", jobs: list | None = None) -> GraphView:
    """QEMU's graph: ``nodes`` (its projected ``query-named-block-nodes``), edges from their
    ``children`` where present, else from ``x-debug-query-block-graph``, whose jobs and
    BlockBackends are drawn as parents (and whose permissions go into the edges' tooltips)."""
    view = nodes_view(nodes, title, jobs)
    view.notes.clear()
    try:
        out = qemu.execute("x-debug-query-block-graph")
    except Exception as e:  # noqa: BLE001 - a picture with fewer edges beats no picture
        out, err = None, f"{type(e).__name__}: {e}"
    else:
        err = f"{out.error.cls}: {out.error.desc}" if out.error is not None else ""
    if out is None or out.error is not None:
        view.notes.append(f"x-debug-query-block-graph failed ({err.splitlines()[0] if err else '?'}): "
                          "no job or BlockBackend parents" + ("" if view.edges_from else ", no edges"))
        return view
    xd = out.ret
    by_id = {n["id"]: n for n in xd.get("nodes", [])}
    keys, anon = {}, {}
    blk_root = {e["parent"]: by_id.get(e["child"], {}).get("name", "?") for e in xd.get("edges", [])
                if by_id.get(e["parent"], {}).get("type") == "block-backend"}
    for n in xd.get("nodes", []):
        if n["type"] == "block-driver":
            keys[n["id"]] = n["name"]
        elif n["type"] == "block-job":
            keys[n["id"]] = f"job:{n['name']}"
        else:
            keys[n["id"]] = f"blk:{n['name']}" if n["name"] else _anon_key(blk_root.get(n["id"], "?"), anon)
    status = {j["id"]: j for j in view.jobs}
    for n in xd.get("nodes", []):
        if n["type"] == "block-job":
            q = status.get(n["name"], {})
            view.parents.append(Parent(keys[n["id"]], "job", n["name"],
                                       (("type", q.get("type", "?")), ("status", q.get("status", "?")))))
        elif n["type"] == "block-backend":
            view.parents.append(Parent(keys[n["id"]], "backend", n["name"] or "(unnamed)"))
    known = set(view.names)
    for n in xd.get("nodes", []):
        if n["type"] == "block-driver" and n["name"] not in known:
            view.nodes.append({"node-name": n["name"]})   # a node query-named-block-nodes missed
            view.notes.append(f"{n['name']} is in x-debug-query-block-graph only")
    perms = {}
    xedges = []
    for e in xd.get("edges", []):
        edge = Edge(keys.get(e["parent"], "?"), e["name"], keys.get(e["child"], "?"),
                    tuple(e.get("perm", ())), tuple(e.get("shared-perm", ())))
        perms[(edge.parent, edge.name)] = edge
        xedges.append(edge)
    if view.edges_from:      # node edges from children; x-debug adds parents and permissions
        view.edges = [attrs.evolve(e, perm=perms[(e.parent, e.name)].perm,
                                   shared=perms[(e.parent, e.name)].shared)
                      if (e.parent, e.name) in perms else e for e in view.edges]
        view.edges += [e for e in xedges if e.parent not in known]
        view.edges_from = "query-named-block-nodes: children; parents from x-debug-query-block-graph"
    else:
        # x-debug-query-block-graph prepends each edge as it walks bs->children (newest
        # first): reversed, each parent's children are in QEMU's own order again
        view.edges = list(reversed(xedges))
        view.edges_from = "x-debug-query-block-graph"
    return view


# --------------------------------------------------------------------------------------------
# the difference

_ABSENT = object()


def field_diffs(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every leaf where ``a`` and ``b`` differ: (path, a's value, b's value); ``_ABSENT`` for a
    key one side lacks.  Lists of equal length are compared element by element."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            p = f"{path}/{k}" if path else k
            if k not in a or k not in b:
                out.append((p, a.get(k, _ABSENT), b.get(k, _ABSENT)))
            else:
                out += field_diffs(a[k], b[k], p)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += field_diffs(x, y, f"{path}[{i}]")
        return out
    return [] if a == b and type(a) is type(b) else [(path, a, b)]


@attrs.define
class Comparison:
    """The two views and what differs between them, in one order for both pictures."""

    model: GraphView
    qemu: GraphView | None
    node_order: list = attrs.field(factory=list)
    parent_order: list = attrs.field(factory=list)
    edge_order: list = attrs.field(factory=list)    # (parent, name, child)
    fields: dict = attrs.field(factory=dict)        # node-name -> [(path, model, qemu)]
    parent_fields: dict = attrs.field(factory=dict)  # parent key -> [(name, model, qemu)]
    #: what the pictures call the two sides ("only in QEMU", "not in the model")
    names: tuple = ("the model", "QEMU")

    @classmethod
    def of(cls, model: GraphView, qemu: GraphView | None,
           names: tuple = ("the model", "QEMU")) -> "Comparison":
        c = cls(model, qemu, names=names)
        views = [model] + ([qemu] if qemu is not None else [])
        c.node_order = list(dict.fromkeys(n for v in views for n in v.names))
        c.parent_order = list(dict.fromkeys(p.key for v in views for p in v.parents))
        c.edge_order = list(dict.fromkeys((e.parent, e.name, e.child) for v in views for e in v.edges))
        if qemu is not None:
            mn = {n.get("node-name"): n for n in model.nodes}
            for n in qemu.nodes:
                name = n.get("node-name")
                if name in mn:
                    a = mn[name]
                    if model.partial or qemu.partial:
                        a, n = {k: v for k, v in a.items() if k in n}, {k: v for k, v in n.items() if k in a}
                    d = field_diffs(a, n)
                    if d:
                        c.fields[name] = d
            mp = {p.key: p for p in model.parents}
            for p in qemu.parents:
                if p.key in mp and dict(mp[p.key].fields) != dict(p.fields):
                    a, b = dict(mp[p.key].fields), dict(p.fields)
                    c.parent_fields[p.key] = [(k, a.get(k, _ABSENT), b.get(k, _ABSENT))
                                              for k in dict.fromkeys(list(a) + list(b))
                                              if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
        return c

    def view(self, side: str) -> GraphView | None:
        return self.model if side == "model" else self.qemu

    def other(self, side: str) -> GraphView | None:
        return self.qemu if side == "model" else self.model

    def name(self, side: str) -> str:
        return self.names[0] if side == "model" else self.names[1]

    @property
    def differs(self) -> bool:
        if self.qemu is None:
            return False
        return bool(self.fields or self.parent_fields
                    or set(self.model.names) != set(self.qemu.names)
                    or {p.key for p in self.model.parents} != {p.key for p in self.qemu.parents}
                    or _edge_keys(self.model) != _edge_keys(self.qemu))

    def rows(self) -> list[tuple[str, str, str, str]]:
        """The difference as a table: (what, where, model, QEMU)."""
        if self.qemu is None:
            return []
        out = []
        mnames, qnames = set(self.model.names), set(self.qemu.names)
        for n in self.node_order:
            if n not in qnames:
                out.append(("node", n, "present", "absent"))
            elif n not in mnames:
                out.append(("node", n, "absent", "present"))
            for path, a, b in self.fields.get(n, ()):
                out.append(("field", f"{n}: {path}", _value_text(a), _value_text(b)))
        me, qe = _edge_keys(self.model), _edge_keys(self.qemu)
        for key in self.edge_order:
            if (key in me) != (key in qe):
                out.append(("edge", f"{_pname(key[0])} --{key[1]}--> {_pname(key[2])}",
                            "present" if key in me else "absent", "present" if key in qe else "absent"))
        mp, qp = {p.key for p in self.model.parents}, {p.key for p in self.qemu.parents}
        for key in self.parent_order:
            if (key in mp) != (key in qp):
                out.append(("parent", _pname(key), "present" if key in mp else "absent",
                            "present" if key in qp else "absent"))
            for name, a, b in self.parent_fields.get(key, ()):
                out.append(("parent", f"{_pname(key)}: {name}", _value_text(a), _value_text(b)))
        return out


def _edge_keys(view: GraphView) -> set:
    return {(e.parent, e.name, e.child) for e in view.edges}


def _pname(key: str) -> str:
    if key.startswith("job:"):
        return f"job {key[4:]}"
    if key.startswith("blk:"):
        name = key[4:]
        return "BlockBackend (unnamed)" if name.startswith("(unnamed)>") else f"BlockBackend {name}"
    return key


def _value_text(v: Any) -> str:
    if v is _ABSENT:
        return "(absent)"
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=False)


# --------------------------------------------------------------------------------------------
# DOT

#: the colours of the pictures and the legend
COLOURS = {
    "same-border": "#4d4d4d", "same-fill": "#ffffff",
    "only-border": "#c62828", "only-fill": "#fde2e2",
    "changed-border": "#e07b00", "changed-fill": "#fff3d6", "changed-row": "#ffd08a",
    "ghost": "#c62828", "ghost-text": "#9e9e9e",
    "job-fill": "#ece4fa", "job-border": "#6a4fb3",
    "backend-fill": "#deebfa", "backend-border": "#3a6fb0",
    "edge": "#555555",
}
_FONT = "Helvetica"
_LABEL_MAX = 52
_EXTRA_ROWS = 8
_STANDARD = ("drv", "ro", "file", "image/virtual-size")


def _h(s: Any) -> str:
    """Text for an HTML-like label."""
    return html.escape(str(s), quote=True)


def _q(s: str) -> str:
    """A DOT double-quoted string whose text Graphviz shows as is (tooltips)."""
    return '"' + str(s).replace("\\", "\\\\\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _clip(s: str, limit: int = _LABEL_MAX) -> str:
    return s if len(s) <= limit else s[:limit - 1] + "\u2026"


def _size_text(v: Any) -> str:
    if not isinstance(v, int) or isinstance(v, bool):
        return _value_text(v)
    for unit, n in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= n and v % (n // 16 or 1) == 0:
            q = v / n
            return f"{v} ({q:g} {unit})"
    return str(v)


def _get(node: dict, path: str) -> Any:
    cur: Any = node
    for part in path.split("/"):
        if not isinstance(cur, dict) or part not in cur:
            return _ABSENT
        cur = cur[part]
    return cur


def _bold(text: str) -> str:
    """Bold label text.  Graphviz sizes boxes with regular-weight font metrics, and bold text is
    wider in the browser: pad it so it stays inside its box."""
    return f"<B>{_h(text)}</B>" + "&#160;" * (len(text) // 9 + 1)


def _row(text: str, marked: bool, colspan: int = 2, bold: bool = False) -> str:
    body = _bold(text) if bold else _h(text)
    if marked:
        return (f'<TR><TD ALIGN="LEFT" COLSPAN="{colspan}" BGCOLOR="{COLOURS["changed-row"]}">'
                f'<FONT COLOR="#7a1500">{body}</FONT></TD></TR>')
    return f'<TR><TD ALIGN="LEFT" COLSPAN="{colspan}">{body}</TD></TR>'


def _node_label(node: dict, diffs: list, note: str = "") -> str:
    """The HTML-like label of a node: the fields a block developer looks at, then what differs."""
    changed = {p for p, _, _ in diffs}

    def marked(path: str) -> bool:
        return any(c == path or c.startswith(path + "/") or c.startswith(path + "[") for c in changed)

    name = node.get("node-name", "?")
    rows = [f'<TR><TD ALIGN="LEFT" COLSPAN="2"><FONT POINT-SIZE="12">{_bold(name)}</FONT>'
            + (f' <FONT COLOR="{COLOURS["only-border"]}">{_h(note)}</FONT>' if note else "")
            + "</TD></TR>"]
    drv, ro = node.get("drv", _ABSENT), node.get("ro", _ABSENT)
    if drv is not _ABSENT or ro is not _ABSENT:
        cells = []
        for path, text in (("drv", _value_text(drv) + "\u00a0\u00a0"), ("ro", f"ro: {_value_text(ro)}")):
            if marked(path):
                cells.append(f'<TD ALIGN="LEFT" BGCOLOR="{COLOURS["changed-row"]}">'
                             f'<FONT COLOR="#7a1500">{_h(text)}</FONT></TD>')
            else:
                cells.append(f'<TD ALIGN="LEFT">{_h(text)}</TD>')
        rows.append("<TR>" + "".join(cells) + "</TR>")
    if "file" in node or marked("file"):
        rows.append(_row("file: " + _clip(_value_text(node.get("file", _ABSENT))), marked("file")))
    size = _get(node, "image/virtual-size")
    if size is not _ABSENT or marked("image/virtual-size"):
        rows.append(_row("virtual-size: " + _size_text(size), marked("image/virtual-size")))
    extra = []
    for path in dict.fromkeys(_collapse(p) for p in changed):
        if path in _STANDARD:
            continue
        value = _get(node, path) if "[" not in path else _list_value(node, path)
        if path == "children" and isinstance(value, list):
            text = ", ".join(f"{c.get('child')}\u2192{c.get('node-name')}" for c in value) or "[]"
        else:
            text = _value_text(value)
        extra.append(_row(_clip(f"{path}: {text}"), True))
    if len(extra) > _EXTRA_ROWS:
        extra = extra[:_EXTRA_ROWS] + [_row(f"... {len(extra) - _EXTRA_ROWS} more differences", True)]
    rows += extra
    return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
            + "".join(rows) + "</TABLE>>")


def _collapse(path: str) -> str:
    """``children[1]/node-name`` -> ``children``: a node's child list is shown whole."""
    return "children" if path.startswith("children") else path


def _list_value(node: dict, path: str) -> Any:
    cur: Any = node
    for part in re.findall(r"[^/\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            i = int(part[1:-1])
            if not isinstance(cur, list) or i >= len(cur):
                return _ABSENT
            cur = cur[i]
        else:
            if not isinstance(cur, dict) or part not in cur:
                return _ABSENT
            cur = cur[part]
    return cur


def _tooltip(node: dict, diffs: list, side: str, other: str) -> str:
    lines = [f"{node.get('node-name', '?')} ({node.get('drv', '?')})"]
    if "file" in node:
        lines.append(f"file: {node['file']}")
    for path, a, b in diffs[:20]:
        mine, theirs = (a, b) if side == "model" else (b, a)
        lines.append(f"{path}: {_clip(_value_text(mine), 200)}  ({other}: {_clip(_value_text(theirs), 200)})")
    return "\n".join(lines)


def _parent_label(p: Parent, changed: set, note: str = "") -> str:
    head = "job " if p.kind == "job" else "BlockBackend "
    rows = [f'<TR><TD ALIGN="LEFT">{_bold(head + _clip(p.title, 40))}'
            + (f' <FONT COLOR="{COLOURS["only-border"]}">{_h(note)}</FONT>' if note else "")
            + "</TD></TR>"]
    if p.fields:
        if any(k in changed for k, _ in p.fields):
            rows += [_row(f"{k}: {_value_text(v)}", k in changed, colspan=1) for k, v in p.fields]
        else:
            rows.append(_row(" \u00b7 ".join(_value_text(v) for _, v in p.fields), False, colspan=1))
    return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
            + "".join(rows) + "</TABLE>>")


def to_dot(comp: Comparison, side: str, prefix: str = "") -> str:
    """The DOT source of one side's picture (``side``: "model" or "qemu"), coloured against the
    other side and laid out with the same nodes and edges in the same order (the other side's
    extra elements as dashed ghosts), so the two pictures line up."""
    view, other = comp.view(side), comp.other(side)
    assert view is not None
    here = comp.name(side)
    other_name = comp.name("qemu" if side == "model" else "model")
    prefix = prefix or ("m" if side == "model" else "q")
    mine = {n.get("node-name"): n for n in view.nodes}
    theirs = {n.get("node-name"): n for n in other.nodes} if other is not None else None
    ids: dict[str, str] = {}

    def nid(key: str) -> str:
        if key not in ids:
            ids[key] = f"{prefix}n{len(ids)}"
        return ids[key]

    lines = [
        "digraph blockgraph {",
        f'  id="{prefix}graph"; rankdir=TB; nodesep=0.25; ranksep=0.45; pad=0.15;',
        f'  bgcolor="white"; fontname="{_FONT}";',
        f'  node [shape=box, style="rounded,filled", fontname="{_FONT}", fontsize=10, margin="0.08,0.04",'
        f' color="{COLOURS["same-border"]}", fillcolor="{COLOURS["same-fill"]}", penwidth=1.2];',
        f'  edge [fontname="{_FONT}", fontsize=9, color="{COLOURS["edge"]}", fontcolor="#333333",'
        ' arrowsize=0.7];',
    ]
    mp = {p.key: p for p in view.parents}
    tp = {p.key: p for p in other.parents} if other is not None else {}
    for key in comp.parent_order:
        p = mp.get(key)
        if p is None:
            if other is None:
                continue
            q = tp[key]
            lines.append(f'  {nid(key)} [id="{prefix}-{_idsafe(key)}", class="ghost", style="rounded,dashed",'
                         f' color="{COLOURS["ghost"]}", fontcolor="{COLOURS["ghost-text"]}",'
                         f' label={_parent_label(q, set(), f"(not in {here})")},'
                         f' tooltip={_q(f"{_pname(key)}: only in {other_name}")}];')
            continue
        kind = "job" if p.kind == "job" else "backend"
        changed = {k for k, _, _ in comp.parent_fields.get(key, ())}
        only = other is not None and key not in tp
        cls = "parent only" if only else ("parent changed" if changed else "parent")
        border = COLOURS["only-border"] if only else (COLOURS["changed-border"] if changed else COLOURS[f"{kind}-border"])
        pen = 2.6 if (only or changed) else 1.2
        note = f"(only in {here})" if only else ""
        lines.append(f'  {nid(key)} [id="{prefix}-{_idsafe(key)}", class="{cls}",'
                     f' fillcolor="{COLOURS[f"{kind}-fill"]}", color="{border}", penwidth={pen},'
                     f' label={_parent_label(p, changed, note)}, tooltip={_q(_pname(key))}];')
    for name in comp.node_order:
        n = mine.get(name)
        if n is None:
            if theirs is None or name not in theirs:
                continue
            lines.append(f'  {nid(name)} [id="{prefix}-{_idsafe(name)}", class="node-ghost ghost",'
                         f' style="rounded,dashed", color="{COLOURS["ghost"]}", fontcolor="{COLOURS["ghost-text"]}",'
                         f' label=<{_bold(name)}<BR/>not in {_h(here)}>,'
                         f' tooltip={_q(f"{name}: only in {other_name}")}];')
            continue
        diffs = comp.fields.get(name, [])
        only = theirs is not None and name not in theirs
        if only:
            attrs_ = (f'class="node-only only", color="{COLOURS["only-border"]}",'
                      f' fillcolor="{COLOURS["only-fill"]}", penwidth=2.6')
            note = f"only in {here}"
        elif diffs:
            attrs_ = (f'class="node-changed changed", color="{COLOURS["changed-border"]}",'
                      f' fillcolor="{COLOURS["changed-fill"]}", penwidth=2.6')
            note = ""
        else:
            attrs_ = 'class="node-same"'
            note = ""
        lines.append(f'  {nid(name)} [id="{prefix}-{_idsafe(name)}", {attrs_},'
                     f' label={_node_label(n, diffs, note)}, tooltip={_q(_tooltip(n, diffs, side, other_name))}];')
    my_edges = {(e.parent, e.name, e.child): e for e in view.edges}
    their_edges = {(e.parent, e.name, e.child): e for e in other.edges} if other is not None else {}
    for i, key in enumerate(comp.edge_order):
        e = my_edges.get(key)
        parent, name, child = key
        if e is None and key not in their_edges:
            continue
        if parent not in ids or child not in ids:
            nid(parent), nid(child)
            if parent not in mine and parent not in mp and parent not in tp and (theirs is None or parent not in theirs):
                lines.append(f'  {ids[parent]} [label={_q(parent)}, style="dashed"];')
            if child not in mine and (theirs is None or child not in theirs):
                lines.append(f'  {ids[child]} [label={_q(child)}, style="dashed"];')
        if e is None:
            lines.append(f'  {ids[parent]} -> {ids[child]} [id="{prefix}-e{i}", class="edge-ghost ghost",'
                         f' style="dashed", color="{COLOURS["ghost"]}", fontcolor="{COLOURS["ghost-text"]}",'
                         f' label={_q(name + " (absent)")}, tooltip={_q(f"{name}: only in {other_name}")}];')
            continue
        tip = f"{_pname(parent)} --{name}--> {child}"
        if e.perm is not None:
            tip += f"\nperm: {', '.join(e.perm) or '-'}\nshared: {', '.join(e.shared or ()) or '-'}"
        if other is not None and key not in their_edges:
            lines.append(f'  {ids[parent]} -> {ids[child]} [id="{prefix}-e{i}", class="edge-only only",'
                         f' color="{COLOURS["only-border"]}", fontcolor="{COLOURS["only-border"]}", penwidth=2.4,'
                         f' label=<{_bold(name)}>, tooltip={_q(tip + chr(10) + "only in " + here)}];')
        else:
            extra = ', style="dotted"' if parent not in mine and parent.startswith(("job:", "blk:")) else ""
            lines.append(f'  {ids[parent]} -> {ids[child]} [id="{prefix}-e{i}", class="edge-same",'
                         f' label={_q(name)}, tooltip={_q(tip)}{extra}];')
    if not ids and not any(k in mine for k in comp.node_order):
        lines.append(f'  {prefix}empty [shape=plaintext, style="", fontcolor="#777777", label="no block nodes"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _idsafe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"_{ord(m.group()):x}", key)


# --------------------------------------------------------------------------------------------
# Graphviz


def render_svg(dot_source: str, dot: str | None = None, timeout: float = 60.0) -> str:
    """``dot -Tsvg`` of ``dot_source``: the ``<svg>`` element, without XML prolog or DOCTYPE."""
    if dot is None:
        from .toolfetch import find_dot

        dot = find_dot()
    if dot is None:
        raise DotMissing("Graphviz's dot is not installed: run `python -m fuzz.toolfetch fetch "
                         "graphviz` (or put dot in $PATH, or set $BLOCKFUZZ_DOT)")
    proc = subprocess.run([dot, "-Tsvg"], input=dot_source, capture_output=True, text=True,
                          timeout=timeout, stdin=None)
    if proc.returncode != 0 or "<svg" not in proc.stdout:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise RuntimeError(f"dot -Tsvg failed: {detail}")
    svg = proc.stdout[proc.stdout.index("<svg"):]
    # scale to the column, never above its natural size
    m = re.match(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    if m:
        svg = svg.replace(m.group(0), f'<svg width="{m.group(1)}pt" height="{m.group(2)}pt" '
                          f'style="max-width:100%;height:auto"', 1)
    return svg


# --------------------------------------------------------------------------------------------
# gathering the graphs by replaying a trace


@attrs.define
class Report:
    """Everything ``report.html`` shows."""

    name: str
    index: int                     # 0-based step shown
    step: dict | None
    when: str                      # "after" | "before" (QEMU died at the step)
    model: GraphView | None
    qemu: GraphView | None
    error: BaseException | None = None        # what the replay raised at the step
    original: BaseException | str | None = None   # the finding as recorded (a campaign's)
    observed: dict | None = None   # what each side answered at the step
    steps: list = attrs.field(factory=list)
    qemu_label: str = ""
    profile: str = ""
    source: str = ""               # the trace file
    notes: list = attrs.field(factory=list)
    #: when QEMU died at the step: the model's graph after it (what the step should have done)
    predicted: GraphView | None = None

    @property
    def comparison(self) -> Comparison | None:
        return None if self.model is None else Comparison.of(self.model, self.qemu)


def _capture(runner, index: int, when: str, qemu_label: str, profile: str) -> tuple[GraphView, GraphView | None]:
    where = f"{when} step {index + 1}" if index >= 0 else "at start"
    mv = model_view(runner.model, f"model ({profile}) {where}")
    qv = None
    if runner.qemu is not None:
        jobs = []
        try:
            jobs = runner.qemu.query_jobs()
        except Exception:  # noqa: BLE001
            pass
        try:
            nodes = runner.qemu_graph()
        except Exception as e:  # noqa: BLE001 - the model's picture is still worth having
            mv.notes.append(f"QEMU's graph could not be queried: {type(e).__name__}: {_one_line(e)}")
        else:
            qv = qemu_view(runner.qemu, nodes, f"QEMU {qemu_label} {where}", jobs)
    return mv, qv


def _label(binaries) -> str:
    try:
        from .qemufetch import qemu_version

        return qemu_version(binaries.system)
    except Exception:  # noqa: BLE001
        return os.path.basename(str(binaries.system))


def build_report(tr: T.Trace, binaries, step: int | None = None, timeout: float = 5.0,
                 original: BaseException | str | None = None, source: str = "") -> Report:
    """Replay ``tr`` up to step ``step`` (0-based; None: to its first failure or its end) and
    gather both graphs there.  Raises what the replay cannot get past (``HarnessError`` when
    QEMU cannot start, ``OSError``); a disagreement, crash or step the model declines is the
    report's subject, not an error."""
    from models import NotModeled

    from .session import Session

    last = len(tr.steps) - 1 if step is None else step
    if not 0 <= last < len(tr.steps):
        raise ValueError(f"step {last + 1}: the trace has {len(tr.steps)} steps")
    label = _label(binaries)
    rep = Report(tr.name, last, tr.steps[last] if tr.steps else None, "after", None, None,
                 original=original, steps=list(tr.steps), qemu_label=label, source=source)
    with Session(binaries, tr.images, timeout=timeout, machine=tr.machine) as s:
        r = s.runner
        rep.profile = r.profile_name
        died = False
        for i, st in enumerate(tr.steps[:last + 1]):
            try:
                r.run(st)
            except QemuFailure as e:                  # a crash or a hang: QEMU is gone
                rep.error, rep.index, rep.step, rep.when, died = e, i, st, "before", True
                # the model ran the step before QEMU did: what it should have done
                rep.predicted = model_view(r.model, f"model ({rep.profile}) after step {i + 1}")
                break
            except Disagreement as e:
                rep.error, rep.index, rep.step = e, i, st
                break
            except (NotModeled, HarnessError) as e:   # neither side ran it: show the state before
                rep.error, rep.index, rep.step, rep.when = e, i, st, "before"
                rep.notes.append(f"step {i + 1} did not run: {type(e).__name__}: {_one_line(e)}")
                break
        rep.observed = r.observed[rep.index] if rep.index < len(r.observed) else None
        if not died:
            idx = rep.index if rep.when == "after" else rep.index - 1
            rep.model, rep.qemu = _capture(r, idx, rep.when, label, rep.profile)
    if died:
        _capture_before(rep, tr, binaries, timeout)
    if isinstance(rep.error, Disagreement) and step is not None and rep.index < step:
        rep.notes.append(f"the trace fails at step {rep.index + 1}, before step {step + 1}: shown is step {rep.index + 1}")
    return rep


def _capture_before(rep: Report, tr: T.Trace, binaries, timeout: float) -> None:
    """QEMU died at ``rep.index``: replay the steps before it on a fresh QEMU and take both
    graphs there (the last ones before the crash)."""
    from .session import Session

    try:
        with Session(binaries, tr.images, timeout=timeout, machine=tr.machine) as s:
            for st in tr.steps[:rep.index]:
                s.runner.run(st)
            rep.model, rep.qemu = _capture(s.runner, rep.index - 1, "before", rep.qemu_label,
                                           s.runner.profile_name)
            rep.model.title = f"model ({s.runner.profile_name}) before step {rep.index + 1}"
            rep.qemu.title = f"QEMU {rep.qemu_label} before step {rep.index + 1} (the last graph it reported)"
    except Exception as e:  # noqa: BLE001
        rep.notes.append(f"could not replay the steps before the crash to draw the graph: "
                         f"{type(e).__name__}: {_one_line(e)}")



# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 18px 22px; color: #222; }
h1 { font-size: 20px; margin: 0 0 6px 0; } h2 { font-size: 16px; margin: 22px 0 8px 0; }
.meta { color: #555; font-size: 13px; }
.verdict { padding: 8px 12px; border-radius: 4px; font-size: 14px; margin: 10px 0;
           white-space: pre-wrap; font-family: monospace; }
.verdict.fail { background: #fde2e2; border-left: 5px solid #c62828; }
.verdict.pass { background: #e3f4e1; border-left: 5px solid #2e7d32; }
.verdict.note { background: #fff3d6; border-left: 5px solid #e07b00; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; overflow-x: auto; white-space: pre-wrap;
      word-break: break-all; margin: 4px 0; }
.stepbox { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 14px; align-items: start; }
.pics { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; align-items: start; }
.pic { border: 1px solid #ccc; border-radius: 4px; padding: 6px; overflow-x: auto; background: #fff; }
.pic h3 { font-size: 14px; margin: 2px 0 6px 0; } .pic .src { color: #777; font-size: 11px; }
.legend span { display: inline-block; padding: 1px 7px; margin-right: 8px; border-radius: 3px;
               font-size: 12px; border: 2px solid; }
table.diff { border-collapse: collapse; font-size: 12px; }
table.diff td, table.diff th { border: 1px solid #ddd; padding: 3px 6px; text-align: left;
                               vertical-align: top; font-family: monospace; word-break: break-all; }
table.diff th { background: #eee; font-family: Helvetica, Arial, sans-serif; }
.udiff .add { background: #e6ffec; } .udiff .del { background: #ffebe9; } .udiff .hunk { color: #6f42c1; }
.steps li.here { background: #fff3d6; } .steps code { font-size: 12px; }
.pic svg { cursor: zoom-in; } .pic.full svg { max-width: none !important; cursor: zoom-out; }
"""
# a click on a picture shows it at its natural size (scrolling), another fits it to the column
_JS = ("document.querySelectorAll('.pic').forEach(function (p) {"
       " p.addEventListener('click', function () { p.classList.toggle('full'); }); });")


def _verdict(rep: Report) -> tuple[str, str]:
    e = rep.error
    if e is None:
        return "pass", f"step {rep.index + 1}: model and QEMU agree up to here"
    if isinstance(e, Disagreement):
        # the two sides' answers are in the text difference below
        text = e.summary().split(": expected ")[0] if e.kind == "graph" else str(e)
        return "fail", _clip(text, 600)
    if isinstance(e, QemuFailure):
        return "fail", str(e)
    return "note", f"{type(e).__name__}: {e}"


def _text_diff(rep: Report, comp: Comparison | None) -> tuple[str, str]:
    """(heading, unified diff) of the step's disagreement, or of the two graphs."""
    e = rep.error
    if isinstance(e, Disagreement):
        a, b = "model", "QEMU"
        if isinstance(e, ExpectationMismatch):
            a, b = "written expectation", (e.detail.split(":")[0] or "side")
        head = f"{e.kind} difference ({e.detail})" if e.detail else f"{e.kind} difference"
        return head, _udiff(e.expected, e.actual, a, b)
    if comp is not None and comp.qemu is not None:
        d = _udiff(comp.model.nodes, comp.qemu.nodes, "model", "QEMU")
        return "query-named-block-nodes, model vs QEMU", d
    return "", ""


def _udiff(a: Any, b: Any, an: str, bn: str) -> str:
    def lines(v: Any) -> list[str]:
        # sorted keys: QEMU's replies and the model's dicts order keys differently
        return (v if isinstance(v, str) else json.dumps(v, indent=1, sort_keys=True)).splitlines()

    return "\n".join(difflib.unified_diff(lines(a), lines(b), an, bn, n=3, lineterm=""))


def _udiff_html(text: str) -> str:
    out = []
    for line in text.splitlines():
        cls = ("add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else
               "hunk" if line.startswith("@@") else "")
        out.append(f'<span class="{cls}">{html.escape(line)}</span>' if cls else html.escape(line))
    return '<pre class="udiff">' + "\n".join(out) + "</pre>"


def _step_text(step: dict) -> str:
    return compact_json({k: v for k, v in step.items() if k != "observed"})


def compact_json(v: Any, width: int = 96, indent: str = "") -> str:
    """JSON with every object or list that fits in ``width`` columns on one line."""
    flat = json.dumps(v)
    if len(flat) + len(indent) <= width or not isinstance(v, (dict, list)) or not v:
        return flat
    inner = indent + "  "
    if isinstance(v, dict):
        items = [f"{inner}{json.dumps(k)}: {compact_json(x, width, inner).lstrip()}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    items = [inner + compact_json(x, width, inner).lstrip() for x in v]
    return "[\n" + ",\n".join(items) + f"\n{indent}]"


def _step_line(step: dict) -> str:
    if "qmp" in step:
        s = json.dumps(step.get("args", {}), separators=(",", ":"))
        return f"{step['qmp']} {_clip(s, 160)}"
    if "assert" in step:
        return "assert " + _clip(json.dumps({k: v for k, v in step.items() if k != "assert"}), 160)
    return "snapshot " + str(step.get("snapshot"))


def render_html(rep: Report, dot: str | None = None) -> str:
    """The report as one self-contained HTML page (the pictures inline SVG)."""
    comp = rep.comparison
    notes = list(rep.notes)
    pics = []
    for side in ("model", "qemu"):
        view = comp.view(side) if comp is not None else None
        if view is None:
            pics.append(f'<div class="pic"><h3>{"QEMU" if side == "qemu" else "model"}</h3>'
                        "<p>not available</p></div>")
            continue
        src = to_dot(comp, side)
        try:
            body = render_svg(src, dot)
        except Exception as e:  # noqa: BLE001 - the DOT text is still worth having
            notes.append(f"{side} picture: {_one_line(e)}")
            body = "<p>no picture; its DOT source:</p><pre>" + html.escape(src) + "</pre>"
        extra = "".join(f"<div class='src'>{html.escape(n)}</div>" for n in view.notes)
        pics.append(f'<div class="pic" id="pic-{side}"><h3>{html.escape(view.title)}</h3>{body}'
                    f'<div class="src">edges from {html.escape(view.edges_from or "-")}</div>{extra}</div>')
    kind, verdict = _verdict(rep)
    head, udiff = _text_diff(rep, comp)
    rows = comp.rows() if comp is not None else []
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>blockfuzz: {html.escape(rep.name)} step {rep.index + 1}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>blockfuzz report: {html.escape(rep.name)}</h1>",
        '<div class="meta">'
        + " &middot; ".join(html.escape(x) for x in (
            f"trace {rep.source}" if rep.source else "",
            f"QEMU {rep.qemu_label}" if rep.qemu_label else "",
            f"model profile {rep.profile}" if rep.profile else "",
            f"step {rep.index + 1} of {len(rep.steps)}") if x)
        + "</div>",
        f'<div class="verdict {kind}">{html.escape(verdict)}</div>',
    ]
    if rep.original is not None and _one_line(rep.original) != _one_line(rep.error or ""):
        parts.append('<div class="verdict note">as found: ' + html.escape(_one_line(rep.original)) + "</div>")
    for n in notes:
        parts.append(f'<div class="verdict note">{html.escape(n)}</div>')
    if rep.step is not None:
        answers = ""
        if rep.observed:
            answers = ('<table class="diff"><tr><th>side</th><th>answer</th></tr>'
                       + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_clip(json.dumps(v), 2000))}</td></tr>"
                                 for k, v in rep.observed.items()) + "</table>")
        parts.append(f'<h2>Step {rep.index + 1}</h2><div class="stepbox"><pre>'
                     f"{html.escape(_step_text(rep.step))}</pre><div>{answers}</div></div>")
    when = "after" if rep.when == "after" else "before"
    parts.append(f"<h2>Block graph {when} step {rep.index + 1}"
                 + (" (QEMU died at this step: the last graph it reported)" if rep.when == "before"
                    and isinstance(rep.error, QemuFailure) else "")
                 + "</h2>")
    parts.append('<div class="legend">'
                 f'<span style="border-color:{COLOURS["only-border"]};background:{COLOURS["only-fill"]}">'
                 'only on this side</span>'
                 f'<span style="border-color:{COLOURS["ghost"]};border-style:dashed;color:#777">'
                 'only on the other side (ghost)</span>'
                 f'<span style="border-color:{COLOURS["changed-border"]};background:{COLOURS["changed-fill"]}">'
                 'fields differ</span>'
                 f'<span style="border-color:{COLOURS["job-border"]};background:{COLOURS["job-fill"]}">job</span>'
                 f'<span style="border-color:{COLOURS["backend-border"]};background:{COLOURS["backend-fill"]}">'
                 'BlockBackend</span> <span style="border:none">(hover: full values and '
                 'permissions; click: natural size)</span></div>')
    parts.append('<div class="pics">' + "".join(pics) + "</div>")
    if rep.predicted is not None and rep.model is not None:
        pc = Comparison.of(rep.model, rep.predicted, names=("the graph before", "the prediction"))
        src = to_dot(pc, "qemu", prefix="p")
        try:
            body = render_svg(src, dot)
        except Exception as e:  # noqa: BLE001
            body = f"<p>no picture ({html.escape(_one_line(e))}); its DOT source:</p><pre>{html.escape(src)}</pre>"
        parts.append(f"<h2>What the model predicted step {rep.index + 1} to do</h2>"
                     "<p class='meta'>The model's graph after the step QEMU died in, coloured "
                     "against the graph before it: red is new, dashed is gone, orange changed."
                     + ("" if pc.differs else " The step changes nothing in the graph.")
                     + "</p><div class=\"pics\"><div class=\"pic\" id=\"pic-predicted\">"
                     f"<h3>{html.escape(rep.predicted.title)}</h3>{body}"
                     + "".join(f"<div class='src'>{html.escape(n)}</div>" for n in rep.predicted.notes)
                     + "</div></div>")
    if comp is not None and comp.qemu is not None:
        if rows:
            parts.append("<h2>What differs in the pictures</h2><table class='diff'>"
                         "<tr><th>what</th><th>where</th><th>model</th><th>QEMU</th></tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                   for r in rows) + "</table>")
            if any(r[0] == "parent" or (r[0] == "edge" and r[1].startswith(("job ", "BlockBackend")))
                   for r in rows):
                parts.append("<p class='meta'>Jobs and BlockBackends (and their edges) are drawn "
                             "for context; the fuzzer does not compare them.</p>")
        else:
            parts.append("<p class='meta'>The two graphs agree.</p>")
    if head:
        parts.append(f"<h2>Text difference: {html.escape(head)}</h2>"
                     + (_udiff_html(udiff) if udiff else "<p class='meta'>none</p>"))
    if comp is not None:
        jobs = [(v.title, v.jobs) for v in (comp.model, comp.qemu) if v is not None and v.jobs]
        if jobs:
            parts.append("<h2>query-jobs</h2>" + "".join(
                f"<div class='meta'>{html.escape(t)}</div><pre>{html.escape(json.dumps(j, indent=1))}</pre>"
                for t, j in jobs))
    parts.append("<h2>Steps</h2><ol class='steps'>" + "".join(
        f"<li class='{'here' if i == rep.index else ''}'><code>{html.escape(_step_line(s))}</code></li>"
        for i, s in enumerate(rep.steps[:rep.index + 1])) + "</ol>")
    if len(rep.steps) > rep.index + 1:
        parts.append(f"<p class='meta'>{len(rep.steps) - rep.index - 1} later step(s) not run.</p>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def _atomic_write(path: str, text: str) -> None:
    from .trace import write_atomically

    write_atomically(path, text)


def write_report(path: str, rep: Report, dot: str | None = None) -> str:
    """Render ``rep`` and write it to ``path`` atomically; returns ``path``."""
    _atomic_write(path, render_html(rep, dot))
    return path


def write_finding_report(folder: str, binaries, *, trace_file: str = "minimal.json",
                         error: BaseException | str | None = None, timeout: float = 5.0,
                         out: str = "report.html") -> str | None:
    """Write ``folder/report.html`` for a finding: replay ``folder/trace_file`` to its first
    failure and draw both graphs there.  ``error`` (the finding as the campaign saw it) is shown
    beside what the replay found.

    Never raises (an ``Exception``): a report is an extra, the finding's trace files are already
    written.  On failure a short report.html says what went wrong (its traceback included) and
    the path is still returned; None only if not even that could be written."""
    path = os.path.join(folder, out)
    trace_path = os.path.join(folder, trace_file)
    tr = None
    try:
        tr = T.load(trace_path)
        rep = build_report(tr, binaries, None, timeout, original=error, source=trace_path)
        if rep.error is None:
            rep.notes.append("the replay did not reproduce the finding: shown is the last step")
        return write_report(path, rep)
    except Exception as e:  # noqa: BLE001 - never lose a finding to its picture
        detail = "".join(traceback.format_exception(e))
        try:
            # a graph finding carries both node lists: draw them without a replay
            views = views_from_error(error) if tr is not None else None
            if views is not None:
                i = error.step_index
                rep = Report(tr.name, i, error.step, "after", views[0], views[1], error=error,
                             steps=list(tr.steps), source=trace_path,
                             notes=[f"the replay failed ({type(e).__name__}: {_one_line(e)}): "
                                    "the graphs are the finding's own"])
                return write_report(path, rep)
        except Exception:  # noqa: BLE001
            pass
        try:
            _atomic_write(path, "<!DOCTYPE html><html><head><meta charset='utf-8'><title>blockfuzz report failed"
                          f"</title></head><body><h1>No report for {html.escape(trace_path)}</h1>"
                          + (f"<p>finding: {html.escape(_one_line(error))}</p>" if error is not None else "")
                          + f"<p>the report could not be made:</p><pre>{html.escape(detail)}</pre></body></html>\n")
            return path
        except Exception:  # noqa: BLE001
            return None


def views_from_error(error) -> tuple[GraphView, GraphView] | None:
    """Both sides' graphs straight from a graph ``Disagreement`` (its expected and actual node
    lists), without a replay: edges only where the list has ``children`` (11.1)."""
    exp, act = getattr(error, "expected", None), getattr(error, "actual", None)
    if getattr(error, "kind", "") != "graph" or not isinstance(exp, list) or not isinstance(act, list):
        return None
    if not all(isinstance(n, dict) and "node-name" in n for n in exp + act):
        return None
    return nodes_view(exp, "model"), nodes_view(act, "QEMU")

