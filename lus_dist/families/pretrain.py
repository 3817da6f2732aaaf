"""Contrastive self-supervised pretraining of a frame encoder as a family plug-in.

Why: no ImageNet weights can be had on these clusters, and ultrasound-only contrastive
pretraining (USCL, IVPP) is what closes most of that gap. Positives are two augmented
frames of one clip a few frames apart (lus_dist.pretraining.pairs.FramePairs); negatives are
the rest of the global batch, gathered across ranks with gradients (lus_dist.pretraining.contrastive).
Labels train nothing: each epoch a kNN classifier on the frozen features scores the
validation frames (held-out training patients by default) against a bank of training
frames, and that score picks the epoch. The test clips never enter pretraining; the test
kNN score is reported like any family's test score.

The run writes `encoder.pt` (the best epoch's encoder, no projection head): the frame CNN,
Reg-STN's classifier, the CNN-LSTM and the segmentation encoder load it through one key,
`model.kwargs.encoder_weights=<run dir>/encoder.pt`. The same key here starts pretraining
from an encoder file (e.g. ImageNet weights where a cluster has them) instead of random.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from lus_dist.training.augment import AugmentConfig, AugmentStream, augment_config
from lus_dist.io.config import ConfigError
from lus_dist.pretraining.contrastive import pair_loss
from lus_dist.engine.config import (DataConfig, ModelConfig, OptimConfig, RunConfig,
                                    ScheduleConfig)
from lus_dist.engine.data import gather, open_split, stack_outputs, validation_name
from lus_dist.engine.family import Family, Splits
from lus_dist.models import ENCODER_FILE, ContrastiveModel, export_encoder
from lus_dist.pretraining.pairs import FramePairs
from lus_dist.pretraining.probe import knn_accuracy


@dataclass
class ContrastiveConfig:
    """The contrastive task: pairs, temperature, augmentations and the kNN monitor."""
    temperature: float = 0.2
    max_gap: int = 4              # a positive is 1..max_gap frames from its anchor
    augment: dict[str, Any] = field(default_factory=dict)   # AugmentConfig fields
    knn_k: int = 20
    knn_bank_frames: int = 4096   # training frames in the kNN bank (evenly spread), 0: all

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.max_gap < 1 or self.knn_k < 1 or self.knn_bank_frames < 0:
            raise ConfigError(f"pretrain: need temperature > 0, max_gap >= 1, knn_k >= 1 and "
                              f"knn_bank_frames >= 0, got {self}")
        self.augment_config()

    def augment_config(self) -> AugmentConfig:
        return augment_config(self.augment, "pretrain.augment")


@dataclass
class PretrainConfig(RunConfig):
    name: str = "pretrain"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        name="contrastive", kwargs={"encoder": "small_cnn", "proj_dim": 128, "proj_hidden": 512}))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-3,
                                                                   weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        name="warmup_cosine", interval="step", warmup=20, min_lr_ratio=0.01))
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=64, eval_batch_size=128,
                                                                balanced=False))
    pretrain: ContrastiveConfig = field(default_factory=ContrastiveConfig)


class Pretrain(Family):
    name = "pretrain"
    config_cls = PretrainConfig
    best_metric = "knn_accuracy"
    title = "contrastive self-supervised pretraining of a frame encoder (USCL/IVPP-style pairs)"
    ray_train = True
    input_key = "view1"
    cfg: PretrainConfig

    def build_data(self, session) -> Splits:
        d, c = self.cfg.data, self.cfg.pretrain
        frames = open_split(self.cfg, d.train_split, mode="frame")
        try:
            pairs = FramePairs(frames, c.max_gap, self.cfg.seed)
        except ValueError as exc:
            raise ConfigError(f"{d.root}: {exc}") from None
        val_split = validation_name(d)
        val = self.open_split(val_split)
        self.bank = knn_bank(frames, c.knn_bank_frames)
        # the augmentations of each micro-batch: per rank, counted, checkpointed (states())
        self.stream = AugmentStream(self.cfg.seed, session.world.rank if session else 0)
        self.augment = c.augment_config()
        return Splits(pairs, val, val_split, None,
                      f"{len(pairs)} train frames in pairs (gap <= {c.max_gap}), kNN bank "
                      f"{len(self.bank)} / {len(val)} {val_split} frames")

    def open_split(self, split: str):
        return open_split(self.cfg, split, mode="frame")

    def build_model(self, splits: Splits) -> torch.nn.Module:
        channels = splits.train[0]["view1"].shape[0]
        kw = dict(self.cfg.model.kwargs)
        try:   # a bad encoder_weights file: the error names it and the mismatch
            return ContrastiveModel(in_channels=channels, **kw)
        except (TypeError, ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"model.kwargs {sorted(kw)}: {exc}") from None

    def loss(self, model, batch):
        return pair_loss(model, batch["view1"], batch["view2"], self.augment, self.stream.next(),
                         self.cfg.pretrain.temperature), {}

    @torch.no_grad()
    def evaluate(self, fit, ds, session) -> dict[str, np.ndarray]:
        """Frozen features of the bank and of `ds`, identical on every rank."""
        return {**{f"bank_{k}": v for k, v in self._embed(self.bank, fit, session).items()},
                **self._embed(ds, fit, session)}

    def _embed(self, ds, fit, session) -> dict[str, np.ndarray]:
        net = fit.eval_net  # the bare module (EMA weights when on): no collective in forward
        net.eval()
        out: dict[str, list] = {"features": [], "score": [], "label": []}
        for x, batch in self.eval_batches(ds, fit, session, key="image"):
            with fit.autocast():
                out["features"].append(net.features(x).float().cpu().numpy())
            out["score"].append(batch["score"].numpy())
            out["label"].append(batch["label"].numpy())
        net.train()
        return gather(stack_outputs(out, {"features": net.feature_dim}))

    def scores(self, pred: dict[str, np.ndarray]) -> dict[str, float]:
        """kNN accuracy on the frame scores where the data has them (ICLUS-style), else on
        the clip classes (POCUS-style packs store -1 frame scores); NaN with no labels."""
        key = "score" if (pred["bank_score"] >= 0).any() else "label"
        if not ((pred[f"bank_{key}"] >= 0).any() and (pred[key] >= 0).any()):
            return {"knn_accuracy": float("nan")}
        return {"knn_accuracy": knn_accuracy(pred["bank_features"], pred[f"bank_{key}"],
                                             pred["features"], pred[key], self.cfg.pretrain.knn_k)}

    def export(self, split: str, ds, pred, run_dir: Path, net: torch.nn.Module) -> None:
        """The best epoch's encoder (loaded by the loop before the final splits)."""
        export_encoder(net, run_dir / ENCODER_FILE)

    def states(self) -> dict[str, Any]:
        return {"augment": self.stream}

    @classmethod
    def report_section(cls, rep, runs, options) -> None:
        from lus_dist.evaluation.sections import pretrain_section

        pretrain_section(rep, runs)

    def summary(self) -> dict:
        return {"model": self.cfg.model.name,
                "encoder": self.cfg.model.kwargs.get("encoder", "small_cnn"),
                "encoder_file": ENCODER_FILE}


def knn_bank(frames, limit: int):
    """At most `limit` training frames spread evenly over the split (so over its videos):
    embedding every frame each epoch would cost as much as the epoch itself."""
    if limit == 0 or len(frames) <= limit:
        return frames
    return Subset(frames, np.linspace(0, len(frames) - 1, limit).round().astype(int).tolist())
