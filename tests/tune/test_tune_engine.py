"""Real Ray on loopback: sweeps whose trials are engine training runs on phantom shards.

Reg-STN trials are Ray Train TorchTrainer runs with 2 workers (a real gloo process group
per trial); CNN-LSTM trials train in the trial process. Tiny configs: 32 px frames, a
few steps per epoch, 2 epochs, so ASHA sees two reports per trial."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tune_helpers import ROOT, explain, run_lus

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _pack(tmp: Path, layout: str) -> Path:
    from data_prep.phantom import make_phantom

    raw = tmp / "raw" if (tmp / "raw").is_dir() else make_phantom(tmp / "raw", seed=0, n_patients=12, videos_per_patient=2,
                       frames_per_video=(8, 12), size=48)
    out = tmp / f"shards-{layout}"
    proc = subprocess.run([sys.executable, "-m", "lus", "prep", "pack", "--layout", layout,
                           "--src", str(Path(raw) / layout), "--out", str(out), "--size", "32"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, explain(proc)
    return out


@pytest.fixture(scope="module")
def phantom_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("tune-phantom")


TINY = ["train.epochs=2", "train.max_steps_per_epoch=2", "logging.tensorboard=false",
        "data.batch_size=4", "data.eval_batch_size=16"]


def test_regstn_sweep_two_trials_of_two_ray_train_workers(tmp_path, phantom_tmp, netns):
    shards = _pack(phantom_tmp, "iclus")
    proc = run_lus(["tune", "regstn", "--config", str(ROOT / "configs" / "demo_regstn.yaml"),
                    f"data.root={shards}", *TINY, "viz_frames=0", "--trials", "2",
                    "--workers", "2", "--storage", str(tmp_path / "sweeps"), "--name", "r",
                    "--num-cpus", "2"], tmp_path, timeout=400)
    assert proc.returncode == 0, explain(proc)
    # by default a line per finished trial (and progress), not Ray's or its workers' logs
    assert len(re.findall(r"^lus tune: trial \d/2 ", proc.stdout, re.M)) == 2, explain(proc)
    assert len(proc.stdout.splitlines() + proc.stderr.splitlines()) <= 12, explain(proc)
    out = tmp_path / "sweeps" / "r"
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2 and table["val_weighted_f1"].between(0, 1).all()
    assert (table["training_iteration"] >= 1).all()   # per-epoch reports reached Tune
    # ASHA may stop the worse trial after epoch 1; the first to a rung always goes on
    finished = table[table["training_iteration"] == 2]["trial_id"]
    assert len(finished) >= 1
    for trial_id in finished:
        summary = json.loads((out / "runs" / trial_id / "summary.json").read_text())
        assert summary["world_size"] == 2   # the trial really ran 2 ranks
        assert len(set(summary["param_digests"])) == 1   # ... in one DDP process group
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["data"]["root"] == str(shards) and best["train"]["epochs"] == 2
    from lus_dist.engine.registry import load_run_config
    load_run_config("regstn", out / "best.yaml", [])   # `lus train --config` reads it
    # ranked on held-out training patients; the test scores are reported, never ranked on
    chosen = json.loads((out / "best.json").read_text())
    if (out / "runs" / chosen["trial_id"] / "summary.json").is_file():
        assert chosen["selected_on"] == "val_weighted_f1 on holdout", chosen
        assert 0 <= chosen["test"]["weighted_f1"] <= 1 and "no trial was ranked" in chosen["test_note"]
    else:   # ASHA stopped the winner before its summary
        assert chosen["test"] is None and "did not finish" in chosen["test_note"]


def test_cnnlstm_sweep_four_trials(tmp_path, phantom_tmp, netns):
    shards = _pack(phantom_tmp, "pocus")
    space = yaml.safe_load((ROOT / "tune" / "spaces" / "cnnlstm.yaml").read_text())
    space["params"]["data.clip_len"] = {"choice": [4, 6]}          # phantom clips are short
    space["params"]["model.kwargs.lstm_units"] = {"qrandint": [8, 32, 8]}
    space["params"]["model.kwargs.dense_units"] = {"qrandint": [8, 32, 8]}
    space["params"]["data.batch_size"] = {"choice": [2, 4]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = run_lus(["tune", "cnnlstm", "--space", str(tmp_path / "space.yaml"),
                    f"data.root={shards}", *TINY, "--trials", "4",
                    "--storage", str(tmp_path / "sweeps"), "--name", "c", "--num-cpus", "2",
                    "--quiet"], tmp_path, timeout=400)
    assert proc.returncode == 0, explain(proc)
    table = pd.read_csv(tmp_path / "sweeps" / "c" / "results.csv")
    assert len(table) == 4 and table["val_accuracy"].between(0, 1).all()
    assert set(table["data.clip_len"]) <= {4, 6}
