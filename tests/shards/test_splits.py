"""Patient-level split and (stratified) group k-fold: never frame- or video-level leaks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.shards.splits import group_kfold, patient_split

videos = st.lists(st.tuples(st.integers(0, 14), st.integers(0, 2)), min_size=10, max_size=80)


def _by_patient(pids, values):
    seen = {}
    for p, v in zip(pids, values):
        assert seen.setdefault(p, v) == v, f"patient {p} in two groups"


@given(videos, st.integers(2, 5), st.integers(0, 100))
@settings(max_examples=60, deadline=None)
def test_kfold_is_patient_level_complete_and_deterministic(rows, k, seed):
    pids = [f"p{p}" for p, _ in rows]
    strata = [c for _, c in rows]
    if len(set(pids)) < k:
        with pytest.raises(ValueError, match=f"cannot make {k} folds"):
            group_kfold(pids, k, seed, strata)
        return
    folds = group_kfold(pids, k, seed, strata)
    _by_patient(pids, folds)
    assert set(folds.tolist()) == set(range(k))          # no empty fold
    assert np.array_equal(folds, group_kfold(pids, k, seed, strata))
    perm = np.random.default_rng(seed).permutation(len(pids))   # input order does not matter
    assert np.array_equal(group_kfold([pids[i] for i in perm], k, seed, [strata[i] for i in perm]),
                          folds[perm])


def test_stratified_folds_balance_each_class():
    pids = [f"v{i}" for i in range(100)]      # POCUS case: one video per "patient"
    labels = [0] * 50 + [1] * 30 + [2] * 20
    folds = group_kfold(pids, 5, 0, labels)
    for c, n in ((0, 50), (1, 30), (2, 20)):
        per_fold = np.bincount(folds[np.array(labels) == c], minlength=5)
        assert (per_fold == n // 5).all(), (c, per_fold)


def test_split_keeps_patients_whole_and_respects_the_given_split():
    pids = [f"p{i // 3}" for i in range(60)]
    split = patient_split(pids, test_frac=0.25, seed=3)
    _by_patient(pids, split)
    assert (split == "test").sum() == 15 and set(split) == {"train", "test"}
    given_ = ["test" if p == "p0" else None for p in pids]
    assert (patient_split(pids, given_, test_frac=0.0)[:3] == "test").all()


def test_conflicting_given_split_is_an_error_naming_the_patient():
    with pytest.raises(ValueError, match="patient 'p1' is given both 'train' and 'test'"):
        patient_split(["p1", "p1"], ["train", "test"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        patient_split(["p1"], ["dev"])
