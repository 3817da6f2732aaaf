"""Patient-level split and (stratified) k-fold assignment: pure, computed once at pack time.

Consecutive ultrasound frames are near-identical and a patient's videos look alike, so any
split below the patient level leaks. Everything here therefore assigns *groups* (patients)
and broadcasts the result to their videos; no function takes frames. The packer stores the
result per video in the manifest so every later consumer (training, tuning, aggregation)
reads the same assignment instead of recomputing it.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


def _seeded_order(items: Sequence[str], seed: int) -> list[str]:
    """A permutation that depends only on the set of items and the seed, not on input order."""
    ordered = sorted(set(items))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]


def patient_split(patient_ids: Sequence[str], given: Sequence[str | None] | None = None,
                  test_frac: float = 0.2, val_frac: float = 0.0, seed: int = 0) -> np.ndarray:
    """One of SPLITS per video, constant within a patient.

    A split given by the dataset (e.g. the authors' train_test_split.csv) wins; patients
    without one are assigned by a seeded shuffle of the patient list cut at the requested
    fractions. A patient whose videos were given two different splits is an error: silently
    picking one would leak that patient across the split.
    """
    if not 0 <= test_frac < 1 or not 0 <= val_frac < 1 or test_frac + val_frac >= 1:
        raise ValueError(f"split fractions must satisfy 0 <= test+val < 1, got test={test_frac} val={val_frac}")
    given = list(given) if given is not None else [None] * len(patient_ids)
    if len(given) != len(patient_ids):
        raise ValueError(f"{len(given)} given splits for {len(patient_ids)} videos")
    fixed: dict[str, str] = {}
    for pid, split in zip(patient_ids, given):
        if not split:
            continue
        if split not in SPLITS:
            raise ValueError(f"patient {pid!r}: unknown split {split!r}; expected one of {SPLITS}")
        if fixed.setdefault(pid, split) != split:
            raise ValueError(f"patient {pid!r} is given both {fixed[pid]!r} and {split!r}: "
                             "a patient must sit in exactly one split")
    free = _seeded_order([p for p in patient_ids if p not in fixed], seed)
    n_test = int(round(test_frac * len(free)))
    n_val = int(round(val_frac * len(free)))
    for i, pid in enumerate(free):
        fixed[pid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return np.array([fixed[p] for p in patient_ids], dtype=object)


def _fold_labels(strata: Sequence[int] | None, n: int, k: int) -> np.ndarray:
    """The class per item that sklearn stratifies on; constant when no class has k members
    (sklearn refuses to stratify then, and nothing could be spread over k folds anyway)."""
    y = np.zeros(n, np.int64) if strata is None else np.asarray(strata, dtype=np.int64)
    if len(y) != n:
        raise ValueError(f"{len(y)} strata for {n} items")
    _, counts = np.unique(y, return_counts=True)
    return y if (counts >= k).any() else np.zeros(n, np.int64)


def _check_k(groups: np.ndarray, k: int) -> None:
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise ValueError(f"cannot make {k} folds from {n_groups} patients")


def group_kfold(groups: Sequence[str], k: int, seed: int = 0,
                strata: Sequence[int] | None = None) -> np.ndarray:
    """Fold index (0..k-1) per item; all items of one group share a fold.

    sklearn's StratifiedGroupKFold (shuffled with `seed`): groups are placed one by one,
    the most class-skewed first, each in the fold that keeps every class's share per fold
    most even, so every fold sees every class in about the same proportion. It depends only
    on the set of (group, stratum) items and the seed, not on their order.
    """
    groups = np.asarray([str(g) for g in groups])
    _check_k(groups, k)
    y = _fold_labels(strata, len(groups), k)
    folds = np.full(len(groups), -1, np.int16)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():   # "least populated class has fewer than k members"
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, test) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
            folds[test] = fold
    return folds


def extend_group_kfold(folds: Sequence[int], groups: Sequence[str], k: int, seed: int = 0,
                       strata: Sequence[int] | None = None) -> np.ndarray:
    """Folds for items appended to an existing assignment: items whose fold is >= 0 keep it
    (a new item of an existing group joins that group's fold); every new group is placed by
    StratifiedGroupKFold's own rule (its `_find_best_fold`), starting from the class counts
    the existing folds already hold, new groups visited in the seeded, most-skewed-first
    order that `group_kfold` uses."""
    groups = np.asarray([str(g) for g in groups])
    folds = np.asarray(folds, dtype=np.int16).copy()
    if len(folds) != len(groups):
        raise ValueError(f"{len(folds)} folds for {len(groups)} items")
    if k < 2 or folds.max(initial=-1) >= k:
        raise ValueError(f"existing folds span 0..{folds.max()}, cannot extend to k={k}")
    y = np.asarray([0] * len(groups) if strata is None else strata, dtype=np.int64)
    classes, y_idx, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    known = dict(zip(groups[folds >= 0], folds[folds >= 0]))
    per_fold = np.zeros((k, len(classes)))
    np.add.at(per_fold, (folds[folds >= 0], y_idx[folds >= 0]), 1)
    new = np.unique(groups[[g not in known for g in groups]])
    counts = np.zeros((len(new), len(classes)))
    np.add.at(counts, (np.searchsorted(new, groups[~np.isin(groups, list(known))]),
                       y_idx[~np.isin(groups, list(known))]), 1)
    order = np.random.RandomState(seed).permutation(len(new))
    order = order[np.argsort(-np.std(counts[order], axis=1), kind="mergesort")]
    cv = StratifiedGroupKFold(n_splits=k)
    for g in order:
        best = cv._find_best_fold(y_counts_per_fold=per_fold, y_cnt=y_cnt, group_y_counts=counts[g])
        per_fold[best] += counts[g]
        known[new[g]] = best
    return np.array([known[g] for g in groups], dtype=np.int16)
