"""A plain single process (no launcher): accumulation, clipping, bf16 autocast on CPU and
channels_last all run through the Reg-STN loop, and steps count optimizer steps."""
from __future__ import annotations

import math

import pytest

from engine_helpers import step_losses, summary
from lus_dist import families
from lus_dist.engine import run
from lus_dist.families import load_run_config


@pytest.mark.slow
def test_plain_process_with_accumulation_clipping_bf16(engine_shards, tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_run_config("regstn", None, [
        f"data.root={engine_shards}", "data.batch_size=8", "optim.grad_accum=2",
        "optim.grad_clip=1.0", "train.bf16=true", "model.channels_last=true", "train.epochs=1",
        "train.max_steps_per_epoch=4", "logging.every_steps=1", "logging.tensorboard=false",
        "viz_frames=2", "predict_splits=[test]"])
    assert run(families.make("regstn", cfg), tmp_path / "run") == 0
    s = summary(tmp_path / "run")
    assert s["global_step"] == 4 and s["world_size"] == 1      # 8 micro-batches, 4 steps
    losses = step_losses(tmp_path / "run")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert (tmp_path / "run" / "viz" / "epoch-000.png").is_file()
    assert (tmp_path / "run" / "predictions" / "test.h5").is_file()
