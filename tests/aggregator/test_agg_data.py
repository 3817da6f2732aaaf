"""The frame-predictions file: round trips, clear errors naming the file, the importer."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from lus_dist.aggregator.data import (FramePredictions, PredictionsError, import_authors,
                                      pad_videos, read_predictions, write_predictions)

CLASSES = ("score0", "score1", "score2", "score3")


def example(n_videos=4, seed=0) -> FramePredictions:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, n_videos)
    vid = np.repeat([f"vidéo-{i}" for i in range(n_videos)], lengths)
    pat = np.repeat([f"p{i // 2}" for i in range(n_videos)], lengths)
    probs = rng.dirichlet(np.ones(4), len(vid))
    return FramePredictions.from_arrays(
        probs, vid, pat, np.concatenate([rng.permutation(n) for n in lengths]),
        hospital_id=np.repeat([f"h{i % 2}" for i in range(n_videos)], lengths),
        frame_score=rng.integers(-1, 4, len(vid)),
        video_score=np.repeat(rng.integers(0, 4, n_videos), lengths),
        video_label=np.repeat(rng.integers(-1, 3, n_videos), lengths),
        split=np.repeat(["train", "test", "", "train"][:n_videos], lengths), class_names=CLASSES)


@pytest.mark.parametrize("suffix", ["h5", "parquet"])
def test_round_trip_is_exact(tmp_path, suffix):
    preds = example()
    back = read_predictions(write_predictions(tmp_path / f"p.{suffix}", preds))
    assert back.class_names == CLASSES
    np.testing.assert_array_equal(back.probs, preds.probs)
    for col in ("video_id", "patient_id", "hospital_id", "frame_index", "frame_score",
                "video_score", "video_label", "split"):
        np.testing.assert_array_equal(getattr(back, col), getattr(preds, col), err_msg=col)


def test_pad_videos_orders_frames_and_masks_padding():
    preds = example(seed=3)
    batch = pad_videos(preds)
    assert list(batch.video_id) == sorted(set(preds.video_id))
    for v, vid in enumerate(batch.video_id):
        rows = np.nonzero(preds.video_id == vid)[0]
        rows = rows[np.argsort(preds.frame_index[rows])]
        t = len(rows)
        assert batch.mask[v].sum() == t and batch.mask[v, :t].all()
        assert torch.equal(batch.x[v, :t], torch.from_numpy(preds.probs[rows]))
        assert (batch.x[v, t:] == 0).all()


def test_missing_parquet_column_names_the_file(tmp_path):
    path = write_predictions(tmp_path / "p.parquet", example())
    table = pq.read_table(path).drop(["patient_id"])
    pq.write_table(table, path)
    with pytest.raises(PredictionsError, match=r"p\.parquet.*missing column.*patient_id"):
        read_predictions(path)


def test_missing_h5_dataset_names_the_file(tmp_path):
    path = write_predictions(tmp_path / "p.h5", example())
    with h5py.File(path, "a") as f:
        del f["video_id"]
    with pytest.raises(PredictionsError, match=r"p\.h5.*missing dataset.*video_id"):
        read_predictions(path)


def test_wrong_shapes_are_reported(tmp_path):
    path = write_predictions(tmp_path / "p.h5", example())
    with h5py.File(path, "a") as f:
        n = len(f["video_id"])
        del f["probs"]
        f["probs"] = np.zeros(n)
    with pytest.raises(PredictionsError, match=r"p\.h5: probs has shape"):
        read_predictions(path)
    with h5py.File(path, "a") as f:
        del f["probs"], f["frame_index"]
        f["probs"] = np.full((n, 4), 0.25)
        f["frame_index"] = np.arange(n + 1)
    with pytest.raises(PredictionsError, match=r"p\.h5: column 'frame_index' has shape"):
        read_predictions(path)


@pytest.mark.parametrize("suffix", ["h5", "parquet"])
def test_garbage_file_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f"junk.{suffix}"
    path.write_bytes(b"not a real file at all")
    with pytest.raises(PredictionsError, match=f"junk.{suffix}: not a readable"):
        read_predictions(path)


def test_bad_values_are_rejected():
    base = example()
    with pytest.raises(PredictionsError, match=r"in \[0, 1\]"):
        FramePredictions.from_arrays(base.probs * 3, base.video_id, base.patient_id,
                                     source="x.h5")
    patients = base.patient_id.copy()
    patients[0] = "someone-else"
    with pytest.raises(PredictionsError, match="more than one patient_id"):
        FramePredictions.from_arrays(base.probs, base.video_id, patients, base.frame_index)
    with pytest.raises(PredictionsError, match="duplicate rows"):
        FramePredictions.from_arrays(base.probs, base.video_id, base.patient_id,
                                     np.zeros(len(base.video_id), int))


def test_unknown_suffix(tmp_path):
    with pytest.raises(PredictionsError, match="unknown predictions format"):
        write_predictions(tmp_path / "p.csv", example())


class _Bomb:
    """Unpickling this would create a marker file: proof the pickle was not loaded."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_refused_without_allow_pickle(tmp_path):
    marker = tmp_path / "was_unpickled"
    pkl = tmp_path / "frame_predictions.pkl"
    pkl.write_bytes(pickle.dumps(_Bomb(str(marker))))
    with pytest.raises(PredictionsError, match=r"frame_predictions\.pkl: refusing to unpickle"
                                               r".*allow_pickle"):
        import_authors(pkl, tmp_path / "a.xlsx", tmp_path / "m.xlsx")
    assert not marker.exists()


def authors_files(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for hosp, pat, fname, n in [("H1", "1", "vidA.mat", 3), ("H1", "2", "vidB.mat", 2),
                                ("H2", "1", "vidC.mat", 4)]:
        rows += [{"filenames": fname, "hospital": hosp, "patient": pat,
                  "scores": list(rng.dirichlet(np.ones(4)))} for _ in range(n)]
    pkl = tmp_path / "frame_predictions.pkl"
    pd.DataFrame(rows).to_pickle(pkl)
    ann = tmp_path / "video_annotations.xlsx"
    pd.DataFrame({"Video": [10, 11], "Score": [2, 0]}).to_excel(ann, index=False)
    vmap = tmp_path / "video_annotations_to_video_names.xlsx"
    pd.DataFrame({"Video": [10, 11, 12], "filename": ["vidA", "vidB", "vidC"],
                  "hospital": ["H1", "H1", "H2"]}).to_excel(vmap, index=False)
    return pkl, ann, vmap


def test_import_authors_format(tmp_path):
    pkl, ann, vmap = authors_files(tmp_path)
    preds = import_authors(pkl, ann, vmap, allow_pickle=True)
    batch = pad_videos(preds)
    assert list(batch.video_id) == ["H1/1/vidA", "H1/2/vidB", "H2/1/vidC"]
    assert list(batch.patient_id) == ["H1/1", "H1/2", "H2/1"]
    assert list(batch.video_score) == [2, 0, -1]   # vidC has no annotation: kept, unknown
    assert list(batch.lengths) == [3, 2, 4]
    assert preds.class_names == CLASSES


def test_import_authors_missing_columns(tmp_path):
    pkl, ann, vmap = authors_files(tmp_path)
    pd.DataFrame({"Video": [10], "Grade": [1]}).to_excel(ann, index=False)
    with pytest.raises(PredictionsError, match=r"video_annotations\.xlsx: missing column.*Score"):
        import_authors(pkl, ann, vmap, allow_pickle=True)
