"""A build without an exact profile (a developer's 11.1.90, say): the nearest older profile, its
unknown fields named once and set aside for that build only, and still every other check.

The real 11.1.3 is presented as an unknown version by hiding its profile (and 10.2's), so the
nearest older one (10.0) applies: 11.1 reports ``children`` and ``image.limits``, which 10.0 does not know.
"""
from __future__ import annotations

import copy
import glob
import os
import warnings

import pytest

import fuzz.session as S
from fuzz import trace as T
from fuzz.engine import ExpectationMismatch, FieldFilter, GraphMismatch, UnknownFields
from models import PROFILES
from models.query import known_fields

from conftest import qemu_binaries

ROOT = os.path.join(os.path.dirname(__file__), "..")
SEED = os.path.join(ROOT, "corpus", "seeds", "test_reopen.json")


def test_field_filter_names_and_drops_only_unknown_keys():
    got: list = []
    flt = FieldFilter("11.1.90", known_fields(PROFILES["10.0"]))
    events = S.Events()
    events.subscribe(got.append)
    flt.listeners.append(events)
    node = {"node-name": "hd0", "drv": "qcow2", "active": True, "children": [{"child": "file"}],
            "image": {"filename": "hd0.img", "limits": {"max-iov": 1},
                      "backing-image": {"filename": "b.img", "new-thing": 1}}}
    out = flt([node, dict(node, **{"node-name": "hd1"})])
    assert out[0] == {"node-name": "hd0", "drv": "qcow2", "active": True,
                      "image": {"filename": "hd0.img", "backing-image": {"filename": "b.img"}}}
    assert [e.paths for e in got] == [("children", "image/backing-image/new-thing", "image/limits")]
    flt([node])
    assert len(got) == 1, "each field is named once"


def test_exact_profiles_know_every_field_they_predict():
    # the schema covers what the model itself reports, so an exact build loses nothing
    from models import ImageSpec, Model

    for name, profile in PROFILES.items():
        m = Model(profile, [ImageSpec("hd0.img", "qcow2", 1 << 20)])
        assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": "hd0", "file": {
            "driver": "file", "filename": "hd0.img"}}).ok
        flt = FieldFilter(name, known_fields(profile))
        graph = m.query_named_block_nodes()
        assert flt(copy.deepcopy(graph)) == graph and not flt.found, name


@pytest.fixture
def unknown_11_1(monkeypatch):
    """QEMU 11.1.3 with the 11.1, 10.2 and 10.0.13 profiles hidden: it gets 10.0's,
    inexactly."""
    binaries = qemu_binaries("11.1")
    for name in ("11.1", "10.2", "10.0.13"):
        monkeypatch.delitem(PROFILES, name)
    monkeypatch.setattr(S, "_PROFILE_CACHE", {})
    monkeypatch.setattr(S, "_FIELD_FILTERS", {})
    return binaries


def _replay(binaries, tr, strict=False, events=None):
    with S.Session(binaries, tr.images, events=events, strict=strict) as s:
        assert s.profile.name == "10.0" and not s.exact_profile
        for step in tr.steps:
            s.runner.run(step)


@pytest.mark.qemu
def test_unknown_build_runs_names_fields_and_still_catches_a_wrong_error(unknown_11_1):
    tr = T.load(SEED)
    events = S.Events()
    seen: list = []
    events.subscribe(lambda e: seen.append(e) if isinstance(e, UnknownFields) else None)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _replay(unknown_11_1, tr, events=events)
    # test_reopen's hd0 has a backing chain, so limits show up at both levels of ImageInfo
    want = ["children", "image/backing-image/limits", "image/limits"]
    assert [list(e.paths) for e in seen] == [want]
    assert S.Session.unknown_fields() == {"11.1.3": want}
    texts = [str(x.message) for x in w]
    assert any("no version profile" in t and "(10.0)" in t for t in texts)
    assert sum(", ".join(want) in t for t in texts) == 1

    # a planted wrong error text is still caught
    bad = copy.deepcopy(tr)
    step = next(s for s in bad.steps if "error" in s.get("expect", {}))
    step["expect"]["error"]["desc"] += " (planted)"
    with pytest.raises(ExpectationMismatch):
        _replay(unknown_11_1, bad)


