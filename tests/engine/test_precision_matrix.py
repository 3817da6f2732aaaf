"""The precision x backend matrix on CPU, 2 ranks: every cell trains, writes its summary
(Reg-STN its crop picture), checkpoints and resumes with equal weights on both ranks.

bf16 under DeepSpeed ZeRO-2 runs for every family: DeepSpeed casts the parameters to bf16
and every input the model sees (train, eval, export, pictures) must follow, BatchNorm's
running statistics with them. The other cells (ZeRO-0/1 x fp32/bf16, DDP bf16 autocast)
run as a Latin square, each family in each row once; fp32 ZeRO-2 and fp32 DDP per family
are test_distributed's. Every cell's first run goes in one torchrun launch and every
resume in a second (tests/engine/train_cells.py), on the small phantom, so CI pays two
start-ups, not twenty."""
from __future__ import annotations

import pytest

from engine_helpers import CONFIGS, cell_output, explain, run_cells, summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

COMMON = ["train.max_steps_per_epoch=2", "logging.tensorboard=false", "logging.every_steps=1",
          "data.num_workers=0"]
FAMILY = {"regstn": ["data.batch_size=8", "viz_frames=2", "predict_splits=[test]"],
          "seg": ["data.batch_size=4"],
          "cnnlstm": ["data.batch_size=4", "data.clip_len=4"],
          "pretrain": ["data.batch_size=8", "pretrain.knn_bank_frames=64"]}
ZERO = {"zero0": "zero0.json", "zero1": "zero1.json", "zero2": "zero2_bf16.json"}
# every family under DeepSpeed ZeRO-2 bf16, then the Latin square
CELLS = [(f, "zero2", "bf16") for f in sorted(FAMILY)] + [
    ("cnnlstm", "zero0", "fp32"), ("seg", "zero0", "bf16"), ("regstn", "zero1", "fp32"),
    ("cnnlstm", "zero1", "bf16"), ("seg", "ddp", "bf16"), ("pretrain", "ddp", "bf16")]


def cell_args(family: str, backend: str, precision: str, shards, run) -> list[str]:
    if backend == "ddp":
        dist = ["dist.backend=ddp"]
    else:
        dist = ["dist.backend=deepspeed", f"dist.deepspeed_config={CONFIGS / 'deepspeed' / ZERO[backend]}"]
    return ["train", family, "--run-dir", str(run), f"data.root={shards}", *dist,
            f"train.bf16={precision == 'bf16'}", *COMMON, *FAMILY[family]]


@pytest.fixture(scope="module")
def launches(small_shards, tmp_path_factory):
    """(runs dir, first launch, resume launch): every cell one epoch, then resumed to two."""
    base = tmp_path_factory.mktemp("precision")
    args = [cell_args(*cell, small_shards, base / "-".join(cell)) for cell in CELLS]
    first = run_cells([[*a, "train.epochs=1"] for a in args], base, timeout=1700)
    resume = run_cells([[*a, "train.epochs=2", "--resume", "auto"] for a in args],
                       base, timeout=1700)
    return base, first, resume


@pytest.mark.parametrize("family, backend, precision", CELLS)
def test_cell_trains_and_resumes(launches, family, backend, precision):
    base, first, resume = launches
    k = CELLS.index((family, backend, precision))
    run = base / f"{family}-{backend}-{precision}"
    assert first.returncode == 0 and "done: " in cell_output(first, k), explain(first)
    assert "resumed from step-000000002" in cell_output(resume, k), explain(resume)
    s = summary(run)
    assert s["global_step"] == 4 and len(set(s["param_digests"])) == 1
    assert s["precision"] == precision
    assert s["backend"] == ("ddp" if backend == "ddp" else "deepspeed")
    assert s["zero_stage"] == (None if backend == "ddp" else int(backend[-1]))
    if family == "regstn" and backend == "zero2":
        assert (run / "viz" / "epoch-001.png").is_file()
        assert (run / "predictions" / "test.h5").is_file()
