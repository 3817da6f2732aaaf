"""Scaled synthetic shard sets for growth measurements (benchmarks/bench_scale.py).

Rendering the phantom costs milliseconds per frame, far too slow for 10^6 frames, so a
set here draws its frames from a small bank of rendered phantom frames (so compression
sees ultrasound-like texture, not noise or constants) and goes through the real planner,
the real shard writer and the real finalize: what is measured is the real format. Two
kinds of set:

- `write_synth_pack`: every shard written (10^6 frames at 64 px in a few minutes on two
  cores). Shard writers run in a plain fork pool, not pack()'s one-forkserver-child-per-
  shard: these sets need valid shards, not byte-reproducible ones, and 10^4 forks cost
  minutes.
- `write_index_only`: the manifest version (tables + frame columns) of a set of any size
  with no shard files, for what depends only on the index (manifest load, reader
  start-up, index memory, the sampler's epoch plan) at 10^7 frames.
"""
from __future__ import annotations

import math
import multiprocessing as mp
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from data_prep.finalize import finalize_pack
from data_prep.pack import PackConfig, make_plan
from data_prep.records import LoadedVideo, VideoSource
from data_prep.shard_writer import write_shard
from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest

BANK_FRAMES = 64


@lru_cache(maxsize=4)
def frame_bank(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (BANK_FRAMES, size, size), scores) rendered once per process."""
    from data_prep.phantom_render import render_frame
    rng = np.random.default_rng(seed)
    scores = np.arange(BANK_FRAMES) % 4
    frames = np.stack([render_frame(rng, int(s), "convex" if i % 2 else "linear", size)[0]
                       for i, s in enumerate(scores)])
    return frames, scores.astype(np.int16)


@dataclass(frozen=True)
class BankLoader:
    """Picklable loader: frame k of video `seed` is bank frame (seed * 7 + k) % BANK_FRAMES."""
    seed: int
    n_frames: int
    size: int

    def __call__(self) -> LoadedVideo:
        frames, scores = frame_bank(self.size)
        pick = (self.seed * 7 + np.arange(self.n_frames)) % BANK_FRAMES
        return LoadedVideo(frames[pick], scores[pick])


def synth_sources(n_frames: int, frames_per_video: int = 100, videos_per_patient: int = 4,
                  n_hospitals: int = 20, size: int = 64) -> list[VideoSource]:
    """Sources totalling `n_frames`, ids and paths as long as a real multi-hospital pool's."""
    n_videos = max(1, math.ceil(n_frames / frames_per_video))
    out = []
    for v in range(n_videos):
        t = min(frames_per_video, n_frames - v * frames_per_video)
        p, h = v // videos_per_patient, (v // videos_per_patient) % n_hospitals
        vid = f"h{h:02d}-p{p:07d}-v{v:08d}"
        out.append(VideoSource(video_id=vid, patient_id=f"h{h:02d}-p{p:07d}", hospital_id=f"hospital{h:02d}",
                               probe="convex" if v % 3 else "linear", label=p % 3, video_score=v % 4,
                               source=f"hospital{h:02d}/patient{p:07d}/clip{v:08d}.mp4",
                               loader=BankLoader(v, t, size), extra={"n_frames": t}))
    return out


def _config(n_frames: int, n_shards: int, size: int) -> PackConfig:
    return PackConfig(preprocessing=fmt.Preprocessing(size=size), compression="lzf",
                      shard_frames=max(1, math.ceil(n_frames / n_shards)), folds=5)


def _sources_for(n_frames: int, n_shards: int, size: int) -> list[VideoSource]:
    """Videos short enough that `n_shards` shards can be cut (videos are never split)."""
    return synth_sources(n_frames, max(1, min(100, n_frames // n_shards)), size=size)


_JOB: tuple | None = None


def _write(index: int) -> int:
    out, plan, sources, cfg = _JOB
    return write_shard(out, index, plan, sources, cfg.preprocessing, cfg.compression)["n_frames"]


def write_synth_pack(out: Path, n_frames: int, n_shards: int, size: int = 64, workers: int = 2) -> Manifest:
    """A finished shard set of about `n_frames` frames in about `n_shards` shards."""
    global _JOB
    out.mkdir(parents=True, exist_ok=True)
    cfg = _config(n_frames, n_shards, size)
    sources = sorted(_sources_for(n_frames, n_shards, size), key=lambda s: s.video_id)
    plan = make_plan(sources, cfg, {"layout": "synthetic"})
    plan.save_plan(out / fmt.PLAN_NAME)
    frame_bank(size)                      # rendered once, inherited by the forked writers
    _JOB = (out, plan, sources, cfg)
    todo = range(len(plan.shards["name"]))
    if workers == 1:
        list(map(_write, todo))
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            list(pool.imap_unordered(_write, todo, chunksize=max(1, len(todo) // (8 * workers))))
    return finalize_pack(out)


def write_index_only(out: Path, n_frames: int, n_shards: int, size: int = 64) -> Manifest:
    """The manifest version of a set (tables and frame columns, exact counts from the
    planned lengths) without writing a shard: readers start up from it alone."""
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(_sources_for(n_frames, n_shards, size), key=lambda s: s.video_id)
    plan = make_plan(sources, _config(n_frames, n_shards, size), {"layout": "synthetic-index-only"})
    v, s = plan.videos, plan.shards
    v["n_frames"][:] = [src.extra["n_frames"] for src in sources]
    start = np.cumsum(v["n_frames"]) - v["n_frames"]          # videos are in shard order
    _, first = np.unique(v["shard"], return_index=True)
    v["offset"][:] = start - start[first][v["shard"]]
    s["n_frames"][:] = np.bincount(v["shard"], weights=v["n_frames"], minlength=len(s["name"]))
    s["sha256"][:] = "index-only"
    total = int(v["n_frames"].sum())
    plan.frames = {"score": (np.arange(total) % 4).astype(np.int8), "has_mask": np.zeros(total, bool)}
    plan.save_version(out)
    return plan
