"""Pure report pieces: localisation coverage vs chance, frame Table-1 scores, the run reader."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lus_dist.evaluation.report import (ReportError, box_coverage, frame_scores, load_run,
                                        localisation_vs_random, random_boxes_like, seg_metrics,
                                        uninorm_label)


def test_box_coverage_counts_pixel_centres():
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[0, 2:4, 2:4] = 2          # 4 marker px, all inside [0,4)x[0,4)
    masks[1, 2:4, 2:6] = 3          # 8 px, half inside
    boxes = np.array([[0, 0, 4, 4]] * 3, float)
    cov = box_coverage(boxes, masks, (2, 3))
    assert cov[0] == 1.0 and cov[1] == 0.5 and np.isnan(cov[2])
    assert box_coverage(boxes, masks, (1,))[:2].tolist() != [1.0, 0.5]  # other class ignored


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 40), st.integers(4, 40), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_random_boxes_keep_size_and_stay_inside(h, w, n, seed):
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(-5, w, n), rng.uniform(-5, h, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, 2 * w, n), y0 + rng.uniform(1, 2 * h, n)], 1)
    rnd = random_boxes_like(boxes, h, w, 7, rng)
    assert rnd.shape == (7, n, 4)
    assert (rnd[..., 0] >= 0).all() and (rnd[..., 2] <= w + 1e-9).all()
    assert (rnd[..., 1] >= 0).all() and (rnd[..., 3] <= h + 1e-9).all()
    np.testing.assert_allclose(rnd[..., 2] - rnd[..., 0],
                               np.broadcast_to(np.minimum(boxes[:, 2] - boxes[:, 0], w), (7, n)))


def test_localisation_beats_chance_only_when_the_box_is_on_the_markers():
    masks = np.zeros((20, 32, 32), np.uint8)
    masks[:, 20:28, 4:12] = 2
    on = np.tile([[2.0, 18, 14, 30]], (20, 1))
    off = np.tile([[18.0, 0, 30, 12]], (20, 1))
    good = localisation_vs_random(on, masks, (2,))
    bad = localisation_vs_random(off, masks, (2,))
    assert good["frames"] == 20 and good["stn_hit_rate"] == 1.0
    assert good["random_hit_rate"] < 0.5
    assert bad["stn_hit_rate"] == 0.0 and bad["stn_hit_rate"] < bad["random_hit_rate"]


def test_frame_scores_setting2_drops_transition_frames():
    scores = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 0, 1, 1, 1])   # both errors sit at the transition
    probs = np.eye(4)[pred]
    fs = frame_scores("m", probs, scores, np.zeros(8, int).astype(str), np.arange(8))
    assert fs.f1_setting1 == pytest.approx(0.75)
    assert fs.f1_setting2[1] == pytest.approx(1.0)   # frames 3 and 4 dropped
    assert set(fs.f1_setting2) == {1, 3, 5, 7}
    unknown = frame_scores("m", probs, np.full(8, -1), np.zeros(8).astype(str), np.arange(8))
    assert unknown.f1_setting1 is None


def test_load_run_errors_name_the_problem(tmp_path):
    with pytest.raises(ReportError, match="not a run directory"):
        load_run(tmp_path / "nope")
    with pytest.raises(ReportError, match="no summary.json"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text("{bad")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"family": "gan"}))
    with pytest.raises(ReportError, match="unknown family 'gan'"):
        load_run(tmp_path)


def test_seg_metrics_accepts_nested_and_flat_summaries():
    nested = {"test": {"dice": {"b_line": 0.9}, "iou": {"b_line": 0.8}}}
    flat = {"test": {"dice_b_line": 0.9, "iou_b_line": 0.8, "loss": 1.0}}
    assert seg_metrics(nested) == seg_metrics(flat) == {"dice": {"b_line": 0.9},
                                                         "iou": {"b_line": 0.8}}
    assert seg_metrics({"test": {"loss": 1}}) is None


def test_the_aggregator_is_named_once():
    assert uninorm_label({"variant": "uninorm", "tnorm": "product", "off_diagonal": "min"}) \
        == "uninorm (product, off-diag min)"
    assert uninorm_label({"variant": "hierarchy", "tnorm": "lukasiewicz", "off_diagonal": "max"}) \
        == "uninorm hierarchy (lukasiewicz, off-diag max)"
