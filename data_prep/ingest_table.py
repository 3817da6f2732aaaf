"""Ingest "videos + a per-video label table + a per-patient table" into VideoSources.

A layout many clinical studies publish: one folder of clips, a table with one row per
video (an ordinal score given by experts, e.g. a 0-3 severity), and optionally a table
with one row per patient (a patient-level class, e.g. a PCR result). Nothing here knows a
particular dataset: a `TableSpec` (a YAML/JSON file and/or key=value options) names the
folder, the file pattern, the tables and their columns. Patient ids come from a column of
the video table or from a regular expression over the file name.

Both targets reach the manifest: the score as each video's `video_score`, the class as
the patient table's `label` (its names in `classes["patient"]`), and the packer
stratifies the patient folds by that class. The tables score no frame: frame scores are
unknown (-1), or with frame_scores=video every frame carries its video's score (weak
labels, for a frame scorer trained from video scores), or with frame_scores=patient its
patient's class (for a frame classifier of the patient-level target).

Ids are compared as the tables and file names spell them, except that numbers compare as
numbers (a cell 7, 7.0 or "07" names patient "7"), and a video-id cell may hold the file
name with or without its suffix.

Every input is accounted for in the report, never dropped silently: a video with no row,
a row with no video, a score that is empty, garbled or outside the spec's range, duplicate
rows, a video whose patient has no row or no class, a patient row with no video. A spec
or table that cannot be used at all is an IngestError naming the file and the problem.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.ingest_iclus import parse_score, read_table, require_columns
from data_prep.ingest_pocus import subsample
from data_prep.records import IngestError, IngestReport, LoadedVideo, VideoSource
from lus_dist.io.config import load_config
from lus_dist.shards.format import SCORE_CLASSES, UNKNOWN
from lus_dist.io.video import MediaError, is_video_file, natural_key, read_video, video_info

FRAME_SCORES = ("none", "video", "patient")
HINT = "Name the columns in the table spec (--spec FILE or --set KEY=VALUE)"


@dataclass
class TableSpec:
    """Where the clips and tables are and what their columns mean; paths are relative to
    the pack's --src unless absolute."""
    videos: str = "."                  # folder of the clips
    glob: str = "*.mp4"                # their file pattern in it ("**/*.mp4" searches sub-folders)
    video_table: str = ""              # one row per video (.csv, .xlsx, .parquet)
    video_id: str = "video_id"         # its column naming the clip: file name, with or without suffix
    score: str = "score"               # its column holding the ordinal video score
    score_range: tuple[int, int] = (0, len(SCORE_CLASSES) - 1)   # valid scores, inclusive
    patient_column: str = ""           # patient id from this column of the video table, or
    patient_pattern: str = ""          # from this regex over the file stem (group "patient", else 1)
    patient_table: str = ""            # one row per patient (optional)
    patient_id: str = "patient_id"     # its patient-id column
    patient_class: str = ""            # its class column (the patient-level target)
    classes: dict = field(default_factory=dict)   # class cell value -> name, in class order;
    #                                    empty: the distinct values, sorted, are the names
    probe: str = "unknown"             # one probe for the whole set ("convex", "linear", ...)
    hospital: str = "unknown"
    frame_scores: str = "none"         # none (-1) | video: each frame carries its video's score |
    #                                    patient: its patient's class (a frame classifier of it)
    max_frames: int = 0                # keep at most this many evenly spaced frames (0: all)


def load_spec(path=None, overrides: list[str] | None = None) -> TableSpec:
    """A TableSpec from a YAML/JSON file and/or `key=value` overrides (unknown keys are
    errors), checked: a bad spec is one IngestError naming the spec and the problem."""
    where = str(path) if path is not None else "table spec (--set)"
    return check_spec(load_config(TableSpec, path, overrides), where)


def check_spec(spec: TableSpec, where: str) -> TableSpec:
    def bad(problem: str):
        raise IngestError(f"{where}: {problem}")
    if not spec.video_table:
        bad("video_table is required: the table with one row per video")
    if bool(spec.patient_column) == bool(spec.patient_pattern):
        bad("give exactly one of patient_column (a column of the video table) and patient_pattern "
            "(a regular expression over the file name)")
    if spec.patient_pattern:
        try:
            re.compile(spec.patient_pattern)
        except re.error as exc:
            bad(f"patient_pattern {spec.patient_pattern!r} is not a regular expression ({exc})")
    if len(spec.score_range) != 2 or not 0 <= spec.score_range[0] <= spec.score_range[1] < len(SCORE_CLASSES):
        bad(f"score_range {list(spec.score_range)} must be [low, high] within the stored score "
            f"classes 0..{len(SCORE_CLASSES) - 1}")
    if spec.frame_scores not in FRAME_SCORES:
        bad(f"frame_scores must be one of {FRAME_SCORES}, got {spec.frame_scores!r}")
    if spec.max_frames < 0:
        bad(f"max_frames must be >= 0 (0 keeps every frame), got {spec.max_frames}")
    if bool(spec.patient_table) != bool(spec.patient_class):
        bad("patient_table and patient_class go together: the per-patient table and its class column")
    if spec.frame_scores == "patient" and not spec.patient_table:
        bad("frame_scores=patient gives frames their patient's class: give patient_table and patient_class")
    if spec.classes and not spec.patient_table:
        bad("classes name the values of patient_class; give patient_table and patient_class too")
    if len(set(map(str, spec.classes.values()))) != len(spec.classes) or None in map(id_key, spec.classes):
        bad(f"classes {spec.classes} must map distinct, non-empty values to distinct names")
    return spec


