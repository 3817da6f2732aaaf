"""Ingest ICLUS-style frame tables (Roy et al. 2020) into lazily-loaded VideoSources.

The authors ship a frame table (their `dataset.pkl`: one row per frame, columns
`filename` under `frames/`, `label` = frame score, `sensor`, `patient_hash`, `hospital`),
`train_test_split.csv` (patient_hash, split) and two video-level Excel sheets
(`video_annotations.xlsx`: Video, Score; `video_annotations_to_video_names.xlsx`:
Video, hospital, patient, filename). This ingester reads that layout with those names
as defaults (`ICLUSColumns`), from CSV, Excel, Parquet, or -- only with
allow_pickle=True, since unpickling runs arbitrary code -- the authors' pickle.

Scores: a score cell may be an int, a numeric string, or the authors' list encoding
(`[1, 1, 0]`, whose sum is the score). With several annotator columns the frame score
is their majority vote, ties broken towards the higher score -- the rule of the authors'
`majority_label` (`mode(axis=1).max(axis=1)`); "median" (upper median) and "max" are
the alternatives. Empty cells are unannotated (-1), never guessed.

Nothing is dropped silently: a video with a bad row is skipped as a whole with the reason
(out-of-range score, missing frame or mask file, mask size mismatch, duplicate rows or
ids, inconsistent patient/probe); a table without the needed columns is an IngestError
naming the file and the columns.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.records import IngestError, IngestReport, LoadedVideo, VideoSource
from lus_dist.io.video import (MediaError, natural_key, image_shape, is_video_file, read_image,
                                read_video, to_gray_if_monochrome)
from lus_dist.io.config import load_config
from lus_dist.shards.format import MASK_CLASSES, SCORE_CLASSES, UNKNOWN, VIDEO_CLASSES

TABLE_NAMES = ("dataset.csv", "dataset.parquet", "dataset.xlsx", "dataset.pkl")
DIAGNOSIS_ALIASES = {"covid": "covid", "covid-19": "covid", "covid19": "covid", "cov": "covid",
                     "pneumonia": "pneumonia", "pneu": "pneumonia", "pne": "pneumonia",
                     "bacterial": "pneumonia", "healthy": "healthy", "regular": "healthy",
                     "reg": "healthy", "normal": "healthy"}


@dataclass
class ICLUSColumns:
    """Column and file names of an ICLUS-style dataset; defaults are the authors'.

    Required frame-table columns: frame, score (one or more), patient, video, probe,
    hospital. Used when present: frame_index (needed when `frame` names a video file),
    mask, diagnosis (covid / pneumonia / healthy video label).
    """
    frame: str = "filename"
    score: tuple[str, ...] = ("label",)
    patient: str = "patient_hash"
    video: str | None = "video"            # None: the frame file name minus its frame number
    probe: str = "sensor"
    hospital: str = "hospital"
    frame_index: str = "frame_index"
    mask: str = "mask"
    diagnosis: str = "diagnosis"
    combine: str = "majority"              # majority | median | max over annotator columns
    frames_dir: str = "frames"
    masks_dir: str = "masks"
    split_file: str = "train_test_split.csv"
    split_patient: str = "patient_hash"
    split: str = "split"
    video_sheet: str = "video_annotations.xlsx"
    video_map_sheet: str = "video_annotations_to_video_names.xlsx"
    sheet_video: str = "Video"
    sheet_score: str = "Score"
    sheet_filename: str = "filename"

    def __post_init__(self):
        if isinstance(self.score, str):
            self.score = (self.score,)
        if self.combine not in ("majority", "median", "max"):
            raise ValueError(f"combine must be majority|median|max, got {self.combine!r}")


# ---------------------------------------------------------------- pure helpers

def parse_score(value) -> int | None:
    """One annotator cell -> int score, or None when empty. Raises ValueError if garbled."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return int(np.sum(np.asarray(value, dtype=np.int64)))
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"score {value!r} is a boolean")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise ValueError(f"score {value!r} is not an integer")
        return int(value)
    text = str(value).strip()
    if not text or text.lower() in ("nan", "none", "na"):
        return None
    if text.startswith("["):
        return parse_score(list(ast.literal_eval(text)))
    return parse_score(float(text))


