"""The rules' simple draws, made straight on Hypothesis' choice sequence.

``pick(d, seq)``, ``integer(d, lo, hi)`` and ``boolean(d)`` make the very choice that
``st.sampled_from(seq)``, ``st.integers(lo, hi)`` and ``st.booleans()`` make
(``ConjectureData.draw_integer()`` / ``draw_boolean()``: an index shrinking towards the first
element, an integer towards ``lo`` with the same boundary weights, False), so generation,
shrinking and the example database behave as with the strategies.  What they leave out is the
wrapping of each draw: a new strategy object (validated, labelled), a span, and, for a rule's
``st.data()``, a check that the strategy left the global ``random`` alone (two
``random.getstate()`` calls) and the "Draw N" note.  Measured (``bench/speed_bench.py``'s
machine, Hypothesis 6.170): 90 to 185 µs per draw through ``data.draw(st.sampled_from(...))``,
11 µs this way; a checked step makes some twenty draws.

``composite`` is ``st.composite`` whose definition a rule can also run in line,
``f.inline(d, *args)``: the same choices as ``d.draw(f(*args))`` without the wrapping (a
strategy object, its validation and label, a span, the ``st.data()`` checks), which cost 60 to
150 µs a call on the campaign's hot rules (``blockdev-add``'s arguments, a reopen's
mutations, a qemu-io range).  The definition's own ``draw(strategy)`` calls draw as before.

``d`` is a rule's ``st.data()`` object or a ``@st.composite``'s ``draw``.  Hypothesis' own
``SampledFromStrategy`` / ``IntegersStrategy`` draw the same way (``do_draw``), and
``tests/test_draws.py`` checks that against the installed version.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

from hypothesis import strategies as st

__all__ = ["pick", "pick_one_of", "integer", "boolean", "composite"]

_T = TypeVar("_T")


def _choices(d: Any) -> Any:
    """The ConjectureData behind a rule's ``data`` or a composite's ``draw``."""
    cd = getattr(d, "conjecture_data", None)
    return cd if cd is not None else d.__self__


def pick(d: Any, seq: Sequence[_T]) -> _T:
    """``d.draw(st.sampled_from(seq))``."""
    if not isinstance(seq, (list, tuple, range)):
        seq = tuple(seq)   # as sampled_from's check_sample() does with other iterables
    if len(seq) == 1:
        return seq[0]   # sampled_from() is just(): no choice
    if not seq:
        # sampled_from() raises InvalidArgument, as a rule's bug should
        return d.draw(st.sampled_from(seq)) if hasattr(d, "draw") else d(st.sampled_from(seq))
    return seq[_choices(d).draw_integer(0, len(seq) - 1)]


def pick_one_of(d: Any, *seqs: Sequence[_T]) -> _T:
    """``d.draw(st.one_of(*map(st.sampled_from, seqs)))`` for non-empty ``seqs``: which one
    (``OneOfStrategy``'s branch index), then the element."""
    assert len(seqs) > 1 and all(seqs), "pick_one_of() takes two or more non-empty sequences"
    return pick(d, pick(d, seqs))


def integer(d: Any, lo: int, hi: int) -> int:
    """``d.draw(st.integers(lo, hi))``, with the weights ``IntegersStrategy`` gives the bounds
    and near-bounds of a range wider than 127 (a pattern byte, an offset)."""
    if hi - lo > 127:
        weights = {lo: 2 / 128, lo + 1: 1 / 128, hi - 1: 1 / 128, hi: 2 / 128}
        return _choices(d).draw_integer(lo, hi, weights=weights)
    return _choices(d).draw_integer(lo, hi)


def boolean(d: Any) -> bool:
    """``d.draw(st.booleans())``."""
    return _choices(d).draw_boolean()


def composite(fn: Callable[..., _T]) -> Any:
    """``st.composite(fn)``, plus ``.inline(d, *args, **kwargs)``: ``fn`` run with ``d``'s
    ``draw`` directly (what ``CompositeStrategy.do_draw`` does, minus the wrapping)."""
    strategy: Any = st.composite(fn)

    def inline(d: Any, *args: Any, **kwargs: Any) -> _T:
        return fn(_choices(d).draw, *args, **kwargs)

    strategy.inline = inline
    return strategy
