"""Cached per-frame CNN features for the CNN-LSTM (Barros et al. extracted Xception features once).

`extract(...)` runs a frozen frame encoder over every frame of a shard directory, each rank
over its own contiguous block of frames, and writes `features-rank-RRRRR.h5` per rank
(datasets `features` (N, F) float32, `video` (N,) manifest row, `frame` (N,) index within the
video; attributes encoder, feature_dim, shards root) into a temp name renamed when complete.
`FeatureClips` reads them back as (T, F) clips per video, sampled like the frame clips, so a
head-only `CNNLSTM.from_features` trains in seconds per epoch.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lus_dist.shards.partition import split_even
from lus_dist.shards.reader import ShardDataset, clip_indices

PATTERN = "features-rank-*.h5"


@torch.no_grad()
def extract(shards: Path, out_dir: Path, encoder: torch.nn.Module, encoder_name: str,
            rank: int = 0, world_size: int = 1, batch_size: int = 128,
            device: torch.device | str = "cpu", manifest_version: int | None = None,
            channels: int | None = None, progress: Callable | None = None) -> Path:
    """Write this rank's block of per-frame features; returns the file written.
    `progress(batches, n, desc)` wraps the batches (e.g. `timed_progress` on rank 0)."""
    ds = ShardDataset(shards, mode="frame", manifest_version=manifest_version, channels=channels)
    start, stop = split_even(len(ds), world_size, rank)
    loader = DataLoader(Subset(ds, range(start, stop)), batch_size=batch_size, shuffle=False)
    encoder = encoder.to(device).eval()
    feats, video, frame = [], [], []
    batches = loader if progress is None else progress(
        loader, len(loader), f"caching {encoder_name} features ({stop - start} of {len(ds)} "
        f"frames on rank {rank}), batches")
    for batch in batches:
        feats.append(encoder(batch["image"].to(device)).flatten(1).float().cpu().numpy())
        video.append(batch["video"].numpy())
        frame.append(batch["frame"].numpy())
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"features-rank-{rank:05d}.h5"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    dim = feats[0].shape[1] if feats else 0
    with h5py.File(tmp, "w", track_order=False) as f:
        f.create_dataset("features", data=np.concatenate(feats) if feats else np.zeros((0, dim)))
        f.create_dataset("video", data=np.concatenate(video) if video else np.zeros(0, np.int64))
        f.create_dataset("frame", data=np.concatenate(frame) if frame else np.zeros(0, np.int64))
        f.attrs.update(encoder=encoder_name, feature_dim=dim, shards=str(shards))
    os.replace(tmp, path)
    return path


def load_features(out_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ranks' files concatenated: (features, video row, frame index)."""
    files = sorted(Path(out_dir).glob(PATTERN))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no {PATTERN} files (run the feature extraction first)")
    parts = []
    for p in files:
        with h5py.File(p, "r") as f:
            parts.append((f["features"][:], f["video"][:], f["frame"][:]))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


class FeatureClips(Dataset):
    """One item per video of `video_rows`: {"frames": (T, F) float32, "label", "video"}."""

    def __init__(self, out_dir: Path, video_rows: np.ndarray, labels: np.ndarray,
                 clip_len: int = 10):
        feats, video, frame = load_features(out_dir)
        order = np.lexsort((frame, video))
        self.feats, video = feats[order], video[order]
        starts = np.searchsorted(video, video_rows)
        counts = np.searchsorted(video, video_rows, side="right") - starts
        missing = video_rows[counts == 0]
        if len(missing):
            raise ValueError(f"{out_dir}: no cached features for manifest video rows {missing[:5].tolist()}")
        self.starts, self.counts = starts, counts
        self.video_rows, self.labels, self.clip_len = np.asarray(video_rows), np.asarray(labels), clip_len

    def __len__(self) -> int:
        return len(self.video_rows)

    def __getitem__(self, i: int) -> dict:
        idx = self.starts[i] + clip_indices(int(self.counts[i]), self.clip_len, "uniform", None)
        return {"frames": torch.from_numpy(self.feats[idx].astype(np.float32)),
                "label": torch.tensor(int(self.labels[i])),
                "video": torch.tensor(int(self.video_rows[i]))}


DONE = "DONE"


def ensure_cache(out_dir: Path, shards: Path, encoder: torch.nn.Module, encoder_name: str,
                 world, device, manifest_version: int | None, channels: int | None,
                 progress_mode: str = "auto") -> Path:
    """Extract once per run dir, every rank its block, behind a barrier; a requeued run
    finds DONE (written by rank 0 after every rank's file is in place) and reuses it. A
    cache left unfinished (no DONE) is extracted again with the current world size.
    Rank 0 shows its progress (minutes on a large data set, before the first epoch)."""
    from hpc.dist import barrier

    from .logging import timed_progress

    out_dir = Path(out_dir)
    if not (out_dir / DONE).is_file():
        if world.is_main:
            for stale in out_dir.glob(PATTERN):   # blocks of another world size
                stale.unlink()
        barrier()
        extract(shards, out_dir, encoder, encoder_name, world.rank, world.world_size,
                device=device, manifest_version=manifest_version, channels=channels,
                progress=partial(timed_progress, mode=progress_mode) if world.is_main else None)
        barrier()                                 # every block is in place
        if world.is_main:
            (out_dir / DONE).write_text(f"{encoder_name} world_size={world.world_size}\n")
    return out_dir


def cached_clips(out_dir: Path, clips, clip_len: int) -> FeatureClips:
    """The cached features of `clips`' videos, carrying what the loop reads from a dataset
    (shard_ids for the sampler, manifest for summary.json, labels for balancing)."""
    cached = FeatureClips(out_dir, clips.video_index, clips.labels, clip_len)
    cached.shard_ids, cached.manifest = clips.shard_ids, clips.manifest
    return cached
