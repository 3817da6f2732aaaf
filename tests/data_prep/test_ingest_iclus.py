"""ICLUS-style ingest: the phantom round-trips, every bad input is a named error or skip."""
from __future__ import annotations

import pickle
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_prep.ingest_iclus import (ICLUSColumns, IngestError, combine_scores,
                                    ingest_iclus, load_columns, parse_score)
from lus_dist.io.video import MediaError, write_video
from lus_dist.shards.format import VIDEO_CLASSES


# ---------------------------------------------------------------- the phantom

def test_phantom_iclus_round_trips(phantom_dir, phantom_truth):
    report = ingest_iclus(phantom_dir / "iclus")
    assert not report.skipped and len(report.sources) == len(phantom_truth)
    split = pd.read_csv(phantom_dir / "iclus" / "train_test_split.csv").set_index("patient_hash").split
    for src in report.sources:
        truth = phantom_truth[src.video_id]
        assert (src.patient_id, src.hospital_id, src.probe) == (truth["patient"], truth["hospital"], truth["probe"])
        assert src.label == VIDEO_CLASSES.index(truth["label"]) and src.video_score == truth["video_score"]
        assert src.extra["split"] == split[src.patient_id] and src.extra["n_frames"] == truth["n_frames"]
    src = pickle.loads(pickle.dumps(report.sources[-1]))         # pack workers get it pickled
    video = src.load()
    truth = phantom_truth[src.video_id]
    assert video.frames.shape == (truth["n_frames"], 64, 64) and video.frames.dtype == np.uint8
    assert video.frame_scores.tolist() == truth["frame_scores"]
    assert video.masks.shape == video.frames.shape and set(np.unique(video.masks)) <= {0, 1, 2, 3}
    first = np.load(phantom_dir / "iclus" / "frames" / f"{src.video_id}_0000.npy")
    assert np.array_equal(video.frames[0], first)


@pytest.mark.parametrize("suffix", [".parquet", ".xlsx"])
def test_table_formats_give_the_same_sources(phantom_dir, tmp_path, suffix):
    root = tmp_path / "iclus"
    shutil.copytree(phantom_dir / "iclus", root)
    df = pd.read_csv(root / "dataset.csv")
    (root / "dataset.csv").unlink()
    table = root / f"dataset{suffix}"
    df.to_parquet(table) if suffix == ".parquet" else df.to_excel(table, index=False)
    a, b = ingest_iclus(phantom_dir / "iclus"), ingest_iclus(root)
    assert [(s.video_id, s.video_score, s.label) for s in a.sources] == \
           [(s.video_id, s.video_score, s.label) for s in b.sources]


def test_pickle_needs_explicit_permission(phantom_dir, tmp_path):
    pd.read_csv(phantom_dir / "iclus" / "dataset.csv").to_pickle(tmp_path / "dataset.pkl")
    with pytest.raises(IngestError, match="dataset.pkl.*allow_pickle"):
        ingest_iclus(phantom_dir / "iclus", table=tmp_path / "dataset.pkl")
    report = ingest_iclus(phantom_dir / "iclus", table=tmp_path / "dataset.pkl", allow_pickle=True)
    assert len(report.sources) == len(ingest_iclus(phantom_dir / "iclus").sources)


# ---------------------------------------------------------------- a tiny hand-made dataset

def _mini(root, n_videos=3, n_frames=4, size=(12, 10), mask_ext=".npy"):
    """Frames + masks + table for n_videos of n_frames; returns the DataFrame to tweak."""
    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for v in range(n_videos):
        for t in range(n_frames):
            stem = f"vid{v}_{t}"
            np.save(root / "frames" / f"{stem}.npy", np.full(size, 10 * v + t, np.uint8))
            mask = np.zeros(size, np.uint8)
            mask[0, :] = 1
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask) if mask_ext == ".png" else \
                np.save(root / "masks" / f"{stem}.npy", mask)
            rows.append({"filename": f"{stem}.npy", "label": (v + t) % 4, "sensor": "Convex",
                         "patient_hash": f"pat{v}", "hospital": "hosp", "video": f"vid{v}",
                         "mask": f"{stem}{mask_ext}"})
    return pd.DataFrame(rows)


def _write(root, df, name="dataset.csv"):
    df.to_csv(root / name, index=False)
    return ingest_iclus(root)


