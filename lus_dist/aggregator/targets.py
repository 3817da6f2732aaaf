"""Video-level training targets: one-hot, or SORD soft labels (Diaz & Marathe 2019) as
Roy et al. use them for video scores: softmax(-m * |y - c|^2) over classes c, with the
"zero score gap" that moves score 0 (both the label and class 0) to -gap so a healthy
video is further from every pathological score than the scores are from each other.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lus_dist.training.losses import sord_targets


def video_targets(labels: Tensor, num_classes: int, sord: bool = True,
                  zero_score_gap: float = 0.5, multiplier: float = 2.0) -> Tensor:
    """(V,) int class indices -> (V, C) float64 target distributions."""
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"video targets must be in [0, {num_classes}), got "
                         f"{sorted(set(labels.tolist()))}")
    if not sord:
        return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)
    return sord_targets(labels, num_classes, multiplier=multiplier, zero_gap=zero_score_gap,
                        dtype=torch.float64)
