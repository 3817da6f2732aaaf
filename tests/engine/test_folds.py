"""k-fold selection in the engine: with data.val_folds the best epoch is picked on folds
that are neither trained on nor graded, so a CV estimate is not flattered by selection."""
from __future__ import annotations

import numpy as np
import pytest

from lus_dist.config import ConfigError
from lus_dist.engine import common as C
from lus_dist.engine.config import load_run_config
from lus_dist.shards.manifest import Manifest


def _folds_read(engine_shards, overrides: list[str]) -> dict[str, set[int]]:
    cfg = load_run_config("regstn", None, [f"data.root={engine_shards}", *overrides])
    out = {}
    for role in ("train", "val", "test"):
        split = getattr(cfg.data, f"{role}_split") or cfg.data.test_split
        ds = C.open_split(cfg, split, mode="frame")
        out[role] = set(np.unique(ds.manifest.videos["fold"][ds.video_rows]).tolist())
    return out


def test_val_folds_are_held_out_from_training_and_from_the_test_grade(engine_shards):
    k = int(Manifest.load(engine_shards).videos["fold"].max()) + 1
    assert k >= 3
    folds = _folds_read(engine_shards, ["data.test_folds=[0]", "data.val_folds=[1]"])
    assert folds == {"train": set(range(2, k)), "val": {1}, "test": {0}}
    # without val_folds the model is picked on the test fold (the documented default)
    folds = _folds_read(engine_shards, ["data.test_folds=[0]"])
    assert folds == {"train": set(range(1, k)), "val": {0}, "test": {0}}


@pytest.mark.parametrize("overrides, message", [
    (["data.val_folds=[1]"], "needs data.test_folds"),
    (["data.test_folds=[0, 1]", "data.val_folds=[1]"], "overlap"),
    (["data.test_folds=[0]", "data.val_folds=[1]", "data.val_split=test"], "must differ"),
])
def test_bad_val_folds_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config("regstn", None, overrides)
