"""fuzz.minimize and ``blockfuzz minimize``: delta debugging over traces.

The algorithm is tested with pure predicates (no QEMU): each pass on its own, the budget, the
cache, interruption.  The QEMU half plants a model fault that needs four steps to show, hides
those steps among 21 valid ones, and asks ``blockfuzz minimize`` (in-process, so the
monkeypatch applies) for them back."""
from __future__ import annotations

import copy
import os
import signal
import time

import attrs
import pytest

from fuzz import minimize as M
from fuzz import trace as T

MiB = 1 << 20
QEMU_11 = "11.1"


# --------------------------------------------------------------------------------------------
# helpers

def make_trace(steps, images=None, **extra) -> T.Trace:
    images = images if images is not None else [{"file": "a.img", "format": "qcow2", "size": MiB}]
    d = {"blockfuzz-trace": 1, "name": "t", "description": "d", "images": images, "steps": steps}
    d.update(extra)
    return T.Trace.from_json(copy.deepcopy(d))


def bare(steps):
    return [{k: v for k, v in s.items() if k != "observed"} for s in steps]


def is_subsequence(needle, hay) -> bool:
    it = iter(hay)
    return all(any(x == y for y in it) for x in needle)


class Counting:
    """A predicate wrapper that counts calls and remembers what it was asked."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        self.seen: list[str] = []

    def __call__(self, tr: T.Trace) -> bool:
        assert isinstance(tr, T.Trace)
        self.calls += 1
        self.seen.append(M.trace_key(tr))
        return self.fn(tr)


add = lambda a: {"qmp": "blockdev-add", "args": a}
hmp = lambda dev, c: {"qmp": "human-monitor-command", "args": {"command-line": f'qemu-io {dev} "{c}"'}}


# The planted bug: deleting the bottom of a three-node backing chain.  Four steps set it up;
# they are already minimal (no key can go, no inline child can become a reference).
PLANTED = [
    add({"driver": "qcow2", "node-name": "base", "file": {"driver": "file", "filename": "a.img"}}),
    add({"driver": "qcow2", "node-name": "mid", "file": {"driver": "file", "filename": "b.img"},
         "backing": "base"}),
    add({"driver": "qcow2", "node-name": "top", "file": {"driver": "file", "filename": "c.img"},
         "backing": "mid"}),
    {"qmp": "blockdev-del", "args": {"node-name": "base"}},
]
PLANTED_IMAGES = [{"file": f, "format": "qcow2", "size": MiB} for f in ("a.img", "b.img", "c.img")]
NOISE_IMAGES = [
    {"file": "d.img", "format": "qcow2", "size": 2 * MiB,
     "writes": [{"pattern": 0x5a, "offset": 0, "length": 65536}]},
    {"file": "e.img", "format": "qcow2", "backing-file": "d.img", "backing-format": "qcow2",
     "writes": [{"pattern": 0x5b, "offset": MiB, "length": 4096}]},
    {"file": "r.img", "format": "raw", "size": 65536,
     "writes": [{"pattern": 0x3c, "offset": 0, "length": 32768}]},
]
# 21 valid steps (they replay clean on QEMU and the model), some on the planted nodes
NOISE = [
    add({"driver": "qcow2", "node-name": "n0", "read-only": False, "cache": {"no-flush": False},
         "file": {"driver": "file", "node-name": "n0-file", "filename": "d.img"}}),
    hmp("n0", "read -P 0x5a 0 64k"),
    {"qmp": "object-add", "args": {"qom-type": "iothread", "id": "io0"}},
    hmp("n0", "write -P 0x11 4096 8192"),
    add({"driver": "raw", "node-name": "r0", "file": {"driver": "file", "filename": "r.img"}}),
    {"snapshot": "s1"},
    hmp("r0", "read -P 0x3c 0 32k"),
    {"qmp": "blockdev-reopen", "args": {"options": [
        {"driver": "qcow2", "node-name": "n0", "read-only": True, "file": "n0-file"}]}},
    {"qmp": "blockdev-del", "args": {"node-name": "nope"}},
    {"assert": "node", "node": "n0", "path": "ro", "equals": True},
    hmp("base", "read 0 512"),
    {"qmp": "object-add", "args": {"qom-type": "throttle-group", "id": "tg0",
                                   "limits": {"iops-total": 1000}}},
    add({"driver": "qcow2", "node-name": "e0", "file": {"driver": "file", "filename": "e.img"},
         "backing": None}),
    hmp("e0", "read -P 0x5b 1M 4k"),
    {"qmp": "object-del", "args": {"id": "io0"}},
    {"qmp": "blockdev-del", "args": {"node-name": "e0"}},
    hmp("r0", "write -P 0x77 0 4k"),
    {"qmp": "blockdev-del", "args": {"node-name": "r0"}},
    {"assert": "node", "node": "r0", "absent": True},
    {"qmp": "object-del", "args": {"id": "tg0"}},
    hmp("mid", "read 0 4k"),
]
LAYOUT = "NPNNNNPNNNNNNNPNNNNNPNNNN"   # where the planted steps sit among the noise


def planted_trace() -> T.Trace:
    assert len(NOISE) == 21 and LAYOUT.count("P") == 4 and len(LAYOUT) == 25
    p, n = iter(copy.deepcopy(PLANTED)), iter(copy.deepcopy(NOISE))
    steps = [next(p) if c == "P" else next(n) for c in LAYOUT]
    return make_trace(steps, PLANTED_IMAGES + NOISE_IMAGES)


# --------------------------------------------------------------------------------------------
# ddmin and the steps pass

def test_ddmin_is_one_minimal_and_uses_chunks():
    need = {3, 17}
    calls = []

    def test(kept):
        calls.append(list(kept))
        return need <= set(kept)

    assert M.ddmin(list(range(40)), test) == sorted(need)
    # chunks first: far fewer tests than deleting 38 elements one by one would take
    assert len(calls) < 38
    assert any(len(c) <= 20 for c in calls[:3])   # the first tests delete half the list


def test_ddmin_repeats_single_deletions_until_none_goes():
    # B can only go once A has gone: a single sweep left to right would keep B
    def test(kept):
        return "C" in kept and ("B" not in kept or "A" in kept or "D" in kept)

    assert M.ddmin(["A", "B", "C"], test) == ["C"]


def test_planted_four_steps_found_among_25_by_a_pure_predicate():
    tr = planted_trace()
    pred = Counting(lambda t: is_subsequence(PLANTED, bare(t.steps)))
    assert pred(tr)
    small = M.minimize(tr, pred)
    assert bare(small.steps) == PLANTED
    assert pred(small)
    # the images the planted steps name stay, the others go
    assert sorted(i.file for i in small.images) == ["a.img", "b.img", "c.img"]


def test_chunks_before_single_steps_on_a_long_trace():
    steps = [hmp("hd0", f"read {i * 512} 512") for i in range(64)]
    last = steps[-1]
    pred = Counting(lambda t: bool(t.steps) and t.steps[-1] == last)
    small = M.minimize(make_trace(steps, [{"file": "hd0.img", "format": "raw", "size": MiB}]),
                       pred, passes=["steps"])
    assert bare(small.steps) == [last]
    assert pred.calls < 20, pred.calls   # one at a time would take 63


def test_input_with_observed_is_stripped_and_never_asked_twice():
    steps = [dict(hmp("hd0", "read 0 512"), observed={"qemu": 1, "model": 1}) for _ in range(3)]
    steps.append(dict(hmp("hd0", "write 0 512"), observed={"qemu": 2}))

    def fn(t):
        assert not any("observed" in s for s in t.steps)
        return any("write" in s["args"]["command-line"] for s in t.steps)

    pred = Counting(fn)
    small = M.minimize(make_trace(steps), pred)
    assert len(pred.seen) == len(set(pred.seen))
    assert len(small.steps) == 1 and "observed" not in small.steps[0]


# --------------------------------------------------------------------------------------------
# simplification passes

def test_keys_pass_drops_optional_keys_and_keeps_required_ones():
    step = add({"driver": "qcow2", "node-name": "hd0", "read-only": True, "discard": "unmap",
                "cache": {"direct": False, "no-flush": True},
                "file": {"driver": "file", "node-name": "hd0-file", "filename": "a.img",
                         "locking": "off"}})

    def fn(t):
        a = t.steps[0]["args"]
        return (a.get("read-only") is True and a.get("cache", {}).get("no-flush") is True
                and isinstance(a.get("file"), dict))

    small = M.minimize(make_trace([step]), fn, passes=["keys"])
    assert small.steps[0]["args"] == {"driver": "qcow2", "node-name": "hd0", "read-only": True,
                                      "cache": {"no-flush": True},
                                      "file": {"driver": "file", "filename": "a.img"}}


def test_keys_pass_never_asks_without_driver_or_top_node_name():
    step = add({"driver": "raw", "node-name": "r0", "file": {"driver": "file", "filename": "a.img"}})
    asked = []

    def fn(t):
        asked.append(t.steps[0]["args"])
        return True

    M.minimize(make_trace([step]), fn, passes=["keys"])
    assert asked
    assert all("driver" in a and "node-name" in a for a in asked)
    assert all(isinstance(a.get("file"), str) or a.get("file", {}).get("driver") == "file"
               for a in asked if "file" in a)


def test_keys_pass_keeps_key_order():
    step = add({"driver": "qcow2", "node-name": "hd0", "a-key": 1, "file": "f0", "z-key": 2})
    small = M.minimize(make_trace([step]), lambda t: "z-key" in t.steps[0]["args"], passes=["keys"])
    assert list(small.steps[0]["args"]) == ["driver", "node-name", "z-key"]


def test_options_pass_shortens_reopen_lists():
    opts = [{"driver": "qcow2", "node-name": f"hd{i}", "read-only": True} for i in range(5)]
    step = {"qmp": "blockdev-reopen", "args": {"options": opts}}
    want = opts[3]
    small = M.minimize(make_trace([step]), lambda t: want in t.steps[0]["args"]["options"],
                       passes=["options"])
    assert small.steps[0]["args"]["options"] == [want]


def test_references_pass_turns_inline_children_into_existing_names():
    steps = [
        add({"driver": "file", "node-name": "f-other", "filename": "b.img"}),
        add({"driver": "raw", "node-name": "raw0", "file": {"driver": "file", "filename": "a.img"}}),
        add({"driver": "file", "node-name": "f-gone", "filename": "a.img"}),
        {"qmp": "blockdev-del", "args": {"node-name": "f-gone"}},
        add({"driver": "file", "node-name": "f-a", "filename": "a.img"}),
        add({"driver": "qcow2", "node-name": "hd0", "file": {"driver": "file", "filename": "a.img"}}),
    ]
    asked = []

    def fn(t):
        f = t.steps[-1]["args"]["file"]
        asked.append(f)
        return t.steps[:-1] == steps[:-1] and (isinstance(f, dict) or f in ("f-a", "f-other"))

    small = M.minimize(make_trace(steps), fn, passes=["references"])
    # the same driver and file name first; a deleted node and a raw node are never offered
    assert small.steps[-1]["args"]["file"] == "f-a"
    assert "f-gone" not in asked and "raw0" not in asked
    assert small.steps[:-1] == steps[:-1]


def test_references_pass_inside_reopen_elements():
    steps = [add({"driver": "file", "node-name": "fx", "filename": "a.img"}),
             {"qmp": "blockdev-reopen", "args": {"options": [
                 {"driver": "qcow2", "node-name": "hd0", "file": {"driver": "file", "filename": "a.img"}}]}}]
    small = M.minimize(make_trace(steps), lambda t: True, passes=["references"])
    assert small.steps[1]["args"]["options"][0]["file"] == "fx"


def test_images_pass_drops_unnamed_images_writes_and_backing_links():
    images = [
        {"file": "base.img", "format": "qcow2", "size": 4 * MiB,
         "writes": [{"pattern": 1, "offset": 0, "length": 4096}]},
        {"file": "top.img", "format": "qcow2", "backing-file": "base.img", "backing-format": "qcow2",
         "writes": [{"pattern": 2, "offset": 0, "length": 4096},
                    {"pattern": 3, "offset": MiB, "length": 4096}]},
        {"file": "unused.img", "format": "raw", "size": MiB},
    ]
    steps = [add({"driver": "qcow2", "node-name": "hd0", "file": {"driver": "file", "filename": "top.img"}})]

    def fn(t):  # needs top.img with the pattern-3 write; nothing else
        top = [i for i in t.images if i.file == "top.img"]
        return bool(top) and any(w.pattern == 3 for w in top[0].writes)

    small = M.minimize(make_trace(steps, images), fn, passes=["images"])
    assert [i.file for i in small.images] == ["top.img"]
    top = small.images[0]
    assert top.backing_file is None and top.size == 4 * MiB   # the base's size, inherited before
    assert [w.pattern for w in top.writes] == [3]


def test_images_pass_keeps_a_needed_backing_file():
    images = [{"file": "base.img", "format": "qcow2", "size": MiB},
              {"file": "top.img", "format": "qcow2", "backing-file": "base.img"}]
    steps = [add({"driver": "qcow2", "node-name": "hd0", "file": {"driver": "file", "filename": "top.img"}})]

    def fn(t):
        return any(i.backing_file == "base.img" for i in t.images)

    small = M.minimize(make_trace(steps, images), fn, passes=["images"])
    assert [i.file for i in small.images] == ["base.img", "top.img"]


def test_numbers_pass_shrinks_sizes_and_writes():
    images = [{"file": "a.img", "format": "qcow2", "size": 8 * MiB,
               "writes": [{"pattern": 7, "offset": 3 * MiB, "length": MiB}]}]

    def fn(t):  # needs at least 1 MiB of image and a write of at least 4 KiB
        im = t.images[0]
        return im.size >= MiB and im.writes and im.writes[0].length >= 4096

    small = M.minimize(make_trace([], images), fn, passes=["numbers"])
    im = small.images[0]
    assert im.size == MiB          # the first round size that still fails
    assert im.writes[0].offset == 0
    assert im.writes[0].length == 4096


def test_numbers_pass_never_cuts_an_image_below_its_writes():
    images = [{"file": "a.img", "format": "raw", "size": 8 * MiB,
               "writes": [{"pattern": 7, "offset": 3 * MiB, "length": MiB}]}]
    asked = []

    def fn(t):
        im = t.images[0]
        asked.append(im)
        return im.writes[0].offset == 3 * MiB

    small = M.minimize(make_trace([], images), fn, passes=["numbers"])
    assert all(im.size >= w.offset + w.length for im in asked for w in im.writes)
    assert small.images[0].size == 4 * MiB


def test_numbers_pass_shrinks_images_of_one_size_together():
    images = [{"file": f, "format": "qcow2", "size": 3 * MiB} for f in ("a.img", "b.img")]
    small = M.minimize(make_trace([], images), lambda t: len({i.size for i in t.images}) == 1,
                       passes=["numbers"])
    assert len({i.size for i in small.images}) == 1 and small.images[0].size < 3 * MiB


def test_qemu_io_pass_drops_flags_and_brings_numbers_down():
    steps = [hmp("hd0", "write -P 0x5a 3M 1M"), hmp("hd0", "write -z -u 64k 64k")]

    def fn(t):
        l0 = t.steps[0]["args"]["command-line"]
        l1 = t.steps[1]["args"]["command-line"]
        return '"write ' in l0 and "-z" in l1   # the first write matters, and a zero write

    small = M.minimize(make_trace(steps), fn, passes=["qemu-io"])
    assert small.steps[0]["args"]["command-line"] == 'qemu-io hd0 "write 0 512"'
    assert small.steps[1]["args"]["command-line"] == 'qemu-io hd0 "write -z 0 512"'


def test_qemu_io_pass_leaves_other_hmp_lines_alone():
    step = {"qmp": "human-monitor-command", "args": {"command-line": "info block"}}
    pred = Counting(lambda t: True)
    small = M.minimize(make_trace([step]), pred, passes=["qemu-io"])
    assert small.steps == [step] and pred.calls == 0


def test_machine_pass():
    steps = [{"qmp": "device_add", "args": {"driver": "virtio-scsi-pci", "id": "scsi0"}}]
    assert M.minimize(make_trace(steps, machine="pc"), lambda t: True).machine == "none"
    assert M.minimize(make_trace(steps, machine="pc"), lambda t: t.machine == "pc").machine == "pc"


def test_expect_is_kept_where_the_original_had_it_and_never_added():
    steps = [dict(add({"driver": "qcow2", "node-name": "hd0", "read-only": True,
                       "file": {"driver": "file", "filename": "a.img"}}), expect={"return": {}}),
             {"qmp": "blockdev-del", "args": {"node-name": "hd1"}, "expect": {"error": {
                 "class": "GenericError", "desc": "Failed to find node with node-name='hd1'"}}},
             {"qmp": "blockdev-del", "args": {"node-name": "hd2"}}]
    original = {s["args"]["node-name"]: s for s in steps}
    small = M.minimize(make_trace(steps), lambda t: len(t.steps) >= 2)
    assert len(small.steps) == 2
    for s in small.steps:
        assert s.get("expect") == original[s["args"]["node-name"]].get("expect")
    assert "read-only" not in small.steps[0]["args"]   # its arguments were simplified


def test_other_top_level_keys_survive():
    tr = make_trace([hmp("hd0", "read 0 512")], affects=["7.2"], intermittent=["10.0"])
    small = M.minimize(tr, lambda t: True)
    assert small.extra == {"affects": ["7.2"], "intermittent": ["10.0"]}
    assert small.name == tr.name and small.description == tr.description


def test_unknown_pass_is_refused():
    with pytest.raises(ValueError):
        M.minimize(make_trace([]), lambda t: True, passes=["nope"])


class _At(Exception):
    """Stands for a finding at a step (what _model_keeps_expect reads of it)."""

    def __init__(self, step, index):
        self.step, self.step_index = step, index


def _model_only(tr: T.Trace):
    from fuzz.engine import Runner
    from models import PROFILES, Model

    runner = Runner(Model(PROFILES["11.1"], tr.images), None)
    for i, step in enumerate(tr.steps):   # the last as QEMU's failure leaves it: unchecked
        runner.run(step if i < len(tr.steps) - 1 else {k: v for k, v in step.items() if k != "expect"})
    return runner


def test_failing_step_expect_is_checked_against_the_model():
    images = [{"file": "a.img", "format": "qcow2", "size": 2 * MiB,
               "writes": [{"pattern": 0xA1, "offset": MiB, "length": 64 * 1024}]}]
    read = dict(hmp("hd0", "read -P 0xa1 1M 64k"),
                expect={"return": "", "stdout": ["read 65536/65536 bytes at offset 1048576"]})
    steps = [add({"driver": "qcow2", "node-name": "hd0", "file": {"driver": "file", "filename": "a.img"}}), read]
    runner = _model_only(make_trace(steps, images))
    assert M._model_keeps_expect(runner, _At(steps[1], 1)) is True
    changed = dict(read, args={"command-line": 'qemu-io hd0 "read 0 512"'})
    runner = _model_only(make_trace([steps[0], changed], images))
    assert M._model_keeps_expect(runner, _At(changed, 1)) is False
    runner = _model_only(make_trace([steps[0], hmp("hd0", "read 0 512")], images))
    assert M._model_keeps_expect(runner, _At(hmp("hd0", "read 0 512"), 1)) is None
    gone = {"assert": "node", "node": "hd0", "absent": True}
    runner = _model_only(make_trace(steps[:1], images))
    assert M._model_keeps_expect(runner, _At(gone, 1)) is False


def test_predicate_rejects_a_candidate_whose_failing_step_expect_went_stale(monkeypatch):
    class Err(Exception):
        step_index = 0

        def signature(self):
            return "hang:human-monitor-command"

    answers = iter([M.Replay(Err(), [], None, True),      # the input: the model agrees
                    M.Replay(Err(), [], None, False),     # same hang, but the expect went stale
                    M.Replay(Err(), [], None, True)])
    monkeypatch.setattr(M, "run_candidate", lambda *a, **k: next(answers))
    pred = M.QemuPredicate(binaries=None)
    tr = make_trace([hmp("hd0", "read 0 512")])
    assert pred.check(tr) is not None and pred.target == "hang:human-monitor-command"
    assert pred(tr) is False
    assert pred(tr) is True


# --------------------------------------------------------------------------------------------
# budget and interruption

def test_max_runs_is_respected_and_the_best_so_far_returned():
    tr = planted_trace()
    pred = Counting(lambda t: is_subsequence(PLANTED, bare(t.steps)))
    stats = M.Stats()
    small = M.minimize(tr, pred, max_runs=5, stats=stats)
    assert pred.calls == 5 and stats.stopped == "budget"
    assert pred.fn(small) and len(small.steps) < 25


def test_deadline_is_respected():
    tr = planted_trace()
    small = M.minimize(tr, lambda t: is_subsequence(PLANTED, bare(t.steps)),
                       deadline=time.monotonic() - 1)
    assert bare(small.steps) == bare(tr.steps)


def test_interrupt_raises_with_the_best_so_far():
    tr = planted_trace()
    accepted = []

    def fn(t):
        if len(accepted) == 3:
            raise KeyboardInterrupt
        ok = is_subsequence(PLANTED, bare(t.steps))
        if ok:
            accepted.append(M.trace_key(t))
        return ok

    with pytest.raises(M.MinimizeInterrupted) as info:
        M.minimize(tr, fn)
    best = info.value.best
    assert M.trace_key(best) == accepted[-1]
    assert len(PLANTED) < len(best.steps) < len(tr.steps)
    assert info.value.stats.stopped == "interrupted"


def test_on_improvement_sees_every_accepted_candidate():
    tr = planted_trace()
    seen = []
    accepted = []

    def fn(t):
        ok = is_subsequence(PLANTED, bare(t.steps))
        if ok:
            accepted.append(M.trace_key(t))
        return ok

    M.minimize(tr, fn, on_improvement=lambda best, st: seen.append(M.trace_key(best)))
    assert seen == accepted and seen


# --------------------------------------------------------------------------------------------
# the command, without QEMU: a fake predicate stands in for M.QemuPredicate

class FakeError(Exception):
    step_index = 3

    def signature(self):
        return "result:blockdev-del:fake"


def fake_predicate_class(fn, check_result=True, raise_on_check=None, on_accept=None):
    class Fake:
        def __init__(self, binaries, timeout=5.0, tries=1, strict=False):
            self.target = "result:blockdev-del:fake"
            self.runs = 0
            self.accepted = 0

        def check(self, tr):
            if raise_on_check is not None:
                raise raise_on_check
            return FakeError() if check_result else None

        def __call__(self, tr):
            self.runs += 1
            ok = fn(tr)
            if ok:
                self.accepted += 1
                if on_accept:
                    on_accept(self.accepted)
            return ok

        def with_observed(self, tr):
            return tr

    return Fake


@pytest.fixture
def fake_qemu(monkeypatch, tmp_path):
    """resolve_qemu answers without a QEMU; returns a trace file of the planted example."""
    import fuzz.qemufetch as QF

    class B:
        system = "/nonexistent/qemu-system-x86_64"

    monkeypatch.setattr(QF, "resolve_qemu", lambda explicit=None: B())
    path = tmp_path / "planted.json"
    T.save(planted_trace(), str(path))
    return path


def test_cli_writes_the_minimized_trace_next_to_the_input(fake_qemu, monkeypatch, capsys):
    from fuzz.cli import main

    monkeypatch.setattr(M, "QemuPredicate",
                        fake_predicate_class(lambda t: is_subsequence(PLANTED, bare(t.steps))))
    assert main(["minimize", str(fake_qemu)]) == 0
    out = fake_qemu.parent / "planted.min.json"
    assert bare(T.load(str(out)).steps) == PLANTED
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    lines = captured.err.splitlines()
    assert sum(" steps, " in l and " s (run " in l for l in lines) >= 2   # one per improvement
    assert "25 -> 4 steps" in lines[-1]


def test_cli_sigterm_writes_the_best_so_far(fake_qemu, monkeypatch, capsys, tmp_path):
    from fuzz.cli import main

    accepted = []

    def fn(t):
        ok = is_subsequence(PLANTED, bare(t.steps))
        if ok:
            accepted.append(bare(t.steps))
        return ok

    def on_accept(n):   # during the third accepted replay: it completes, then the search stops
        if n == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(M, "QemuPredicate", fake_predicate_class(fn, on_accept=on_accept))
    out = tmp_path / "out" / "best.json"
    assert main(["minimize", str(fake_qemu), "-o", str(out)]) == 0
    written = bare(T.load(str(out)).steps)
    assert len(accepted) == 3 and written == accepted[2]
    assert len(PLANTED) < len(written) < 25
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before


def test_cli_second_signal_stops_at_once(fake_qemu, monkeypatch, capsys, tmp_path):
    from fuzz.cli import main

    accepted = []

    def fn(t):
        ok = is_subsequence(PLANTED, bare(t.steps))
        if ok:
            accepted.append(bare(t.steps))
            if len(accepted) == 2:     # two signals inside one replay: it is abandoned
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
        return ok

    monkeypatch.setattr(M, "QemuPredicate", fake_predicate_class(fn))
    out = tmp_path / "best.json"
    assert main(["minimize", str(fake_qemu), "-o", str(out)]) == 0
    assert len(accepted) == 2 and bare(T.load(str(out)).steps) == accepted[0]


def test_cli_signal_during_the_input_check_writes_the_input(fake_qemu, monkeypatch, tmp_path):
    from fuzz.cli import main

    class Fake(fake_predicate_class(lambda t: pytest.fail("no candidate may run"))):
        def check(self, tr):
            os.kill(os.getpid(), signal.SIGINT)
            return FakeError()

    monkeypatch.setattr(M, "QemuPredicate", Fake)
    out = tmp_path / "best.json"
    assert main(["minimize", str(fake_qemu), "-o", str(out)]) == 0
    assert bare(T.load(str(out)).steps) == bare(planted_trace().steps)


def test_cli_input_that_does_not_fail_exits_1(fake_qemu, monkeypatch, capsys):
    from fuzz.cli import main

    monkeypatch.setattr(M, "QemuPredicate", fake_predicate_class(lambda t: True, check_result=False))
    assert main(["minimize", str(fake_qemu)]) == 1
    assert not (fake_qemu.parent / "planted.min.json").exists()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not fail" in err


def test_cli_harness_error_and_bad_trace_exit_2(fake_qemu, monkeypatch, capsys, tmp_path):
    from fuzz.cli import main
    from fuzz.qemu import HarnessError

    monkeypatch.setattr(M, "QemuPredicate", fake_predicate_class(
        lambda t: True, raise_on_check=HarnessError("qemu-img create failed")))
    assert main(["minimize", str(fake_qemu)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qemu-img create failed" in err[0]
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["minimize", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt JSON" in err[0]


def test_cli_as_a_module_bad_input_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..")
    for argv in (["minimize", str(tmp_path / "missing.json")],
                 ["minimize", os.path.join(root, "corpus", "seeds", "test_reopen.json"), "--tries", "0"]):
        r = subprocess.run([sys.executable, "-m", "fuzz.cli", *argv], capture_output=True,
                           text=True, cwd=root, timeout=120)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("blockfuzz: ")


def test_default_output_name():
    from fuzz.minimizecmd import default_output

    assert default_output("dir/x.json") == "dir/x.min.json"
    assert default_output("x") == "x.min.json"


# --------------------------------------------------------------------------------------------
# real QEMU: a planted model fault that needs four steps

def plant_fault(monkeypatch):
    """The model calls a busy deletion "taken" when the deleted node is the bottom of a chain
    of three (its COW parent has a COW parent itself); QEMU says "busy"."""
    from models import blockdev

    real = blockdev.blockdev_del

    def mutant(g, args):
        try:
            real(g, args)
        except blockdev.QmpFailure as e:
            node = g.get(args.get("node-name"))
            cow = lambda n: [g.get(c.parent) for c in n.parents if c.role == blockdev.ROLE_COW]
            if "busy" in e.desc and node is not None and any(p is not None and cow(p) for p in cow(node)):
                raise blockdev.QmpFailure(e.desc.replace("busy", "taken")) from None
            raise

    monkeypatch.setattr(blockdev, "blockdev_del", mutant)


@pytest.fixture(scope="module")
def qemu11():
    from fuzz.qemufetch import installed, resolve_qemu

    inst = installed(QEMU_11)
    if inst is None:   # a failure, never a skip (conftest.py)
        pytest.fail(f"QEMU {QEMU_11} is not fetched: run `blockfuzz qemu fetch {QEMU_11}`")
    return resolve_qemu(str(inst.binary("system")))


@pytest.mark.qemu
def test_planted_trace_is_valid_and_fails_only_with_the_fault(qemu11, monkeypatch):
    tr = planted_trace()
    r = M.run_candidate(tr, qemu11, 5.0)
    assert r.error is None and r.cannot_run is None and len(r.record) == 25   # all ran and agreed
    plant_fault(monkeypatch)
    r = M.run_candidate(tr, qemu11, 5.0)
    assert r.error is not None and r.error.step_index == LAYOUT.rindex("P")


@pytest.mark.qemu
def test_blockfuzz_minimize_finds_the_four_planted_steps(qemu11, monkeypatch, tmp_path, capsys):
    from fuzz.cli import main

    plant_fault(monkeypatch)
    src = tmp_path / "planted.json"
    T.save(planted_trace(), str(src))
    out = tmp_path / "small.json"
    t0 = time.monotonic()
    rc = main(["minimize", str(src), "--qemu", str(qemu11.system), "-o", str(out)])
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < 60, elapsed
    small = T.load(str(out))
    assert bare(small.steps) == PLANTED
    assert all("observed" in s for s in small.steps)
    assert sorted(i.file for i in small.images) == ["a.img", "b.img", "c.img"]
    # the written trace fails on its own, with the same signature as the input
    err_small = M.failure_of(small, qemu11, 5.0)
    err_big = M.failure_of(planted_trace(), qemu11, 5.0)
    assert err_small is not None and err_small.signature() == err_big.signature()
    assert capsys.readouterr().out.strip() == str(out)


@pytest.mark.qemu
def test_blockfuzz_minimize_sigterm_on_qemu_writes_a_failing_best(qemu11, monkeypatch, tmp_path, capsys):
    from fuzz.cli import main

    plant_fault(monkeypatch)
    real_call = M.QemuPredicate.__call__
    accepted = []

    def call(self, tr):
        ok = real_call(self, tr)
        if ok:
            accepted.append(bare(tr.steps))
            if len(accepted) == 3:   # the search stops after this replay
                os.kill(os.getpid(), signal.SIGTERM)
        return ok

    monkeypatch.setattr(M.QemuPredicate, "__call__", call)
    src = tmp_path / "planted.json"
    T.save(planted_trace(), str(src))
    assert main(["minimize", str(src), "--qemu", str(qemu11.system)]) == 0
    out = tmp_path / "planted.min.json"
    small = T.load(str(out))
    assert len(accepted) == 3 and bare(small.steps) == accepted[2]
    assert len(PLANTED) < len(small.steps) < 25
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(M.QemuPredicate, "__call__", real_call)
    err = M.failure_of(small, qemu11, 5.0)
    assert err is not None and err.signature() == M.failure_of(planted_trace(), qemu11, 5.0).signature()


@pytest.mark.qemu
def test_blockfuzz_minimize_exit_1_when_the_input_passes(qemu11, tmp_path, capsys):
    from fuzz.cli import main

    src = tmp_path / "planted.json"
    T.save(planted_trace(), str(src))     # no fault planted: QEMU and the model agree
    assert main(["minimize", str(src), "--qemu", str(qemu11.system)]) == 1
    assert not (tmp_path / "planted.min.json").exists()
    assert "does not fail" in capsys.readouterr().err


@pytest.mark.qemu
def test_minimize_finding_for_campaigns(qemu11, monkeypatch):
    plant_fault(monkeypatch)
    tr = planted_trace()
    sig = M.failure_of(tr, qemu11, 5.0).signature()
    small = M.minimize_finding(tr, qemu11, sig, timeout=5.0)
    assert bare(small.steps) == PLANTED and "observed" in small.steps[-1]
    # a signature the trace does not fail with: left as it is, and said why
    why: list[str] = []
    assert M.minimize_finding(tr, qemu11, "result:blockdev-del:other", timeout=5.0,
                              why_not=why.append) is tr
    assert why == [f"its replay on a fresh QEMU failed otherwise: {sig}"]
    # a replay that cannot run (here: an image over a backing file that is not there)
    from models.values import ImageSpec
    broken = attrs.evolve(tr, images=[*tr.images, ImageSpec("orphan.qcow2", "qcow2",
                                                            backing_file="missing.img")])
    why.clear()
    assert M.minimize_finding(broken, qemu11, sig, timeout=5.0, why_not=why.append) is broken
    assert len(why) == 1 and why[0].startswith("its replay could not run: "), why
