"""CNN-LSTM video classifier (Barros et al. 2021) on fixed-length clips as a family plug-in.

Each item is one video's clip (`clip_len` frames, uniform over the video as the paper, or
a random window). Validation reports Barros et al.'s columns (accuracy, per-class
sensitivity/specificity, COVID-vs-rest accuracy); the best model is the most accurate.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lus_dist.io.config import ConfigError
from lus_dist.engine.config import DataConfig, ModelConfig, RunConfig, ScheduleConfig
from lus_dist.engine.data import validation_name, gather, open_split, stack_outputs
from lus_dist.engine.family import Family, Splits
from lus_dist.engine.features import cached_clips, ensure_cache
from lus_dist.training.metrics import video_metrics
from lus_dist.models import CNNLSTM, CNNLSTMConfig as ModelCfg
from lus_dist.shards.format import VIDEO_CLASSES


@dataclass
class CNNLSTMConfig(RunConfig):
    """`features: cached` is Barros et al.'s recipe: the frozen encoder of
    `model.kwargs.encoder_weights` embeds every frame once (run dir `features/`, every rank
    its block) and only the LSTM head trains, on uniform clips of the cached features;
    `frames` (default) trains end to end on the frames."""
    name: str = "cnnlstm"
    features: str = "frames"      # frames | cached
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="cnnlstm"))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(milestones=[], gamma=1.0))
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=4, eval_batch_size=8,
                                                                 balanced=False))

    def __post_init__(self) -> None:
        if self.features not in ("frames", "cached"):
            raise ConfigError(f"features must be frames|cached, got {self.features!r}")
        if self.features == "cached" and not self.model.kwargs.get("encoder_weights"):
            raise ConfigError("features=cached needs model.kwargs.encoder_weights: the pretrained "
                              "encoder file whose features are cached (e.g. lus train pretrain's "
                              "encoder.pt)")


class CNNLSTMFamily(Family):
    name = "cnnlstm"
    config_cls = CNNLSTMConfig
    best_metric = "accuracy"
    logged_metrics = ("accuracy", "weighted_f1", "covid_recall")
    title = "CNN-LSTM video classifier (Barros et al. 2021)"
    input_key = "frames"
    cfg: CNNLSTMConfig

    def _clips(self, split: str, sampling: str):
        d = self.cfg.data
        return open_split(self.cfg, split, mode="clip", clip_len=d.clip_len, clip_sampling=sampling,
                          seed=self.cfg.seed)

    def build_data(self, session) -> Splits:
        d = self.cfg.data
        self.cache = None
        train = self._clips(d.train_split, d.clip_sampling)
        if self.cfg.features == "cached":
            self.cache = self._cache(session, channels=train[0]["frames"].shape[1])
            if self.cache:
                train = cached_clips(self.cache, train, d.clip_len)
        val_split = validation_name(d)
        val = self.open_split(val_split)
        return Splits(train, val, val_split, train.labels,
                      f"{len(train)} train / {len(val)} {val_split} clips of {d.clip_len}"
                      + (f" (cached features in {self.cache})" if self.cache else ""))

    def _cache(self, session, channels: int) -> Path | None:
        """The run's feature cache, extracted on first use (None in `lus tune`'s pre-check,
        which only needs to know that the encoder file loads)."""
        encoder = self._model_cfg(channels, freeze_encoder=True)
        encoder = CNNLSTM(encoder).encoder          # loads encoder_weights, or says why not
        if session is None:
            return None
        d = self.cfg.data
        return ensure_cache(session.run_dir / "features", Path(d.root), encoder,
                            self.cfg.model.kwargs.get("encoder", ModelCfg().encoder),
                            session.world, session.device, d.manifest_version, d.channels,
                            self.cfg.logging.progress)

    def open_split(self, split: str):
        clips = self._clips(split, "uniform")
        return cached_clips(self.cache, clips, self.cfg.data.clip_len) if self.cache else clips

    def _model_cfg(self, channels: int, **extra) -> ModelCfg:
        return ModelCfg(**{**self.cfg.model.kwargs, "in_channels": channels,
                           "seq_len": self.cfg.data.clip_len, "num_classes": len(VIDEO_CLASSES),
                           **extra})

    def build_model(self, splits: Splits) -> torch.nn.Module:
        item = splits.train[0]["frames"]
        if self.cfg.features == "cached":          # (T, F): the head alone
            return CNNLSTM.from_features(item.shape[1], self._model_cfg(1))
        return CNNLSTM(self._model_cfg(item.shape[1]))

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["frames"]), batch["label"]), {}

    @torch.no_grad()
    def evaluate(self, fit, ds, session) -> dict[str, np.ndarray]:
        net = fit.eval_net  # the bare module (EMA weights when on): no collective in forward
        net.eval()
        out: dict[str, list] = {"probs": [], "label": [], "video": []}
        for x, batch in self.eval_batches(ds, fit, session):
            with fit.autocast():
                logits = net(x)
            out["probs"].append(torch.softmax(logits.float(), 1).cpu().numpy())
            out["label"].append(batch["label"].numpy())
            out["video"].append(batch["video"].numpy())
        net.train()
        return gather(stack_outputs(out, {"probs": len(VIDEO_CLASSES)}))

    def scores(self, pred: dict[str, np.ndarray]) -> dict[str, float]:
        known = pred["label"] >= 0
        return video_metrics(pred["label"][known], pred["probs"][known], VIDEO_CLASSES)

    def export(self, split: str, ds, pred, run_dir: Path, net: torch.nn.Module) -> None:
        write_video_predictions(run_dir / "predictions" / f"{split}_videos.csv", pred, ds)

    def summary(self) -> dict:
        return {"model": self.cfg.model.name,
                "encoder": self.cfg.model.kwargs.get("encoder", ModelCfg().encoder),
                "features": self.cfg.features}

    @classmethod
    def report_section(cls, rep, runs, options) -> None:
        from lus_dist.evaluation.sections import cnnlstm_section

        cnnlstm_section(rep, runs)


def write_video_predictions(path: Path, pred: dict[str, np.ndarray], ds) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = ds.manifest.videos["video_id"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "label", *[f"prob_{c}" for c in VIDEO_CLASSES]])
        for v, y, p in zip(pred["video"], pred["label"], pred["probs"]):
            w.writerow([ids[v], int(y), *map(float, p)])