def combine_scores(values: list[int | None], how: str = "majority") -> int:
    """Several annotators -> one score (-1 when nobody annotated). Majority ties go up."""
    valid = sorted(v for v in values if v is not None)
    if not valid:
        return UNKNOWN
    if how == "max":
        return valid[-1]
    if how == "median":
        return valid[len(valid) // 2]
    counts = np.bincount(np.asarray(valid) - min(valid))
    return int(min(valid) + np.flatnonzero(counts == counts.max()).max())


def video_from_frame_name(name) -> str:
    """`a/b/clip07_0012.npy` -> `a/b/clip07`: for frame tables without a video column."""
    path = Path(str(name))
    stem = re.sub(r"[_\-. ]*(frame)?[_\-]?\d+$", "", path.stem, flags=re.IGNORECASE) or path.stem
    return str(path.with_name(stem)) if path.parent != Path(".") else stem


def diagnosis_label(value) -> int | None:
    """Free-text diagnosis -> VIDEO_CLASSES index; UNKNOWN when empty; None when unrecognised."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return UNKNOWN
    name = DIAGNOSIS_ALIASES.get(str(value).strip().lower())
    return None if name is None else VIDEO_CLASSES.index(name)


# ---------------------------------------------------------------- tables

def read_table(path: str | Path, allow_pickle: bool = False) -> pd.DataFrame:
    """A table by suffix (.csv, .xlsx/.xls, .parquet, .pkl/.pickle with allow_pickle only)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle") and not allow_pickle:
        raise IngestError(f"{path}: refusing to read a pickle: unpickling runs arbitrary code. If you "
                          f"trust this file pass allow_pickle=True (lus prep pack --allow-pickle), or "
                          f"convert it once to CSV/Parquet")
    readers = {".csv": pd.read_csv, ".xlsx": pd.read_excel, ".xls": pd.read_excel,
               ".parquet": pd.read_parquet, ".pkl": pd.read_pickle, ".pickle": pd.read_pickle}
    if suffix not in readers:
        raise IngestError(f"{path}: unknown table format {suffix!r} (use .csv, .xlsx, .parquet or .pkl)")
    if not path.is_file():
        raise IngestError(f"{path}: no such table file")
    try:
        df = readers[suffix](path)
    except Exception as exc:  # noqa: BLE001 - any parser failure becomes one clear message
        raise IngestError(f"{path}: cannot read the table ({type(exc).__name__}: {exc})") from None
    if not isinstance(df, pd.DataFrame):
        raise IngestError(f"{path}: expected a table (DataFrame), found {type(df).__name__}")
    return df


def require_columns(df: pd.DataFrame, path: Path, needed: list[str],
                    hint: str = "Set the names with ICLUSColumns if your table uses others") -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing}; found {list(map(str, df.columns))}. {hint}")


def find_table(root: Path, table: str | Path | None) -> Path:
    if table is not None:
        path = Path(table)
        return path if path.is_absolute() or path.exists() else root / path
    for name in TABLE_NAMES:
        if (root / name).is_file():
            return root / name
    raise IngestError(f"{root}: no frame table found (looked for {', '.join(TABLE_NAMES)}); pass table= (lus prep pack --table FILE)")


def read_splits(root: Path, cols: ICLUSColumns) -> dict[str, str]:
    path = root / cols.split_file
    if not path.is_file():
        return {}
    df = read_table(path)
    require_columns(df, path, [cols.split_patient, cols.split])
    split: dict[str, str] = {}
    for patient, value in zip(df[cols.split_patient].astype(str), df[cols.split].astype(str)):
        if split.setdefault(patient, value.strip()) != value.strip():
            raise IngestError(f"{path}: patient {patient!r} is in two splits ({split[patient]}, {value})")
    return split


def read_video_scores(root: Path, cols: ICLUSColumns) -> dict[str, object]:
    """Video name (and its stem) -> sheet score, or the string "conflict" when sheets disagree."""
    sheet = root / cols.video_sheet
    if not sheet.is_file():
        return {}
    df = read_table(sheet)
    score_cols = [c for c in df.columns if str(c).startswith(cols.sheet_score)]
    require_columns(df, sheet, [cols.sheet_video] + ([] if score_cols else [cols.sheet_score]))
    df["_score"] = [combine_scores([parse_score(v) for v in row], cols.combine)
                    for row in df[score_cols].itertuples(index=False)]
    keys = df[cols.sheet_video].astype(str)
    mapping = root / cols.video_map_sheet
    if mapping.is_file():
        mdf = read_table(mapping)
        require_columns(mdf, mapping, [cols.sheet_video, cols.sheet_filename])
        by_video = dict(zip(keys, df["_score"]))
        pairs = [(str(f), by_video.get(str(v))) for v, f in zip(mdf[cols.sheet_video], mdf[cols.sheet_filename])]
    else:
        pairs = list(zip(keys, df["_score"]))
    out: dict[str, object] = {}
    for name, score in pairs:
        if score is None:
            continue
        for key in {name, Path(name).stem}:
            out[key] = score if out.get(key, score) == score else "conflict"
    return out


