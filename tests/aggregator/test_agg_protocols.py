"""Protocols never put one patient in both train and test."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.aggregator.protocols import PROTOCOLS, ProtocolError, make_folds

videos = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 3)), min_size=6, max_size=40)


@settings(max_examples=60, deadline=None)
@given(videos, st.sampled_from(PROTOCOLS), st.integers(2, 4), st.integers(0, 1000),
       st.lists(st.sampled_from(["train", "test", ""]), min_size=40, max_size=40))
def test_no_patient_in_train_and_test(vids, protocol, k, seed, split):
    patient = np.array([f"p{p}" for p, _ in vids])
    target = np.array([t for _, t in vids])
    try:
        folds = make_folds(patient, target, protocol, k=k, seed=seed,
                           split=np.array(split[:len(vids)]))
    except ProtocolError:
        return  # too few patients for this protocol: refused, not silently wrong
    for f in range(folds.num_folds):
        train_patients = set(patient[folds.train[f]])
        test_patients = set(patient[folds.test[f]])
        assert not train_patients & test_patients
        assert folds.train[f].any() and folds.test[f].any()
    tested = folds.test.sum(0)
    assert tested.max() <= 1  # a video is scored in at most one fold
    if protocol != "train_test":
        assert (tested == 1).all()
    again = make_folds(patient, target, protocol, k=k, seed=seed,
                       split=np.array(split[:len(vids)]))
    assert np.array_equal(again.test, folds.test) and np.array_equal(again.train, folds.train)


def test_lovo_withholds_the_test_videos_siblings():
    patient = np.array(["a", "a", "b", "c"])
    folds = make_folds(patient, np.zeros(4, int), "lovo")
    assert folds.num_folds == 4
    assert folds.train[0].tolist() == [False, False, True, True]


def test_train_test_uses_the_split_column_when_it_names_both():
    patient = np.array(["a", "b", "c", "d"])
    folds = make_folds(patient, np.zeros(4, int), "train_test",
                       split=np.array(["train", "test", "train", "train"]))
    assert folds.test[0].tolist() == [False, True, False, False]
    assert folds.train[0].tolist() == [True, False, True, True]


def test_stratified_folds_spread_each_class():
    patient = np.array([f"p{i}" for i in range(20)])
    target = np.repeat([0, 1, 2, 3], 5)
    folds = make_folds(patient, target, "stratified_kfold", k=5, seed=0)
    for f in range(5):
        assert sorted(target[folds.test[f]].tolist()) == [0, 1, 2, 3]


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ProtocolError, match="5 folds from 3 patients"):
        make_folds(np.array(["a", "b", "c"]), np.zeros(3, int), "kfold", k=5)
    with pytest.raises(ProtocolError, match="unknown protocol"):
        make_folds(np.array(["a", "b"]), np.zeros(2, int), "bootstrap")
