"""Map-style dataset over a shard directory.

HDF5 handles are opened lazily, per process: an h5py file inherited through fork shares
library state with the parent and breaks in subtle ways, so the dataset remembers which
pid opened its handles and reopens after a fork (DataLoader workers) or unpickling
(spawn). The index (which shard/row each item reads) lives in numpy arrays built from
the manifest; at construction the small per-frame arrays are read and the files closed
again, so nothing is held open before workers fork.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest
from lus_dist.shards.partition import epoch_rng
from lus_dist.shards.splits import SPLITS


def _as_set(value) -> set | None:
    if value is None:
        return None
    return {value} if isinstance(value, (str, int, np.integer)) else set(value)


def select_videos(videos: dict, split=None, folds: Iterable[int] | None = None,
                  exclude_folds: Iterable[int] | None = None, patients=None, probes=None) -> np.ndarray:
    """Boolean mask over the manifest video table (pure). Filters combine with AND."""
    keep = videos["n_frames"] > 0
    for column, wanted in (("split", _as_set(split)), ("fold", _as_set(folds)),
                           ("patient_id", _as_set(patients)), ("probe", _as_set(probes))):
        if wanted is not None:
            keep &= np.isin(videos[column], list(wanted))
    if split is not None and not _as_set(split) <= set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(_as_set(split) - set(SPLITS))}; splits are {SPLITS}")
    if exclude_folds is not None:
        keep &= ~np.isin(videos["fold"], list(_as_set(exclude_folds)))
    return keep


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s+k) for each (s, k), without a Python loop (pure)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(np.asarray(starts, np.int64) - (ends - lengths), lengths) + np.arange(total)


def clip_indices(n_frames: int, clip_len: int, sampling: str, rng: np.random.Generator | None) -> np.ndarray:
    """Frame indices of one clip (pure). "uniform": evenly spaced over the whole video, as
    Barros et al.; "random": a random window of consecutive frames. Videos shorter than
    the clip repeat frames (uniform) or their last frame (random)."""
    if sampling == "uniform":
        return np.linspace(0, n_frames - 1, clip_len).round().astype(np.int64)
    if sampling == "random":
        start = int(rng.integers(0, max(n_frames - clip_len, 0) + 1))
        return np.minimum(start + np.arange(clip_len), n_frames - 1)
    raise ValueError(f"clip_sampling must be 'uniform' or 'random', got {sampling!r}")


class ShardDataset(Dataset):
    """Frames (mode="frame") or fixed-length clips per video (mode="clip") from shards.

    Frame item: image float32 (C,H,W) in [0,1], score, label, video, frame (+ mask (H,W)
    with `with_masks`, which keeps only frames whose mask is an annotation). Clip item:
    frames float32 (T,C,H,W), label, video. `channels` converts on the fly (1 <-> 3).
    `locking=False` opens read-only without HDF5 file locking (needed on many NFS/Lustre
    mounts; safe because shards never change after packing). Random clips depend on
    (seed, epoch, item), not on the worker that reads them; call `set_epoch` each epoch.
    `manifest_version` reads the set as that version of the manifest saw it (default: the
    newest; `lus prep pack --append` adds versions); an unknown version is a ManifestError
    naming the versions present. Each process keeps at most `max_open_shards` shard files
    open (least recently used closed first).
    """

    def __init__(self, root, split=None, folds=None, exclude_folds=None, mode: str = "frame",
                 clip_len: int = 10, clip_sampling: str = "uniform", with_masks: bool = False,
                 channels: int | None = None, patients=None, probes=None, locking: bool = False,
                 seed: int = 0, manifest_version: int | None = None, max_open_shards: int = 128,
                 manifest: Manifest | None = None):
        if mode not in ("frame", "clip"):
            raise ValueError(f"mode must be 'frame' or 'clip', got {mode!r}")
        self.root, self.mode, self.clip_len, self.clip_sampling = Path(root), mode, clip_len, clip_sampling
        self.with_masks, self.locking, self.seed, self.epoch = with_masks, locking, seed, 0
        self.max_open_shards = max(1, max_open_shards)
        # a caller that already loaded the manifest (to pick the videos) passes it in
        self.manifest = manifest or Manifest.load(self.root, version=manifest_version)
        for column in ("sha256", "plan_hash", "bytes", "version"):   # validate's, not the reader's
            self.manifest.shards.pop(column, None)
        self.stored_channels = int(self.manifest.preprocessing["channels"])
        self.channels = channels or self.stored_channels
        v = self.manifest.videos
        self.video_rows = np.flatnonzero(select_videos(v, split, folds, exclude_folds, patients, probes))
        self._build_index(v)
        self._pid, self._files = None, {}

    def _small_columns(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, has_mask) of one shard, read and closed again (nothing open at fork);
        only for schema-1 manifests, which do not carry the frame columns."""
        path = self.root / self.manifest.shards["name"][shard]
        try:
            with h5py.File(path, "r", locking=self.locking) as f:
                scores = f[fmt.DS_SCORES][:]
                has = f[fmt.DS_HAS_MASK][:].astype(bool) if fmt.DS_HAS_MASK in f else np.zeros(len(scores), bool)
        except (OSError, KeyError) as exc:
            raise OSError(f"{path}: cannot read the shard index ({exc}); run `lus prep validate {self.root}`") from None
        return scores, has

    def _frame_columns(self, row: np.ndarray, frame_shard: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score and has-mask of the selected frames: from the manifest's frame columns (no
        shard opened), or, for a schema-1 manifest, from each shard once."""
        m = self.manifest
        if m.frames is not None:
            start = np.concatenate([[0], np.cumsum(m.shards["n_frames"])[:-1]])
            at = start[frame_shard] + row
            return m.frames["score"][at], m.frames["has_mask"][at]
        score, has = np.zeros(len(row), np.int8), np.zeros(len(row), bool)
        for s in np.unique(frame_shard):
            sel = frame_shard == s
            scores, has_mask = self._small_columns(int(s))
            score[sel], has[sel] = scores[row[sel]], has_mask[row[sel]]
        return score, has

    def _build_index(self, v: dict) -> None:
        """Compact per-item numpy arrays (int32 positions, int8 classes: 18 bytes per frame),
        then the manifest's frame columns are dropped: each loader worker holds these and the
        per-video tables (their strings as bytes, manifest.Table)."""
        rows = self.video_rows
        shard, offset, n = v["shard"][rows], v["offset"][rows], v["n_frames"][rows]
        frame = ranges(np.zeros(len(n), np.int64), n)
        row, frame_shard = np.repeat(offset, n) + frame, np.repeat(shard, n)
        score, has = self._frame_columns(row, frame_shard)
        self.manifest.frames = None
        if self.mode == "frame":
            keep = has if self.with_masks else slice(None)
            self.shard_ids, self.rows = frame_shard[keep].astype(np.int32), row[keep].astype(np.int32)
            self.video_index = np.repeat(rows, n)[keep].astype(np.int32)
            self.frame_index = frame[keep].astype(np.int32)
            self.frame_scores = score[keep].astype(np.int8)
            self.labels = v["label"][self.video_index].astype(np.int8)
        else:
            self.frame_scores = score.astype(np.int8)
            self.shard_ids, self.rows, self.video_index, self.n_frames = shard, offset, rows, n
            self.labels = v["label"][rows]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def epoch_dependent(self) -> bool:
        """Items change with the epoch (random clip windows): loader workers must then be
        re-created each epoch to see `set_epoch`, so they cannot persist."""
        return self.mode == "clip" and self.clip_sampling == "random"

    def __len__(self) -> int:
        return len(self.shard_ids)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pid"], state["_files"] = None, {}
        return state

    def _dataset(self, shard: int, name: str) -> h5py.Dataset:
        """The dataset `name` of a shard, through a per-process LRU of open files (at most
        max_open_shards: an open HDF5 file costs ~0.5 MB, so 10^4 open shards would cost
        GBs per worker; the sampler's windowed mix keeps the working set below the bound)."""
        if self._pid != os.getpid():   # first use in this process: drop inherited handles
            self._pid, self._files = os.getpid(), OrderedDict()
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            if len(self._files) >= self.max_open_shards:
                self._files.popitem(last=False)[1][0].close()
            path = self.root / self.manifest.shards["name"][shard]
            self._files[shard] = (h5py.File(path, "r", locking=self.locking, rdcc_nbytes=0), {})
        f, cache = self._files[shard]
        if name not in cache:
            cache[name] = f[name]
        return cache[name]

    def _row(self, shard: int, name: str, row: int) -> np.ndarray:
        """One frame (or mask). Unfiltered one-frame chunks are read as raw chunk bytes:
        HDF5's selection machinery costs more than the read itself for a 64 KiB frame."""
        ds = self._dataset(shard, name)
        cache = self._files[shard][1]
        if (name, "direct") not in cache:
            cache[name, "direct"] = (ds.chunks == (1,) + ds.shape[1:] and ds.dtype == np.uint8
                                     and ds.id.get_create_plist().get_nfilters() == 0)
        if cache[name, "direct"]:
            raw = ds.id.read_direct_chunk((row,) + (0,) * (ds.ndim - 1))[1]
            return np.frombuffer(raw, dtype=np.uint8).reshape(ds.shape[1:]).copy()
        return ds[row]

    def _image(self, raw: np.ndarray) -> torch.Tensor:
        """uint8 (..., H, W, C) -> float32 (..., C, H, W) in [0,1], channel count converted."""
        x = torch.from_numpy(np.ascontiguousarray(raw)).movedim(-1, -3).float().div_(255.0)
        if self.channels != self.stored_channels:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:]).clone() if self.channels == 3 \
                else (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(-3, keepdim=True)
        return x

    def __getitem__(self, i: int) -> dict:
        s, r = int(self.shard_ids[i]), int(self.rows[i])
        if self.mode == "clip":
            return self._clip(i, s, r)
        item = {"image": self._image(self._row(s, fmt.DS_FRAMES, r)),
                "score": torch.tensor(self.frame_scores[i], dtype=torch.int64),
                "label": torch.tensor(self.labels[i], dtype=torch.int64),
                "video": torch.tensor(self.video_index[i], dtype=torch.int64),
                "frame": torch.tensor(self.frame_index[i], dtype=torch.int64)}
        if self.with_masks:
            item["mask"] = torch.from_numpy(self._row(s, fmt.DS_MASKS, r).astype(np.int64))
        return item

    def _clip(self, i: int, s: int, offset: int) -> dict:
        rng = epoch_rng(self.seed, self.epoch, i) if self.clip_sampling == "random" else None
        idx = clip_indices(int(self.n_frames[i]), self.clip_len, self.clip_sampling, rng)
        uniq, inverse = np.unique(idx, return_inverse=True)   # h5py wants increasing indices
        raw = self._dataset(s, fmt.DS_FRAMES)[(offset + uniq).tolist()][inverse]
        return {"frames": self._image(raw),
                "label": torch.tensor(self.labels[i], dtype=torch.int64),
                "video": torch.tensor(self.video_index[i], dtype=torch.int64)}