def _skip_for(report, video):
    reasons = [s.reason for s in report.skipped if s.path.endswith(f"={video}")]
    assert reasons, f"{video} not skipped: {report.summary()}"
    return reasons[0]


def test_frame_order_masks_and_png_masks(tmp_path):
    df = _mini(tmp_path, mask_ext=".png").sample(frac=1.0, random_state=0)   # shuffled rows
    report = _write(tmp_path, df)
    assert len(report.sources) == 3 and not report.skipped
    video = report.sources[1].load()
    assert video.frames[:, 0, 0].tolist() == [10, 11, 12, 13], "natural order of frame names"
    assert video.frame_scores.tolist() == [1, 2, 3, 0]
    assert video.masks[:, 0, :].min() == 1 and report.sources[1].probe == "convex"
    assert report.sources[1].extra["split"] is None and report.sources[1].video_score == -1


def test_missing_columns_name_the_file_and_columns(tmp_path):
    df = _mini(tmp_path).drop(columns=["sensor", "patient_hash"])
    with pytest.raises(IngestError, match=r"dataset.csv: missing column\(s\) \['patient_hash', 'sensor'\]"):
        _write(tmp_path, df)


def test_configurable_columns_and_several_annotators(tmp_path):
    df = _mini(tmp_path).rename(columns={"filename": "frame_file", "patient_hash": "pid"})
    df["a1"], df["a2"], df["a3"] = df["label"], df["label"], (df["label"] + 1) % 4
    df.loc[0, ["a1", "a2", "a3"]] = [3, 1, 1]
    df.loc[1, ["a1", "a2", "a3"]] = [np.nan, np.nan, np.nan]
    df.to_csv(tmp_path / "table.csv", index=False)
    cols = ICLUSColumns(frame="frame_file", patient="pid", score=("a1", "a2", "a3"))
    report = ingest_iclus(tmp_path, table="table.csv", columns=cols)
    assert not report.skipped
    scores = report.sources[0].load().frame_scores.tolist()
    assert scores[:2] == [1, -1], "majority of (3,1,1) is 1; nobody annotated -> -1"
    assert load_columns(overrides=["frame=frame_file", "patient=pid", "score=[a1,a2,a3]"]) == cols
    with pytest.raises(ValueError, match="unknown key.*fram"):
        load_columns(overrides=["fram=x"])


def test_video_from_frame_names_when_the_table_has_no_video_column(tmp_path):
    df = _mini(tmp_path, n_videos=2).drop(columns=["video"])
    df.to_csv(tmp_path / "dataset.csv", index=False)
    with pytest.raises(IngestError, match=r"missing column\(s\) \['video'\]"):
        ingest_iclus(tmp_path)
    report = ingest_iclus(tmp_path, columns=ICLUSColumns(video=None))
    assert [s.video_id for s in report.sources] == ["vid0", "vid1"]
    assert report.sources[1].load().frames[:, 0, 0].tolist() == [10, 11, 12, 13]


def test_bad_videos_are_skipped_with_reasons_and_the_rest_kept(tmp_path):
    df = _mini(tmp_path, n_videos=6)
    df.loc[df.video == "vid0", "label"] = 7                                      # out of range
    (tmp_path / "frames" / "vid1_2.npy").unlink()                                 # missing frame
    np.save(tmp_path / "masks" / "vid2_1.npy", np.zeros((5, 5), np.uint8))       # mask size
    df = pd.concat([df, df[df.video == "vid3"].head(1)])                          # duplicate row
    df.loc[(df.video == "vid4") & (df.filename == "vid4_0.npy"), "patient_hash"] = "other"   # 2 patients
    report = _write(tmp_path, df)
    assert [s.video_id for s in report.sources] == ["vid5"]
    assert "score 7 out of range" in _skip_for(report, "vid0")
    assert "missing" in _skip_for(report, "vid1") and "vid1_2.npy" in _skip_for(report, "vid1")
    assert "mask" in _skip_for(report, "vid2") and "5x5" in _skip_for(report, "vid2")
    assert "duplicate frame rows" in _skip_for(report, "vid3")
    assert "several patient values" in _skip_for(report, "vid4")


