"""Frame, video and segmentation metrics: scikit-learn for the generic ones, thin domain
code for the rest (specificity, Setting 2, Dice/IoU over a pixel confusion matrix).

zero_division=0 throughout: weighted averages weight each class by its support in y_true;
micro averages pool all decisions.
Keys match the report tables: `weighted_f1`, `{class}_recall` (sensitivity), ...
Roy et al.'s Setting 2 drops the frames next to a score change, where even the annotators'
labels are uncertain: `setting2_mask`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import sklearn.metrics as skm
import torch

from ..shards.format import MASK_CLASSES, VIDEO_CLASSES


def _labels(y: np.ndarray | Sequence[int] | torch.Tensor, name: str) -> np.ndarray:
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D label array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _checked(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int arrays, with the errors sklearn would give less clearly."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries but y_pred has {p.size}")
    for arr, name in ((t, "y_true"), (p, "y_pred")):
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name}: class ids must be in [0, {num_classes}), "
                             f"got range [{arr.min()}, {arr.max()}]")
    return t, p


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(K, K) counts; row = true class, column = predicted class; absent classes kept."""
    t, p = _checked(y_true, y_pred, num_classes)
    return skm.confusion_matrix(t, p, labels=np.arange(num_classes))


def frame_metrics(y_true, y_pred, num_classes: int = 4) -> dict[str, float]:
    """Accuracy, micro and support-weighted precision / recall / F1."""
    t, p = _checked(y_true, y_pred, num_classes)
    labels = np.arange(num_classes)
    out = {"accuracy": float(skm.accuracy_score(t, p))}
    for avg in ("micro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(t, p, labels=labels, average=avg,
                                                            zero_division=0)
        out.update({f"{avg}_precision": float(pr), f"{avg}_recall": float(rc),
                    f"{avg}_f1": float(f1)})
    return out


