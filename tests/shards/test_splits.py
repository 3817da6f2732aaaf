"""Patient-level split and (stratified) group k-fold: never frame- or video-level leaks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.shards.splits import extend_group_kfold, group_kfold, patient_split

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


def test_kfold_is_sklearns_stratified_group_kfold():
    from sklearn.model_selection import StratifiedGroupKFold
    pids = [f"p{i // 2}" for i in range(40)]
    labels = [(i // 2) % 3 for i in range(40)]
    folds = group_kfold(pids, 4, 7, labels)
    cv = StratifiedGroupKFold(4, shuffle=True, random_state=7)
    for f, (_, test) in enumerate(cv.split(np.zeros(40), labels, pids)):
        assert (folds[test] == f).all()


@given(videos, st.integers(1, 30), st.integers(2, 4), st.integers(0, 50))
@settings(max_examples=40, deadline=None)
def test_extended_folds_keep_old_groups_and_place_new_ones_by_the_same_rule(rows, n_new, k, seed):
    pids = [f"p{p}" for p, _ in rows]
    strata = [c for _, c in rows]
    if len(set(pids)) < k:
        return
    old = group_kfold(pids, k, seed, strata)
    new_pids = [f"n{i % 7}" for i in range(n_new)] + pids[:3]        # new patients + old ones' new videos
    new_strata = [i % 3 for i in range(n_new)] + strata[:3]
    folds = extend_group_kfold(np.concatenate([old, np.full(len(new_pids), -1)]), pids + new_pids,
                               k, seed, strata + new_strata)
    assert np.array_equal(folds[:len(pids)], old)                      # nobody moves
    _by_patient(pids + new_pids, folds)                                # new videos join their patient
    assert set(folds.tolist()) <= set(range(k))


def test_extending_from_nothing_is_the_same_rule_as_sklearn():
    """Placing every group with extend_group_kfold from empty folds reproduces
    group_kfold: the append path and the fresh path are one stratified rule."""
    pids = [f"v{i}" for i in range(60)]
    labels = [0] * 30 + [1] * 18 + [2] * 12
    assert np.array_equal(extend_group_kfold(np.full(60, -1), pids, 5, 3, labels),
                          group_kfold(pids, 5, 3, labels))


def test_new_patients_balance_the_classes_of_existing_folds():
    old_pids = [f"o{i}" for i in range(10)]
    old_folds = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])      # every class-0 patient sits in fold 0
    labels = [0] * 5 + [1] * 5
    new_pids = [f"n{i}" for i in range(5)]
    folds = extend_group_kfold(np.concatenate([old_folds, np.full(5, -1)]), old_pids + new_pids, 2, 0,
                               labels + [0] * 5)
    assert (folds[10:] == 1).all()      # the new class-0 patients even out fold 1
