"""Fixtures of the tune tests (helpers live in tune_helpers.py)."""
from __future__ import annotations

import pytest

from tune_helpers import netns_available


@pytest.fixture(scope="session")
def netns():
    """Skip (with the reason) where a loopback-only network namespace cannot be made."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
