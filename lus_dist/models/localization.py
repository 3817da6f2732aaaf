"""Weakly-supervised localisation: where a Reg-STN looked, as boxes in input pixels.

Boxes use the pixel-edge convention (0..W, 0..H), matching `affine_grid(align_corners=False)`:
the identity transform covers (0, 0, W, H). Rotated crops give their axis-aligned hull.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

# crop 1 (prediction) red, crop 2 (consistency view) green, in BGR for OpenCV
BOX_COLOURS = ((0, 0, 255), (0, 200, 0))
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


def _to_bgr_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    img = frame.detach().cpu().float().numpy() if isinstance(frame, torch.Tensor) else \
        np.asarray(frame)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # CHW -> HWC
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"draw_boxes: expected a (H,W), (C,H,W) or (H,W,C) frame, "
                         f"got shape {img.shape}")
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., ::-1] if img.shape[-1] == 3 else img)


def draw_boxes(frame: np.ndarray | torch.Tensor, boxes: np.ndarray | torch.Tensor,
               path: str | Path, upscale: int = 1) -> Path:
    """Write `frame` with its crop boxes (n, 4) as a PNG; `upscale` enlarges small frames."""
    import cv2

    img = _to_bgr_uint8(frame)
    if upscale > 1:
        img = cv2.resize(img, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)
    b = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes,
                   dtype=np.float64).reshape(-1, 4) * upscale
    for i, (x0, y0, x1, y1) in enumerate(b):
        cv2.rectangle(img, (int(round(x0)), int(round(y0))),
                      (int(round(x1)) - 1, int(round(y1)) - 1),
                      BOX_COLOURS[i % len(BOX_COLOURS)], 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: could not write PNG")
    return path