def id_key(value) -> str | None:
    """A table cell or file-name part -> the id it names (numbers as numbers); None if empty."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value).strip()
    if not text or text.lower() in ("nan", "none", "na"):
        return None
    return str(int(text)) if text.isdigit() else text


def video_key(value) -> str | None:
    """A video-id cell -> the clip's id: its file stem when the cell holds a file name."""
    key = id_key(value)
    return id_key(Path(key).stem) if key is not None and is_video_file(key) else key


@dataclass(frozen=True)
class TableLoader:
    """Picklable lazy loader: the clip (evenly thinned to max_frames), every frame scored
    `frame_score` (-1 unknown, or the video's score as a weak label)."""
    path: str
    max_frames: int
    frame_score: int
    takes_fit = True   # decodes each frame straight into the packer's size (VideoSource.load)

    def __call__(self, fit=None) -> LoadedVideo:
        frames = read_video(self.path, fit=fit)
        frames = frames[subsample(len(frames), self.max_frames)]
        return LoadedVideo(frames=frames, frame_scores=np.full(len(frames), self.frame_score, np.int16))


def _under(root: Path, rel: str) -> Path:
    return Path(rel) if Path(rel).is_absolute() else root / rel


def _video_files(folder: Path, glob: str, report: IngestReport) -> dict[str, Path]:
    """Clip id -> file, for every video file the pattern matches (others reported)."""
    out: dict[str, Path] = {}
    for path in sorted((p for p in folder.glob(glob) if p.is_file()), key=lambda p: natural_key(str(p))):
        key = id_key(path.stem)
        if not is_video_file(path):
            report.skip(path, f"not a video file ({path.suffix or 'no suffix'})")
        elif key in out:
            report.skip(path, f"duplicate video id {path.stem!r}: already found {out[key]}")
        else:
            out[key] = path
    if not out:
        raise IngestError(f"{folder}: no video file matches {glob!r} (see the spec's videos and glob)")
    return out


def _score(values: list, path: Path, spec: TableSpec) -> tuple[int | None, str | None]:
    if len(values) > 1:
        return None, f"{len(values)} rows for this video in {path}"
    try:
        score = parse_score(values[0])
    except (ValueError, SyntaxError):
        return None, f"score {values[0]!r} in {path} (column {spec.score!r}) is not an integer"
    lo, hi = spec.score_range
    if score is None:
        return None, f"no score in {path} (column {spec.score!r})"
    if not lo <= score <= hi:
        return None, f"score {score} in {path} is outside the range {lo}..{hi}"
    return score, None


def _rows_by_id(keys: list[str | None], path: Path, what: str, report: IngestReport) -> dict[str, list[int]]:
    """Id -> its row numbers; a row without an id is reported (data rows count from 1)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key is None:
            report.skip(f"{path}#row={i + 1}", f"no {what}")
        else:
            groups.setdefault(key, []).append(i)
    return groups


def _video_rows(path: Path, spec: TableSpec, report: IngestReport) -> dict[str, dict]:
    """Clip id -> {"name", "score" or "reason", "patient"} from the per-video table."""
    df = read_table(path)
    require_columns(df, path, [spec.video_id, spec.score] + ([spec.patient_column] if spec.patient_column else []),
                    HINT)
    groups = _rows_by_id([video_key(c) for c in df[spec.video_id]], path, f"video id (column {spec.video_id!r})",
                         report)
    rows = {}
    for key, idx in groups.items():
        score, reason = _score(df[spec.score].iloc[idx].tolist(), path, spec)
        patients = {id_key(v) for v in df[spec.patient_column].iloc[idx]} if spec.patient_column else set()
        rows[key] = {"name": str(df[spec.video_id].iloc[idx[0]]).strip(), "score": score, "reason": reason,
                     "patient": patients.pop() if len(patients) == 1 else None}
    return rows


def _class_names(values: list[str | None], spec: TableSpec) -> dict[str, int]:
    """Class cell value -> class index; names are the spec's, else the sorted distinct values."""
    if spec.classes:
        return {id_key(k): i for i, k in enumerate(spec.classes)}
    return {v: i for i, v in enumerate(sorted({v for v in values if v is not None}, key=natural_key))}