def quadratic_kappa(y_true, y_pred, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights, the agreement measure for an ordinal score
    (a 0-vs-3 miss costs 9 times a 0-vs-1 miss); 0 when every label and decision is one
    class (sklearn would return nan: no agreement beyond chance can be shown)."""
    t, p = _checked(y_true, y_pred, num_classes)
    if len(np.union1d(t, p)) < 2:
        return 0.0
    return float(skm.cohen_kappa_score(t, p, labels=np.arange(num_classes), weights="quadratic"))


def decision_metrics(y_true, y_pred, class_names: Sequence[str]) -> dict[str, float]:
    """frame_metrics plus, per class, precision, recall (= sensitivity), F1 and
    specificity (sklearn has no specificity: TN / (TN + FP) from the confusion matrix)."""
    k = len(class_names)
    t, p = _checked(y_true, y_pred, k)
    out = frame_metrics(t, p, k)
    pr, rc, f1, _ = skm.precision_recall_fscore_support(t, p, labels=np.arange(k), average=None,
                                                        zero_division=0)
    cm = skm.confusion_matrix(t, p, labels=np.arange(k))
    fp = cm.sum(0) - np.diag(cm)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    spec = np.divide(tn, tn + fp, out=np.zeros(k), where=(tn + fp) > 0)
    for i, name in enumerate(class_names):
        out.update({f"{name}_precision": float(pr[i]), f"{name}_recall": float(rc[i]),
                    f"{name}_f1": float(f1[i]), f"{name}_specificity": float(spec[i])})
    return out


def setting2_mask(videos, scores, k: int, frames=None) -> np.ndarray:
    """Frames kept in Roy et al.'s Setting 2: drop K frames on each side of a score change.

    A change between consecutive frames t and t+1 of one video drops t-K+1..t and
    t+1..t+K, clipped to that video. Order is by (video, frame index) if `frames` is
    given, else the given order; the mask is returned in the input order.
    """
    v = np.asarray(videos)
    s = np.asarray(scores)
    if v.shape != s.shape or v.ndim != 1:
        raise ValueError(f"setting2_mask: videos {v.shape} and scores {s.shape} must be "
                         f"equal-length 1-D arrays")
    if k < 0:
        raise ValueError(f"setting2_mask: K must be >= 0, got {k}")
    n = v.size
    order = np.arange(n) if frames is None else np.lexsort((np.asarray(frames), v))
    vs, ss = v[order], s[order]
    new_video = np.r_[True, vs[1:] != vs[:-1]][:n]
    starts = np.flatnonzero(new_video)
    video_of = np.cumsum(new_video) - 1
    vid_start, vid_end = starts[video_of], np.r_[starts[1:], n][video_of] - 1
    change = np.flatnonzero(~new_video[1:] & (ss[1:] != ss[:-1]))  # between i and i+1
    delta = np.zeros(n + 1, np.int64)  # +1 where a dropped run starts, -1 after it ends
    np.add.at(delta, np.maximum(change - k + 1, vid_start[change]), 1)
    np.add.at(delta, np.minimum(change + k, vid_end[change]) + 1, -1)
    dropped_sorted = np.cumsum(delta[:n]) > 0
    keep = np.ones(n, bool)
    keep[order] = ~dropped_sorted
    return keep


def roc_auc_per_class(y_true, prob, num_classes: int) -> np.ndarray:
    """One-vs-rest ROC AUC per class; NaN if the class is absent or is every sample, where
    AUC is undefined (sklearn would raise)."""
    t = _labels(y_true, "y_true")
    p = np.asarray(prob.detach().cpu() if isinstance(prob, torch.Tensor) else prob, np.float64)
    if p.shape != (t.size, num_classes):
        raise ValueError(f"prob must have shape ({t.size}, {num_classes}), got {p.shape}")
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        pos = t == c
        if 0 < pos.sum() < t.size:
            out[c] = skm.roc_auc_score(pos, p[:, c])
    return out


def video_metrics(y_true, prob, class_names: Sequence[str] = VIDEO_CLASSES,
                  positive: str = "covid") -> dict[str, float]:
    """Barros et al.'s evaluation columns plus weighted F1/P/R and per-class ROC AUC.

    prob (N, K) class probabilities (argmax is the prediction). `{positive}_vs_rest_accuracy`
    is the COVID-vs-no-COVID accuracy: both sides collapsed to "is it the positive class".
    """
    k = len(class_names)
    p = np.asarray(prob.detach().cpu() if isinstance(prob, torch.Tensor) else prob, np.float64)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"prob must be (N, {k}) for classes {list(class_names)}, got {p.shape}")
    t, pred = _labels(y_true, "y_true"), p.argmax(1)
    out = decision_metrics(t, pred, class_names)
    for name, auc in zip(class_names, roc_auc_per_class(t, p, k)):
        out[f"{name}_auc"] = float(auc)
    if positive in class_names:
        c = list(class_names).index(positive)
        out[f"{positive}_vs_rest_accuracy"] = float(np.mean((t == c) == (pred == c)))
    return out


def segmentation_confusion(pred: torch.Tensor, target: torch.Tensor,
                           num_classes: int = len(MASK_CLASSES)) -> torch.Tensor:
    """(K, K) pixel counts (row = true) on the tensors' device; sum over batches, then
    `dice_iou` once, so the scores are over the whole split, not a mean of per-image ones."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(target.shape)} differ")
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def dice_iou(cm: np.ndarray | torch.Tensor,
             class_names: Sequence[str] = MASK_CLASSES) -> dict[str, dict[str, float]]:
    """{"dice": {class: v}, "iou": {class: v}}; NaN for a class in neither prediction nor
    truth (undefined, not perfect)."""
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    tp = np.diag(cm)
    pred, true = cm.sum(0), cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(pred + true > 0, 2 * tp / (pred + true), np.nan)
        iou = np.where(pred + true - tp > 0, tp / (pred + true - tp), np.nan)
    return {"dice": dict(zip(class_names, map(float, dice))),
            "iou": dict(zip(class_names, map(float, iou)))}
