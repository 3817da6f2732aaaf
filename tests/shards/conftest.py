"""Fixtures for shard tests (helpers live in shard_helpers.py so tests can import them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shard_helpers import pack_synthetic


@pytest.fixture(scope="session")
def packed(tmp_path_factory) -> Path:
    """A finished synthetic pack (read-only for tests: copy it before damaging it)."""
    out = tmp_path_factory.mktemp("packed") / "shards"
    pack_synthetic(out)
    return out
