"""The `pretrain` family on the shared loop: 2-rank contrastive pretraining on the phantom
picks its epoch by kNN on held-out training patients, is preempted mid-epoch and resumes
bitwise-exactly (the augmentation stream and the EMA weights are checkpointed), and the
encoder it exports (from the EMA weights) is
what a following CNN-LSTM run trains with (one key: model.kwargs.encoder_weights)."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from engine_helpers import CONFIGS, child_env, explain, preempt_mid_run, run_train, summary

pytestmark = pytest.mark.slow

ARGS = ["train.epochs=2", "train.max_steps_per_epoch=6", "data.batch_size=8",
        "train.deterministic=true", "logging.every_steps=1", "logging.tensorboard=false",
        "checkpoint.every_steps=2", "data.num_workers=0", "pretrain.knn_bank_frames=128",
        "model.kwargs.proj_hidden=64", "model.kwargs.proj_dim=32", "train.ema_decay=0.9"]


def epoch_scores(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [float(r["value"]) for r in csv.DictReader(fh)
                if r["kind"] == "epoch" and r["name"] == "val_knn_accuracy"]


def encoder_state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_pretrain_resumes_exactly_and_its_encoder_feeds_the_cnnlstm(engine_shards, tmp_path):
    args = [f"data.root={engine_shards}", *ARGS]
    ref = run_train("pretrain", tmp_path / "ref", args, config="pretrain.yaml")
    assert ref.returncode == 0, explain(ref)
    s = summary(tmp_path / "ref")
    assert len(s["param_digests"]) == 2 and len(set(s["param_digests"])) == 1
    assert s["best_selected_on"] == "holdout" and 0.0 <= s["test"]["knn_accuracy"] <= 1.0
    assert s["data"]["train"] != s["data"]["holdout"] and "test" not in s["data"]["train"]
    assert len(epoch_scores(tmp_path / "ref")) == 2
    assert all(0.0 <= v <= 1.0 for v in epoch_scores(tmp_path / "ref"))

    run = tmp_path / "pre"
    preempt_mid_run("pretrain", run, [f"--config={CONFIGS / 'pretrain.yaml'}", *args], at_step=3)
    resumed = run_train("pretrain", run, args, config="pretrain.yaml", resume="auto")
    assert "resumed from step-" in resumed.stdout, explain(resumed)
    assert summary(run)["param_digests"] == s["param_digests"]
    exported = encoder_state(run / "encoder.pt")
    for key, value in encoder_state(tmp_path / "ref" / "encoder.pt").items():
        assert torch.equal(exported[key], value), key

    report = subprocess.run([sys.executable, "-m", "lus", "eval", str(run), "--out",
                             str(tmp_path / "report")], env=child_env(), capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, explain(report)
    assert "pretrain: test scores" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "pretrain_knn_curves.png").is_file()

    # the frozen encoder of a CNN-LSTM run is exactly the exported one after training
    lstm = tmp_path / "cnnlstm"
    proc = run_train("cnnlstm", lstm, [f"data.root={engine_shards}", "train.epochs=1",
                                       "train.max_steps_per_epoch=2", "data.batch_size=4",
                                       "data.clip_len=4", "logging.tensorboard=false",
                                       "data.num_workers=0",
                                       f"model.kwargs.encoder_weights={run / 'encoder.pt'}",
                                       "model.kwargs.freeze_encoder=true"], nproc=1)
    assert proc.returncode == 0, explain(proc)
    best = torch.load(lstm / "best.pt", map_location="cpu", weights_only=True)
    for key, value in exported.items():
        assert torch.equal(best[f"encoder.{key}"], value), key


def test_pretraining_starts_from_an_imagenet_file(engine_shards, tmp_path):
    """`model.kwargs.encoder_weights` starts pretraining from a file, here one in
    torchvision's ImageNet layout (random weights: nothing is downloaded). At lr 0 the
    exported encoder's filters are the file's, its RGB stem summed to the one gray channel."""
    import torchvision

    torch.manual_seed(5)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(imagenet, tmp_path / "resnet18.pth")
    run = tmp_path / "pre"
    args = [f"data.root={engine_shards}", *ARGS, "train.epochs=1", "optim.lr=0",
            "model.kwargs.encoder=resnet18",
            f"model.kwargs.encoder_weights={tmp_path / 'resnet18.pth'}"]
    proc = run_train("pretrain", run, args, config="pretrain.yaml", nproc=1)
    assert proc.returncode == 0, explain(proc)
    assert "conv1.weight: RGB filters adapted to 1 input channel(s)" in proc.stderr, explain(proc)
    exported = encoder_state(run / "encoder.pt")
    assert torch.allclose(exported["conv1.weight"], imagenet["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer1.0.conv1.weight", "layer4.1.conv2.weight", "layer4.1.bn2.weight"):
        assert torch.equal(exported[key], imagenet[key]), key


def test_bad_pretrain_settings_are_one_line(engine_shards, tmp_path):
    for bad, word in (("pretrain.temperature=0", "temperature"),
                      ("pretrain.augment={rotaton_deg: 5}", "rotaton_deg"),
                      ("model.kwargs.encoder=nonesuch", "nonesuch"),
                      (f"model.kwargs.encoder_weights={tmp_path / 'nope.pt'}", "nope.pt")):
        proc = subprocess.run([sys.executable, "-m", "lus", "train", "pretrain", "--run-dir",
                               str(tmp_path / "bad"), f"data.root={engine_shards}", bad],
                              env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, explain(proc)
        assert word in proc.stderr and "Traceback" not in proc.stderr, explain(proc)
