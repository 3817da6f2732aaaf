"""A plain single process (no launcher): accumulation, clipping, bf16 autocast on CPU and
channels_last all run through the Reg-STN loop, and steps count optimizer steps."""
from __future__ import annotations

import math

import pytest

from engine_helpers import step_losses, summary
from lus_dist.engine import registry as families
from lus_dist.engine import run
from lus_dist.engine.registry import load_run_config


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


@pytest.mark.slow
def test_ema_weights_are_what_validation_scores_and_best_pt_holds(engine_shards, tmp_path,
                                                                  monkeypatch):
    """train.ema_decay: the checkpoint carries the average beside the trained weights, and
    best.pt (what the test split and the exports use) is the average, not the last step."""
    import torch

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_run_config("regstn", None, [
        f"data.root={engine_shards}", "data.batch_size=8", "train.ema_decay=0.5",
        "train.epochs=1", "train.max_steps_per_epoch=4", "logging.tensorboard=false",
        "viz_frames=0", "predict_splits=[test]", "model.name=cnn_sord"])
    assert run(families.make("regstn", cfg), tmp_path / "run") == 0
    assert summary(tmp_path / "run")["ema_decay"] == 0.5
    (ckpt,) = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    states = torch.load(ckpt / "main.pt", map_location="cpu", weights_only=False)["states"]
    averaged = {k.removeprefix("module."): v for k, v in states["ema"]["averaged"].items()
                if k.startswith("module.")}
    best = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)
    assert int(states["ema"]["averaged"]["n_averaged"]) == 4
    assert best.keys() == averaged.keys()
    assert all(torch.equal(best[k], averaged[k]) for k in best)
    trained = states["model"]
    assert any(not torch.equal(best[k], trained[k]) for k in best if best[k].is_floating_point())


def test_ema_is_refused_under_deepspeed_bf16_and_off_by_default(tmp_path):
    """A bf16 average would drop its updates: one clear error instead (injected facts)."""
    import torch

    from lus_dist.io.config import ConfigError
    from lus_dist.engine.fit import build_ema, runnable
    from engine_helpers import one_process_session

    net = torch.nn.Linear(2, 2)
    ds = load_run_config("regstn", None, ["dist.backend=deepspeed", "train.ema_decay=0.99"])
    with pytest.raises(ConfigError, match="DeepSpeed bf16"):
        runnable(ds, one_process_session(tmp_path, "deepspeed", bf16="true"))
    fp32 = runnable(ds, one_process_session(tmp_path, "deepspeed"))
    assert fp32["zero_optimization"]["stage"] == 2 and fp32["bf16"]["enabled"] is False
    assert build_ema(net, ds).decay == 0.99
    assert build_ema(net, load_run_config("regstn", None, [])) is None
    with pytest.raises(ConfigError, match="ema_decay"):
        load_run_config("regstn", None, ["train.ema_decay=1.0"])
