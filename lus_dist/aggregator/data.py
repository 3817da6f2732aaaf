"""The frame-predictions file: what a trained frame model exports and the aggregator reads.

One row per frame (long form), written as HDF5 (`.h5`/`.hdf5`) or Parquet (`.parquet`/
`.pq`). Columns: video_id, patient_id, hospital_id (str), frame_index, frame_score,
video_score, video_label (int, -1 = unknown), split (str, "" = unknown) and one
probability per class. Parquet names them `prob_<class>`; HDF5 stores a (frames, classes)
`probs` dataset with the class names in its `classes` attribute. Required when reading:
video_id, patient_id, frame_index and the probabilities; the rest default to unknown.

Also imports the authors' (Roy et al.) files: `frame_predictions.pkl` (a pickled pandas
DataFrame: filenames, hospital, patient, scores) + `video_annotations.xlsx` (Video,
Score) + `video_annotations_to_video_names.xlsx` (Video, filename, ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

FORMAT_NAME = "lus-dist-frame-predictions"
FORMAT_VERSION = 1
PROB_PREFIX = "prob_"
STR_COLUMNS = ("video_id", "patient_id", "hospital_id", "split")
INT_COLUMNS = ("frame_index", "frame_score", "video_score", "video_label")
REQUIRED = ("video_id", "patient_id", "frame_index")
PER_VIDEO = ("patient_id", "hospital_id", "video_score", "video_label", "split")
HDF5_SUFFIXES, PARQUET_SUFFIXES = (".h5", ".hdf5"), (".parquet", ".pq")


class PredictionsError(ValueError):
    """A predictions file (or array set) that cannot be used; the message names it."""


@dataclass(frozen=True)
class FramePredictions:
    probs: np.ndarray            # (N, C) float, each in [0, 1]
    video_id: np.ndarray         # (N,) str
    patient_id: np.ndarray       # (N,) str
    hospital_id: np.ndarray      # (N,) str
    frame_index: np.ndarray      # (N,) int64
    frame_score: np.ndarray      # (N,) int64, -1 unknown
    video_score: np.ndarray      # (N,) int64, -1 unknown
    video_label: np.ndarray      # (N,) int64, -1 unknown
    split: np.ndarray            # (N,) str, "" unknown
    class_names: tuple[str, ...]
    source: str = "<arrays>"

    @classmethod
    def from_arrays(cls, probs, video_id, patient_id, frame_index=None, *, hospital_id=None,
                    frame_score=None, video_score=None, video_label=None, split=None,
                    class_names=None, source: str = "<arrays>") -> "FramePredictions":
        """Build and validate; per-video values may be given per frame (repeated)."""
        probs = np.asarray(probs)
        if probs.ndim != 2:
            raise PredictionsError(f"{source}: probs has shape {probs.shape}; "
                                   "expected (frames, classes)")
        n = probs.shape[0]
        if frame_index is None:
            frame_index = _index_within(np.asarray(video_id, dtype=str))
        cols = {"video_id": video_id, "patient_id": patient_id, "hospital_id": hospital_id,
                "split": split, "frame_index": frame_index, "frame_score": frame_score,
                "video_score": video_score, "video_label": video_label}
        out = {}
        for name, val in cols.items():
            if val is None:
                val = np.full(n, "" if name in STR_COLUMNS else -1)
            val = np.asarray(val)
            if val.shape != (n,):
                raise PredictionsError(f"{source}: column {name!r} has shape {val.shape}; "
                                       f"expected ({n},) like probs {probs.shape}")
            out[name] = _typed(name, val, source)
        names = tuple(class_names) if class_names is not None else \
            tuple(f"class{i}" for i in range(probs.shape[1]))
        if len(names) != probs.shape[1]:
            raise PredictionsError(f"{source}: {len(names)} class names for "
                                   f"{probs.shape[1]} probability columns")
        preds = cls(probs=probs.astype(np.float64), class_names=names, source=source, **out)
        preds.validate()
        return preds

    def validate(self) -> None:
        src, p = self.source, self.probs
        if p.shape[0] == 0 or p.shape[1] == 0:
            raise PredictionsError(f"{src}: no frames or no classes (probs shape {p.shape})")
        if not np.isfinite(p).all() or p.min() < -1e-6 or p.max() > 1 + 1e-6:
            raise PredictionsError(f"{src}: probabilities must be finite and in [0, 1] "
                                   f"(found min {np.nanmin(p):.4g}, max {np.nanmax(p):.4g})")
        order = np.lexsort((self.frame_index, self.video_id))
        vid, fi = self.video_id[order], self.frame_index[order]
        same = vid[1:] == vid[:-1]
        dup = np.nonzero(same & (fi[1:] == fi[:-1]))[0]
        if len(dup):
            raise PredictionsError(f"{src}: duplicate rows for video {vid[dup[0]]!r} "
                                   f"frame_index {fi[dup[0]]}")
        for name in PER_VIDEO:
            col = getattr(self, name)[order]
            bad = np.nonzero(same & (col[1:] != col[:-1]))[0]
            if len(bad):
                i = bad[0]
                raise PredictionsError(f"{src}: video {vid[i]!r} has more than one {name} "
                                       f"({col[i]!r}, {col[i + 1]!r})")

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]


def _typed(name: str, val: np.ndarray, source: str) -> np.ndarray:
    if name in STR_COLUMNS:
        return val.astype(str)
    try:
        as_int = val.astype(np.int64)
    except (TypeError, ValueError):
        raise PredictionsError(f"{source}: column {name!r} must be integers") from None
    if val.dtype.kind == "f" and not np.array_equal(as_int, val):
        raise PredictionsError(f"{source}: column {name!r} must be integers")
    return as_int


def _index_within(video_id: np.ndarray) -> np.ndarray:
    """Row order within each video, for files that carry no frame index."""
    out = np.zeros(len(video_id), np.int64)
    order = np.argsort(video_id, kind="stable")
    sorted_ids = video_id[order]
    starts = np.r_[0, np.nonzero(sorted_ids[1:] != sorted_ids[:-1])[0] + 1]
    run = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    out[order] = run
    return out


@dataclass(frozen=True)
class VideoBatch:
    """Predictions grouped per video (sorted by video_id, frames by frame_index) and
    padded: x (V, L, C), mask (V, L) with frames 0..T-1 valid."""
    x: torch.Tensor
    mask: torch.Tensor
    video_id: np.ndarray
    patient_id: np.ndarray
    hospital_id: np.ndarray
    video_score: np.ndarray
    video_label: np.ndarray
    split: np.ndarray
    class_names: tuple[str, ...]

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(1).numpy()


def pad_videos(preds: FramePredictions, dtype: torch.dtype = torch.float64) -> VideoBatch:
    order = np.lexsort((preds.frame_index, preds.video_id))
    vids = preds.video_id[order]
    starts = np.r_[0, np.nonzero(vids[1:] != vids[:-1])[0] + 1]
    lengths = np.diff(np.r_[starts, len(vids)])
    pos = np.arange(len(vids)) - np.repeat(starts, lengths)
    row = np.repeat(np.arange(len(starts)), lengths)
    x = torch.zeros(len(starts), int(lengths.max()), preds.num_classes, dtype=dtype)
    x[row, pos] = torch.from_numpy(preds.probs[order]).to(dtype)
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[row, pos] = True
    first = order[starts]
    per = {n: getattr(preds, n)[first] for n in ("video_id",) + PER_VIDEO}
    return VideoBatch(x=x, mask=mask, class_names=preds.class_names, **per)


# ---------------------------------------------------------------- writing and reading

def write_predictions(path, preds: FramePredictions | np.ndarray, **columns) -> Path:
    """Write `preds` (or build it from `probs=preds` + columns, see `from_arrays`)."""
    if not isinstance(preds, FramePredictions):
        preds = FramePredictions.from_arrays(preds, source=str(path), **columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix in HDF5_SUFFIXES:
        _write_h5(tmp, preds)
    elif path.suffix in PARQUET_SUFFIXES:
        _write_parquet(tmp, preds)
    else:
        raise PredictionsError(f"{path}: unknown predictions format; use one of "
                               f"{HDF5_SUFFIXES + PARQUET_SUFFIXES}")
    tmp.replace(path)
    return path


def read_predictions(path) -> FramePredictions:
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    if path.suffix in HDF5_SUFFIXES:
        return _read_h5(path)
    if path.suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    if path.suffix == ".pkl":
        raise PredictionsError(f"{path}: the authors' pickle format needs import_authors() "
                               "(`lus aggregate --annotations ... --video-map ... "
                               "--allow-pickle`)")
    raise PredictionsError(f"{path}: unknown predictions format; use one of "
                           f"{HDF5_SUFFIXES + PARQUET_SUFFIXES}")


def _columns(preds: FramePredictions) -> dict[str, np.ndarray]:
    return {f.name: getattr(preds, f.name) for f in fields(preds)
            if f.name in STR_COLUMNS + INT_COLUMNS}


def _write_h5(path: Path, preds: FramePredictions) -> None:
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["version"] = FORMAT_NAME, FORMAT_VERSION
        d = f.create_dataset("probs", data=preds.probs, compression="gzip")
        d.attrs["classes"] = json.dumps(list(preds.class_names))
        for name, col in _columns(preds).items():
            if name in STR_COLUMNS:
                f.create_dataset(name, data=col.astype(object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=col)


def _read_h5(path: Path) -> FramePredictions:
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise PredictionsError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        missing = [n for n in ("probs",) + REQUIRED if n not in f]
        if missing:
            raise PredictionsError(f"{path}: missing dataset(s) {missing} "
                                   f"(found {sorted(f.keys())})")
        probs = f["probs"][()]
        try:
            names = json.loads(f["probs"].attrs.get("classes", "null"))
        except (TypeError, ValueError):
            names = None
        cols = {}
        for name in STR_COLUMNS + INT_COLUMNS:
            if name in f:
                ds = f[name]
                cols[name] = ds.asstr()[()] if name in STR_COLUMNS and \
                    ds.dtype.kind in "OS" else ds[()]
    return FramePredictions.from_arrays(probs, class_names=names, source=str(path), **cols)


def _write_parquet(path: Path, preds: FramePredictions) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    data = dict(_columns(preds))
    for i, name in enumerate(preds.class_names):
        data[PROB_PREFIX + name] = preds.probs[:, i]
    table = pa.table(data).replace_schema_metadata(
        {"format": FORMAT_NAME, "version": str(FORMAT_VERSION)})
    pq.write_table(table, path)


def _read_parquet(path: Path) -> FramePredictions:
    import pyarrow.parquet as pq
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise PredictionsError(f"{path}: not a readable Parquet file ({exc})") from None
    prob_cols = [c for c in df.columns if c.startswith(PROB_PREFIX)]
    missing = [c for c in REQUIRED if c not in df.columns] + \
        ([f"{PROB_PREFIX}<class>"] if not prob_cols else [])
    if missing:
        raise PredictionsError(f"{path}: missing column(s) {missing} "
                               f"(found {list(df.columns)})")
    cols = {c: df[c].to_numpy() for c in STR_COLUMNS + INT_COLUMNS if c in df.columns}
    return FramePredictions.from_arrays(
        df[prob_cols].to_numpy(np.float64), source=str(path),
        class_names=[c[len(PROB_PREFIX):] for c in prob_cols], **cols)


# ---------------------------------------------------------------- the authors' format

def import_authors(pkl, annotations, video_map, allow_pickle: bool = False,
                   class_names=None) -> FramePredictions:
    """Roy et al.'s aggregator inputs -> FramePredictions. Frames whose video has no
    annotation are kept with video_score -1 (reported, not dropped)."""
    import pandas as pd
    pkl = Path(pkl)
    if not allow_pickle:
        raise PredictionsError(
            f"{pkl}: refusing to unpickle: loading a pickle can run arbitrary code. Pass "
            "allow_pickle=True (--allow-pickle) only for a file you trust.")
    for p in (pkl, Path(annotations), Path(video_map)):
        if not p.is_file():
            raise PredictionsError(f"{p}: file not found")
    try:
        frames = pd.read_pickle(pkl)
    except Exception as exc:
        raise PredictionsError(f"{pkl}: cannot unpickle ({exc})") from None
    if not isinstance(frames, pd.DataFrame):
        raise PredictionsError(f"{pkl}: expected a pickled pandas DataFrame, "
                               f"got {type(frames).__name__}")
    frames = frames.rename(columns={"filenames": "filename"})
    _need(frames, ("filename", "hospital", "patient", "scores"), pkl)
    labels = _read_xlsx(annotations, ("Video", "Score"))
    mapping = _read_xlsx(video_map, ("Video", "filename"))
    labelmap = mapping[["Video", "filename"]].merge(labels[["Video", "Score"]], on="Video",
                                                    how="left")
    frames = frames.copy()
    frames["filename"] = frames["filename"].astype(str).str.replace(".mat", "", regex=False)
    labelmap["filename"] = labelmap["filename"].astype(str).str.replace(".mat", "",
                                                                         regex=False)
    if labelmap["filename"].duplicated().any():
        dup = labelmap.loc[labelmap["filename"].duplicated(), "filename"].iloc[0]
        raise PredictionsError(f"{video_map}: filename {dup!r} maps to more than one Video")
    df = frames.merge(labelmap, on="filename", how="left")
    scores = df["Score"].fillna(-1).astype(np.int64).to_numpy()
    probs = np.array(df["scores"].tolist(), dtype=np.float64)
    hosp, pat = df["hospital"].astype(str).to_numpy(), df["patient"].astype(str).to_numpy()
    patient = np.char.add(np.char.add(hosp, "/"), pat)
    video = np.char.add(np.char.add(patient, "/"), df["filename"].to_numpy().astype(str))
    frame_index = df["frame"].to_numpy() if "frame" in df.columns else None
    return FramePredictions.from_arrays(
        probs, video, patient, frame_index, hospital_id=hosp, video_score=scores,
        class_names=class_names or [f"score{i}" for i in range(probs.shape[1])],
        source=str(pkl))


def _need(df, cols, path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise PredictionsError(f"{path}: missing column(s) {missing} "
                               f"(found {list(df.columns)})")


def _read_xlsx(path, cols):
    import pandas as pd
    try:
        df = pd.read_excel(path)
    except Exception as exc:
        raise PredictionsError(f"{path}: not a readable .xlsx file ({exc})") from None
    _need(df, cols, path)
    return df
