"""Patient-level split and (stratified) k-fold assignment: pure, computed once at pack time.

Consecutive ultrasound frames are near-identical and a patient's videos look alike, so any
split below the patient level leaks. Everything here therefore assigns *groups* (patients)
and broadcasts the result to their videos; no function takes frames. The packer stores the
result per video in the manifest so every later consumer (training, tuning, aggregation)
reads the same assignment instead of recomputing it.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

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


def _group_strata(groups: Sequence[str], strata: Sequence[int]) -> dict[str, int]:
    """Each group's stratum: its most common item stratum (ties -> the smallest)."""
    counts: dict[str, Counter] = {}
    for g, s in zip(groups, strata):
        counts.setdefault(g, Counter())[int(s)] += 1
    return {g: min(c, key=lambda s: (-c[s], s)) for g, c in counts.items()}


def group_kfold(groups: Sequence[str], k: int, seed: int = 0,
                strata: Sequence[int] | None = None) -> np.ndarray:
    """Fold index (0..k-1) per item; all items of one group share a fold.

    With `strata` (e.g. the video class), each stratum's groups are spread over the folds
    separately, so every fold sees every class in about the same proportion (stratified
    group k-fold). Groups are visited in a seeded order, largest first, and each goes to the
    fold holding the fewest items of its stratum, then the fewest items overall: greedy
    balancing that is deterministic for a given (set of items, seed).
    """
    groups = [str(g) for g in groups]
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    n_groups = len(set(groups))
    if n_groups < k:
        raise ValueError(f"cannot make {k} folds from {n_groups} patients")
    strata = [0] * len(groups) if strata is None else list(strata)
    if len(strata) != len(groups):
        raise ValueError(f"{len(strata)} strata for {len(groups)} items")
    size = Counter(groups)
    stratum_of = _group_strata(groups, strata)
    per_stratum = np.zeros((max(stratum_of.values(), default=0) - min(stratum_of.values(), default=0) + 1, k), int)
    base = min(stratum_of.values(), default=0)
    total = np.zeros(k, int)
    fold_of: dict[str, int] = {}
    order = sorted(_seeded_order(groups, seed), key=lambda g: (stratum_of[g], -size[g]))
    for g in order:
        row = per_stratum[stratum_of[g] - base]
        f = min(range(k), key=lambda i: (row[i], total[i], i))
        fold_of[g] = f
        row[f] += size[g]
        total[f] += size[g]
    return np.array([fold_of[g] for g in groups], dtype=np.int16)
