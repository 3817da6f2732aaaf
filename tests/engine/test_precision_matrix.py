"""The precision x backend matrix on CPU, 2 ranks: every cell trains, writes its summary
(Reg-STN its crop picture), checkpoints and resumes with equal weights on both ranks.

bf16 under DeepSpeed ZeRO-2 runs for every family: DeepSpeed casts the parameters to bf16
and every input the model sees (train, eval, export, pictures) must follow, BatchNorm's
running statistics with them. The other cells (ZeRO-0/1 x fp32/bf16, DDP bf16 autocast)
run as a Latin square, each family in each row once, to keep CI short; fp32 ZeRO-2 and
fp32 DDP per family are test_distributed's."""
from __future__ import annotations

import pytest

from engine_helpers import CONFIGS, explain, run_train, summary

pytestmark = pytest.mark.slow

BF16 = ["dist.backend=deepspeed", f"dist.deepspeed_config={CONFIGS / 'deepspeed' / 'zero2_bf16.json'}",
        "train.max_steps_per_epoch=2", "logging.tensorboard=false", "logging.every_steps=1",
        "data.num_workers=0"]
FAMILY = {"regstn": ["data.batch_size=8", "viz_frames=2", "predict_splits=[test]"],
          "seg": ["data.batch_size=4"],
          "cnnlstm": ["data.batch_size=4", "data.clip_len=4"],
          "pretrain": ["data.batch_size=8", "pretrain.knn_bank_frames=64"]}


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
    assert s["precision"] == "bf16" and s["zero_stage"] == 2
    if family == "regstn":
        assert (run / "viz" / "epoch-001.png").is_file()
        assert (run / "predictions" / "test.h5").is_file()


ZERO = {0: "zero0.json", 1: "zero1.json"}
CELLS = [("cnnlstm", "zero0", "fp32"), ("seg", "zero0", "bf16"), ("regstn", "zero1", "fp32"),
         ("cnnlstm", "zero1", "bf16"), ("seg", "ddp", "bf16"), ("pretrain", "ddp", "bf16")]


@pytest.mark.parametrize("family, backend, precision", CELLS)
def test_matrix_cell_trains_and_resumes(engine_shards, tmp_path, family, backend, precision):
    run = tmp_path / family
    if backend == "ddp":
        dist = ["dist.backend=ddp"]
    else:
        stage = int(backend[-1])
        dist = ["dist.backend=deepspeed", f"dist.deepspeed_config={CONFIGS / 'deepspeed' / ZERO[stage]}"]
    args = [f"data.root={engine_shards}", *dist, f"train.bf16={precision == 'bf16'}",
            "train.max_steps_per_epoch=2", "logging.tensorboard=false", "data.num_workers=0",
            *FAMILY[family]]
    first = run_train(family, run, [*args, "train.epochs=1"], timeout=600)
    assert first.returncode == 0, explain(first)
    second = run_train(family, run, [*args, "train.epochs=2"], resume="auto", timeout=600)
    assert second.returncode == 0, explain(second)
    assert "resumed from step-000000002" in second.stdout, explain(second)
    s = summary(run)
    assert s["global_step"] == 4 and len(set(s["param_digests"])) == 1
    assert s["precision"] == precision
    assert s["zero_stage"] == (None if backend == "ddp" else int(backend[-1]))
