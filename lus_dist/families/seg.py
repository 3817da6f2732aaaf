"""Segmentation of LUS markers (U-Net / U-Net++ / DeepLabV3+, Dice + CE) as a family plug-in.

Only frames with an annotated mask are read (`with_masks=True`). Validation sums one pixel
confusion matrix over the whole split (all ranks), so Dice is over the split, not a mean of
per-image scores; the best model has the highest foreground Dice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from hpc.dist import is_distributed
from lus_dist.engine.config import ModelConfig, RunConfig
from lus_dist.engine.data import validation_name, open_split
from lus_dist.engine.family import Family, Splits
from lus_dist.training.losses import dice_ce_loss
from lus_dist.training.metrics import dice_iou, segmentation_confusion
from lus_dist.models import build_seg_model
from lus_dist.shards.format import MASK_CLASSES


@dataclass
class SegConfig(RunConfig):
    name: str = "seg"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        name="unet", kwargs={"encoder": "resnet18"}))
    ce_weight: float = 1.0
    dice_weight: float = 1.0


class Segmentation(Family):
    name = "seg"
    config_cls = SegConfig
    best_metric = "mean_fg_dice"
    title = "segmentation (U-Net / U-Net++ / DeepLabv3+)"
    ray_train = True
    cfg: SegConfig

    def build_data(self, session) -> Splits:
        d = self.cfg.data
        train = self.open_split(d.train_split)
        val_split = validation_name(d)
        val = self.open_split(val_split)
        return Splits(train, val, val_split, None,
                      f"{len(train)} train / {len(val)} {val_split} masked frames")

    def open_split(self, split: str):
        return open_split(self.cfg, split, mode="frame", with_masks=True)

    def build_model(self, splits: Splits) -> torch.nn.Module:
        channels = splits.train[0]["image"].shape[0]
        return build_seg_model(self.cfg.model.name, in_channels=channels,
                               num_classes=len(MASK_CLASSES), **self.cfg.model.kwargs)

    def loss(self, model, batch):
        return dice_ce_loss(model(batch["image"]), batch["mask"], self.cfg.dice_weight,
                            self.cfg.ce_weight), {}

    @torch.no_grad()
    def evaluate(self, fit, ds, session) -> torch.Tensor:
        """The split's pixel confusion matrix, summed over ranks."""
        net = fit.eval_net  # the bare module (EMA weights when on): no collective in forward
        net.eval()
        k = len(MASK_CLASSES)
        cm = torch.zeros(k, k, dtype=torch.int64, device=session.device)
        for x, batch in self.eval_batches(ds, fit, session):
            with fit.autocast():
                logits = net(x)
            cm += segmentation_confusion(logits.argmax(1), batch["mask"].to(session.device), k)
        net.train()
        if is_distributed():
            dist.all_reduce(cm)
        return cm

    def scores(self, cm: torch.Tensor) -> dict[str, float]:
        """Per-class Dice and IoU over a whole split, plus their foreground means."""
        per = dice_iou(cm, MASK_CLASSES)
        out = {f"{m}_{c}": v for m, by_class in per.items() for c, v in by_class.items()}
        fg = MASK_CLASSES[1:]
        out["mean_fg_dice"] = float(np.nanmean([per["dice"][c] for c in fg]))
        out["mean_fg_iou"] = float(np.nanmean([per["iou"][c] for c in fg]))
        return out

    def epoch_metrics(self, scores) -> dict[str, float]:
        return {f"val_{k}": v for k, v in scores.items() if k.startswith(("dice_", "mean_fg"))}

    @classmethod
    def report_section(cls, rep, runs, options) -> None:
        from lus_dist.evaluation.sections import seg_section

        seg_section(rep, runs)
