"""The test clips never influence training or selection under the default config: two
runs, one on the phantom shards and one on a copy whose test-split frames are inverted,
end with bitwise-equal weights and the same best epoch and validation score, while their
test predictions differ (the change did reach the test split)."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from engine_helpers import explain, run_train, summary
from lus_dist.shards.format import DS_FRAMES
from lus_dist.shards.manifest import Manifest

pytestmark = pytest.mark.slow

ARGS = ["train.epochs=3", "train.max_steps_per_epoch=5", "optim.lr=3e-3", "data.batch_size=8",
        "logging.tensorboard=false", "viz_frames=0", "train.deterministic=true",
        "predict_splits=[test]"]


def invert_test_frames(src, dst) -> int:
    """Copy the shard set, inverting every frame of the test split's videos in place."""
    shutil.copytree(src, dst)
    v = Manifest.load(dst).videos
    names = Manifest.load(dst).shards["name"]
    changed = 0
    for row in np.flatnonzero(np.asarray(v["split"]) == "test"):
        with h5py.File(dst / names[v["shard"][row]], "r+") as f:
            rows = slice(int(v["offset"][row]), int(v["offset"][row] + v["n_frames"][row]))
            f[DS_FRAMES][rows] = 255 - f[DS_FRAMES][rows]
            changed += rows.stop - rows.start
    return changed


def train_on_both(family: str, args: list[str], shards, tmp_path) -> tuple[dict, dict]:
    """summary.json of a run on the shards and of one on the inverted-test copy."""
    assert invert_test_frames(shards, tmp_path / "inverted") > 0
    runs = []
    for name, root in (("original", shards), ("inverted", tmp_path / "inverted")):
        proc = run_train(family, tmp_path / name, [f"data.root={root}", *args], nproc=1)
        assert proc.returncode == 0, explain(proc)
        runs.append(summary(tmp_path / name))
    return runs[0], runs[1]


def test_inverting_the_test_frames_changes_only_the_test_predictions(engine_shards, tmp_path):
    a, b = train_on_both("regstn", ARGS, engine_shards, tmp_path)
    assert a["best_selected_on"] == b["best_selected_on"] == "holdout"
    assert a["param_digests"] == b["param_digests"]
    assert a["best_epoch"] == b["best_epoch"] and a["last_epoch_val"] == b["last_epoch_val"]
    probs = []
    for name in ("original", "inverted"):
        with h5py.File(tmp_path / name / "predictions" / "test.h5", "r") as f:
            probs.append(f["probs"][:])
    assert probs[0].shape == probs[1].shape and not np.array_equal(probs[0], probs[1])


PRETRAIN = ["train.epochs=2", "train.max_steps_per_epoch=4", "data.batch_size=8",
            "logging.tensorboard=false", "train.deterministic=true", "pretrain.knn_bank_frames=64",
            "model.kwargs.proj_hidden=32", "model.kwargs.proj_dim=16"]


def test_pretraining_never_reads_the_test_clips(engine_shards, tmp_path):
    """The same for the pretrain family: the encoder, the kNN that picked its epoch and the
    epoch are identical whatever the test frames hold."""
    import torch

    a, b = train_on_both("pretrain", PRETRAIN, engine_shards, tmp_path)
    assert a["best_selected_on"] == b["best_selected_on"] == "holdout"
    assert a["param_digests"] == b["param_digests"] and a["best_epoch"] == b["best_epoch"]
    assert a["last_epoch_val"] == b["last_epoch_val"]
    enc = [torch.load(tmp_path / n / "encoder.pt", weights_only=True)["state_dict"]
           for n in ("original", "inverted")]
    assert all(torch.equal(enc[0][k], enc[1][k]) for k in enc[0])
