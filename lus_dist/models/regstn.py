"""Reg-STN (Roy et al. 2020): a localiser predicts two affine crops; one shared classifier.

Crop 1 gives the prediction; crop 2 (a wider view) only feeds the consistency term while
training. Both crops go through the classifier as one batch of 2B (one pass, vectorised).
The last localiser layer starts at zero weight with its bias set to the initial transforms,
so training starts from the paper's priors (scales 0.5 / 0.75, translations (0.3, 0.3) and
(0.2, 0.2)) rather than from random crops.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .output import FrameOutput
from .cnn import BLOCK_WIDTHS, ScoreClassifier, affine_crop, conv_bn_relu, double_conv_blocks, half_size

LOCALISER_WIDTHS: tuple[int, ...] = (32, 64, 64, 128)
LOCALISER_HIDDEN = 128
PAPER_LOCALISER_MAP, PAPER_LOCALISER_HIDDEN = 7, 32   # the reference's 128*7*7 -> 32
SCALE_PRIOR: tuple[float, float] = (0.5, 0.75)
INIT_TRANSLATION: tuple[tuple[float, float], ...] = ((0.3, 0.3), (0.2, 0.2))
# parameters per transform and number of transforms for each mode
MODES = {"fixed": (2, 2), "learned": (4, 2), "affine": (6, 1)}


def light_body(in_channels: int) -> tuple[nn.Sequential, int]:
    """Four conv-BN-ReLU-pool blocks -> global average pool -> 128 (0.15 M parameters):
    lighter than the reference, the default."""
    layers: list[nn.Module] = []
    cin = in_channels
    for width in LOCALISER_WIDTHS:
        layers += conv_bn_relu(cin, width) + [nn.MaxPool2d(2, ceil_mode=True)]
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(cin, LOCALISER_HIDDEN), nn.ReLU(inplace=True)), LOCALISER_HIDDEN


def paper_body(in_channels: int) -> tuple[nn.Sequential, int]:
    """The reference implementation's localiser (mhug-Trento/DL4covidUltrasound, 0.93 M
    parameters), for exact reproduction: the six double-conv blocks (no pool after the
    sixth), the 128 x 7 x 7 map flattened -> 32. The map is 7 x 7 at 224 px; other sizes
    are average-pooled to 7 x 7, so parameter count and checkpoints are size-independent."""
    side, width = PAPER_LOCALISER_MAP, BLOCK_WIDTHS[-1][1]
    return nn.Sequential(*double_conv_blocks(in_channels, pool_last=False),
                         nn.AdaptiveAvgPool2d(side), nn.Flatten(),
                         nn.Linear(width * side * side, PAPER_LOCALISER_HIDDEN),
                         nn.ReLU(inplace=True)), PAPER_LOCALISER_HIDDEN


LOCALISERS = {"light": light_body, "paper": paper_body}


class Localiser(nn.Module):
    """A body (`LOCALISERS[kind]`) -> transform parameters (`out`, initialised by RegSTN)."""

    def __init__(self, in_channels: int, n_out: int, kind: str = "light"):
        super().__init__()
        if kind not in LOCALISERS:
            raise ValueError(f"unknown STN localiser {kind!r}; expected one of {sorted(LOCALISERS)}")
        self.body, hidden = LOCALISERS[kind](in_channels)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def initial_params(mode: str) -> torch.Tensor:
    """Bias of the localiser's last layer: the transforms the network starts from."""
    if mode == "fixed":
        rows = [list(t) for t in INIT_TRANSLATION]
    elif mode == "learned":
        rows = [[math.log(s / (1 - s)), 0.0, *t] for s, t in zip(SCALE_PRIOR, INIT_TRANSLATION)]
    elif mode == "affine":
        rows = [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]
    else:
        raise ValueError(f"unknown STN mode {mode!r}; expected one of {sorted(MODES)}")
    return torch.tensor(rows, dtype=torch.float32).flatten()


def params_to_theta(params: torch.Tensor, mode: str,
                    fixed_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, n, p) localiser output -> thetas (B, n, 2, 3) and scales (B, n) (None if fixed).

    Pure so the geometry (what a crop box is for given parameters) is testable alone.
    """
    params = params.float()
    if mode == "affine":
        return params.reshape(*params.shape[:2], 2, 3), None
    if mode == "fixed":
        scale = fixed_scales.to(params.device).expand(params.shape[:2])
        cos, sin, txy = torch.ones_like(scale), torch.zeros_like(scale), params
    else:  # learned: sigmoid scale, rotation angle, translation
        scale, angle, txy = torch.sigmoid(params[..., 0]), params[..., 1], params[..., 2:]
        cos, sin = torch.cos(angle), torch.sin(angle)
    row0 = torch.stack([scale * cos, -scale * sin, txy[..., 0]], dim=-1)
    row1 = torch.stack([scale * sin, scale * cos, txy[..., 1]], dim=-1)
    return torch.stack([row0, row1], dim=-2), (None if mode == "fixed" else scale)


class RegSTN(nn.Module):
    """mode "fixed" / "learned": Reg-STN's two crops; "affine": CNN + STN (one free crop).

    localiser "light" (default) or "paper" (the reference's, `model.kwargs.localiser`)."""

    def __init__(self, in_channels: int, num_classes: int, mode: str = "learned",
                 localiser: str = "light"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown STN mode {mode!r}; expected one of {sorted(MODES)}")
        self.mode = mode
        self.n_params, self.n_crops = MODES[mode]
        self.localiser = Localiser(in_channels, self.n_params * self.n_crops, localiser)
        nn.init.zeros_(self.localiser.out.weight)
        with torch.no_grad():
            self.localiser.out.bias.copy_(initial_params(mode))
        self.classifier = ScoreClassifier(in_channels, num_classes)
        self.register_buffer("scale_prior", torch.tensor(SCALE_PRIOR), persistent=False)

    def transforms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self.localiser(x).reshape(x.shape[0], self.n_crops, self.n_params)
        return params_to_theta(params, self.mode, self.scale_prior)

    def forward(self, x: torch.Tensor) -> FrameOutput:
        thetas, scales = self.transforms(x)
        n = self.n_crops if self.training else 1  # inference uses crop 1 only
        b = x.shape[0]
        xs = x.unsqueeze(1).expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:])
        crops = affine_crop(xs, thetas[:, :n].reshape(b * n, 2, 3), half_size(x))
        logits = self.classifier(crops).reshape(b, n, -1)
        aux: dict[str, torch.Tensor] = {"thetas": thetas}
        if n > 1:
            aux["logits2"] = logits[:, 1]
        if scales is not None and self.mode == "learned":
            aux["scales"], aux["scale_prior"] = scales, self.scale_prior
        return FrameOutput(logits[:, 0], aux, "sord")
