"""`manifest.json`: what a shard directory holds, written last and atomically.

Tables are column-oriented (a dict of equal-length arrays) so a 100k-frame dataset loads
into numpy index arrays without a Python loop per row, and the JSON stays diff-able.
The same structure without checksums is the pack *plan* (`plan.json`), which every Slurm
array task writes identically and `finalize` completes.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lus_dist.shards.format import (MANIFEST_NAME, MASK_CLASSES, SCHEMA_VERSION, SCORE_CLASSES,
                                    TMP_SUFFIX, VIDEO_CLASSES)

VIDEO_COLUMNS = {  # column -> numpy dtype; row v describes global video index v
    "video_id": str, "patient_id": str, "hospital_id": str, "probe": str, "source": str,
    "label": np.int64, "video_score": np.int64, "n_frames": np.int64, "shard": np.int64,
    "offset": np.int64, "split": str, "fold": np.int64, "patient": np.int64,
}
PATIENT_COLUMNS = {"patient_id": str, "hospital_id": str, "n_videos": np.int64,
                   "n_frames": np.int64, "split": str}
SHARD_COLUMNS = {"name": str, "n_frames": np.int64, "n_videos": np.int64, "bytes": np.int64,
                 "sha256": str}


class ManifestError(ValueError):
    """A shard directory whose manifest is missing, unreadable or of another schema."""


def _table(raw: dict[str, list], columns: dict[str, type], where: str) -> dict[str, np.ndarray]:
    missing = sorted(set(columns) - set(raw))
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}")
    lengths = {len(raw[c]) for c in columns}
    if len(lengths) > 1:
        raise ManifestError(f"{where}: columns have different lengths {sorted(lengths)}")
    return {c: np.asarray(raw[c], dtype=t) if raw[c] else np.zeros(0, dtype=t)
            for c, t in columns.items()}


def _plain(table: dict[str, np.ndarray]) -> dict[str, list]:
    return {c: np.asarray(v).tolist() for c, v in table.items()}


@dataclass
class Manifest:
    videos: dict[str, np.ndarray]
    patients: dict[str, np.ndarray]
    shards: dict[str, np.ndarray]
    preprocessing: dict[str, Any]
    splits: dict[str, Any]             # how split/fold were assigned (method, k, seed, ...)
    provenance: dict[str, Any]         # layout, source root, skip report, library versions
    plan_hash: str = ""
    schema_version: int = SCHEMA_VERSION
    classes: dict[str, list[str]] = field(default_factory=lambda: {
        "score": list(SCORE_CLASSES), "video": list(VIDEO_CLASSES), "mask": list(MASK_CLASSES)})

    @property
    def n_frames(self) -> int:
        return int(self.shards["n_frames"].sum())

    @property
    def n_videos(self) -> int:
        return len(self.videos["video_id"])

    @property
    def complete(self) -> bool:
        """True once every shard has a checksum (finalize ran)."""
        return bool(len(self.shards["sha256"])) and all(self.shards["sha256"])

    def to_json(self) -> str:
        data = {"schema_version": self.schema_version, "plan_hash": self.plan_hash,
                "classes": self.classes, "preprocessing": self.preprocessing,
                "splits": self.splits, "provenance": self.provenance,
                "shards": _plain(self.shards), "videos": _plain(self.videos),
                "patients": _plain(self.patients)}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not valid JSON ({exc})") from None
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"{where}: schema version {version!r}, this reader expects "
                                f"{SCHEMA_VERSION}; re-pack with this version of lus-dist")
        try:
            return cls(videos=_table(data["videos"], VIDEO_COLUMNS, f"{where} videos"),
                       patients=_table(data["patients"], PATIENT_COLUMNS, f"{where} patients"),
                       shards=_table(data["shards"], SHARD_COLUMNS, f"{where} shards"),
                       preprocessing=data["preprocessing"], splits=data["splits"],
                       provenance=data["provenance"], plan_hash=data.get("plan_hash", ""),
                       schema_version=version, classes=data["classes"])
        except KeyError as exc:
            raise ManifestError(f"{where}: missing key {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write to a temporary name, fsync, then rename: readers never see half a file.
        The temporary name is unique per host and process: array tasks on several nodes
        write the same plan.json concurrently on a shared file system."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}{TMP_SUFFIX}")
        with open(tmp, "w") as fh:
            fh.write(self.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, root_or_file: str | Path) -> "Manifest":
        path = Path(root_or_file)
        if path.suffix != ".json":
            if not path.is_dir():
                raise ManifestError(f"{path}: no such shard directory")
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path} not found: the pack is not finished "
                                f"(run `lus prep finalize {path.parent}`) or this is not a shard directory")
        return cls.from_json(path.read_text(), str(path))
