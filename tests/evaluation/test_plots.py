"""Report figures are real PNGs of sensible size (decoded back, not just "a file exists")."""
from __future__ import annotations

import numpy as np
import matplotlib.image as mpimg

from lus_dist.evaluation.plots import confusion_png, roc_png, stn_examples_png


def _img(path):
    im = mpimg.imread(path)
    assert im.ndim == 3 and im.shape[0] > 100 and im.shape[1] > 100
    return im


def test_confusion_png_with_an_empty_class_row(tmp_path):
    cm = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
    im = _img(confusion_png(cm, ["covid", "pneumonia", "healthy"], tmp_path / "cm.png"))
    assert im[..., :3].std() > 0.05  # not a blank canvas


def test_roc_png_skips_classes_without_negatives(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)  # class 2 never present: skipped, no warning/crash
    p = rng.dirichlet(np.ones(3), 50)
    _img(roc_png(y, p, ["a", "b", "c"], tmp_path / "roc.png", aucs=[0.5, 0.6, None]))


def test_stn_examples_png_draws_boxes(tmp_path):
    frames = np.zeros((3, 32, 32))
    boxes = np.array([[[4, 4, 20, 20], [0, 0, 24, 24]]] * 3, dtype=float)
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[:, 8:12, 8:12] = 2
    im = _img(stn_examples_png(frames, boxes, tmp_path / "stn.png", titles=["a", "b", "c"],
                               masks=masks))
    red = (im[..., 0] > 0.8) & (im[..., 1] < 0.4) & (im[..., 2] < 0.4)
    assert red.sum() > 20  # crop-1 boxes are visible on the black frames
