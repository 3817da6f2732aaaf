"""Report figures are real PNGs of sensible size (decoded back, not just "a file exists")."""
from __future__ import annotations

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import torch

from lus_dist.evaluation.plots import confusion_png, crop_colour, roc_png, stn_examples_figure, stn_examples_png
from lus_dist.models.localization import CROP_COLOURS, CROP_NAMES


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


def _near(im, rgb, tol=0.08):
    return (np.abs(im[..., :3] - np.asarray(rgb) / 255) < tol).all(-1)


def test_stn_figure_names_its_crops_in_a_legend_in_their_one_colour():
    boxes = np.array([[[4, 4, 20, 20], [0, 0, 24, 24]]] * 2, dtype=float)
    fig = stn_examples_figure(np.zeros((2, 32, 32)), boxes, title="Epoch 3: STN crops on holdout frames")
    try:
        assert fig.get_suptitle() == "Epoch 3: STN crops on holdout frames"
        legend, = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == list(CROP_NAMES)
        for k, handle in enumerate(legend.legend_handles):
            assert np.allclose(handle.get_edgecolor()[:3], np.asarray(CROP_COLOURS[k]) / 255)
        drawn = [p.get_edgecolor()[:3] for p in fig.axes[0].patches]
        assert np.allclose(drawn, [crop_colour(0)[:3], crop_colour(1)[:3]])
    finally:
        plt.close(fig)


def test_epoch_picture_is_the_report_figure_with_both_crop_colours(tmp_path):
    """`viz/epoch-*.png` (stn_grid): the crops in the colours of the report and of `lus
    predict`, not the former green crop 2, and a title and a legend around the frames."""
    from lus_dist.families.regstn import stn_grid
    from lus_dist.models import build_frame_model

    ds = [{"image": torch.zeros(1, 64, 64), "video": torch.tensor(v), "frame": torch.tensor(0)}
          for v in range(4)]
    path = tmp_path / "viz" / "epoch-000.png"
    stn_grid(build_frame_model("regstn_fixed"), ds, 4, path, "Epoch 0: STN crops on holdout frames")
    im = _img(path)
    for rgb in CROP_COLOURS:
        assert _near(im, rgb).sum() > 100, rgb
    assert not _near(im, (0, 200, 0), 0.2).any()
    ink = im[..., :3].max(-1) < 0.5            # text and black frames on a white page
    rows = np.flatnonzero(ink.any(1))
    frame_rows = np.flatnonzero((im[..., :3].max(-1) < 0.05).sum(1) > im.shape[1] // 4)
    assert rows[0] < frame_rows[0] - 10 and rows[-1] > frame_rows[-1] + 5   # title above, legend below


def test_predict_annotation_draws_the_crops_in_their_one_colour():
    from lus_dist.evaluation.predict import annotate

    boxes = np.array([[[30, 30, 60, 60], [20, 20, 64, 64]]], dtype=float)
    img = annotate(np.zeros((1, 64, 64, 1), np.uint8), boxes, None, ["x"], upscale=1)[0]
    assert tuple(img[30, 45]) == CROP_COLOURS[0] and tuple(img[59, 45]) == CROP_COLOURS[0]
    assert tuple(img[20, 45]) == CROP_COLOURS[1] and tuple(img[63, 40]) == CROP_COLOURS[1]
    assert tuple(img[45, 45]) == (0, 0, 0)
