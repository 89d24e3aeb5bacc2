"""``fuzz.boundary``: boundary values drawn from the drivers' QAPI members, each of which the
model answers with the QAPI layer's own error (QEMU-free)."""
from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.boundary import qapi_boundary
from models.arguments import COMMAND_ARGUMENTS
from fuzz.statemachine import SEED_IMAGES, add_args
from models import PROFILES, Model, NotModeled

#: what models.qapi raises (visit_type_*, visit_check_struct): never a driver's own error
QAPI_ERROR = re.compile(r"Invalid parameter type for '[^']+', expected: \w+"
                        r"|Parameter '[^']+' (does not accept value '[^']*'|is missing|is unexpected)")

FILES = tuple(i.file for i in SEED_IMAGES)


def _answer(args):
    try:
        return Model(PROFILES["11.1"], SEED_IMAGES).execute("blockdev-add", args)
    except NotModeled:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_boundary_value_is_refused_by_the_qapi_layer(data):
    # a tree as the generator draws it (no node exists yet: children are inline or missing)
    args = data.draw(add_args((), FILES))
    before = _answer(args)
    if before is None or (before.error is not None and QAPI_ERROR.fullmatch(before.error.desc)):
        return   # declined, or already broken at the QAPI layer by the generator itself
    broken = data.draw(qapi_boundary(args))
    after = _answer(broken)
    if after is None:
        return   # a second unknown key: GHashTable order, declined on purpose
    if broken == args or _string_boundary(args, broken):
        return   # well typed: the driver's own answer (test_string_boundaries_... below)
    assert after.error is not None and QAPI_ERROR.fullmatch(after.error.desc), (broken, after)


def _string_boundary(before, after) -> bool:
    """Whether ``after`` differs from ``before`` by one string member set to a boundary string."""
    from fuzz.boundary import _STRINGS

    if isinstance(before, dict) and isinstance(after, dict):
        return any(_string_boundary(before.get(k), after[k]) for k in after if k in before
                   and before[k] != after[k])
    return isinstance(after, str) and after in _STRINGS and before != after


def test_each_kind_of_break_has_its_exact_error():
    """One example of each kind, with the text QEMU's generated visitors give
    (qapi/qobject-input-visitor.c, qapi/qapi-visit-core.c)."""
    m = Model(PROFILES["11.1"], SEED_IMAGES)
    base = {"driver": "raw", "node-name": "r0", "file": {"driver": "file", "filename": "hd0.img"}}
    cases = [
        (dict(base, offset="1"), "Invalid parameter type for 'offset', expected: integer"),
        (dict(base, offset=2**63), "Invalid parameter type for 'offset', expected: integer"),
        (dict(base, discard=3), "Invalid parameter type for 'discard', expected: string"),
        (dict(base, discard="bogus"), "Parameter 'discard' does not accept value 'bogus'"),
        (dict(base, cache="x"), "Invalid parameter type for 'cache', expected: object"),
        (dict(base, file=5), "Invalid parameter type for 'file', expected: BlockdevRef"),
        ({k: v for k, v in base.items() if k != "file"}, "Parameter 'file' is missing"),
        (dict(base, bogus=1), "Parameter 'bogus' is unexpected"),
        (dict(base, file={"driver": "file", "filename": 7}),
         "Invalid parameter type for 'file.filename', expected: string"),
    ]
    for args, want in cases:
        assert m.execute("blockdev-add", args).error.desc == want, args


def test_string_boundaries_get_qemus_exact_errors():
    # probed on 7.2.22, 10.0.2 and 11.1.3 (bdrv_open_common(), bdrv_assign_node_name(),
    # file-posix's open with ENAMETOOLONG)
    from models import PROFILES, ImageSpec, Model

    m = Model(PROFILES["11.1"], [ImageSpec("hd0.img", "qcow2", 1 << 20)])
    cases = {("node-name", ""): "Invalid node-name: ''",
             ("node-name", "n" * 32): "Node name too long",
             ("node-name", "a b"): "Invalid node-name: 'a b'",
             ("filename", ""): "The 'file' block driver requires a file name",
             ("filename", "f" * 300): f"Could not open '{'f' * 300}': File name too long",
             ("filename", "\u00e9t\u00e9"): "Could not open '\u00e9t\u00e9': No such file or directory"}
    for (key, value), desc in cases.items():
        args = {"driver": "file", "node-name": "x", "filename": "hd0.img", key: value}
        assert m.execute("blockdev-add", args).error.desc == desc


