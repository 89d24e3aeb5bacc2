"""Shared helpers for tests (not fixtures)."""
from __future__ import annotations

from hypothesis import Phase, settings

from fuzz.campaign import BASE_SETTINGS


def campaign_settings(**kw) -> settings:
    """The campaign's Hypothesis settings, derandomized and without a database (a test's run
    must not depend on an earlier one), with a campaign's phases unless ``phases`` is given:
    no ``explain`` phase, which re-runs a shrunk failure many times over (half of a shrink
    test's time) to annotate a report nobody reads here."""
    kw.setdefault("phases", (Phase.explicit, Phase.generate, Phase.target, Phase.shrink))
    return settings(**dict(BASE_SETTINGS, derandomize=True, database=None, **kw))
