"""A model family registered from this file alone (LUS_FAMILIES), with no edit to the
engine, tune or evaluation code: it trains under 2-process torchrun, is preempted and
resumes bitwise-exactly, is swept by a 2-trial `lus tune`, and `lus eval` reports it.
The same family shows Ray's GPU scheduling with logical GPUs on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from lus_dist.engine import Family, RunConfig, Splits
from lus_dist.engine.data import gather, open_split, stack_outputs, validation_name
from lus_dist.training.metrics import frame_metrics

from engine_helpers import ROOT, child_env, explain, preempt_mid_run, run_train, summary

HERE = Path(__file__).resolve().parent
REGISTRATION = "tiny=test_plugin_family:TinyFamily"


@dataclass
class TinyConfig(RunConfig):
    name: str = "tiny"
    hidden: int = 8


class TinyFamily(Family):
    """Severity score from a strided conv + dropout + linear: the smallest real family."""
    name = "tiny"
    config_cls = TinyConfig
    best_metric = "accuracy"

    def build_data(self, session) -> Splits:
        d = self.cfg.data
        name = validation_name(d)
        train, val = self.open_split(d.train_split), self.open_split(name)
        return Splits(train, val, name, None, f"{len(train)} train / {len(val)} {name} frames")

    def open_split(self, split):
        return open_split(self.cfg, split, mode="frame")

    def build_model(self, splits):
        return torch.nn.Sequential(torch.nn.Conv2d(1, self.cfg.hidden, 4, stride=4), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Dropout(0.2), torch.nn.Linear(self.cfg.hidden, 4))

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["image"]), batch["score"]), {}

    @torch.no_grad()
    def evaluate(self, fit, ds, session):
        net = fit.net.eval()
        out = {"pred": [], "score": []}
        for x, batch in self.eval_batches(ds, fit, session):
            out["pred"].append(net(x).argmax(1).numpy())
            out["score"].append(batch["score"].numpy())
        net.train()
        return gather(stack_outputs(out, {}))

    def scores(self, pred):
        return frame_metrics(pred["score"], pred["pred"], 4)


@pytest.fixture
def registered(monkeypatch):
    """What a researcher does: name the family's module in the environment."""
    monkeypatch.setenv("LUS_FAMILIES", REGISTRATION)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(ROOT),
                                                      os.environ.get("PYTHONPATH", "")]))


TINY = ["train.epochs=2", "train.max_steps_per_epoch=5", "data.batch_size=8",
        "train.deterministic=true", "logging.every_steps=1", "logging.tensorboard=false",
        "checkpoint.every_steps=2", "optim.lr=3e-3"]


@pytest.mark.slow
def test_plugin_family_trains_preempts_resumes_and_is_reported(engine_shards, tmp_path, registered):
    args = [f"data.root={engine_shards}", *TINY]
    ref = run_train("tiny", tmp_path / "ref", args)
    assert ref.returncode == 0, explain(ref)
    digest = summary(tmp_path / "ref")["param_digests"]
    assert len(digest) == 2 and len(set(digest)) == 1

    run = tmp_path / "pre"
    preempt_mid_run("tiny", run, args)
    resumed = run_train("tiny", run, args, resume="auto")
    assert "resumed from step-" in resumed.stdout, explain(resumed)
    assert summary(run)["param_digests"] == digest
    assert summary(run)["family"] == "tiny" and summary(run)["best_selected_on"] == "holdout"

    report = subprocess.run([sys.executable, "-m", "lus", "eval", str(run), "--out",
                             str(tmp_path / "report")], env=child_env(), capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert report.returncode == 0, explain(report)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "tiny: test scores" in text and "weighted_f1" in text


@pytest.mark.slow
@pytest.mark.ray
def test_plugin_family_two_trial_sweep(engine_shards, tmp_path, registered):
    sys.path.insert(0, str(ROOT / "tests" / "tune"))
    from tune_helpers import netns_available, run_lus

    if netns_available():
        pytest.skip(netns_available())
    space = {"family": "tiny", "metric": "val_accuracy", "mode": "max",
             "params": {"hidden": {"choice": [4, 8]}, "optim.lr": {"loguniform": [1e-3, 1e-2]}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = run_lus(["tune", "tiny", "--space", str(tmp_path / "space.yaml"),
                    f"data.root={engine_shards}", *TINY, "--trials", "2", "--search", "random",
                    "--scheduler", "fifo", "--storage", str(tmp_path / "sweeps"), "--name", "t",
                    "--num-cpus", "2", "--quiet"], tmp_path, timeout=400)
    assert proc.returncode == 0, explain(proc)
    import pandas as pd
    table = pd.read_csv(tmp_path / "sweeps" / "t" / "results.csv")
    assert len(table) == 2 and table["val_accuracy"].between(0, 1).all()
    best = yaml.safe_load((tmp_path / "sweeps" / "t" / "best.yaml").read_text())
    assert best["hidden"] in (4, 8) and np.isfinite(best["optim"]["lr"])


@pytest.mark.slow
@pytest.mark.ray
def test_trials_ask_ray_for_gpus_two_logical_gpus_run_two_trials_at_once(engine_shards, tmp_path,
                                                                         registered):
    """3 one-GPU trials on a Ray node with 2 logical GPUs: every trial holds one GPU id
    and both ids are used, so no trial runs without a GPU of its own (the trials still
    train on CPU: the GPUs are logical)."""
    sys.path.insert(0, str(ROOT / "tests" / "tune"))
    from tune_helpers import netns_available, run_lus

    if netns_available():
        pytest.skip(netns_available())
    space = {"family": "tiny", "metric": "val_accuracy", "mode": "max",
             "params": {"hidden": {"grid": [4, 6, 8]}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = run_lus(["tune", "tiny", "--space", str(tmp_path / "space.yaml"),
                    f"data.root={engine_shards}", *TINY, "train.epochs=1", "--trials", "1",
                    "--search", "grid", "--scheduler", "fifo", "--storage", str(tmp_path / "s"),
                    "--name", "g", "--num-cpus", "3", "--num-gpus", "2", "--gpus-per-trial", "1",
                    "--quiet"], tmp_path, timeout=600)
    assert proc.returncode == 0, explain(proc)
    assert "1 GPU(s) per trial" in proc.stdout
    import pandas as pd
    table = pd.read_csv(tmp_path / "s" / "g" / "results.csv", dtype={"trial_gpus": str})
    # every trial held one of the node's 2 GPUs, and two trials held different ones
    assert len(table) == 3 and set(table["trial_gpus"]) == {"0", "1"}, table["trial_gpus"]


def test_gpus_per_trial_rule():
    from lus_dist.io.config import ConfigError
    from tune.trainables import TrialContext, gpus_per_trial, trial_resources, worker_resources

    assert gpus_per_trial(None, 0) == 0 and gpus_per_trial(None, 4) == 1 and gpus_per_trial(0.5, 1) == 0.5
    with pytest.raises(ConfigError, match="has 2 GPU"):
        gpus_per_trial(3, 2)
    ctx = TrialContext(family="cnnlstm", base={}, metric="m", gpus=1.0)
    assert trial_resources(ctx) == {"cpu": 1, "gpu": 1.0}
    assert worker_resources(TrialContext(family="regstn", base={}, metric="m", gpus=0.0)) == {"CPU": 1.0}
    assert worker_resources(TrialContext(family="regstn", base={}, metric="m", gpus=1.0)) == \
        {"CPU": 1.0, "GPU": 1.0}
