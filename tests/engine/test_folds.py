"""Which videos train, pick the best epoch and grade a run: the test videos never pick the
model unless the user names them, in k-fold CV and in train/test layouts alike."""
from __future__ import annotations

import numpy as np
import pytest

from lus_dist.io.config import ConfigError
from lus_dist.engine.data import open_split, selection, validation_name
from lus_dist.engine.registry import load_run_config
from lus_dist.shards.manifest import Manifest


def _folds_read(engine_shards, overrides: list[str]) -> dict[str, set[int]]:
    cfg = load_run_config("regstn", None, [f"data.root={engine_shards}", *overrides])
    out = {}
    for role, split in (("train", cfg.data.train_split), ("val", validation_name(cfg.data)),
                        ("test", cfg.data.test_split)):
        ds = open_split(cfg, split, mode="frame")
        out[role] = set(np.unique(ds.manifest.videos["fold"][ds.video_rows]).tolist())
    return out


def test_val_folds_are_held_out_from_training_and_from_the_test_grade(engine_shards):
    k = int(Manifest.load(engine_shards).videos["fold"].max()) + 1
    assert k >= 3
    folds = _folds_read(engine_shards, ["data.test_folds=[0]", "data.val_folds=[1]"])
    assert folds == {"train": set(range(2, k)), "val": {1}, "test": {0}}
    # the test fold picks the model only when asked for by name
    folds = _folds_read(engine_shards, ["data.test_folds=[0]", "data.val_split=test"])
    assert folds == {"train": set(range(1, k)), "val": {0}, "test": {0}}


def test_kfold_holdout_picks_on_patients_of_the_training_folds(engine_shards):
    cfg = load_run_config("regstn", None, [f"data.root={engine_shards}", "data.test_folds=[0]",
                                           "data.val_split=holdout", "data.val_fraction=0.25"])
    read = {}
    for role, split in (("train", "train"), ("val", "holdout"), ("test", "test")):
        ds = open_split(cfg, split, mode="frame")
        v = ds.manifest.videos
        read[role] = (set(np.asarray(v["patient_id"])[ds.video_rows].astype(str)),
                      set(np.asarray(v["fold"])[ds.video_rows].tolist()))
    assert read["test"][1] == {0} and 0 not in read["train"][1] | read["val"][1]
    assert read["val"][0] and read["train"][0].isdisjoint(read["val"][0])
    assert read["test"][0].isdisjoint(read["train"][0] | read["val"][0])


def _videos(n_patients=10, with_val=False):
    pid = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    split = np.where(np.arange(2 * n_patients) < 4, "test", "train").astype(object)
    if with_val:
        split[4:6] = "val"
    return {"patient_id": pid, "split": split, "label": np.arange(2 * n_patients) // 2 % 3,
            "fold": np.zeros(2 * n_patients, int)}


def test_train_test_layout_holds_validation_patients_out_of_training():
    cfg = load_run_config("regstn", None, ["data.val_fraction=0.25", "data.val_split=holdout"])
    v = _videos()
    train = selection(cfg.data, "train", v, seed=0)
    val = selection(cfg.data, validation_name(cfg.data), v, seed=0)
    assert validation_name(cfg.data) == "holdout"
    test_patients = set(v["patient_id"][v["split"] == "test"])
    assert train["split"] == val["split"] == "train"
    assert set(train["patients"]).isdisjoint(val["patients"])
    assert set(train["patients"]) | set(val["patients"]) == set(v["patient_id"]) - test_patients
    assert len(val["patients"]) == 2                         # 8 training patients / round(1/0.25)
    assert selection(cfg.data, "test", v, seed=0) == {"split": "test"}
    assert val == selection(cfg.data, "holdout", v, seed=0)  # deterministic
    drawn = {tuple(selection(cfg.data, "holdout", v, seed=s)["patients"]) for s in range(10)}
    assert len(drawn) > 1                                    # ... per seed


def test_a_named_validation_split_is_used_as_is():
    v = _videos(with_val=True)
    cfg = load_run_config("regstn", None, ["data.val_split=val"])
    assert selection(cfg.data, "train", v, 0) == {"split": "train"}
    assert selection(cfg.data, "val", v, 0) == {"split": "val"}
    default = load_run_config("regstn", None, [])
    assert validation_name(default.data) == "holdout"   # the test split never picks by default


def test_too_few_training_patients_to_hold_out_is_a_clear_error():
    cfg = load_run_config("regstn", None, ["data.val_split=holdout"])
    with pytest.raises(ConfigError, match="too few to hold any out"):
        selection(cfg.data, "train", _videos(n_patients=3), 0)   # 2 test, 1 training patient
    small = selection(cfg.data, "holdout", _videos(n_patients=5), 0)   # 3 training patients
    assert len(small["patients"]) == 1                                # at least one held out


@pytest.mark.parametrize("overrides, message", [
    (["data.val_folds=[1]"], "needs data.test_folds"),
    (["data.test_folds=[0, 1]", "data.val_folds=[1]"], "overlap"),
    (["data.test_folds=[0]", "data.val_folds=[1]", "data.val_split=test"], "must differ"),
])
def test_bad_val_folds_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config("regstn", None, overrides)
