"""Real 2-process torchrun runs on phantom shards: every family trains, ranks agree,
Reg-STN reaches the target F1, DeepSpeed ZeRO-2 checkpoints and resumes, preemption and
an elastic SIGKILL restart end with weights bitwise equal to an uninterrupted run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lus_dist.aggregator.data import read_predictions
from lus_dist.engine.checkpoint import committed

from engine_helpers import (child_env, explain, last_step, launch_cmd, preempt_mid_run, run_train,
                            step_losses, summary, wait_for, worker_pids)

pytestmark = pytest.mark.slow

# Small, deterministic Reg-STN: 2 epochs x 6 steps of 8 frames per rank.
TINY = ["train.epochs=2", "train.max_steps_per_epoch=6", "data.batch_size=8",
        "train.deterministic=true", "logging.every_steps=1", "logging.tensorboard=false",
        "viz_frames=0", "predict_splits=[test]", "optim.lr=1e-3"]


def assert_trained_and_ranks_agree(run_dir: Path, proc) -> dict:
    assert proc.returncode == 0, explain(proc)
    s = summary(run_dir)
    assert len(s["param_digests"]) == 2 and len(set(s["param_digests"])) == 1, \
        f"ranks ended with different weights: {s['param_digests']}"
    losses = step_losses(run_dir)
    k = max(2, len(losses) // 4)
    assert np.mean(losses[-k:]) < np.mean(losses[:k]), f"loss did not fall: {losses}"
    assert (run_dir / "config.yaml").is_file() and committed(run_dir / "checkpoints")
    return s


@pytest.mark.learning
def test_regstn_ddp_reaches_frame_f1_on_phantom(engine_shards, tmp_path):
    """The `lus demo` config: 2 DDP ranks, phantom train split -> test split F1, the best
    epoch picked on training patients held out of training."""
    run = tmp_path / "regstn"
    proc = run_train("regstn", run, [f"data.root={engine_shards}", "logging.tensorboard=false"],
                     config="demo_regstn.yaml", timeout=600)
    s = assert_trained_and_ranks_agree(run, proc)
    # Measured with seeds 0-2 under ATEN_CPU_CAPABILITY=avx2 and =default (torch's AVX2 and
    # scalar kernels train differently): test F1 0.82-0.86, the held-out patients' F1
    # 0.69-0.91 (few patients: one video moves it); 0.826 was seen on AVX-512. The bars sit
    # below that spread with a margin and far above chance (4 classes: ~0.25).
    assert s["last_epoch_val"]["weighted_f1"] >= 0.6, s["last_epoch_val"]
    assert s["test"]["weighted_f1"] >= 0.75, s["test"]
    preds = read_predictions(run / "predictions" / "test.h5")
    assert preds.probs.shape[1] == 4 and len(np.unique(preds.video_id)) > 1
    assert (run / "predictions" / "train.h5").is_file()
    assert sorted(p.name for p in (run / "viz").glob("*.png"))[-1] == "epoch-005.png"


@pytest.mark.parametrize("family,overrides", [
    ("seg", ["train.epochs=2", "train.max_steps_per_epoch=5", "data.batch_size=4", "optim.lr=1e-3"]),
    ("cnnlstm", ["train.epochs=5", "data.clip_len=4", "data.batch_size=4", "optim.lr=1e-3"]),
])
def test_family_trains_under_ddp(engine_shards, tmp_path, family, overrides):
    run = tmp_path / family
    proc = run_train(family, run, [f"data.root={engine_shards}", "logging.every_steps=1",
                                   "logging.tensorboard=false", *overrides])
    s = assert_trained_and_ranks_agree(run, proc)
    assert s["family"] == family and s["world_size"] == 2


def test_deepspeed_zero2_trains_checkpoints_and_resumes(engine_shards, tmp_path):
    run = tmp_path / "ds"
    common = [f"data.root={engine_shards}", *TINY, "dist.backend=deepspeed", "dist.zero_stage=2"]
    first = run_train("regstn", run, [*common, "train.epochs=1"])
    assert first.returncode == 0, explain(first)
    ckpts = committed(run / "checkpoints")
    assert ckpts and (ckpts[-1] / "ds").is_dir(), "DeepSpeed checkpoint not committed"
    second = run_train("regstn", run, common, resume="auto")
    assert "resumed from step-000000006" in second.stdout, explain(second)
    s = assert_trained_and_ranks_agree(run, second)
    assert s["global_step"] == 12 and s["backend"] == "deepspeed"


@pytest.fixture(scope="module")
def reference_run(engine_shards, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    run = tmp_path_factory.mktemp("reference") / "run"
    proc = run_train("regstn", run, [f"data.root={engine_shards}", *TINY, "checkpoint.every_steps=2"])
    assert_trained_and_ranks_agree(run, proc)
    return run


@pytest.fixture(scope="module")
def reference(reference_run) -> str:
    return summary(reference_run)["param_digests"][0]


def test_preemption_then_resume_is_bitwise_identical(engine_shards, tmp_path, reference,
                                                     reference_run):
    """...and the run dir is the run's own: a new run there stops in one line, leaving it as
    it was; --resume auto continues its files as if the run had never stopped."""
    run = tmp_path / "pre"
    args = ("regstn", run, [f"data.root={engine_shards}", *TINY, "checkpoint.every_steps=2"])
    out = preempt_mid_run(*args)
    assert "preempted at step" in out and not (run / "summary.json").exists()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = run_train(*args)
    assert again.returncode == 2, explain(again)
    held = ", ".join(n for n in ("metrics.csv", "checkpoints", "best.pt") if (run / n).exists())
    assert again.stderr.strip().splitlines() == [
        f"lus train: {run} holds another run ({held}); continue it with --resume auto, or "
        "start this run in a new --run-dir"], explain(again)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    resumed = run_train(*args, resume="auto")
    assert "resumed from step-" in resumed.stdout, explain(resumed)
    assert summary(run)["param_digests"] == [reference, reference]
    with open(run / "metrics.csv", newline="") as fh:
        logged = [(r["kind"], int(r["global_step"]), r["name"]) for r in csv.DictReader(fh)]
    assert len(logged) == len(set(logged)) and max(s for _, s, _ in logged) == 12
    assert step_losses(run) == step_losses(reference_run)


def test_sigkilled_worker_elastic_restart_resumes_and_finishes(engine_shards, tmp_path, reference):
    run = tmp_path / "elastic"
    cmd = launch_cmd("regstn", run, [f"data.root={engine_shards}", *TINY, "checkpoint.every_steps=2"],
                     max_restarts=1, resume="auto")
    proc = subprocess.Popen(cmd, env=child_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_for(lambda: len(committed(run / "checkpoints")) >= 1 and last_step(run) >= 3, proc, 240,
             "a committed checkpoint and step 3")
    victim = worker_pids(proc.pid)[-1]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    assert "resumed from step-" in out, out[-3000:]
    assert summary(run)["param_digests"] == [reference, reference]


def _lrs(run_dir: Path) -> dict[int, float]:
    import csv
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "step" and r["name"] == "lr"]
    return {int(r["global_step"]): float(r["value"]) for r in rows}   # last row per step wins


def test_warmup_cosine_per_step_preempted_mid_epoch_resumes_exactly(engine_shards, tmp_path):
    """A per-step schedule (warmup + cosine) and augmented batches, stopped mid-epoch: the
    resumed run continues the same learning rates and augmentations and ends with the
    uninterrupted run's weights."""
    args = [f"data.root={engine_shards}", *TINY, "checkpoint.every_steps=2",
            "schedule.name=warmup_cosine", "schedule.interval=step", "schedule.warmup=3",
            "schedule.min_lr_ratio=0.1", "augment={}"]
    ref = run_train("regstn", tmp_path / "ref", args)
    assert_trained_and_ranks_agree(tmp_path / "ref", ref)
    run = tmp_path / "pre"
    preempt_mid_run("regstn", run, args)
    stopped = last_step(run)
    assert 0 < stopped % 6, f"meant to stop mid-epoch (6 steps/epoch), stopped at {stopped}"
    resumed = run_train("regstn", run, args, resume="auto")
    assert "resumed from step-" in resumed.stdout, explain(resumed)
    want, got = _lrs(tmp_path / "ref"), _lrs(run)
    assert len(want) == 12 and got == want
    assert want[1] < want[3] and want[4] > want[12]               # warmup, then decay
    assert summary(run)["param_digests"] == summary(tmp_path / "ref")["param_digests"]