@pytest.mark.qemu
def test_strict_compares_unknown_fields(unknown_11_1):
    with pytest.raises(GraphMismatch) as e:
        _replay(unknown_11_1, T.load(SEED), strict=True)
    assert "children" in e.value.detail or "limits" in e.value.detail


@pytest.mark.qemu
def test_known_versions_set_nothing_aside(monkeypatch):
    monkeypatch.setattr(S, "_PROFILE_CACHE", {})
    monkeypatch.setattr(S, "_FIELD_FILTERS", {})
    for version in ("10.0", "11.1"):
        b = qemu_binaries(version)
        tr = T.load(sorted(glob.glob(os.path.join(ROOT, "corpus", "seeds", "test_reopen.json")))[0])
        with S.Session(b, tr.images) as s:
            assert s.exact_profile and s.runner.field_filter is None



@pytest.fixture
def eleven_oh(monkeypatch):
    """11.1.3 against a made-up 11.0 profile: 11.1's semantics without the ``children`` field,
    so ``children`` is the one field the (inexact, nearest older) profile does not know."""
    import attrs

    binaries = qemu_binaries("11.1")
    real = PROFILES["11.1"]
    monkeypatch.delitem(PROFILES, "11.1")
    monkeypatch.setitem(PROFILES, "11.0", attrs.evolve(real, name="11.0", version=(11, 0),
                                                       node_children_field=False))
    monkeypatch.setattr(S, "_PROFILE_CACHE", {})
    monkeypatch.setattr(S, "_FIELD_FILTERS", {})
    return binaries


def _campaign(binaries, out, capsys) -> tuple[int, str, dict]:
    import json

    from fuzz.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["run", "--qemu", binaries.system, "--examples", "20", "--seed", "3",
                   "--steps", "12", "--out", str(out)])
    cov = json.load(open(out / "coverage.json"))
    return rc, capsys.readouterr().out, cov


@pytest.mark.qemu
def test_a_campaign_on_an_unknown_build_names_the_field_and_still_catches_a_planted_error(
        eleven_oh, tmp_path, capsys, monkeypatch):
    rc, out, cov = _campaign(eleven_oh, tmp_path / "clean", capsys)
    assert rc == 0, out
    assert cov["steps"] > 50
    assert cov["set-aside-fields"] == {"11.1.3": ["children"]}
    assert "QEMU 11.1.3 has no exact profile; fields left out of the comparison" in out

    from models import blockdev

    real = blockdev.blockdev_del

    def mutant(g, args):   # a planted wrong error text on every successful blockdev-del
        real(g, args)
        raise blockdev.QmpFailure("mutant: node cannot be deleted")

    monkeypatch.setattr(blockdev, "blockdev_del", mutant)
    # the campaign's own machine and settings, without shrinking (the shrinker is tested
    # elsewhere): the planted error is a finding on the unknown build too
    from hypothesis import Phase
    from hypothesis.stateful import run_state_machine_as_test

    from fuzz import statemachine as SM
    from fuzz.engine import Events, ResultMismatch
    from fuzz.findings import FindingWriter
    from helpers import campaign_settings

    bus = Events()
    bus.subscribe(FindingWriter(str(tmp_path / "mutant"), bus))
    cls = SM.machine_class(SM.MachineConfig(binaries=eleven_oh, events=bus, timeout=5.0))
    with pytest.raises(ResultMismatch):
        run_state_machine_as_test(cls, settings=campaign_settings(
            max_examples=30, stateful_step_count=12, phases=[Phase.generate]))
    assert glob.glob(str(tmp_path / "mutant" / "result-*" / "first.json"))
