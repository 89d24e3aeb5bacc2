"""Trace minimization after Hypothesis: delete steps while the same bug still shows.

Hypothesis shrinks the *choices* behind an example; what a QEMU developer wants is the shortest
list of QMP commands.  ``minimize()`` replays candidate traces (no Hypothesis, a fresh QEMU each)
and keeps a deletion when the failure keeps its signature: first large chunks, then single
steps, until no single step can go (1-minimal, as in delta debugging).  A candidate that fails
differently, or passes, is rejected; one the model cannot run is rejected too.
"""
from __future__ import annotations

from collections.abc import Callable

from models import NotModeled

from . import trace as T
from .engine import Disagreement, QemuCrash


def failure_of(tr: T.Trace, binaries, timeout: float, record: list | None = None) -> BaseException | None:
    """Replay ``tr``; the finding it raises, or None when it passes or cannot run.  With
    ``record``, the steps are appended to it with what each side answered."""
    from .session import Session

    s = Session(binaries, tr.images, timeout=timeout, machine=tr.machine)
    try:
        with s:
            for step in tr.steps:
                s.runner.run(step)
    except (Disagreement, QemuCrash) as e:
        return e
    except NotModeled:
        return None
    finally:
        if record is not None and s.runner is not None:
            record.extend(dict(st, observed=o) if o else st for st, o in zip(s.runner.done, s.runner.observed))
    return None


def minimize(tr: T.Trace, binaries, signature: str, timeout: float = 2.0,
             budget: int = 400, progress: Callable[[int], None] | None = None) -> T.Trace:
    """The shortest trace found (within ``budget`` replays) that fails with ``signature``."""
    steps = [{k: v for k, v in s.items() if k != "observed"} for s in tr.steps]
    runs = 0

    def still_fails(candidate: list[dict]) -> bool:
        nonlocal runs
        runs += 1
        err = failure_of(T.Trace(tr.name, tr.images, candidate, tr.description, dict(tr.extra)), binaries, timeout)
        return err is not None and err.signature() == signature

    chunk = max(1, len(steps) // 2)
    while chunk >= 1 and runs < budget:
        i = 0
        removed_any = False
        while i < len(steps) and runs < budget:
            candidate = steps[:i] + steps[i + chunk:]
            if candidate and still_fails(candidate):
                steps = candidate
                removed_any = True
                if progress:
                    progress(len(steps))
            else:
                i += chunk
        if chunk == 1 and not removed_any:
            break
        chunk = max(1, chunk // 2) if chunk > 1 else 1
        if chunk == 1 and not removed_any and runs >= budget:
            break
    recorded: list = []
    failure_of(T.Trace(tr.name, tr.images, steps, tr.description, dict(tr.extra)), binaries, timeout, recorded)
    return T.Trace(tr.name, tr.images, recorded or steps, tr.description, dict(tr.extra))