# ---------------------------------------------------------------- loading

@dataclass(frozen=True)
class ICLUSLoader:
    """Picklable lazy loader (pack workers may run in other processes)."""
    frames: tuple[str, ...]
    frame_indices: tuple[int | None, ...]
    masks: tuple[str | None, ...]
    scores: tuple[int, ...]

    def __call__(self) -> LoadedVideo:
        decoded: dict[str, np.ndarray] = {}
        images = []
        for path, index in zip(self.frames, self.frame_indices):
            if is_video_file(path):
                clip = decoded.setdefault(path, read_video(path, gray="never"))
                if index is None or not 0 <= index < len(clip):
                    raise MediaError(f"{path}: frame index {index} outside the clip's {len(clip)} frames")
                images.append(clip[index])
            else:
                images.append(read_image(path))
        if len({im.ndim for im in images}) > 1:
            images = [np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im for im in images]
        if len({im.shape for im in images}) > 1:
            raise MediaError(f"{self.frames[0]}: frames of one video differ in size "
                             f"{sorted({im.shape for im in images})}")
        frames = to_gray_if_monochrome(np.stack(images))
        return LoadedVideo(frames=frames, frame_scores=np.asarray(self.scores, np.int16),
                           masks=self._masks(frames.shape[1:3]))

    def _masks(self, hw: tuple[int, int]) -> np.ndarray | None:
        if all(m is None for m in self.masks):
            return None
        out = np.zeros((len(self.masks),) + hw, np.uint8)
        for t, path in enumerate(self.masks):
            if path is None:
                continue
            m = read_image(path)
            if m.ndim == 3:
                m = m[..., 0]
            if m.shape != hw:
                raise MediaError(f"{path}: mask size {m.shape} differs from its frame {hw}")
            if m.max(initial=0) >= len(MASK_CLASSES):
                raise MediaError(f"{path}: mask value {int(m.max())} is not a class id "
                                 f"0..{len(MASK_CLASSES) - 1} {MASK_CLASSES}")
            out[t] = m
        return out


# ---------------------------------------------------------------- per video

def _resolve(root: Path, sub: str, value) -> Path:
    p = Path(str(value))
    if p.is_absolute():
        return p
    return root / sub / p if (root / sub / p).exists() or not (root / p).exists() else root / p


def _present(value) -> bool:
    return not (value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "")


def _one(group: pd.DataFrame, col: str, what: str, name: str) -> tuple[str | None, str | None]:
    values = sorted({str(v).strip() if _present(v) else "unknown" for v in group[col]})
    if len(values) != 1:
        return None, f"video {name!r} has several {what} values {values} (duplicate video id?)"
    return values[0], None


def _frame_scores(group: pd.DataFrame, cols: ICLUSColumns, name: str) -> tuple[list[int], str | None]:
    scores = []
    for row in group[list(cols.score)].itertuples(index=False):
        try:
            s = combine_scores([parse_score(v) for v in row], cols.combine)
        except (ValueError, SyntaxError) as exc:
            return [], f"video {name!r}: unreadable score {tuple(row)} ({exc})"
        if s != UNKNOWN and not 0 <= s < len(SCORE_CLASSES):
            return [], f"video {name!r}: frame score {s} out of range 0..{len(SCORE_CLASSES) - 1}"
        scores.append(s)
    return scores, None


def _order(group: pd.DataFrame, cols: ICLUSColumns, name: str) -> tuple[pd.DataFrame, str | None]:
    has_index = cols.frame_index in group.columns and group[cols.frame_index].notna().all()
    key = [cols.frame, cols.frame_index] if has_index else [cols.frame]
    if group.duplicated(subset=key).any():
        dup = group[group.duplicated(subset=key, keep=False)][key].head(3).values.tolist()
        return group, f"video {name!r}: duplicate frame rows {dup}"
    if has_index:
        return group.sort_values(cols.frame_index, kind="stable"), None
    return group.iloc[sorted(range(len(group)), key=lambda i: natural_key(str(group[cols.frame].iloc[i])))], None


def _check_files(frames: list[Path], masks: list[Path | None], name: str) -> str | None:
    missing = [str(p) for p in frames + [m for m in masks if m is not None] if not p.exists()]
    if missing:
        return f"video {name!r}: {len(missing)} missing file(s), e.g. {missing[:3]}"
    shapes: dict[Path, tuple[int, int]] = {}
    try:
        for f, m in zip(frames, masks):
            if m is None:
                continue
            fs = shapes.setdefault(f, image_shape(f))
            ms = image_shape(m)
            if fs != ms:
                return f"video {name!r}: mask {m} is {ms[0]}x{ms[1]} but frame {f} is {fs[0]}x{fs[1]}"
    except MediaError as exc:
        return f"video {name!r}: {exc}"
    return None


