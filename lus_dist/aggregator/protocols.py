"""Evaluation protocols as pure functions: per-video ids in, (folds, videos) masks out.

Patient-level fold and split assignment is lus_dist.shards.splits' (the same rule the
packer stores in the manifest); this module turns it into train/test masks.

Rule shared by every protocol: a video trains fold f only if its patient has no video in
fold f's test set. For k-fold, stratified k-fold, leave-one-patient-out and train/test
that is just the complement; for leave-one-video-out it also withholds the test video's
sibling videos (same patient), which the authors' LOVO kept in training (a leak).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lus_dist.shards.splits import group_kfold, patient_split

PROTOCOLS = ("kfold", "stratified_kfold", "lopo", "lovo", "train_test")


class ProtocolError(ValueError):
    """The data cannot be split as asked (too few patients for k folds, empty folds)."""


@dataclass(frozen=True)
class Folds:
    test: np.ndarray   # (F, V) bool
    train: np.ndarray  # (F, V) bool

    @property
    def num_folds(self) -> int:
        return self.test.shape[0]


def make_folds(patient_id, target, protocol: str = "kfold", k: int = 5, seed: int = 0,
               split=None, test_fraction: float = 0.2) -> Folds:
    """Folds for one protocol. `split` (per video, "train"/"test"/"") is used by
    train_test when it names both sets; otherwise a patient hold-out is drawn."""
    patient_id, target = np.asarray(patient_id).astype(str), np.asarray(target)
    if protocol in ("kfold", "stratified_kfold"):
        try:
            fold = group_kfold(patient_id.tolist(), k, seed, strata=target.tolist()
                               if protocol == "stratified_kfold" else None).astype(np.int64)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
    elif protocol == "lopo":
        fold = np.unique(patient_id, return_inverse=True)[1]
    elif protocol == "lovo":
        fold = np.arange(len(patient_id))
    elif protocol == "train_test":
        given = None if split is None else np.asarray(split).astype(str)
        if given is not None and not {"train", "test"} <= set(given.tolist()):
            given = None  # e.g. a file exported for the test split only
        try:
            assigned = patient_split(patient_id.tolist(), given, test_fraction, 0.0, seed)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        fold = np.where(assigned == "test", 0, -1)
    else:
        raise ProtocolError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    return folds_from_assignment(fold, patient_id)


def folds_from_assignment(fold: np.ndarray, patient_id: np.ndarray) -> Folds:
    """Test masks from a fold index per video (-1 = never tested); train masks by the
    no-shared-patient rule."""
    n_folds = int(fold.max()) + 1 if len(fold) else 0
    test = fold[None, :] == np.arange(n_folds)[:, None]
    patients, inverse = np.unique(patient_id, return_inverse=True)
    tested = np.zeros((n_folds, len(patients)), bool)
    rows, cols = np.nonzero(test)
    tested[rows, inverse[cols]] = True
    train = ~tested[:, inverse]
    for f in range(n_folds):
        if not test[f].any() or not train[f].any():
            raise ProtocolError(f"fold {f} has {int(test[f].sum())} test and "
                                f"{int(train[f].sum())} training videos; need both")
    return Folds(test=test, train=train)
