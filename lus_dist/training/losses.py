"""Losses: SORD soft ordinal targets, the Reg-STN objective, Dice + CE for segmentation.

SORD (Diaz & Marathe 2019, as used by Roy et al.): the target for true class y is
softmax over classes c of -m * |r(y) - r(c)|^2, where r places the classes on a line.
`zero_gap` moves class 0 to -zero_gap (r = [-gap, 1, 2, 3]): score 0 (healthy) sits
further from the pathological scores than they sit from each other. gap 0 is plain SORD.
Everything here is batched tensor arithmetic: no loop over samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import FrameOutput

IGNORE = -1  # unknown score: contributes nothing to the loss


def class_positions(num_classes: int, zero_gap: float = 0.0, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    pos = torch.arange(num_classes, dtype=dtype, device=device)
    if zero_gap:
        pos[0] = -float(zero_gap)
    return pos


def sord_targets(labels: torch.Tensor, num_classes: int, multiplier: float = 2.0,
                 zero_gap: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """labels (...) int in [0, num_classes) -> soft targets (..., num_classes), rows sum to 1.

    The range is checked on CPU only (a check on GPU would cost a host sync every step);
    `sord_loss` masks unknown (-1) labels before calling this. float64 for exact references.
    """
    if multiplier <= 0:
        raise ValueError(f"SORD multiplier must be > 0, got {multiplier}")
    if labels.device.type == "cpu" and labels.numel() and (
            labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"SORD labels must be in [0, {num_classes}), got "
                         f"{sorted(set(labels.flatten().tolist()))[:8]}")
    pos = class_positions(num_classes, zero_gap, labels.device, dtype)
    dist2 = (pos[labels.long()].unsqueeze(-1) - pos) ** 2
    return torch.softmax(-multiplier * dist2, dim=-1)


def sord_loss(logits: torch.Tensor, labels: torch.Tensor, multiplier: float = 2.0,
              zero_gap: float = 0.0) -> torch.Tensor:
    """Mean KL(SORD target || softmax(logits)) over samples whose label is not IGNORE."""
    keep = labels != IGNORE
    safe = torch.where(keep, labels, torch.zeros_like(labels))
    target = sord_targets(safe, logits.shape[-1], multiplier, zero_gap)
    logp = F.log_softmax(logits.float(), dim=-1)
    kl = (target * (torch.log(target.clamp_min(1e-12)) - logp)).sum(-1)
    return (kl * keep).sum() / keep.sum().clamp_min(1)


@dataclass
class FrameLossConfig:
    loss: str = "auto"  # "auto" (what the model was built for), "sord" or "ce"
    sord_multiplier: float = 2.0
    zero_gap: float = 0.0
    lambda_cons: float = 1.0  # MSE between crop-1 and crop-2 logits (Reg-STN)
    lambda_stn: float = 1.0  # L1 between learned scales and their prior (Reg-STN learned)


def frame_loss(out: FrameOutput, target: torch.Tensor,
               cfg: FrameLossConfig | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one loss line of every frame model's training loop.

    Reg-STN terms are added whenever the model provides them (crop-2 logits; learned
    scales), multiplied by their lambda even when it is 0: the localiser's crop-2 outputs
    then still receive (zero) gradients, which DDP needs to not see unused parameters.
    `parts` holds detached tensors for logging: read on the host only at the logging
    interval, so the hot loop has no sync.
    """
    cfg = cfg or FrameLossConfig()
    kind = out.loss if cfg.loss == "auto" else cfg.loss
    if kind == "sord":
        main = sord_loss(out.logits, target, cfg.sord_multiplier, cfg.zero_gap)
    elif kind == "ce":
        main = F.cross_entropy(out.logits.float(), target.long(), ignore_index=IGNORE)
    else:
        raise ValueError(f"unknown frame loss {kind!r}; expected 'auto', 'sord' or 'ce'")
    terms = {kind: main}
    if "logits2" in out.aux:
        terms["cons"] = cfg.lambda_cons * F.mse_loss(out.logits.float(),
                                                     out.aux["logits2"].float())
    if "scales" in out.aux:
        prior = out.aux["scale_prior"].to(out.aux["scales"].dtype)
        terms["stn"] = cfg.lambda_stn * F.l1_loss(out.aux["scales"],
                                                  prior.expand_as(out.aux["scales"]))
    total = torch.stack(list(terms.values())).sum()
    return total, {"loss": total.detach(), **{k: t.detach() for k, t in terms.items()}}


def dice_ce_loss(logits: torch.Tensor, mask: torch.Tensor, dice_weight: float = 1.0,
                 ce_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice (mean over classes, whole batch) + pixel cross-entropy.

    logits (B, K, H, W), mask (B, H, W) int class ids. Dice over the whole batch rather
    than per image so images without a marker do not make that class's Dice undefined.
    """
    if logits.shape[0] != mask.shape[0] or logits.shape[2:] != mask.shape[1:]:
        raise ValueError(f"segmentation loss: logits {tuple(logits.shape)} do not match "
                         f"mask {tuple(mask.shape)}")
    logits = logits.float()
    mask = mask.long()
    ce = F.cross_entropy(logits, mask)
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(mask, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = 1 - ((2 * inter + eps) / (denom + eps)).mean()
    return dice_weight * dice + ce_weight * ce
