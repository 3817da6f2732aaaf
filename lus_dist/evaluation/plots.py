"""Report figures: confusion matrix, one-vs-rest ROC, STN localisation examples.

Agg backend (no display on cluster nodes); each function writes one PNG and closes its
figure so a sweep of hundreds of runs does not accumulate matplotlib state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from lus_dist.models.localization import CROP_COLOURS, CROP_NAMES  # noqa: E402


def crop_colour(k: int) -> tuple[float, ...]:
    """Crop k's colour for matplotlib (0..1 RGB), the same as in every other picture."""
    return tuple(c / 255 for c in CROP_COLOURS[k % len(CROP_COLOURS)])


def confusion_png(cm: np.ndarray, classes: Sequence[str], path: str | Path,
                  title: str = "Confusion matrix") -> Path:
    """Counts with row-normalised shading, so rare classes stay readable."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(classes), 1.0 + 0.9 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def roc_png(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | Path,
            aucs: Sequence[float | None] | None = None, title: str = "ROC (one vs rest)") -> Path:
    """One curve per class that has both positives and negatives (else AUC is undefined)."""
    from sklearn.metrics import roc_curve   # sklearn only where a curve is drawn (training draws none)

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for c, name in enumerate(classes):
        pos = y_true == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos.astype(int), probs[:, c])
        auc = aucs[c] if aucs is not None else None
        label = f"{name} (AUC {auc:.3f})" if auc is not None else name
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def stn_examples_png(frames: np.ndarray, boxes: np.ndarray, path: str | Path,
                     titles: Sequence[str] | None = None, masks: np.ndarray | None = None,
                     cols: int = 4, title: str = "STN crops") -> Path:
    """Frames (N,H,W) in [0,1] with the STN crop boxes (N,K,4) x0,y0,x1,y1 in pixels, a
    title and a legend naming each crop's colour; marker masks, when known, are tinted so a
    reader sees whether the crops find them."""
    return _save(stn_examples_figure(frames, boxes, titles, masks, cols, title), path)


def stn_examples_figure(frames: np.ndarray, boxes: np.ndarray, titles: Sequence[str] | None = None,
                        masks: np.ndarray | None = None, cols: int = 4, title: str = "STN crops"):
    """The figure `stn_examples_png` saves, left open so a caller can read its parts back."""
    frames, boxes = np.asarray(frames), np.asarray(boxes)
    n = len(frames)
    cols = max(1, min(cols, n))
    nrows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 2.5 * nrows + 0.5), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(frames[i], cmap="gray", vmin=0, vmax=1)
        if masks is not None:
            ax.imshow(np.ma.masked_equal(masks[i], 0), cmap="autumn", alpha=0.35)
        for k, (x0, y0, x1, y1) in enumerate(boxes[i]):
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                       edgecolor=crop_colour(k)))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(title, fontsize=10)
    crops = boxes.shape[1] if boxes.ndim == 3 else 0
    fig.legend(handles=[Patch(fill=False, lw=1.5, edgecolor=crop_colour(k), label=CROP_NAMES[k])
                        for k in range(min(crops, len(CROP_NAMES)))],
               loc="outside lower center", ncol=max(crops, 1), fontsize=8, frameon=False)
    return fig


def curves_png(curves: dict[str, Sequence[float]], path: str | Path, title: str,
               ylabel: str) -> Path:
    """One line per run of a per-epoch validation score (epoch 0 first)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        ax.plot(np.arange(len(values)), values, marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
