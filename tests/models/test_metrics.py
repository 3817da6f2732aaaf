"""Metrics against scikit-learn and against direct definitions, with edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.training.metrics import (confusion_matrix, dice_iou, frame_metrics, quadratic_kappa,
                              roc_auc_per_class, segmentation_confusion, setting2_mask,
                              video_metrics)


def sk_summary(t, p):
    out = {"accuracy": skm.accuracy_score(t, p)}
    for avg in ("micro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(t, p, average=avg, zero_division=0)
        out.update({f"{avg}_precision": pr, f"{avg}_recall": rc, f"{avg}_f1": f1})
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.data())
def test_frame_metrics_match_sklearn(k, data):
    n = data.draw(st.integers(1, 40))
    t = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    p = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    got = frame_metrics(t, p, k)
    for key, want in sk_summary(t, p).items():
        assert got[key] == pytest.approx(want, abs=1e-12), key
    assert np.array_equal(confusion_matrix(t, p, k),
                          skm.confusion_matrix(t, p, labels=list(range(k))))


def test_single_class_present():
    t = np.zeros(6, int)
    p = np.array([0, 0, 1, 0, 3, 0])
    got = frame_metrics(t, p, 4)
    for key, want in sk_summary(t, p).items():
        assert got[key] == pytest.approx(want), key
    assert frame_metrics(t, t, 4)["weighted_f1"] == 1.0


def test_quadratic_kappa_from_its_definition():
    """1 - sum(w O) / sum(w E), w = (i - j)^2, E the outer product of the marginals: a miss
    by 3 costs 9 misses by 1; perfect agreement 1; one class everywhere 0 (not nan)."""
    t = np.array([0, 0, 1, 2, 3, 3, 1, 2])
    p = np.array([0, 1, 1, 2, 3, 0, 2, 2])
    obs = skm.confusion_matrix(t, p, labels=range(4)).astype(float)
    exp = np.outer(obs.sum(1), obs.sum(0)) / obs.sum()
    w = (np.arange(4)[:, None] - np.arange(4)[None]) ** 2
    assert quadratic_kappa(t, p, 4) == pytest.approx(1 - (w * obs).sum() / (w * exp).sum())
    assert quadratic_kappa(t, t, 4) == 1.0 and quadratic_kappa(t * 0, t * 0, 4) == 0.0
    near, far = t.copy(), t.copy()
    near[0], far[0] = 1, 3          # one video off by 1 vs off by 3
    assert quadratic_kappa(t, near, 4) > quadratic_kappa(t, far, 4)


def test_bad_labels_are_clear_errors():
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 4\)"):
        frame_metrics([0, 4], [0, 1], 4)
    with pytest.raises(ValueError, match="non-empty"):
        frame_metrics([], [], 4)
    with pytest.raises(ValueError, match="entries"):
        frame_metrics([0, 1], [0], 4)


def setting2_reference(videos, scores, k):
    """Per frame, per transition, from the definition (input already in frame order)."""
    n = len(videos)
    keep = [True] * n
    for j in range(n - 1):
        if videos[j] == videos[j + 1] and scores[j] != scores[j + 1]:
            for i in range(j - k + 1, j + k + 1):
                if 0 <= i < n and videos[i] == videos[j]:
                    keep[i] = False
    return keep


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 3)), min_size=1, max_size=6),
       st.sampled_from([0, 1, 3, 5, 7]), st.randoms(use_true_random=False))
def test_setting2_matches_definition(runs, k, rnd):
    videos, scores, frames = [], [], []
    for vid, (length, base) in enumerate(runs):
        s = [(base + (rnd.random() < 0.3)) % 4 for _ in range(length)]
        videos += [vid] * length
        scores += s
        frames += list(range(length))
    want = setting2_reference(videos, scores, k)
    assert setting2_mask(videos, scores, k).tolist() == want
    perm = list(range(len(videos)))
    rnd.shuffle(perm)  # any input order, given frame indices
    got = setting2_mask(np.array(videos)[perm], np.array(scores)[perm], k,
                        frames=np.array(frames)[perm])
    assert got.tolist() == [want[i] for i in perm]


def test_setting2_edge_cases():
    assert setting2_mask([7], [2], 7).tolist() == [True]  # one-frame video
    assert setting2_mask([1] * 5, [3] * 5, 3).all()  # no transitions
    assert setting2_mask([0, 0, 0, 0], [1, 0, 0, 0], 1).tolist() == [False, False, True, True]
    assert setting2_mask([0, 0, 0, 0], [0, 0, 0, 2], 1).tolist() == [True, True, False, False]
    assert setting2_mask([0, 0, 1, 1], [0, 0, 2, 2], 7).all()  # a video change is no transition
    assert setting2_mask([], [], 1).size == 0
    with pytest.raises(ValueError, match="equal-length"):
        setting2_mask([0, 0], [0], 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(2, 30), st.integers(0, 2 ** 31 - 1))
def test_video_metrics_match_sklearn(k, n, seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, k, n)
    prob = rng.dirichlet(np.ones(k), n)
    names = [f"c{i}" for i in range(k)]
    got = video_metrics(t, prob, names, positive="c0")
    p = prob.argmax(1)
    for key, want in sk_summary(t, p).items():
        assert got[key] == pytest.approx(want), key
    pr, rc, f1, _ = skm.precision_recall_fscore_support(t, p, labels=list(range(k)),
                                                        zero_division=0)
    cm = skm.confusion_matrix(t, p, labels=list(range(k)))
    for i, c in enumerate(names):
        assert got[f"{c}_precision"] == pytest.approx(pr[i])
        assert got[f"{c}_recall"] == pytest.approx(rc[i])
        assert got[f"{c}_f1"] == pytest.approx(f1[i])
        tn = cm.sum() - cm[i].sum() - cm[:, i].sum() + cm[i, i]
        fp = cm[:, i].sum() - cm[i, i]
        assert got[f"{c}_specificity"] == pytest.approx(tn / (tn + fp) if tn + fp else 0.0)
        if 0 < (t == i).sum() < n:
            assert got[f"{c}_auc"] == pytest.approx(skm.roc_auc_score(t == i, prob[:, i]))
        else:
            assert np.isnan(got[f"{c}_auc"])
    assert got["c0_vs_rest_accuracy"] == pytest.approx(np.mean((t == 0) == (p == 0)))


def test_auc_ties_and_shape_error():
    auc = roc_auc_per_class([0, 1, 0, 1], np.array([[.5, .5]] * 4), 2)
    assert auc.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="shape"):
        roc_auc_per_class([0, 1], np.zeros((2, 3)), 2)


def test_dice_iou_against_direct_counts():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    pred = torch.where(torch.rand(2, 8, 8) < 0.7, target, torch.randint(0, 3, (2, 8, 8)))
    cm = segmentation_confusion(pred, target, 4)
    scores = dice_iou(cm, ["bg", "a", "b", "absent"])
    for c, name in enumerate(["bg", "a", "b"]):
        inter = ((pred == c) & (target == c)).sum().item()
        p, t = (pred == c).sum().item(), (target == c).sum().item()
        assert scores["dice"][name] == pytest.approx(2 * inter / (p + t))
        assert scores["iou"][name] == pytest.approx(inter / (p + t - inter))
    assert np.isnan(scores["dice"]["absent"]) and np.isnan(scores["iou"]["absent"])
    with pytest.raises(ValueError, match="differ"):
        segmentation_confusion(pred, target[:, :4])


def test_video_metrics_single_class_present():
    prob = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    got = video_metrics([0, 0, 0], prob)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["covid_recall"] == pytest.approx(2 / 3) and got["covid_precision"] == 1.0
    assert got["pneumonia_specificity"] == pytest.approx(2 / 3)
    assert got["healthy_specificity"] == 1.0 and got["healthy_recall"] == 0.0
    assert all(np.isnan(got[f"{c}_auc"]) for c in ("covid", "pneumonia", "healthy"))
    assert got["covid_vs_rest_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"prob must be \(N, 3\)"):
        video_metrics([0], np.ones((1, 4)))
