"""`lus prep validate DIR`: re-check a shard directory against its manifest.

Every problem is collected (not just the first) so one run tells the user which shards to
re-pack: missing, truncated or grown, bit-flipped (checksum), unreadable HDF5, counts or
attributes that disagree with the manifest, shard files the manifest does not list, and
leftovers of interrupted writers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest, ManifestError, available_versions, version_file

_PER_FRAME = (fmt.DS_FRAMES, fmt.DS_SCORES, fmt.DS_LABELS, fmt.DS_VIDEO, fmt.DS_FRAME, fmt.DS_PATIENT)


@dataclass(frozen=True)
class Problem:
    name: str    # file name inside the directory
    what: str

    def __str__(self) -> str:
        return f"{self.name}: {self.what}"


def _content_problems(path: Path, index: int, m: Manifest) -> list[str]:
    """Structure checks after the checksum matched (catches a manifest/shard mix-up)."""
    n = int(m.shards["n_frames"][index])
    try:
        with h5py.File(path, "r", locking=False) as f:
            out = [f"dataset {d!r} missing" for d in _PER_FRAME if d not in f]
            out += [f"dataset {d!r} has {len(f[d])} rows, manifest says {n}"
                    for d in _PER_FRAME if d in f and len(f[d]) != n]
            if f.attrs.get(fmt.ATTR_PLAN_HASH) != m.shards["plan_hash"][index]:
                out.append("plan hash differs from the manifest's: shard from another pack")
            if int(f.attrs.get(fmt.ATTR_INDEX, -1)) != index:
                out.append(f"shard_index attribute is {f.attrs.get(fmt.ATTR_INDEX)}, expected {index}")
            if fmt.DS_VIDEO in f and len(f[fmt.DS_VIDEO]) == n:
                rows = m.videos["shard"] == index
                expect = np.repeat(np.flatnonzero(rows), m.videos["n_frames"][rows])
                if not np.array_equal(f[fmt.DS_VIDEO][:], expect):
                    out.append("per-frame video index disagrees with the manifest video table")
            if m.frames is not None and fmt.DS_SCORES in f and len(f[fmt.DS_SCORES]) == n:
                start = int(m.shards["n_frames"][:index].sum())
                if not np.array_equal(f[fmt.DS_SCORES][:], m.frames["score"][start:start + n]):
                    out.append("frame scores disagree with the manifest's frame columns (the reader's index)")
            return out
    except OSError as exc:
        return [f"unreadable HDF5 ({exc})"]


def _shard_problems(root: Path, index: int, m: Manifest) -> list[str]:
    name = str(m.shards["name"][index])
    path = root / name
    if not path.is_file():
        return ["missing"]
    size, expected = path.stat().st_size, int(m.shards["bytes"][index])
    if size != expected:
        kind = "truncated" if size < expected else "larger than recorded"
        return [f"{kind}: {size} bytes, manifest says {expected}"]
    digest = fmt.file_checksum(path)
    if digest != m.shards["sha256"][index]:
        return [f"SHA-256 mismatch (bit flip or modified file): {digest[:16]}..., "
                f"manifest says {m.shards['sha256'][index][:16]}..."]
    return _content_problems(path, index, m)


def _version_problems(root: Path, newest: Manifest) -> list[Problem]:
    """Every manifest version loads (its tables verify) and is a prefix of the newest: an
    append never changes the shards or the video rows an older version describes."""
    out = []
    for version in available_versions(root):
        name = version_file(version) if (root / version_file(version)).is_file() else fmt.MANIFEST_NAME
        try:
            old = Manifest.load(root, version=version)
            meta = json.loads((root / name).read_text())
        except (ManifestError, ValueError) as exc:
            out.append(Problem(name, str(exc)))
            continue
        tables = meta.get("tables")
        if tables and fmt.file_checksum(root / tables["file"]) != tables["sha256"]:
            out.append(Problem(tables["file"], "SHA-256 mismatch with " + name))
        n_s, n_v = len(old.shards["name"]), old.n_videos
        same = all(np.array_equal(old.shards[c], newest.shards[c][:n_s]) for c in ("name", "sha256", "bytes")) \
            and all(np.array_equal(old.videos[c], newest.videos[c][:n_v])
                    for c in ("video_id", "patient_id", "split", "fold", "shard", "offset", "n_frames"))
        if not same:
            out.append(Problem(name, f"version {version} is not a prefix of version {newest.version}: "
                                     "shards or video assignments changed after it was written"))
    return out


def validate(root: str | Path) -> list[Problem]:
    """All problems of a shard directory (every shard of the newest manifest version, and
    every older version's consistency with it); empty means it verifies."""
    root = Path(root)
    try:
        m = Manifest.load(root)
    except ManifestError as exc:
        return [Problem(fmt.MANIFEST_NAME, str(exc))]
    problems = [Problem(str(name), what) for i, name in enumerate(m.shards["name"])
                for what in _shard_problems(root, i, m)]
    listed = set(m.shards["name"].tolist())
    problems += [Problem(p.name, "extra shard file not listed in the manifest")
                 for p in sorted(root.glob(fmt.SHARD_GLOB)) if p.name not in listed]
    problems += [Problem(p.name, "leftover temporary file of an interrupted pack (safe to delete)")
                 for p in sorted(root.glob(f"*{fmt.TMP_SUFFIX}"))]
    problems += _version_problems(root, m)
    if int(m.videos["n_frames"].sum()) != m.n_frames:
        problems.append(Problem(fmt.MANIFEST_NAME, f"video table counts {int(m.videos['n_frames'].sum())} "
                                                   f"frames, shard table {m.n_frames}"))
    return problems


def report(root: str | Path) -> tuple[int, str]:
    """(exit code, text) for the CLI."""
    problems = validate(root)
    if not problems:
        m = Manifest.load(root)
        return 0, (f"{root}: OK: version {m.version}: {len(m.shards['name'])} shards, {m.n_videos} videos, "
                   f"{m.n_frames} frames verify (SHA-256, counts, attributes, "
                   f"{len(available_versions(root))} manifest version(s))")
    bad = sorted({p.name for p in problems})
    lines = [f"{root}: {len(problems)} problem(s) in {len(bad)} file(s): {', '.join(bad)}"]
    return 1, "\n".join(lines + [f"  {p}" for p in problems])
