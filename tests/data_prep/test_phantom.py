"""The phantom draws what its labels say, deterministically, and is not solvable blind."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep.phantom import (LABEL_SCORE_PROBS, MIN_COUNTED_FRACTION, make_phantom, make_videos,
                               sample_frame_scores, video_score_of)
from data_prep.phantom_render import (BLINE, CONSOLIDATION, COVID, HEALTHY, PLEURA, PNEUMONIA, PROBES,
                                      geometry, render, render_frame, sample_scene, sample_video_params,
                                      slide_offset)
from lus_dist.io.video import read_video

N_CASES = 16   # nuisance draws per check; each is rendered at all four scores


def _regions(params):
    """Boolean regions of the intercostal window: lung below the pleura, chest wall above."""
    g = geometry(params.probe, params.size)
    lo, hi = params.intercostal()
    win = g.inside & (g.u > lo + 0.02) & (g.u < hi - 0.02)
    return {"g": g, "win": win,
            "lung": win & (g.d > params.pleura_d + 0.05),
            "wall": win & (g.d > 0.03) & (g.d < params.pleura_d - 0.05)}


@pytest.fixture(scope="module")
def score_series():
    """Same nuisance (probe, gain, depth, ribs) rendered at scores 0..3: isolates the markers."""
    cases = []
    for i in range(N_CASES):
        rng = np.random.default_rng([11, i])
        params = sample_video_params(rng, PROBES[i % 2], 96)
        label = (COVID, PNEUMONIA)[i % 2]
        frames = [render(params, sample_scene(np.random.default_rng([12, i, s]), s,
                                              label if s else HEALTHY, params), t=0) for s in range(4)]
        cases.append((params, frames))
    return cases


def test_same_seed_same_arrays_and_different_seed_differs():
    kw = dict(n_patients=3, videos_per_patient=2, frames_per_video=(5, 7), size=48)
    a, b, c = (list(make_videos(seed=s, **kw)) for s in (4, 4, 5))
    for x, y in zip(a, b):
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.masks, y.masks)
        assert np.array_equal(x.frame_scores, y.frame_scores) and (x.label, x.probe) == (y.label, y.probe)
    assert any(not np.array_equal(x.frames, y.frames) for x, y in zip(a, c) if x.frames.shape == y.frames.shape)


def test_make_phantom_is_deterministic_on_disk(tmp_path):
    kw = dict(seed=9, n_patients=3, videos_per_patient=1, frames_per_video=(4, 5), size=32)
    one, two = make_phantom(tmp_path / "a", **kw), make_phantom(tmp_path / "b", **kw)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix in (".npy", ".csv", ".json", ".png"):
            assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
        elif rel.suffix in (".mp4", ".avi", ".gif"):
            assert np.array_equal(read_video(one / rel), read_video(two / rel)), rel


def test_b_line_brightness_and_coverage_rise_with_score(score_series):
    lung_mean, b_cover = np.zeros((N_CASES, 4)), np.zeros((N_CASES, 4))
    for i, (params, frames) in enumerate(score_series):
        r = _regions(params)
        for s, (img, mask) in enumerate(frames):
            lung_mean[i, s] = img[r["lung"]].mean()
            b_cover[i, s] = (mask[r["lung"]] == BLINE).mean()
    assert (b_cover[:, 0] == 0).all() and (b_cover[:, 1] > 0).all()
    assert (np.diff(b_cover[:, 1:], axis=1) > 0).all(), "more of the lung is B-lines at each score"
    assert (lung_mean[:, 2] > lung_mean[:, 0]).all() and (lung_mean[:, 3] > lung_mean[:, 1]).all()
    assert np.all(np.diff(lung_mean.mean(0)) > 0), lung_mean.mean(0)


def test_a_lines_at_score_zero_only(score_series):
    """Brightness at twice the pleural depth vs. halfway between: a repeat of the pleura."""
    ratios = np.zeros((N_CASES, 3))
    for i, (params, frames) in enumerate(score_series):
        r = _regions(params)
        d = r["g"].d
        a_row = r["win"] & (np.abs(d - 2 * params.pleura_d) < 0.008)
        between = r["win"] & (np.abs(d - 1.5 * params.pleura_d) < 0.008)
        for s, (img, _) in enumerate(frames[:3]):
            ratios[i, s] = img[a_row].mean() / max(img[between].mean(), 1.0)
    assert (ratios[:, 0] > 1.8).all(), ratios[:, 0]
    assert (ratios[:, 1] < ratios[:, 0]).all(), "A-lines fade at score 1"
    assert (ratios[:, 2] < 1.3).all(), ratios[:, 2]


def test_consolidation_only_at_score_three(score_series):
    for params, frames in score_series:
        for s, (img, mask) in enumerate(frames):
            assert (mask == CONSOLIDATION).any() == (s == 3)


def test_masks_align_with_drawn_artefacts(score_series):
    for params, frames in score_series:
        r = _regions(params)
        for s, (img, mask) in enumerate(frames):
            img = img.astype(float)
            pleura, bline, cons = (mask == k for k in (PLEURA, BLINE, CONSOLIDATION))
            assert img[pleura].mean() > 1.3 * img[r["wall"]].mean(), "pleural mask on the bright line"
            plain_lung = r["lung"] & ~bline & ~cons
            if bline.any() and plain_lung.sum() > 20:
                assert img[bline].mean() > 1.8 * img[plain_lung].mean(), "B-line mask on bright columns"
            if cons.any():
                assert img[cons].mean() < 0.8 * img[bline].mean(), "consolidation darker than white lung"
            assert not mask[~r["g"].inside].any(), "no marker outside the imaged field"


def test_markers_survive_downsampling_to_64(score_series):
    for params, frames in score_series:
        for s, (img, mask) in enumerate(frames[1:], start=1):
            small = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA).astype(float)
            m = cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST)
            g = geometry(params.probe, 64)
            lung = g.inside & (g.d > params.pleura_d + 0.05) & (m == 0)
            assert (m == BLINE).sum() >= 6
            assert small[m == BLINE].mean() > 1.8 * small[lung].mean()
            if s == 3:
                assert (m == CONSOLIDATION).sum() >= 6


def _best_lateral_shift(a, b, rows, max_shift=6):
    a, b = a[rows].astype(float), b[rows].astype(float)
    inner = slice(max_shift + 8, a.shape[1] - max_shift - 8)
    corr = [np.corrcoef(a[:, inner].ravel(), np.roll(b, -k, axis=1)[:, inner].ravel())[0, 1]
            for k in range(-max_shift, max_shift + 1)]
    return int(np.argmax(corr)) - max_shift


def test_lung_slides_chest_wall_does_not():
    rng = np.random.default_rng(3)
    params = sample_video_params(rng, "linear", 96)
    params.ribs, params.slide_amp, params.slide_phase = [], 0.03, 0.0
    scene = sample_scene(rng, 0, HEALTHY, params)
    t1 = params.slide_period / 4                      # maximal sliding offset
    shift_px = (slide_offset(params, t1) - slide_offset(params, 0)) * 96
    a, _ = render(params, scene, 0)
    b, _ = render(params, scene, t1)
    d = geometry("linear", 96).d[:, 0]
    wall_rows = (d > 0.03) & (d < params.pleura_d - 0.04)
    lung_rows = d > params.pleura_d + 0.04
    assert _best_lateral_shift(a, b, wall_rows) == 0
    assert abs(_best_lateral_shift(a, b, lung_rows) - shift_px) <= 1, shift_px


def test_render_frame_api_and_mask_classes():
    img, mask = render_frame(np.random.default_rng(0), 3, "convex", 80, t=2.0)
    assert img.shape == mask.shape == (80, 80) and img.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, PLEURA, BLINE, CONSOLIDATION}
    assert img[~geometry("convex", 80).inside].max() == 0, "black outside the sector"
    with pytest.raises(ValueError):
        render_frame(np.random.default_rng(0), 4, "convex", 80)
    with pytest.raises(ValueError):
        render_frame(np.random.default_rng(0), 1, "phased", 80)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_video_score_is_max_of_scores_held_long_enough(scores):
    v = video_score_of(np.array(scores))
    counts = np.bincount(scores, minlength=4)
    assert v in scores
    held = [s for s in range(4) if counts[s] >= MIN_COUNTED_FRACTION * len(scores)]
    assert v == (max(held) if held else max(scores))


def test_video_score_ignores_a_brief_flash():
    assert video_score_of(np.array([0] * 10 + [3] * 2)) == 0
    assert video_score_of(np.array([1] * 6 + [2] * 6)) == 2


def test_frame_scores_follow_the_diagnosis_and_change_at_most_once():
    rng = np.random.default_rng(0)
    for label, probs in LABEL_SCORE_PROBS.items():
        runs = [sample_frame_scores(rng, label, 20) for _ in range(200)]
        for r in runs:
            assert np.count_nonzero(np.diff(r)) <= 1
            assert all(probs[s] > 0 for s in np.unique(r))
        assert 0.3 < np.mean([np.any(np.diff(r)) for r in runs]) < 0.7, "transitions are common"


def _profile_features(frame):
    """Generic image statistics, blind to where markers are: sorted lateral profile of the
    deep image (B-lines, white lung, wherever they are) and the depth profile (A-lines)."""
    f = cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return np.concatenate([np.sort(f[12:].mean(0)), f.mean(1), [f.std()]])


def test_learnable_from_the_image_but_not_from_metadata():
    """Balanced-ish scores; metadata (probe, hospital, frame position, clip length) does not
    predict the frame score, while a linear model on simple image profiles does."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier
    videos = list(make_videos(seed=2, n_patients=24, videos_per_patient=2, frames_per_video=(8, 12), size=64))
    scores = np.concatenate([v.frame_scores for v in videos])
    share = np.bincount(scores, minlength=4) / len(scores)
    assert share.min() > 0.12 and share.max() < 0.45, f"a constant guess is right on < 45% of frames: {share}"
    assert np.bincount([v.label for v in videos], minlength=3).min() >= 14
    by_patient = {}
    for v in videos:
        assert by_patient.setdefault(v.patient, (v.label, v.hospital)) == (v.label, v.hospital)
    meta = np.concatenate([np.stack([np.full(len(v.frames), PROBES.index(v.probe)),
                                     np.full(len(v.frames), int(v.hospital[1:])),
                                     np.arange(len(v.frames)), np.full(len(v.frames), len(v.frames))], 1)
                           for v in videos])
    image = np.concatenate([np.stack([_profile_features(f) for f in v.frames]) for v in videos])
    groups = np.concatenate([np.full(len(v.frames), int(v.patient[1:])) for v in videos])
    cv = GroupKFold(4)                                     # patient-level folds
    blind = cross_val_score(DecisionTreeClassifier(max_depth=3, random_state=0), meta, scores,
                            groups=groups, cv=cv).mean()
    seeing = cross_val_score(LogisticRegression(C=10.0, max_iter=3000), image, scores,
                             groups=groups, cv=cv).mean()
    assert blind < 0.45, f"metadata alone predicts the frame score ({blind:.2f})"
    assert seeing > 0.7 and seeing > blind + 0.3, (seeing, blind)


def test_phantom_layout_on_disk(phantom_dir, phantom_truth):
    iclus, pocus = phantom_dir / "iclus", phantom_dir / "pocus"
    table = pd.read_csv(iclus / "dataset.csv")
    assert {"filename", "label", "sensor", "patient_hash", "hospital", "video"} <= set(table.columns)
    assert (iclus / "frames" / table.filename[0]).is_file()
    assert {p.suffix for p in (iclus / "masks").iterdir()} == {".npy", ".png"}
    assert list(pd.read_csv(iclus / "train_test_split.csv").columns) == ["patient_hash", "split"]
    assert list(pd.read_excel(iclus / "video_annotations.xlsx").columns) == ["Video", "Score"]
    assert {"Video", "filename"} <= set(pd.read_excel(iclus / "video_annotations_to_video_names.xlsx").columns)
    clips = sorted(p for p in (pocus / "videos").rglob("*") if p.is_file())
    assert len(clips) == len(phantom_truth) and {p.suffix for p in clips} == {".mp4", ".gif", ".avi"}
    assert all(p.name.split("_")[0] in ("Cov", "Pneu", "Reg") for p in clips)
    assert all(p.parent.name in PROBES for p in clips)
    assert any((pocus / "images").rglob("*.png"))
