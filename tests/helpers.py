"""Shared helpers for tests (not fixtures)."""
from __future__ import annotations

from hypothesis import settings

from fuzz.campaign import BASE_SETTINGS


def campaign_settings(**kw) -> settings:
    """The campaign's Hypothesis settings, derandomized and without a database (a test's run
    must not depend on an earlier one)."""
    return settings(**dict(BASE_SETTINGS, derandomize=True, database=None, **kw))
