"""A small phantom shared by the data_prep tests (written once per session)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.phantom import make_phantom

SMALL = dict(seed=5, n_patients=6, videos_per_patient=2, frames_per_video=(8, 12), size=64, n_hospitals=2)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Read-only for tests: copy files before damaging them."""
    return make_phantom(tmp_path_factory.mktemp("phantom"), **SMALL)


@pytest.fixture(scope="session")
def phantom_truth(phantom_dir) -> dict[str, dict]:
    return {v["video"]: v for v in json.loads((phantom_dir / "phantom.json").read_text())["videos"]}
