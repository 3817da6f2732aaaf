"""Reader throughput: shards vs decoding videos on the fly vs one .npy per frame vs raw h5py.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reader.py [--src ../shared/data/pocus]
        [--size 256] [--frames 3000] [--workers 2]

Shards are measured packed with lzf (default) and uncompressed. Every contender serves the same frames (same stored size, uint8 -> float32 CHW tensors,
except raw h5py which stops at the uint8 array) in the same shuffled order through the
same DataLoader (batch 32, same worker count). "decode on the fly" opens the source clip,
seeks to the frame and decodes it, as a shuffled frame sampler over videos must; the
sequential whole-clip decode is printed too as the most favourable case for decoding.
The DataLoader figures include moving float32 batches from workers to the main process
(4 bytes per pixel; raw h5py moves uint8), so they are also printed per CPU second in one
process, which isolates the read path. Files are read warm from the page cache (this machine is shared; we do not drop caches),
which favours the per-frame .npy layout: on NFS/Lustre each file open is a metadata RPC.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_prep.ingest_pocus import ingest_pocus
from data_prep.pack import PackConfig, pack, provenance
from lus_dist.shards import format as fmt
from lus_dist.shards.format import Preprocessing, preprocess_clip, preprocess_frame
from lus_dist.shards.reader import ShardDataset
from lus_dist.shards.sampler import DistributedShardSampler


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).movedim(-1, -3).float().div_(255.0)


class NpyFrames(Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return {"image": _tensor(np.load(self.files[i]))}


class RawH5(Dataset):
    """The floor: h5py reads of the same chunks, no tensor conversion, no index arrays."""
    def __init__(self, root, shards, rows):
        self.root, self.shards, self.rows, self.files = root, shards, rows, {}

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        s = int(self.shards[i])
        if s not in self.files:
            self.files[s] = h5py.File(self.root / fmt.shard_name(s), "r", locking=False)[fmt.DS_FRAMES]
        return self.files[s][int(self.rows[i])]


class DecodeOnTheFly(Dataset):
    def __init__(self, paths, frames, pre):
        self.paths, self.frames, self.pre = paths, frames, pre

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import cv2
        cap = cv2.VideoCapture(self.paths[i])
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(self.frames[i]))
        ok, img = cap.read()
        cap.release()
        return {"image": _tensor(preprocess_frame(img[:, :, ::-1], self.pre))}


def rate(ds, order, workers, batch=32) -> float:
    loader = DataLoader(ds, batch_size=batch, sampler=list(order), num_workers=workers,
                        persistent_workers=False)
    t = time.perf_counter()
    n = sum(len(b["image"]) if isinstance(b, dict) else len(b) for b in loader)
    return n / (time.perf_counter() - t)


def in_process(ds, order) -> float:
    """Frames per CPU second reading items directly (no DataLoader): the reader's own cost,
    measured in CPU time so other tenants' load does not enter."""
    t = time.process_time()
    for i in order:
        ds[int(i)]
    return len(order) / (time.process_time() - t)


def pick_clips(src: Path, max_frames: int):
    """The first real .mp4/.avi clips (sorted by id) up to ~max_frames frames."""
    report = ingest_pocus(src, include_images=False)
    picked, total = [], 0
    for s in sorted(report.sources, key=lambda s: s.video_id):
        if Path(s.source).suffix.lower() not in (".mp4", ".avi"):
            continue
        s.extra["n_frames"] = n = len(s.load().frames)
        picked.append(s)
        total += n
        if total >= max_frames:
            return picked
    return picked


def build(src: Path, picked, size: int, compression: str, out: Path) -> ShardDataset:
    cfg = PackConfig(preprocessing=Preprocessing(size=size), shard_frames=512, folds=0,
                     compression=compression)
    pack(picked, out, cfg, provenance("pocus", src, [], {}), workers=1, progress=False)
    return ShardDataset(out)


def npy_layout(ds: ShardDataset, out: Path) -> list[str]:
    """The authors' layout: one .npy per (already preprocessed) frame."""
    out.mkdir()
    files = []
    for i in range(len(ds)):
        files.append(str(out / f"{i:06d}.npy"))
        np.save(files[-1], ds._row(int(ds.shard_ids[i]), fmt.DS_FRAMES, int(ds.rows[i])))
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("../shared/data/pocus"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--decode-frames", type=int, default=300, help="random-access decodes to time")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    w = args.workers
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        tmp = Path(tmp)
        picked = pick_clips(args.src, args.frames)
        shards = {c: build(args.src, picked, args.size, c, tmp / c) for c in ("lzf", "none")}
        ds = shards["lzf"]
        files = npy_layout(ds, tmp / "npy")
        paths = [str(Path(args.src) / ds.manifest.videos["source"][v]) for v in ds.video_index]
        order = DistributedShardSampler(ds.shard_ids, 1, 0, seed=0).indices()
        print(f"{len(ds)} frames of {len(picked)} real clips at {args.size}px, {w} workers, batch 32, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        res = {}
        for c, d in shards.items():
            res[f"shards_{c}"] = rate(d, order, w)
            res[f"raw_h5py_{c}"] = rate(RawH5(tmp / c, d.shard_ids, d.rows), order, w)
        res["npy_per_frame"] = rate(NpyFrames(files), order, w)
        res["decode_random"] = rate(DecodeOnTheFly(paths, ds.frame_index, Preprocessing(size=args.size)),
                                    order[:args.decode_frames], w)
        t = time.perf_counter()
        n = sum(len(preprocess_clip(s.load().frames, Preprocessing(size=args.size))) for s in picked)
        res["decode_sequential_1proc"] = n / (time.perf_counter() - t)
        for c, d in shards.items():
            res[f"shards_{c}"] = max(res[f"shards_{c}"], rate(d, order, w))   # second pass: less noise
        for k, v in res.items():
            print(f"  {k:<24} {v:9.0f} frames/s")
        cpu = {}
        for c, d in shards.items():
            cpu[f"shards_{c}"] = in_process(d, order)
            cpu[f"raw_h5py_{c}"] = in_process(RawH5(tmp / c, d.shard_ids, d.rows), order)
        cpu["npy_per_frame"] = in_process(NpyFrames(files), order)
        print("in one process, no DataLoader (frames per CPU second):")
        for k, v in cpu.items():
            print(f"  {k:<24} {v:9.0f} frames/CPU-s")
        for c in shards:
            print(f"[{c}, in-process] shards / .npy per frame: {cpu[f'shards_{c}'] / cpu['npy_per_frame']:.2f}x; "
                  f"raw h5py / shards: {cpu[f'raw_h5py_{c}'] / cpu[f'shards_{c}']:.2f}x")
        for c in shards:
            best = res[f"shards_{c}"]
            print(f"[{c}] shards / decode on the fly (random access): {best / res['decode_random']:.1f}x "
                  f"(target >= 10x); / sequential decode: {best / res['decode_sequential_1proc']:.1f}x; "
                  f"/ .npy per frame: {best / res['npy_per_frame']:.2f}x (target >= 3x); "
                  f"raw h5py / shards: {res[f'raw_h5py_{c}'] / best:.2f}x (target <= 2x)")
        print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
