"""Reg-STN (Roy et al. 2020) and the Table 1 frame baselines as a family plug-in.

Frames in, severity scores (or, for POCUS, the clip classes) out; the best epoch has the
highest weighted F1; after training the best model's per-frame probabilities are exported
for the uninorm aggregator, and each epoch draws the STN crops on validation frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lus_dist.training.augment import AugmentStream, augment_batch, augment_config
from lus_dist.io.config import ConfigError
from lus_dist.engine.config import RunConfig
from lus_dist.engine.data import validation_name, gather, open_split, stack_outputs
from lus_dist.engine.family import Family, Splits
from lus_dist.engine.results import write_frame_predictions
from lus_dist.training.losses import FrameLossConfig, frame_loss
from lus_dist.training.metrics import frame_metrics
from lus_dist.models import ENCODER_FILE, build_frame_model, encoder_slot, export_encoder, stn_boxes
from lus_dist.shards.format import SCORE_CLASSES


@dataclass
class RegSTNConfig(RunConfig):
    """Reg-STN and the Table 1 frame baselines (any `build_frame_model` name)."""
    name: str = "regstn"
    loss: FrameLossConfig = field(default_factory=FrameLossConfig)
    viz_frames: int = 8           # frames in the STN localisation grid per epoch
    predict_splits: list[str] = field(default_factory=lambda: ["test"])
    # names of the per-frame targets in the shards (one output each): the severity scores,
    # or, for data without frame scores (POCUS), the clip classes the packer stored there
    frame_classes: list[str] = field(default_factory=lambda: list(SCORE_CLASSES))
    # the pretraining augmentations on training batches: None = off, {} = AugmentConfig's
    # defaults, or some of its fields ({rotation_deg: 5, speckle: 0}); labels unchanged
    augment: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.frame_classes) < 2 or len(set(self.frame_classes)) != len(self.frame_classes):
            raise ConfigError(f"frame_classes must be >= 2 distinct names, got {self.frame_classes}")
        if self.augment is not None:
            augment_config(self.augment, "augment")


class RegSTN(Family):
    name = "regstn"
    config_cls = RegSTNConfig
    best_metric = "weighted_f1"
    logged_metrics = ("accuracy", "weighted_f1")
    title = "Reg-STN / frame baselines (Roy et al. 2020)"
    ray_train = True
    cfg: RegSTNConfig

    def build_data(self, session) -> Splits:
        d = self.cfg.data
        train = open_split(self.cfg, d.train_split, mode="frame")
        val_split = validation_name(d)
        val = open_split(self.cfg, val_split, mode="frame")
        # one generator per micro-batch, counted and checkpointed (states()): exact resume
        self.augment = None if self.cfg.augment is None else augment_config(self.cfg.augment, "augment")
        self.stream = AugmentStream(self.cfg.seed, session.world.rank if session else 0)
        return Splits(train, val, val_split, train.frame_scores,
                      f"{len(train)} train / {len(val)} {val_split} frames")

    def build_model(self, splits: Splits) -> torch.nn.Module:
        channels, height, width = splits.train[0]["image"].shape
        return build_frame_model(self.cfg.model.name, in_channels=channels,
                                 num_classes=len(self.cfg.frame_classes), image_size=(height, width),
                                 **self.cfg.model.kwargs)

    def loss(self, model, batch):
        x = batch["image"]
        if self.augment is not None:
            x = augment_batch(x, self.augment, self.stream.next())
        return frame_loss(model(x), batch["score"], self.cfg.loss)

    def states(self) -> dict[str, Any]:
        return {"augment": self.stream} if self.cfg.augment is not None else {}

    @torch.no_grad()
    def evaluate(self, fit, ds, session) -> dict[str, np.ndarray]:
        """Per-frame softmax probabilities + ids for a whole split, gathered in dataset order."""
        net = fit.eval_net  # the bare module (EMA weights when on): no collective in forward
        net.eval()
        out: dict[str, list] = {"probs": [], "score": [], "video": [], "frame": []}
        for x, batch in self.eval_batches(ds, fit, session):
            with fit.autocast():
                logits = net(x).logits
            out["probs"].append(torch.softmax(logits.float(), 1).cpu().numpy())
            for k in ("score", "video", "frame"):
                out[k].append(batch[k].numpy())
        net.train()
        return gather(stack_outputs(out, {"probs": len(self.cfg.frame_classes)}))

    def scores(self, pred: dict[str, np.ndarray]) -> dict[str, float]:
        known = pred["score"] >= 0
        return frame_metrics(pred["score"][known], pred["probs"][known].argmax(1),
                             pred["probs"].shape[1])

    def open_split(self, split: str):
        return open_split(self.cfg, split, mode="frame")

    def final_splits(self) -> list[str]:
        return [*self.cfg.predict_splits, self.cfg.data.test_split]

    def export(self, split: str, ds, pred, run_dir: Path, net: torch.nn.Module) -> None:
        """Frame probabilities for the aggregator, and the best epoch's encoder (if the
        model has one), whose frozen features a CNN-LSTM can be trained on."""
        if split == self.cfg.data.test_split and has_encoder(net):   # once, not per split
            export_encoder(net, run_dir / ENCODER_FILE)
        if split in self.cfg.predict_splits:
            write_frame_predictions(run_dir / "predictions" / f"{split}.h5", pred, ds, split,
                                    self.cfg.frame_classes)

    def after_epoch(self, net, splits: Splits, run_dir: Path, epoch: int) -> None:
        if self.cfg.viz_frames > 0 and hasattr(net, "transforms"):
            stn_grid(net, splits.val, self.cfg.viz_frames, run_dir / "viz" / f"epoch-{epoch:03d}.png",
                     f"Epoch {epoch}: STN crops on {validation_name(self.cfg.data)} frames")

    @classmethod
    def report_section(cls, rep, runs, options) -> None:
        from lus_dist.evaluation.sections import frame_section

        frame_section(rep, runs, options.get("aggregate"), options.get("stn_examples", 8))


def has_encoder(net: torch.nn.Module) -> bool:
    try:
        encoder_slot(net)
    except TypeError:      # e.g. a baseline without a frame-encoder body
        return False
    return True


def stn_grid(model, ds, n: int, path: Path, title: str) -> None:
    """n frames spread over the split (so over videos), 2 rows, with their crop boxes: the
    report's figure, so crops keep one colour and a legend everywhere."""
    from lus_dist.evaluation.plots import stn_examples_png   # matplotlib only when a picture is drawn

    picks = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
    items = [ds[int(i)] for i in picks]
    x = torch.stack([it["image"] for it in items])
    param = next(model.parameters())          # the model's device and dtype (bf16 under DeepSpeed)
    boxes = stn_boxes(model, x.to(param.device, param.dtype)).float().cpu()
    names = [f"video {int(it['video'])}, frame {int(it['frame'])}" for it in items]
    stn_examples_png(x.mean(1).numpy(), boxes.numpy(), path, names, cols=(len(x) + 1) // 2, title=title)
