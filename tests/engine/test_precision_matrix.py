"""bf16 under DeepSpeed ZeRO-2 for every family, on CPU: trains, writes its summary (and
Reg-STN its crop picture), checkpoints and resumes. DeepSpeed casts the parameters to bf16;
every input the model sees (train, eval, export, pictures) must follow, and BatchNorm's
running statistics with them. fp32 ZeRO-2 is test_distributed's; DDP bf16 autocast is
test_single_process's."""
from __future__ import annotations

import pytest

from engine_helpers import CONFIGS, explain, run_train, summary

pytestmark = pytest.mark.slow

BF16 = ["dist.backend=deepspeed", f"dist.deepspeed_config={CONFIGS / 'deepspeed' / 'zero2_bf16.json'}",
        "train.max_steps_per_epoch=2", "logging.tensorboard=false", "logging.every_steps=1",
        "data.num_workers=0"]
FAMILY = {"regstn": ["data.batch_size=8", "viz_frames=2", "predict_splits=[test]"],
          "seg": ["data.batch_size=4"],
          "cnnlstm": ["data.batch_size=4", "data.clip_len=4"]}


@pytest.mark.parametrize("family", sorted(FAMILY))
def test_deepspeed_bf16_trains_and_resumes(engine_shards, tmp_path, family):
    run = tmp_path / family
    args = [f"data.root={engine_shards}", *BF16, *FAMILY[family]]
    first = run_train(family, run, [*args, "train.epochs=1"], timeout=600)
    assert first.returncode == 0, explain(first)
    assert summary(run)["global_step"] == 2
    second = run_train(family, run, [*args, "train.epochs=2"], resume="auto", timeout=600)
    assert second.returncode == 0, explain(second)
    assert "resumed from step-000000002" in second.stdout, explain(second)
    s = summary(run)
    assert s["global_step"] == 4 and s["backend"] == "deepspeed" and len(set(s["param_digests"])) == 1
    if family == "regstn":
        assert (run / "viz" / "epoch-001.png").is_file()
        assert (run / "predictions" / "test.h5").is_file()
