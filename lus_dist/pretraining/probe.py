"""Quality of frozen features without fine-tuning: kNN and linear-probe accuracy.

Why: the contrastive loss falling says little about whether the features separate the
classes. Each pretraining epoch embeds the labelled frames of the training clips (the
memory bank) and of a held-aside validation split (the queries) and scores a kNN
classifier on the queries' frame labels; the labels are never used for training the
encoder. Never pass test clips here: this score may be used to pick an epoch.

The scoring functions are pure over arrays (features (N, F), integer labels (N,), -1 for
unknown, which is dropped); `embed` is the one torch part. Which label: the frame score
("score") where the shards have frame scores (ICLUS-style), else the clip class ("label":
POCUS-style packs store -1 frame scores).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _known(features, labels, role: str) -> tuple[np.ndarray, np.ndarray]:
    feats, labs = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if feats.ndim != 2 or labs.shape != (len(feats),):
        raise ValueError(f"{role}: expected features (N, F) and labels (N,), got "
                         f"{feats.shape} and {labs.shape}")
    keep = labs >= 0
    if not keep.any():
        raise ValueError(f"{role}: no labelled samples (all labels are -1)")
    return feats[keep], labs[keep].astype(np.int64)


def knn_accuracy(bank_features, bank_labels, query_features, query_labels, k: int = 20) -> float:
    """Accuracy of a cosine, distance-weighted kNN (as in SimCLR/DINO monitoring)."""
    from sklearn.neighbors import KNeighborsClassifier

    xb, yb = _known(bank_features, bank_labels, "kNN bank")
    xq, yq = _known(query_features, query_labels, "kNN queries")
    clf = KNeighborsClassifier(n_neighbors=min(k, len(xb)), metric="cosine", weights="distance")
    return float((clf.fit(xb, yb).predict(xq) == yq).mean())


def linear_probe_accuracy(bank_features, bank_labels, query_features, query_labels,
                          c: float = 1.0) -> float:
    """Accuracy of a standardised multinomial logistic regression on frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xb, yb = _known(bank_features, bank_labels, "probe training set")
    xq, yq = _known(query_features, query_labels, "probe queries")
    if len(np.unique(yb)) < 2:
        raise ValueError("probe training set: needs at least two classes")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    return float((clf.fit(xb, yb).predict(xq) == yq).mean())


@torch.no_grad()
def embed(encoder: nn.Module, loader, device: torch.device | str = "cpu",
          image_key: str = "image", label_key: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F) float32, labels (N,)) of every batch of `loader`, in eval mode.

    `encoder` maps frames to vectors (e.g. `ContrastiveModel.features` or a CNN-LSTM
    encoder); the caller's train/eval mode is restored afterwards.
    """
    owner = getattr(encoder, "__self__", encoder)  # a bound method's module
    was_training = owner.training
    owner.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            feats.append(encoder(batch[image_key].to(device)).flatten(1).float().cpu().numpy())
            labels.append(np.asarray(batch[label_key]))
    finally:
        owner.train(was_training)
    if not feats:
        raise ValueError("embed: the loader yielded no batches")
    return np.concatenate(feats), np.concatenate(labels)


def knn_monitor(encoder: nn.Module, bank_loader, query_loader, device: torch.device | str = "cpu",
                k: int = 20, label_key: str = "score") -> float:
    """Per-epoch pretraining quality: kNN accuracy of the held-aside frames (queries)
    against the labelled training frames (bank), features from the frozen `encoder`."""
    xb, yb = embed(encoder, bank_loader, device, label_key=label_key)
    xq, yq = embed(encoder, query_loader, device, label_key=label_key)
    return knn_accuracy(xb, yb, xq, yq, k=k)
