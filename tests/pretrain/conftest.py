"""A small packed phantom for the pretraining building blocks (in-process, ~seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pretrain_shards(tmp_path_factory) -> Path:
    """8 patients x 2 clips of 12-20 frames at 32 px, several shards, 4 folds."""
    from data_prep.cli import main as prep
    from data_prep.phantom import make_phantom

    base = tmp_path_factory.mktemp("pretrain_phantom")
    make_phantom(base / "raw", seed=0, n_patients=8, videos_per_patient=2,
                 frames_per_video=(12, 20), size=64)
    code = prep(["pack", "--layout", "iclus", "--src", str(base / "raw" / "iclus"),
                 "--out", str(base / "shards"), "--size", "32", "--shard-frames", "64",
                 "--folds", "4", "--quiet"])
    assert code == 0
    return base / "shards"
