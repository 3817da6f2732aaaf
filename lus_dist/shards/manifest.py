"""`manifest.json`: what a shard directory holds, written last and atomically.

Tables are column-oriented (equal-length arrays by column name). Schema 2 and 3 keep only
the small metadata in JSON and the tables in a binary sidecar, `manifest-vNNNN.npz`
(per-video, per-patient and per-shard columns plus per-frame score/has-mask columns), so
a 10^6-frame set starts up from two file reads instead of parsing 10^5 JSON rows and
opening every shard. Schema 3 (this version) stores the per-video and per-patient strings
as UTF-8 bytes and keeps them so in memory (`Table`): numpy's str dtype spends 4 bytes a
character, so the ids and paths of a set of short clips cost more per frame than the
frame index itself in every rank and loader worker. Each pack or `--append` writes a new
*version* N: `manifest-vNNNN.json` + `.npz`, then `manifest.json` (a copy of the newest)
last; older versions stay, so a run can name the version it trained on. Schema 2
directories (str columns) load unchanged; schema 1 ones (tables inline in manifest.json,
no frame columns) load as version 1.
The plan (`plan.json`, the manifest minus what only writing reveals) keeps its tables
inline: every Slurm array task writes it identically and `finalize` completes it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lus_dist.shards.format import (MANIFEST_NAME, MASK_CLASSES, SCHEMA_VERSION, SCORE_CLASSES,
                                    TMP_SUFFIX, VIDEO_CLASSES)

LEGACY_SCHEMA = 1                      # tables inline in manifest.json, read as version 1
READABLE_SCHEMAS = (LEGACY_SCHEMA, 2, SCHEMA_VERSION)   # 2: str columns in the sidecar

VIDEO_COLUMNS = {  # column -> numpy dtype; row v describes global video index v
    "video_id": str, "patient_id": str, "hospital_id": str, "probe": str, "source": str,
    "label": np.int64, "video_score": np.int64, "n_frames": np.int64, "shard": np.int64,
    "offset": np.int64, "split": str, "fold": np.int64, "patient": np.int64,
}
PATIENT_COLUMNS = {"patient_id": str, "hospital_id": str, "n_videos": np.int64,
                   "n_frames": np.int64, "split": str,
                   "label": np.int64}   # patient-level target: index into classes["patient"], -1 unknown
# Columns added after schema 2 first shipped, with the value older manifests read as: the
# tables stay readable by older code (it ignores extra columns), so no schema bump.
ADDED_COLUMNS = {"patients": {"label": -1}}
SHARD_COLUMNS = {"name": str, "n_frames": np.int64, "n_videos": np.int64, "bytes": np.int64,
                 "sha256": str, "plan_hash": str, "version": np.int64}
FRAME_COLUMNS = {"score": np.int8, "has_mask": bool}   # one row per stored frame, shard order
_VERSION_RE = re.compile(r"^manifest-v(\d{4,})\.json$")


def version_file(version: int) -> str:
    return f"manifest-v{version:04d}.json"


def tables_file(version: int) -> str:
    return f"manifest-v{version:04d}.npz"


def available_versions(root: str | Path) -> list[int]:
    """Manifest versions present in a shard directory (a schema-1 directory has version 1)."""
    root = Path(root)
    found = sorted(int(m.group(1)) for p in root.glob("manifest-v*.json") if (m := _VERSION_RE.match(p.name)))
    return found or ([1] if (root / MANIFEST_NAME).is_file() else [])


class ManifestError(ValueError):
    """A shard directory whose manifest is missing, unreadable or of another schema."""


def _utf8(column: np.ndarray) -> np.ndarray:
    """str -> UTF-8 bytes ('S'). numpy holds str as 4-byte code points; when all are below
    128 (ASCII: the usual ids and paths) each narrows to its byte as a whole-array integer
    cast, far faster than numpy's per-string encoding (a schema-2 set converts at start-up)."""
    width = column.dtype.itemsize // 4
    points = np.ascontiguousarray(column).view(f"{column.dtype.byteorder}u4").reshape(len(column), width)
    if points.max(initial=0) < 128:
        return points.astype(np.uint8).view(f"S{width}").reshape(len(column))
    return np.strings.encode(column, "utf-8")


def _text(column: np.ndarray) -> np.ndarray:
    """UTF-8 bytes ('S') -> str, read-only (a write into the copy would be lost)."""
    try:
        out = column.astype(str)
    except UnicodeDecodeError:
        out = np.strings.decode(column, "utf-8")
    out.flags.writeable = False
    return out