def _patients(path: Path, spec: TableSpec, report: IngestReport) -> tuple[dict[str, tuple], tuple[str, ...]]:
    """Patient id -> (class index, None) or (None, reason), and the class names."""
    df = read_table(path)
    require_columns(df, path, [spec.patient_id, spec.patient_class], HINT)
    values = [id_key(v) for v in df[spec.patient_class]]
    index = _class_names(values, spec)
    names = tuple(map(str, spec.classes.values())) if spec.classes else tuple(index)
    groups = _rows_by_id([id_key(c) for c in df[spec.patient_id]], path,
                         f"patient id (column {spec.patient_id!r})", report)
    out = {}
    for pid, idx in groups.items():
        vals = [values[i] for i in idx]
        if len(set(vals)) > 1:
            out[pid] = (None, f"patient {pid!r} has {len(vals)} rows in {path} with different classes "
                              f"{sorted(map(str, set(vals)))}")
        elif vals[0] is None:
            out[pid] = (None, f"patient {pid!r} has no class in {path} (column {spec.patient_class!r})")
        elif vals[0] not in index:
            out[pid] = (None, f"patient {pid!r}: class {vals[0]!r} in {path} is not one of {list(index)}")
        else:
            out[pid] = (index[vals[0]], None)
    return out, names


def _patient_of(path: Path, row: dict, spec: TableSpec) -> tuple[str | None, str | None]:
    if spec.patient_column:
        if row["patient"] is None:
            return None, f"no single patient id in column {spec.patient_column!r} of {spec.video_table}"
        return row["patient"], None
    match = re.search(spec.patient_pattern, path.stem)
    if match is None:
        return None, f"file name does not match patient_pattern {spec.patient_pattern!r}"
    group = "patient" if "patient" in match.re.groupindex else 1 if match.re.groups else 0
    return id_key(match.group(group)), None


def _source(path: Path, row: dict | None, patients: dict | None, spec: TableSpec,
            table: Path) -> tuple[VideoSource | None, str | None]:
    if row is None:
        return None, f"no row in {table} (column {spec.video_id!r})"
    if row["reason"]:
        return None, row["reason"]
    pid, reason = _patient_of(path, row, spec)
    if reason:
        return None, reason
    label = UNKNOWN
    if patients is not None:
        label, reason = patients.get(pid, (None, f"patient {pid!r} has no row in {spec.patient_table}"))
        if reason:
            return None, reason
    try:
        info = video_info(path)
    except MediaError as exc:
        return None, str(exc)
    n = info.get("frame_count_header") or 0
    score = row["score"]
    frame_score = {"video": score, "patient": label}.get(spec.frame_scores, UNKNOWN)
    loader = TableLoader(str(path), spec.max_frames, frame_score)
    return VideoSource(
        video_id=path.stem, patient_id=pid, hospital_id=spec.hospital, probe=spec.probe, label=UNKNOWN,
        video_score=score, source=str(path), loader=loader, patient_label=label,
        extra={"split": None, "frame_rate": info.get("fps"), "height": info["height"], "width": info["width"],
               "n_frames": min(n, spec.max_frames) if spec.max_frames and n else n}), None


def ingest_table(root, spec: TableSpec) -> IngestReport:
    """Scan the clips and tables a spec names (first frames only) -> IngestReport."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: not a directory")
    folder = _under(root, spec.videos)
    if not folder.is_dir():
        raise IngestError(f"{folder}: no such video folder (the spec's videos)")
    report = IngestReport()
    files = _video_files(folder, spec.glob, report)
    table = _under(root, spec.video_table)
    rows = _video_rows(table, spec, report)
    patients = None
    if spec.patient_table:
        patients, report.patient_classes = _patients(_under(root, spec.patient_table), spec, report)
    tried: dict[str, int] = {}
    for key, path in files.items():
        source, reason = _source(path, rows.get(key), patients, spec, table)
        if source is None:
            report.skip(path, reason)
        else:
            report.sources.append(source)
        pid = _patient_of(path, rows.get(key) or {"patient": None}, spec)[0]
        tried[pid] = tried.get(pid, 0) + 1
    for key in sorted(set(rows) - set(files), key=natural_key):
        report.skip(f"{table}#video={rows[key]['name']}",
                    f"no video file for this row (nothing matching {spec.glob!r} in {folder} has this name)")
    _report_patients_without_video(report, patients, tried, _under(root, spec.patient_table or "."), folder)
    report.sources.sort(key=lambda s: s.video_id)
    return report


def _report_patients_without_video(report: IngestReport, patients: dict | None, tried: dict,
                                   table: Path, folder: Path) -> None:
    ingested = {s.patient_id for s in report.sources}
    for pid in sorted(set(patients or ()) - ingested, key=natural_key):
        report.skip(f"{table}#patient={pid}",
                    f"none of this patient's {tried[pid]} video(s) could be ingested (see above)" if pid in tried
                    else f"no video of this patient in {folder}")
