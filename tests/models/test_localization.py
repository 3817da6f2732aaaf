"""Crop boxes in input pixels for known transforms (the pictures: tests/evaluation/test_plots.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lus_dist.models import build_frame_model, stn_boxes
from lus_dist.models.localization import theta_to_boxes


def theta(s: float, tx: float = 0.0, ty: float = 0.0) -> list[list[float]]:
    return [[s, 0.0, tx], [0.0, s, ty]]


def test_known_thetas_to_pixels():
    thetas = torch.tensor([theta(1.0), theta(0.5), theta(0.5, 0.5, -0.5), theta(0.25, 0, 0.5)])
    boxes = theta_to_boxes(thetas, height=64, width=128)
    want = torch.tensor([[0, 0, 128, 64], [32, 16, 96, 48], [64, 0, 128, 32],
                         [48, 40, 80, 56]], dtype=torch.float32)
    assert torch.allclose(boxes, want)


def test_rotation_gives_the_hull():
    c = s = 0.5 * np.sqrt(0.5)  # scale 0.5, rotation 45 degrees
    boxes = theta_to_boxes(torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]]), 100, 100)
    half = 50 * 0.5 * np.sqrt(2)
    assert torch.allclose(boxes, torch.tensor([[50 - half, 50 - half, 50 + half, 50 + half]],
                                              dtype=torch.float32), atol=1e-4)


def test_box_is_where_the_crop_samples():
    """A bright square exactly at the crop-1 box fills the whole crop."""
    model = build_frame_model("regstn_fixed")
    x = torch.zeros(1, 1, 64, 64)
    b = stn_boxes(model, x)[0]
    assert torch.allclose(b, torch.tensor([[25.6, 25.6, 57.6, 57.6],
                                           [14.4, 14.4, 62.4, 62.4]]), atol=1e-4)
    thetas = model.transforms(x)[0][:, 0]
    x[..., 26:57, 26:57] = 1.0
    from lus_dist.models.cnn import affine_crop
    crop = affine_crop(x, thetas, (32, 32))
    assert crop[..., 1:-1, 1:-1].min() > 0.99


def test_stn_boxes_restores_mode_and_rejects_plain_cnn():
    model = build_frame_model("regstn_learned").train()
    before = model.localiser.body[1].running_mean.clone()
    assert stn_boxes(model, torch.rand(3, 1, 64, 64)).shape == (3, 2, 4)
    assert model.training and torch.equal(before, model.localiser.body[1].running_mean)
    with pytest.raises(TypeError, match="no spatial transformer"):
        stn_boxes(build_frame_model("cnn_sord"), torch.rand(1, 1, 64, 64))
