"""Packing the real POCUS clips: wall time vs decode-only, and 1 vs 2 processes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pack.py [--src ../shared/data/pocus] [--size 256]

Decode-only runs the very same decoders (VideoSource.load: every frame decoded into one
preallocated full-resolution array, grayscale detected) over the very same shard plan with
the same number of processes, writing nothing, so pack/decode isolates what packing adds.
Packing decodes each frame straight into the stored size (resized as it arrives, no
full-resolution clip is held) and then compresses, writes HDF5 and checksums. Both keep
incomplete clips (--incomplete keep) so they process the same frames. Targets: pack <= 1.3x decode-only;
2 processes >= 1.7x faster than 1. On a shared machine wall time follows the other tenants'
load (printed beside each number) and the 2-process speedup is bounded by the free cores,
so CPU seconds (user + system, children included) are printed too: the CPU ratio is what
packing costs over decoding independently of the load.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from data_prep.ingest_pocus import ingest_pocus
from data_prep.pack import PackConfig, check_sources, make_plan, pack, provenance
from lus_dist.shards.format import Preprocessing
from lus_dist.io.video import keep_incomplete

_SOURCES = None  # inherited by forked decode workers


def _decode_shard(rows: list[int]) -> int:
    with keep_incomplete():
        return sum(len(_SOURCES[v].load().frames) for v in rows)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def decode_only(sources, cfg: PackConfig, workers: int) -> tuple[float, float, int]:
    global _SOURCES
    plan = make_plan(sources, cfg, {})
    _SOURCES = check_sources(sources)
    groups = [np.flatnonzero(plan.videos["shard"] == i).tolist() for i in range(len(plan.shards["name"]))]
    t, cpu = time.perf_counter(), _cpu()
    if workers == 1:
        frames = sum(map(_decode_shard, groups))
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            frames = sum(pool.imap_unordered(_decode_shard, groups))
    return time.perf_counter() - t, _cpu() - cpu, frames


def _stop_forkserver() -> None:
    """pack() writes each shard in a child of multiprocessing's forkserver; their CPU time
    reaches os.times() only once the server that reaped them has exited and been reaped."""
    from multiprocessing import forkserver
    forkserver._forkserver._stop()   # private, but the only way to collect it


def pack_time(sources, cfg: PackConfig, workers: int, src: Path) -> tuple[float, float, int]:
    out = Path(tempfile.mkdtemp(prefix="bench_pack_"))
    try:
        t, cpu = time.perf_counter(), _cpu()
        m = pack(sources, out, cfg, provenance("pocus", src, [], {}), workers=workers, progress=False)
        wall = time.perf_counter() - t
        _stop_forkserver()
        return wall, _cpu() - cpu, m.n_frames
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("../shared/data/pocus"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shard-frames", type=int, default=1024)
    ap.add_argument("--max-clips", type=int, default=0, help="the first N clips by id (0: all)")
    args = ap.parse_args()
    report = ingest_pocus(args.src, include_images=False)
    if args.max_clips:
        report.sources = sorted(report.sources, key=lambda s: s.video_id)[:args.max_clips]
    cfg = PackConfig(preprocessing=Preprocessing(size=args.size), shard_frames=args.shard_frames,
                     incomplete="keep")
    print(f"{len(report.sources)} clips ({len(report.skipped)} skipped by ingest), size {args.size}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    res = {}
    for workers in (1, 2):
        res["decode", workers] = decode_only(report.sources, cfg, workers)
        res["pack", workers] = pack_time(report.sources, cfg, workers, args.src)
        for kind in ("decode", "pack"):
            sec, cpu, n = res[kind, workers]
            print(f"  {kind:<6} {workers} proc: {sec:7.1f} s wall  {cpu:7.1f} s CPU  {n / sec:6.0f} frames/s  "
                  f"({n} frames, load {os.getloadavg()[0]:.1f})", flush=True)
    for workers in (1, 2):
        print(f"pack / decode-only with {workers} proc: wall {res['pack', workers][0] / res['decode', workers][0]:.2f}x, "
              f"CPU {res['pack', workers][1] / res['decode', workers][1]:.2f}x (target <= 1.3x)")
    print(f"pack speedup 2 vs 1 proc: {res['pack', 1][0] / res['pack', 2][0]:.2f}x (target >= 1.7x); "
          f"decode-only speedup {res['decode', 1][0] / res['decode', 2][0]:.2f}x; "
          f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