def _video_meta(group: pd.DataFrame, cols: ICLUSColumns, name: str, vscores: dict):
    """(ids, frame scores, label, video score) of one video, or the reason to skip it."""
    ids, err = {}, None
    for col, what in ((cols.patient, "patient"), (cols.hospital, "hospital"), (cols.probe, "probe")):
        ids[what], e = _one(group, col, what, name)
        err = err or e
    scores, e = _frame_scores(group, cols, name)
    err = err or e
    label = UNKNOWN
    if cols.diagnosis in group.columns:
        labels = {diagnosis_label(v) for v in group[cols.diagnosis]}
        if None in labels or len(labels) > 1:
            err = err or (f"video {name!r}: diagnosis {sorted(set(map(str, group[cols.diagnosis])))} "
                          f"is not one of {VIDEO_CLASSES} (or differs between frames)")
        label = labels.pop() if len(labels) == 1 else UNKNOWN
    vscore = vscores.get(name, vscores.get(Path(name).stem, UNKNOWN))
    if vscore == "conflict" or (vscore != UNKNOWN and not 0 <= vscore < len(SCORE_CLASSES)):
        err = err or f"video {name!r}: video score {vscore!r} in {cols.video_sheet} is not in 0..3"
    return (ids, scores, label, vscore), err


def _column(group: pd.DataFrame, col: str) -> list:
    return list(group[col]) if col in group.columns else [None] * len(group)


def _build_source(root: Path, table: Path, name: str, group: pd.DataFrame, cols: ICLUSColumns,
                  splits: dict, vscores: dict) -> tuple[VideoSource | None, str | None]:
    group, err = _order(group, cols, name)
    (ids, scores, label, vscore), err2 = _video_meta(group, cols, name, vscores)
    if err or err2:
        return None, err or err2
    frames = [_resolve(root, cols.frames_dir, v) for v in group[cols.frame]]
    masks = [_resolve(root, cols.masks_dir, v) if _present(v) else None for v in _column(group, cols.mask)]
    indices = [int(i) if _present(i) else None for i in _column(group, cols.frame_index)]
    if any(is_video_file(f) and i is None for f, i in zip(frames, indices)):
        return None, f"video {name!r}: frames come from a video file but column {cols.frame_index!r} is empty"
    err = _check_files(frames, masks, name)
    if err:
        return None, err
    loader = ICLUSLoader(tuple(map(str, frames)), tuple(indices),
                         tuple(None if m is None else str(m) for m in masks), tuple(scores))
    extra = {"split": splits.get(ids["patient"]), "n_frames": len(frames),
             "masked_frames": sum(m is not None for m in masks)}
    return VideoSource(video_id=name, patient_id=ids["patient"], hospital_id=ids["hospital"],
                       probe=ids["probe"].lower(), label=label, video_score=int(vscore),
                       source=f"{table}#video={name}", loader=loader, extra=extra), None


def ingest_iclus(root, table=None, columns: ICLUSColumns | None = None,
                 allow_pickle: bool = False) -> IngestReport:
    """Scan an ICLUS-style dataset (no pixel decoding; headers only) -> IngestReport."""
    root = Path(root)
    cols = columns or ICLUSColumns()
    if not root.is_dir():
        raise IngestError(f"{root}: not a directory")
    table_path = find_table(root, table)
    df = read_table(table_path, allow_pickle)
    require_columns(df, table_path, [cols.frame, *cols.score, cols.patient, cols.probe, cols.hospital]
                    + ([cols.video] if cols.video else []))
    videos = df[cols.video].astype(str) if cols.video else df[cols.frame].map(video_from_frame_name)
    splits, vscores = read_splits(root, cols), read_video_scores(root, cols)
    report = IngestReport()
    for name, group in df.groupby(videos, sort=False):
        source, reason = _build_source(root, table_path, name, group, cols, splits, vscores)
        if source is None:
            report.skip(f"{table_path}#video={name}", reason)
        else:
            report.sources.append(source)
    report.sources.sort(key=lambda s: s.video_id)
    return report


def load_columns(path=None, overrides: list[str] | None = None) -> ICLUSColumns:
    """ICLUSColumns from a YAML file and/or `key=value` overrides (the lus_dist.io.config
    rules: unknown keys are errors), e.g. `score=[a1,a2,a3]` for three annotators."""
    return load_config(ICLUSColumns, path, overrides)
