"""Helpers for shard tests: small synthetic VideoSource lists and packs.

The sources are real VideoSource objects with real decode callables (random arrays with
known content), so the packer, validator and reader run unmocked on real HDF5 files.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from data_prep.pack import PackConfig, pack, provenance
from data_prep.records import LoadedVideo, VideoSource
from lus_dist.shards.format import Preprocessing

POCUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pocus"


def synth_frames(seed: int, t: int, h: int, w: int, rgb: bool) -> np.ndarray:
    """Frame k of video `seed` is constant (seed*7 + k) % 256: content identifies the frame."""
    values = (seed * 7 + np.arange(t)) % 256
    shape = (t, h, w, 3) if rgb else (t, h, w)
    return np.broadcast_to(values.reshape((t,) + (1,) * (len(shape) - 1)), shape).astype(np.uint8)


def _load(seed: int, t: int, h: int, w: int, rgb: bool, masks: bool) -> LoadedVideo:
    scores = (np.arange(t) + seed) % 4
    m = np.broadcast_to((scores % 4).reshape(t, 1, 1), (t, h, w)).astype(np.uint8) if masks else None
    return LoadedVideo(synth_frames(seed, t, h, w, rgb), scores.astype(np.int16), m)


def make_sources(n: int = 24, frames=(3, 9), size=(24, 32), with_masks=True) -> list[VideoSource]:
    """n videos, 3 per patient; odd videos carry masks, every 5th is RGB; deterministic."""
    out = []
    for i in range(n):
        t = frames[0] + (i * 5) % (frames[1] - frames[0] + 1)
        loader = functools.partial(_load, i, t, size[0], size[1], i % 5 == 0, with_masks and i % 2 == 1)
        out.append(VideoSource(video_id=f"vid{i:03d}", patient_id=f"pat{i // 3:02d}", hospital_id=f"h{i % 2}",
                               probe="convex" if i % 4 else "linear", label=i % 3, video_score=i % 4,
                               source=f"synthetic://vid{i:03d}", loader=loader, extra={"n_frames": t}))
    return out


def small_config(**kw) -> PackConfig:
    base = dict(preprocessing=Preprocessing(size=16), shard_frames=30, folds=4)
    base.update(kw)
    return PackConfig(**base)


def pack_synthetic(out: Path, sources=None, cfg=None, **kw):
    sources = make_sources() if sources is None else sources
    return pack(sources, out, cfg or small_config(), provenance("synthetic", "/synthetic", [], {}),
                progress=False, **kw)