class Table(Mapping):
    """Equal-length columns by name whose str columns are held as UTF-8 bytes: a byte an
    ASCII character instead of numpy's four. Reading a column gives a str array, so code
    that compares, filters or writes ids sees str; other columns are the stored arrays."""

    def __init__(self, columns: Mapping[str, np.ndarray]):
        arrays = {c: np.asarray(v) for c, v in columns.items()}   # int columns: the very arrays
        self._columns = {c: _utf8(v) if v.dtype.kind == "U" else v for c, v in arrays.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        column = self._columns[name]
        return _text(column) if column.dtype.kind == "S" else column

    def __iter__(self):
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def stored(self) -> dict[str, np.ndarray]:
        """The columns as held (str columns as bytes): what the sidecar stores."""
        return dict(self._columns)

    def __repr__(self) -> str:
        return f"Table({ {c: str(v.dtype) for c, v in self._columns.items()} })"


def _table(raw: Mapping[str, list], columns: dict[str, type], where: str,
           added: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    raw = _with_added(raw, added or {})
    missing = sorted(set(columns) - set(raw))
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}")
    lengths = {len(raw[c]) for c in columns}
    if len(lengths) > 1:
        raise ManifestError(f"{where}: columns have different lengths {sorted(lengths)}")
    return {c: _column(raw[c], t) for c, t in columns.items()}


def _column(values, dtype: type) -> np.ndarray:
    """A stored column as its declared type; stored UTF-8 bytes stay bytes (Table reads them)."""
    if not len(values):
        return np.zeros(0, dtype=dtype)
    if dtype is str and isinstance(values, np.ndarray) and values.dtype.kind == "S":
        return values
    return np.asarray(values, dtype=dtype)


def _with_added(raw: dict, added: dict[str, Any]) -> dict:
    """A table written before `added`'s columns existed, with them filled by their defaults."""
    absent = {c: v for c, v in added.items() if c not in raw}
    if not absent or not raw:
        return raw
    n = len(next(iter(raw.values())))
    return {**raw, **{c: [v] * n for c, v in absent.items()}}


def _legacy_shards(raw: dict, plan_hash: str) -> dict:
    """Schema-1 shard tables lack the per-shard plan hash and version: one pack, version 1."""
    n = len(raw.get("name", []))
    return {"plan_hash": [plan_hash] * n, "version": [1] * n, **raw}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed member timestamps, so equal tables give equal bytes (checksums)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def _read_npz(path: Path) -> dict[str, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            tables: dict[str, dict[str, np.ndarray]] = {}
            for key in z.files:
                table, column = key.split(".", 1)
                tables.setdefault(table, {})[column] = z[key]
            return tables
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ManifestError(f"{path}: unreadable manifest tables ({exc}); run `lus prep validate`") from None


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary name unique per host and process, fsync, rename: readers never
    see half a file, and array tasks on several nodes can write the same file at once."""
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _plain(table: dict[str, np.ndarray]) -> dict[str, list]:
    return {c: np.asarray(v).tolist() for c, v in table.items()}


@dataclass
class Manifest:
    videos: Table                      # any mapping of columns given becomes a Table
    patients: Table
    shards: dict[str, np.ndarray]
    preprocessing: dict[str, Any]
    splits: dict[str, Any]             # how split/fold were assigned (method, k, seed, ...)
    provenance: dict[str, Any]         # layout, source root, skip report, library versions
    plan_hash: str = ""
    schema_version: int = SCHEMA_VERSION
    classes: dict[str, list[str]] = field(default_factory=lambda: {
        "score": list(SCORE_CLASSES), "video": list(VIDEO_CLASSES), "mask": list(MASK_CLASSES)})
    version: int = 1                   # 1 for a fresh pack, +1 per `lus prep pack --append`
    frames: dict[str, np.ndarray] | None = None   # FRAME_COLUMNS; None in plans and schema 1

    def __setattr__(self, name: str, value) -> None:
        if name in ("videos", "patients") and not isinstance(value, Table):
            value = Table(value)
        super().__setattr__(name, value)

    @property
    def n_frames(self) -> int:
        return int(self.shards["n_frames"].sum())

    @property
    def n_videos(self) -> int:
        return len(self.videos["label"])

    @property
    def complete(self) -> bool:
        """True once every shard has a checksum (finalize ran)."""
        return bool(len(self.shards["sha256"])) and all(self.shards["sha256"])

    @property
    def patient_classes(self) -> list[str]:
        """Names of the patient-level target (e.g. a PCR result); [] when the pack has none."""
        return list(self.classes.get("patient", []))

    def video_patient_labels(self) -> np.ndarray:
        """Each video's patient-level target (-1 unknown): the patient table is its one home."""
        return self.patients["label"][self.videos["patient"]]

    def _meta(self) -> dict:
        return {"schema_version": self.schema_version, "plan_hash": self.plan_hash,
                "version": self.version, "classes": self.classes,
                "preprocessing": self.preprocessing, "splits": self.splits,
                "provenance": self.provenance}

    def to_json(self) -> str:
        """Everything inline (the plan, and the text the plan hash is taken of)."""
        data = {**self._meta(), "shards": _plain(self.shards), "videos": _plain(self.videos),
                "patients": _plain(self.patients)}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME, root: Path | None = None) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not valid JSON ({exc})") from None
        version = data.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise ManifestError(f"{where}: schema version {version!r}, this reader knows "
                                f"{', '.join(map(str, READABLE_SCHEMAS))}; re-pack with this version of lus-dist")
        try:
            if "tables" in data:
                raw = _read_npz((root or Path(where).parent) / data["tables"]["file"])
                frames = _table(raw.get("frames", {}), FRAME_COLUMNS, f"{where} frames")
            else:
                raw = {k: data[k] for k in ("videos", "patients", "shards")}
                raw["shards"] = _legacy_shards(raw["shards"], data.get("plan_hash", "")) \
                    if version == LEGACY_SCHEMA else raw["shards"]
                frames = None
            return cls(videos=_table(raw["videos"], VIDEO_COLUMNS, f"{where} videos"),
                       patients=_table(raw["patients"], PATIENT_COLUMNS, f"{where} patients",
                                       ADDED_COLUMNS["patients"]),
                       shards=_table(raw["shards"], SHARD_COLUMNS, f"{where} shards"),
                       preprocessing=data["preprocessing"], splits=data["splits"],
                       provenance=data["provenance"], plan_hash=data.get("plan_hash", ""),
                       schema_version=version, classes=data["classes"],
                       version=int(data.get("version", 1)), frames=frames)
        except KeyError as exc:
            raise ManifestError(f"{where}: missing key {exc}") from None

    def save_plan(self, path: str | Path) -> Path:
        """The plan, tables inline (array tasks on several nodes write it concurrently)."""
        path = Path(path)
        _atomic_write(path, lambda fh: fh.write(self.to_json().encode()))
        return path

    def save_version(self, root: str | Path) -> Path:
        """Write version `self.version`: its tables, its JSON, then manifest.json (last, so
        its presence still means "complete"). Needs the frame columns (finalize has them)."""
        root = Path(root)
        if self.frames is None:
            raise ManifestError(f"{root}: version {self.version} has no frame columns to save")
        self.schema_version = SCHEMA_VERSION
        arrays = {f"{t}.{c}": np.asarray(v) for t, table in (
            ("videos", self.videos.stored()), ("patients", self.patients.stored()),
            ("shards", self.shards), ("frames", self.frames)) for c, v in table.items()}
        tables = root / tables_file(self.version)
        _atomic_write(tables, lambda fh: _write_npz(fh, arrays))
        digest = hashlib.sha256(tables.read_bytes()).hexdigest()
        meta = {**self._meta(), "tables": {"file": tables.name, "sha256": digest,
                                           "bytes": tables.stat().st_size},
                "n_frames": self.n_frames, "n_videos": self.n_videos,
                "n_shards": len(self.shards["name"])}
        text = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
        _atomic_write(root / version_file(self.version), lambda fh: fh.write(text))
        _atomic_write(root / MANIFEST_NAME, lambda fh: fh.write(text))
        return root / MANIFEST_NAME

    @classmethod
    def load(cls, root_or_file: str | Path, version: int | None = None) -> "Manifest":
        """The newest version of a shard directory (or a given .json file), or `version`."""
        path = Path(root_or_file)
        if path.suffix != ".json":
            if not path.is_dir():
                raise ManifestError(f"{path}: no such shard directory")
            path = path / _version_path(path, version)
        elif version is not None:
            raise ManifestError(f"{path}: pass the shard directory, not a file, to pick version {version}")
        if not path.is_file():
            raise ManifestError(f"{path} not found: the pack is not finished "
                                f"(run `lus prep finalize {path.parent}`) or this is not a shard directory")
        return cls.from_json(path.read_text(), str(path), path.parent)


def _version_path(root: Path, version: int | None) -> str:
    """File name holding `version` (None: the newest), or a ManifestError listing those present."""
    if version is None:
        return MANIFEST_NAME
    have = available_versions(root)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or int(version) not in have:
        raise ManifestError(f"{root}: no manifest version {version!r}; this directory has "
                            f"version(s) {have or 'none'}")
    if (root / version_file(int(version))).is_file():
        return version_file(int(version))
    return MANIFEST_NAME                  # schema 1: the only version
