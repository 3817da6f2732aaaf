"""Finish a pack: check its new shards, complete the plan into a manifest version, save it.

`lus prep finalize DIR` (after a Slurm array) and `pack` (one task) end here. Shards a
previous version already verified (an `--append`) are only checked to exist with their
recorded size: they are never reopened for writing, and `lus prep validate` re-checksums
the whole set. The per-frame columns the reader needs at start-up (score, has-mask) are
read once here from each new shard and carried over from the previous version for old
ones, so a reader opens no shard before its first sample.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from data_prep.records import PackError
from data_prep.shard_writer import shard_status
from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import FRAME_COLUMNS, Manifest


def shard_frame_columns(path: Path) -> dict[str, np.ndarray]:
    """(score, has_mask) per frame of one shard file, in row order."""
    with h5py.File(path, "r", locking=False) as f:
        scores = f[fmt.DS_SCORES][:] if fmt.DS_SCORES in f else np.zeros(0, np.int16)
        has = f[fmt.DS_HAS_MASK][:].astype(bool) if fmt.DS_HAS_MASK in f else np.zeros(len(scores), bool)
    return {"score": scores.astype(FRAME_COLUMNS["score"]), "has_mask": has}


def patient_table(videos: dict, labels: np.ndarray | None = None) -> dict:
    n = int(videos["patient"].max()) + 1 if len(videos["patient"]) else 0
    _, first = np.unique(videos["patient"], return_index=True)   # every index 0..n-1 has a video
    return {"patient_id": videos["patient_id"][first], "hospital_id": videos["hospital_id"][first],
            "n_videos": np.bincount(videos["patient"], minlength=n),
            "n_frames": np.bincount(videos["patient"], weights=np.maximum(videos["n_frames"], 0),
                                    minlength=n).astype(np.int64),
            "split": videos["split"][first],
            "label": np.full(n, fmt.UNKNOWN, np.int64) if labels is None else np.asarray(labels, np.int64)}


def _old_shard_problem(out: Path, plan: Manifest, i: int) -> str | None:
    path = out / str(plan.shards["name"][i])
    if not path.is_file():
        return f"missing (it belongs to version {int(plan.shards['version'][i])})"
    if path.stat().st_size != int(plan.shards["bytes"][i]):
        return (f"{path.stat().st_size} bytes, version {int(plan.shards['version'][i])} recorded "
                f"{int(plan.shards['bytes'][i])}: changed after it was packed")
    return None


def _check(out: Path, plan: Manifest) -> dict[int, dict]:
    """Sidecar info of every new shard; a PackError listing every shard that is not ready."""
    infos, bad = {}, []
    for i, name in enumerate(plan.shards["name"]):
        if plan.shards["sha256"][i]:
            why = _old_shard_problem(out, plan, i)
        else:
            infos[i], why = shard_status(out, i, plan.plan_hash)
        if why:
            bad.append(f"  {name}: {why}")
    if bad:
        raise PackError(f"finalize {out}: {len(bad)} of {len(plan.shards['name'])} shards not ready:\n"
                        + "\n".join(bad) + "\nre-run the pack tasks that own them (re-running skips "
                        "finished shards)")
    return infos


def frame_columns(out: Path, plan: Manifest) -> dict[str, np.ndarray]:
    """Per-frame columns of every shard, in shard order: carried over from the previous
    version where it has them, read from the shard otherwise."""
    prev = None
    if plan.version > 1 and (plan.shards["version"] < plan.version).any():   # an append
        prev = Manifest.load(out, version=plan.version - 1)
    prev_start = np.concatenate([[0], np.cumsum(prev.shards["n_frames"])]) if prev is not None else None
    parts: dict[str, list] = {c: [] for c in FRAME_COLUMNS}
    for i, name in enumerate(plan.shards["name"]):
        if prev is not None and prev.frames is not None and i < len(prev.shards["name"]):
            cols = {c: prev.frames[c][prev_start[i]:prev_start[i + 1]] for c in FRAME_COLUMNS}
        elif int(plan.shards["n_frames"][i]) == 0:
            cols = {c: np.zeros(0, t) for c, t in FRAME_COLUMNS.items()}
        else:
            cols = shard_frame_columns(out / str(name))
        for c in FRAME_COLUMNS:
            parts[c].append(cols[c])
    return {c: np.concatenate(parts[c]).astype(t) for c, t in FRAME_COLUMNS.items()}


def _complete(plan: Manifest, infos: dict[int, dict]) -> Manifest:
    v = plan.videos
    plan.shards["sha256"] = plan.shards["sha256"].astype("<U64")   # "" in the plan: room for digests
    for i, info in infos.items():
        rows = np.flatnonzero(v["shard"] == i)
        counts = np.asarray(info["video_frames"], dtype=np.int64)
        v["n_frames"][rows] = counts
        v["offset"][rows] = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for column in ("n_frames", "bytes", "sha256"):
            plan.shards[column][i] = info[column]
    plan.patients = patient_table(v, plan.patients["label"])
    new = [infos[i] for i in sorted(infos)]
    plan.provenance = {**plan.provenance,
                       "pack_skipped": [s for x in new for s in x["skipped"]],
                       "pack_incomplete_kept": [s for x in new for s in x.get("kept_incomplete", [])]}
    return plan


def finalize_pack(out: Path) -> Manifest:
    """Check every planned shard and write the plan's manifest version; list *all*
    missing/bad shards."""
    plan_path = out / fmt.PLAN_NAME
    if not plan_path.is_file():
        raise PackError(f"{plan_path} not found: run `lus prep pack ... --out {out}` first")
    plan = Manifest.from_json(plan_path.read_text(), str(plan_path))
    manifest = _complete(plan, _check(out, plan))
    manifest.frames = frame_columns(out, manifest)
    manifest.save_version(out)
    return manifest
