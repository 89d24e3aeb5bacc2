"""fuzz.draws makes the choices Hypothesis' own strategies make (QEMU-free): the same choice
sequence gives the same values either way, so a database entry or a shrink means the same."""
from hypothesis import given, settings, strategies as st

from fuzz.draws import boolean, integer, pick, pick_one_of

XS = ["a", "b", "c", "d", "e"]


@settings(max_examples=200, database=None)
@given(st.data())
def test_the_same_choices_as_the_strategies(data):
    cd = data.conjecture_data
    # replay: what our helpers draw from a prefix equals what the strategies draw from it
    n0 = len(cd.nodes)
    got = (pick(data, XS), integer(data, 0, 9), boolean(data), pick(data, ("x",)), integer(data, 3, 7))
    choices = tuple(n.value for n in cd.nodes[n0:])
    assert choices == (XS.index(got[0]), got[1], got[2], got[4])   # the 1-element pick makes none
    assert got[3] == "x"


def test_a_strategy_replays_our_choice_sequence():
    from hypothesis.internal.conjecture.data import ConjectureData

    for prefix in [(0, 0, False, 3), (4, 9, True, 7), (2, 5, True, 5)]:
        a = ConjectureData.for_choices(prefix)
        ours = (pick(a.draw, XS), integer(a.draw, 0, 9), boolean(a.draw), pick(a.draw, ("x",)),
                integer(a.draw, 3, 7))
        b = ConjectureData.for_choices(prefix)
        theirs = (b.draw(st.sampled_from(XS)), b.draw(st.integers(0, 9)), b.draw(st.booleans()),
                  b.draw(st.sampled_from(("x",))), b.draw(st.integers(3, 7)))
        assert ours == theirs == (XS[prefix[0]], prefix[1], prefix[2], "x", prefix[3])


def test_pick_takes_any_iterable_and_an_empty_one_is_an_error():
    import pytest
    from hypothesis.errors import InvalidArgument
    from hypothesis.internal.conjecture.data import ConjectureData

    d = ConjectureData.for_choices((1,))
    assert pick(d.draw, {"k": 1, "j": 2}.keys()) == "j"
    with pytest.raises(InvalidArgument, match="length-zero"):
        pick(ConjectureData.for_choices(()).draw, [])


def test_a_wide_range_draws_as_integers_does():
    # IntegersStrategy weights the bounds of a range wider than 127: the same choice sequence
    # must give the same values through both
    from hypothesis.internal.conjecture.data import ConjectureData

    for prefix in [(0,), (255,), (1,), (254,), (77,), (3,)]:
        ours = integer(ConjectureData.for_choices(prefix).draw, 0, 255)
        theirs = ConjectureData.for_choices(prefix).draw(st.integers(0, 255))
        assert ours == theirs == prefix[0]


def test_a_wide_range_favours_its_bounds_like_integers():
    import random

    from hypothesis.internal.conjecture.data import ConjectureData

    def share(draw_one) -> float:
        hits = 0
        for i in range(3000):
            d = ConjectureData(random=random.Random(i))
            hits += draw_one(d) in (0, 1, 254, 255)
        return hits / 3000

    ours = share(lambda d: integer(d.draw, 0, 255))
    theirs = share(lambda d: d.draw(st.integers(0, 255)))
    assert ours == theirs and ours > 0.03   # the weights put about 6/128 there


def test_a_composite_run_inline_makes_the_strategys_choices():
    # add_args.inline(d, ...) is data.draw(add_args(...)) without the wrapper: from one choice
    # sequence (recorded from a random run of the strategy) both give the same arguments
    from hypothesis.internal.conjecture.data import ConjectureData

    from fuzz.statemachine import _range, add_args, mutate

    files = ("a.qcow2", "b.raw")
    cases = [(add_args, ((), files)), (add_args, (("n1", "f1"), files, ("group0",))),
             (mutate, ({"driver": "qcow2", "node-name": "n1", "file": "f1"}, ("n1", "f1"), files)),
             (_range, (1 << 20,))]
    seen = set()
    for seed in range(40):
        for fn, args in cases:
            rec = ConjectureData(random=__import__("random").Random(seed))
            theirs = rec.draw(fn(*args))
            choices = tuple(n.value for n in rec.nodes)
            ours = fn.inline(ConjectureData.for_choices(choices).draw, *args)
            assert ours == theirs, (fn, seed)
            seen.add(repr(theirs))
    assert len(seen) > 60   # the random runs did draw many different arguments


def test_pick_one_of_makes_one_ofs_choices():
    from hypothesis.internal.conjecture.data import ConjectureData

    small, big = [1, 2, 3], [10, 20, 30, 40]
    for prefix, want in [((0, 2), 3), ((1, 0), 10), ((1, 3), 40), ((0, 0), 1)]:
        a = ConjectureData.for_choices(prefix)
        b = ConjectureData.for_choices(prefix)
        ours = pick_one_of(a.draw, small, big)
        theirs = b.draw(st.one_of(st.sampled_from(small), st.sampled_from(big)))
        assert ours == theirs == want
        assert [n.value for n in a.nodes] == [n.value for n in b.nodes] == list(prefix)
