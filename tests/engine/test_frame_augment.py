"""Supervised training with the pretraining augmentations (`augment={...}` on the frame
family): the batches the loss sees are augmented, the stream is checkpointed, and a bad
field is a one-line config error. Exact resume across 2 ranks with augmentation on is in
test_distributed.py (the warmup + cosine preemption test runs with `augment={}`)."""
from __future__ import annotations

import math

import pytest
import torch

from engine_helpers import step_losses
from lus_dist.engine import registry as families
from lus_dist.io.config import ConfigError
from lus_dist.engine import run
from lus_dist.engine.registry import load_run_config

ARGS = ["data.batch_size=8", "train.epochs=1", "train.max_steps_per_epoch=3",
        "logging.every_steps=1", "logging.tensorboard=false", "viz_frames=0",
        "predict_splits=[test]", "model.name=cnn_ce", "train.deterministic=true"]


@pytest.mark.slow
def test_augmented_training_differs_and_checkpoints_its_stream(engine_shards, tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    losses = {}
    for name, extra in (("plain", []), ("aug", ["augment={rotation_deg: 5}"]), ("aug2", ["augment={rotation_deg: 5}"])):
        cfg = load_run_config("regstn", None, [f"data.root={engine_shards}", *ARGS, *extra])
        assert run(families.make("regstn", cfg), tmp_path / name) == 0
        losses[name] = step_losses(tmp_path / name)
    assert len(losses["aug"]) == 3 and all(math.isfinite(v) for v in losses["aug"])
    assert losses["aug"] == losses["aug2"]          # same seed, same augmentations
    assert losses["aug"][0] != losses["plain"][0]   # the first batch was augmented
    (ckpt,) = sorted((tmp_path / "aug" / "checkpoints").glob("step-*"))
    states = torch.load(ckpt / "main.pt", map_location="cpu", weights_only=False)["states"]
    assert states["augment"]["count"] == 3
    (plain,) = sorted((tmp_path / "plain" / "checkpoints").glob("step-*"))
    assert "augment" not in torch.load(plain / "main.pt", map_location="cpu", weights_only=False)["states"]


@pytest.mark.parametrize("value, words", [("{rotation: 5}", "unknown field(s) ['rotation']"),
                                          ("{crop_scale: [0.5, 2]}", "crop_scale")])
def test_a_bad_augment_setting_is_a_config_error_naming_the_key(value, words):
    with pytest.raises(ConfigError, match=r"^augment: ") as err:
        load_run_config("regstn", None, [f"augment={value}"])
    assert words in str(err.value)
