"""Write one HDF5 shard of a pack plan, and tell whether a written shard is intact.

Crash safety lives here: a shard is written under a temporary name, renamed, and only
then gets its sidecar (`shard-NNNNN.h5.json`: checksum, counts, skips), so a shard with a
sidecar that matches its bytes and the plan is complete; anything else is re-written.
Videos that cannot be stored are skipped with a reason in the sidecar, never dropped
silently.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import h5py
import numpy as np

from data_prep.records import LoadedVideo, VideoSource
from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest
from lus_dist.io.video import keep_incomplete


def _problem(src: VideoSource, video: LoadedVideo) -> str | None:
    """Why a decoded video cannot be stored, or None. Reported per file, never dropped silently."""
    f = video.frames
    if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim not in (3, 4):
        return f"frames must be uint8 (T,H,W) or (T,H,W,3), got {getattr(f, 'dtype', type(f))} {getattr(f, 'shape', '')}"
    if len(f) == 0:
        return "0 frames"
    s = np.asarray(video.frame_scores)
    if s.shape != (len(f),):
        return f"{s.shape} frame scores for {len(f)} frames"
    if ((s < -1) | (s >= len(fmt.SCORE_CLASSES))).any():
        return f"frame score {int(s[(s < -1) | (s >= len(fmt.SCORE_CLASSES))][0])} outside -1..3"
    m = video.masks
    if m is not None and (m.shape != f.shape[:3]):
        return f"mask size mismatch: masks {m.shape}, frames {f.shape[:3]}"
    if m is not None and m.size and int(m.max()) >= len(fmt.MASK_CLASSES):
        return f"mask class id {int(m.max())} outside 0..{len(fmt.MASK_CLASSES) - 1}"
    return None


def _load(src: VideoSource, pre: fmt.Preprocessing, incomplete: str) -> tuple[LoadedVideo | None, dict]:
    """(video, {}) or (None, skip entry), and a clip that ended before its header's frame
    count is never silent: skipped with its counts, or kept (incomplete="keep") and
    listed in the entry's "incomplete" record."""
    try:
        with keep_incomplete() as cut:
            video = src.load(fit=functools.partial(fmt.fit_frame, pre=pre))
    except Exception as exc:  # decoder errors come in many types; all mean "skip, with reason"
        return None, {"path": str(src.source), "reason": f"cannot load: {type(exc).__name__}: {exc}"}
    counts = [{"path": c.path, "decoded": c.decoded, "expected": c.expected} for c in cut]
    if counts and incomplete != "keep":
        return None, {"path": str(src.source), "reason": f"{cut[0]} (pass --incomplete keep to store "
                      "the decoded frames)", "incomplete": counts}
    problem = _problem(src, video)
    if problem:
        return None, {"path": str(src.source), "reason": problem}
    return video, ({"path": str(src.source), "incomplete": counts} if counts else {})


def _append(f: h5py.File, name: str, data: np.ndarray, compression: str | None) -> None:
    if name not in f:
        shape = data.shape[1:]
        f.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=data.dtype,
                         chunks=(1,) + shape if shape else (4096,),
                         compression=compression if shape else None, track_times=fmt.H5_TRACK_TIMES)
    ds = f[name]
    n = ds.shape[0]
    ds.resize(n + len(data), axis=0)
    ds[n:] = data


def _write_video(f, v: int, video: LoadedVideo, plan: Manifest, pre, comp) -> int:
    frames = fmt.preprocess_clip(video.frames, pre)
    t = len(frames)
    _append(f, fmt.DS_FRAMES, frames, comp)
    _append(f, fmt.DS_SCORES, np.asarray(video.frame_scores, np.int16), comp)
    _append(f, fmt.DS_LABELS, np.full(t, plan.videos["label"][v], np.int16), comp)
    _append(f, fmt.DS_VIDEO, np.full(t, v, np.int32), comp)
    _append(f, fmt.DS_FRAME, np.arange(t, dtype=np.int32), comp)
    _append(f, fmt.DS_PATIENT, np.full(t, plan.videos["patient"][v], np.int32), comp)
    if video.masks is not None:
        masks = np.stack([fmt.preprocess_mask(m, pre) for m in video.masks])
        n_before = f[fmt.DS_FRAMES].shape[0] - t
        if fmt.DS_MASKS not in f and n_before:   # earlier videos had none: background + flag
            _append(f, fmt.DS_MASKS, np.zeros((n_before, pre.size, pre.size), np.uint8), comp)
            _append(f, fmt.DS_HAS_MASK, np.zeros(n_before, np.uint8), comp)
        _append(f, fmt.DS_MASKS, masks, comp)
        _append(f, fmt.DS_HAS_MASK, np.ones(t, np.uint8), comp)
    elif fmt.DS_MASKS in f:
        _append(f, fmt.DS_MASKS, np.zeros((t, pre.size, pre.size), np.uint8), comp)
        _append(f, fmt.DS_HAS_MASK, np.zeros(t, np.uint8), comp)
    return t