# -- command arguments (fuzz.boundary.argument_boundary) ---------------------------------------

#: arguments as the rules draw them, against the seed images opened as hd0 (qcow2 over file)
COMMANDS = {
    "block-stream": {"device": "hd0", "job-id": "job0", "auto-finalize": False},
    "block-commit": {"device": "hd0", "job-id": "job0", "top-node": "hd0"},
    "blockdev-mirror": {"device": "hd0", "target": "f0", "sync": "full", "job-id": "job0"},
    "block_resize": {"node-name": "hd0", "size": 1 << 20},
    "blockdev-snapshot": {"node": "f0", "overlay": "hd0"},
    "x-blockdev-change": {"parent": "hd0", "child": "file"},
}


def _command_model() -> Model:
    m = Model(PROFILES["11.1"], SEED_IMAGES)
    f = SEED_IMAGES[0].file
    assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": "hd0",
                                      "file": {"driver": "file", "filename": f}}).ok
    assert m.execute("blockdev-add", {"driver": "file", "node-name": "f0",
                                      "filename": SEED_IMAGES[1].file}).ok
    return m


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_broken_command_argument_is_refused_by_the_qapi_layer(data):
    from fuzz.boundary import _INTEGERS, argument_boundary

    cmd = data.draw(st.sampled_from(sorted(COMMANDS)))
    args = COMMANDS[cmd]
    broken = data.draw(argument_boundary(cmd, args))
    assert broken != args and args == COMMANDS[cmd]   # a copy, one thing changed
    try:
        out = _command_model().execute(cmd, broken)
    except NotModeled:
        return   # e.g. speed on a stream: declined after the visit
    edges = {i for t in _INTEGERS.values() for i in t}
    int_members = {n for n, t, _r in COMMAND_ARGUMENTS[cmd] if t.kind in _INTEGERS}
    well_typed = _string_boundary(args, broken) or any(
        k in int_members and broken[k] != args.get(k) and type(broken[k]) is int
        and broken[k] in edges for k in broken)
    if well_typed:
        return   # the command's own answer (test_integer_edges_get_qemus_exact_errors)
    assert out.error is not None and (QAPI_ERROR.fullmatch(out.error.desc)
                                      or re.fullmatch(r"Parameter '\w+' expects uint(64|32_t)",
                                                      out.error.desc)), (cmd, broken, out)


def test_integer_edges_get_qemus_exact_errors():
    """Well-typed integers at an int64 / uint32 edge: the command's own range checks
    (blockdev.c, block/mirror.c; the uint32 one is the visitor's)."""
    cases = [
        ("block_resize", {"node-name": "hd0", "size": -1},
         "Parameter 'size' expects a >0 size"),
        ("blockdev-mirror", {"device": "hd0", "target": "f0", "sync": "full", "speed": -1,
                             "job-id": "j"},
         "Parameter 'speed' expects a non-negative value"),
        ("blockdev-mirror", {"device": "hd0", "target": "f0", "sync": "full",
                             "granularity": 2**32}, "Parameter 'granularity' expects uint32_t"),
        ("blockdev-mirror", {"device": "hd0", "target": "f0", "sync": "full",
                             "granularity": 2**32 - 1, "job-id": "j"},
         "Parameter 'granularity' expects a value in range [512B, 64MB]"),   # blockdev.c
    ]
    for cmd, args, want in cases:
        out = _command_model().execute(cmd, args)
        assert out.error is not None and out.error.desc == want, (cmd, args, out)