def test_split_file_and_video_sheets(tmp_path):
    df = _mini(tmp_path, n_videos=3)
    pd.DataFrame({"patient_hash": ["pat0", "pat1"], "split": ["train", "test"]}).to_csv(
        tmp_path / "train_test_split.csv", index=False)
    pd.DataFrame({"Video": [1, 2, 3], "Score": [2, 9, 1]}).to_excel(tmp_path / "video_annotations.xlsx", index=False)
    pd.DataFrame({"Video": [1, 2, 3], "filename": ["vid0.mat", "vid1", "vid2"]}).to_excel(
        tmp_path / "video_annotations_to_video_names.xlsx", index=False)
    report = _write(tmp_path, df)
    by_id = {s.video_id: s for s in report.sources}
    assert by_id["vid0"].video_score == 2 and by_id["vid0"].extra["split"] == "train"
    assert by_id["vid2"].video_score == 1 and by_id["vid2"].extra["split"] is None
    assert "video score 9" in _skip_for(report, "vid1")
    pd.DataFrame({"patient_hash": ["pat0", "pat0"], "split": ["train", "test"]}).to_csv(
        tmp_path / "train_test_split.csv", index=False)
    with pytest.raises(IngestError, match="train_test_split.csv: patient 'pat0' is in two splits"):
        ingest_iclus(tmp_path)


def test_frames_from_a_video_file_with_frame_index(tmp_path):
    clip = np.stack([np.full((16, 16), 30 * i, np.uint8) for i in range(5)])
    write_video(tmp_path / "frames" / "clip.gif", clip, fps=5)
    df = pd.DataFrame({"filename": ["clip.gif"] * 3, "frame_index": [4, 0, 2], "label": [3, 0, 2],
                       "sensor": "linear", "patient_hash": "p", "hospital": "h", "video": "clip"})
    report = _write(tmp_path, df)
    video = report.sources[0].load()
    assert video.frames[:, 0, 0].tolist() == [0, 60, 120] and video.frame_scores.tolist() == [0, 2, 3]
    df.loc[0, "frame_index"] = 9
    with pytest.raises(MediaError, match="clip.gif: frame index 9 outside the clip's 5 frames"):
        _write(tmp_path, df).sources[0].load()


def test_unreadable_inputs(tmp_path):
    with pytest.raises(IngestError, match="no frame table found"):
        ingest_iclus(tmp_path)
    (tmp_path / "dataset.xlsx").write_bytes(b"not a spreadsheet")
    with pytest.raises(IngestError, match="dataset.xlsx: cannot read the table"):
        ingest_iclus(tmp_path)
    with pytest.raises(IngestError, match="unknown table format"):
        ingest_iclus(tmp_path, table=tmp_path / "t.json")
    with pytest.raises(IngestError, match="not a directory"):
        ingest_iclus(tmp_path / "absent")


def test_load_time_errors_name_the_file(tmp_path):
    report = _write(tmp_path, _mini(tmp_path, n_videos=2))
    np.save(tmp_path / "masks" / "vid0_1.npy", np.full((12, 10), 9, np.uint8))
    with pytest.raises(MediaError, match="vid0_1.npy: mask value 9 is not a class id"):
        report.sources[0].load()
    (tmp_path / "frames" / "vid1_3.npy").write_bytes(b"corrupt")
    with pytest.raises(MediaError, match="vid1_3.npy"):
        report.sources[1].load()


# ---------------------------------------------------------------- pure score helpers

@pytest.mark.parametrize("cell, score", [(2, 2), (2.0, 2), ("3", 3), (" 1 ", 1), ("[1, 1, 0]", 2),
                                         ([1, 0, 0], 1), (np.nan, None), ("", None), (None, None)])
def test_parse_score(cell, score):
    assert parse_score(cell) == score


@pytest.mark.parametrize("cell", ["two", 1.5, True, "[1, x]"])
def test_parse_score_rejects_garbage(cell):
    with pytest.raises((ValueError, SyntaxError)):
        parse_score(cell)


@given(st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=1, max_size=7))
def test_combine_scores_properties(values):
    valid = [v for v in values if v is not None]
    for how in ("majority", "median", "max"):
        out = combine_scores(values, how)
        assert out == -1 if not valid else out in valid
    if valid:
        counts = {v: valid.count(v) for v in valid}
        top = max(counts.values())
        assert combine_scores(values, "majority") == max(v for v, c in counts.items() if c == top)
        assert combine_scores(values, "max") == max(valid)
        assert sorted(valid)[(len(valid) - 1) // 2] <= combine_scores(values, "median") <= sorted(valid)[len(valid) // 2]
