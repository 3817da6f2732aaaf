"""Weakly-supervised localisation: where a Reg-STN looked, as boxes in input pixels.

Boxes use the pixel-edge convention (0..W, 0..H), matching `affine_grid(align_corners=False)`:
the identity transform covers (0, 0, W, H). Rotated crops give their axis-aligned hull.
"""
from __future__ import annotations

import torch
from torch import nn

# The one colour (RGB) and name of each crop, in every picture: the per-epoch grid, the
# report's figure and `lus predict`'s annotated clip.
CROP_COLOURS = ((255, 48, 48), (48, 192, 255))
CROP_NAMES = ("crop 1 (prediction)", "crop 2 (consistency view)")
_CORNERS = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])


def theta_to_boxes(thetas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 2, 3) affine thetas -> (..., 4) boxes x0, y0, x1, y1 in input pixels."""
    pts = torch.einsum("...ij,kj->...ki", thetas.float(), _CORNERS.to(thetas.device))
    lo, hi = pts.amin(dim=-2), pts.amax(dim=-2)
    scale = torch.tensor([width / 2.0, height / 2.0], device=thetas.device)
    return torch.cat([(lo + 1) * scale, (hi + 1) * scale], dim=-1)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DeepSpeed engines wrap the model


@torch.no_grad()
def stn_boxes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Crop boxes (B, n_crops, 4) for frames x (B, C, H, W); n_crops is 2 for Reg-STN.

    Runs the localiser in eval mode (BatchNorm running stats untouched) and restores the
    model's mode afterwards, so it is safe to call in the middle of training.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    try:
        if hasattr(net, "transforms"):
            thetas = net.transforms(x)[0]
        elif hasattr(net, "thetas"):
            thetas = net.thetas(x)
        else:
            raise TypeError(f"{type(net).__name__} has no spatial transformer: no crop boxes")
    finally:
        net.train(was_training)
    return theta_to_boxes(thetas, x.shape[-2], x.shape[-1])