def _shard_attrs(f, index: int, plan: Manifest, rows: np.ndarray, n: int, skipped: list) -> None:
    a = f.attrs
    a[fmt.ATTR_SCHEMA] = fmt.SCHEMA_VERSION
    a[fmt.ATTR_INDEX] = index
    a[fmt.ATTR_N_FRAMES] = n
    a[fmt.ATTR_PLAN_HASH] = plan.plan_hash
    a[fmt.ATTR_LAYOUT] = fmt.FRAME_LAYOUT
    a[fmt.ATTR_VIDEO_IDS] = [str(x) for x in plan.videos["video_id"][rows]]
    a[fmt.ATTR_SCORE_CLASSES] = list(fmt.SCORE_CLASSES)
    a[fmt.ATTR_VIDEO_CLASSES] = list(fmt.VIDEO_CLASSES)
    a[fmt.ATTR_MASK_CLASSES] = list(fmt.MASK_CLASSES)
    a[fmt.ATTR_PREPROCESSING] = json.dumps(plan.preprocessing, sort_keys=True)
    a[fmt.ATTR_SKIPPED] = json.dumps(skipped, sort_keys=True)
    a[fmt.ATTR_DESCRIPTION] = fmt.SHARD_DESCRIPTION


def write_shard(out: Path, index: int, plan: Manifest, sources: list[VideoSource | None],
                pre: fmt.Preprocessing, compression: str, incomplete: str = "skip") -> dict:
    """Write shard `index` under a temporary name, rename it, then write its sidecar.
    `sources[v]` is the source of plan video row v (None for rows of earlier versions)."""
    rows = np.flatnonzero(plan.videos["shard"] == index)
    name = fmt.shard_name(index)
    tmp = out / f"{name}.{os.getpid()}{fmt.TMP_SUFFIX}"
    comp = None if compression == "none" else compression
    counts, skipped, kept_incomplete = [], [], []
    with h5py.File(tmp, "w", libver=fmt.H5_LIBVER) as f:
        for v in rows:
            video, note = _load(sources[v], pre, incomplete)
            if video is None:
                skipped.append(note)
                counts.append(0)
                continue
            if note:
                kept_incomplete.append(note)
            counts.append(_write_video(f, int(v), video, plan, pre, comp))
        _shard_attrs(f, index, plan, rows, sum(counts), skipped)
    info = {"name": name, "bytes": tmp.stat().st_size, "sha256": fmt.file_checksum(tmp),
            "n_frames": sum(counts), "video_frames": counts, "skipped": skipped,
            "kept_incomplete": kept_incomplete, "plan_hash": plan.plan_hash}
    os.replace(tmp, out / name)
    side = out / (name + fmt.SIDECAR_SUFFIX)
    side_tmp = side.with_name(f"{side.name}.{os.getpid()}{fmt.TMP_SUFFIX}")
    side_tmp.write_text(json.dumps(info, sort_keys=True))
    os.replace(side_tmp, side)
    return info


def shard_status(out: Path, index: int, plan_hash: str) -> tuple[dict | None, str]:
    """(sidecar info, "") when shard `index` is complete and intact for this plan, else
    (None, what is wrong). Used by resume and by finalize."""
    name = fmt.shard_name(index)
    path, side = out / name, out / (name + fmt.SIDECAR_SUFFIX)
    if not path.exists():
        return None, "missing (its pack task has not written it, or was killed before renaming it)"
    if not side.exists():
        return None, f"no {side.name}: written by an interrupted task"
    try:
        info = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None, f"{side.name} is not valid JSON"
    if info.get("plan_hash") != plan_hash:
        return None, "belongs to a different pack plan (other sources or settings)"
    size = path.stat().st_size
    if size != info["bytes"]:
        return None, f"{'truncated' if size < info['bytes'] else 'grown'}: {size} bytes, expected {info['bytes']}"
    if fmt.file_checksum(path) != info["sha256"]:
        return None, "SHA-256 mismatch: the file changed after it was written (bit rot or partial copy)"
    return info, ""
