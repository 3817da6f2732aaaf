"""Growth of the shard reader with the size of the set: 10^4..10^6 frames, 10..10^4 shards.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py [--quick] [--workers 2]

For each (frames, shards) a synthetic set is written by the real planner, shard writer
and finalize (data_prep/synth.py: 64 px frames drawn from rendered phantom frames), and
measured in fresh processes:
  manifest_s    Manifest.load (what every rank and spawned worker does first)
  startup_s     ShardDataset construction (manifest + index), per rank; a spawned loader
                worker pays it again, a forked one inherits the result
  worker_s      first batch of a 2-worker DataLoader (worker start + first shard opens)
  B/frame       Python heap retained by one ShardDataset (tracemalloc), per frame: what
                each of the N ranks x W loader workers holds
  plan_s        the sampler's epoch plan (4 ranks, rank 0)
  opens, stats  file opens and path stats of the data files in one whole epoch with 2
                loader workers (strace -f; only paths under the set count, not Python's
                imports), through the reader's own opener with the pixel decode left out
                (opens do not depend on pixels; this makes a 10^6-frame epoch take seconds)
  npy_opens     the same for one .npy file per frame (the authors' layout), measured on
                up to --npy-frames frames and scaled per frame
  frames/s      steady state reading --rate-frames frames (2 workers, batch 64, float
                tensors as training gets them)
  *_aff         the same epoch with the sampler told the loader's workers and batch size
                (DistributedShardSampler(loader_workers=, batch_size=)): each worker reads
                its own shards, so a shard is opened once per epoch, not once per worker
Index-only rows (manifest + tables, no pixels: 10^5 and 10^6 frames in 10^4 shards, 10^6
in 10, 10^7 frames) measure what depends on the index alone; the pixels of 10^6 frames
are written twice, in 10^3 shards of 1000 frames (what the packer's default 1024 makes of
100-frame clips) and in 500 of 2000 (`--shard-frames 2048`); writing 10^6 frames takes about
a minute on 2 cores. The last line is
    scale: startup_s_per_1000_shards=X bytes_per_frame=Y opens_ratio_vs_npy=Z
at the largest frame count with shards on disk (10^6 full, 10^5 --quick): X from the
most-sharded set at that count (index-only rows included), Y the largest over those sets,
Z at its set nearest the packer's default 1024 frames per shard, with worker-affine
batches. An epoch opens each shard once, the manifest's two files, and the <= workers - 1
shards cut between two workers' blocks again, so the ratio is frames / (shards + 3):
1000-frame shards stay just under 1000x (997x), 2000-frame ones about double it;
100-frame shards cannot come close. Goals: X <= 1 (start-up stays flat as shards are
added), Y <= 64 (every rank and loader worker holds the index: 64 B a frame is 640 MB per
process at 10^7 frames), Z >= 1000. --quick stops at 10^5 frames (about 5 minutes). On a
shared machine wall times follow the other tenants' load, printed beside each row.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lus_dist.shards import format as fmt
from lus_dist.shards.reader import ShardDataset

QUICK = [(10**4, 10), (10**4, 10**3), (10**5, 10), (10**5, 10**3)]
# 10^6 frames in 10^3 shards (1000 frames each: the packer's default 1024 never splits a
# 100-frame clip), and in shards of 2048 frames (`--shard-frames 2048`)
FULL = QUICK + [(10**6, 10**3), (10**6, 500)]
QUICK_INDEX_ONLY = [(10**5, 10**4)]
INDEX_ONLY = QUICK_INDEX_ONLY + [(10**6, 10), (10**6, 10**4), (10**7, 10**3), (10**7, 10**4)]
HERE = Path(__file__).resolve()


# ----------------------------------------------------------- measured in a fresh process
def measure_index(root: str, replicas: int = 4) -> dict:
    import tracemalloc

    from lus_dist.shards.manifest import Manifest
    from lus_dist.shards.sampler import DistributedShardSampler
    t = time.perf_counter()
    Manifest.load(root)
    manifest_s = time.perf_counter() - t
    tracemalloc.start()
    t = time.perf_counter()
    ds = ShardDataset(root)
    startup_s = time.perf_counter() - t
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t = time.perf_counter()
    DistributedShardSampler(ds.shard_ids, replicas, 0, seed=0).indices()
    return {"manifest_s": manifest_s, "startup_s": startup_s, "bytes_per_frame": held / len(ds),
            "plan_s": time.perf_counter() - t, "frames": len(ds)}


def run_epoch(root: str, layout: str, workers: int, limit: int) -> dict:
    """One pass through a DataLoader (2 workers, batch 64) over the shard sampler's order:
    "read" reads frames with ShardDataset (the first `limit` items: frames/s); "open" and
    "open-affine" run the whole epoch through ShardDataset's own lazy opener without
    decoding pixels (opens do not depend on pixels; see OpenOnly); "npy" reads the same
    frames from one .npy file each."""
    import numpy as np
    from torch.utils.data import DataLoader

    from lus_dist.shards.sampler import DistributedShardSampler
    ds = OpenOnly(root) if layout.startswith("open") else ShardDataset(root)
    affine = {"loader_workers": workers, "batch_size": 64} if layout == "open-affine" else {}
    order = DistributedShardSampler(ds.shard_ids, 1, 0, seed=0, **affine).indices()[:limit or None]
    if layout == "npy":
        from bench_reader import NpyFrames
        ds = NpyFrames([str(Path(root) / "npy" / f"{i:07d}.npy") for i in range(len(order))])
        order = np.arange(len(order))
    loader = DataLoader(ds, batch_size=64, sampler=order.tolist(), num_workers=workers)
    t = time.perf_counter()
    it = iter(loader)
    first = len(next(it)["image"])
    first_s = time.perf_counter() - t
    n = sum(len(b["image"]) for b in it)
    return {"worker_s": first_s, "frames_per_s": n / (time.perf_counter() - t - first_s), "n": n + first}


class OpenOnly(ShardDataset):
    """ShardDataset whose items only open their shard through the reader's own handle cache
    (`_dataset`), so a whole epoch's file opens are counted at 10^6 frames in seconds."""

    def __getitem__(self, i):
        self._dataset(int(self.shard_ids[i]), fmt.DS_FRAMES)
        return {"image": int(i)}


# ----------------------------------------------------------- driver
def _child(*args: str, trace: Path | None = None) -> dict:
    cmd = [sys.executable, str(HERE), *args]
    if trace:
        cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=%file", "-o", str(trace)] + cmd
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE.parents[1]}:{HERE.parent}"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def count_file_ops(trace: Path, under: Path) -> tuple[int, int]:
    """(opens, path stats) in an strace log that name a file under `under`."""
    opens = stats = 0
    path = re.escape(str(under))
    op = re.compile(rf'(\w+)\((?:AT_FDCWD, )?"{path}/')
    for line in trace.read_text(errors="replace").splitlines():
        m = op.search(line)
        if m:
            opens += m.group(1) in ("open", "openat", "openat2", "creat")
            stats += m.group(1) in ("stat", "lstat", "newfstatat", "statx", "access", "faccessat2")
    return opens, stats


def write_npy(root: Path, limit: int) -> int:
    """The first `limit` frames of the shard sampler's order as one .npy each."""
    import numpy as np

    from lus_dist.shards.sampler import DistributedShardSampler
    ds = ShardDataset(root)
    order = DistributedShardSampler(ds.shard_ids, 1, 0, seed=0).indices()[:limit]
    (root / "npy").mkdir(exist_ok=True)
    for k, i in enumerate(order):
        np.save(root / "npy" / f"{k:07d}.npy", ds._row(int(ds.shard_ids[i]), fmt.DS_FRAMES, int(ds.rows[i])))
    return len(order)


def measure_set(root: Path, frames: int, shards: int, args, npy_per_frame: float) -> dict:
    from data_prep.synth import write_synth_pack
    t = time.perf_counter()
    m = write_synth_pack(root, frames, shards, workers=args.workers)
    row = {"frames": m.n_frames, "shards": len(m.shards["name"]), "pack_s": time.perf_counter() - t}
    row.update(_child("--measure", str(root)))
    row.update(_child("--epoch", str(root), "read", str(args.workers), str(args.rate_frames)))
    trace = root.parent / "trace.txt"
    _child("--epoch", str(root), "open", str(args.workers), "0", trace=trace)
    row["opens"], row["stats"] = count_file_ops(trace, root)
    _child("--epoch", str(root), "open-affine", str(args.workers), "0", trace=trace)
    row["opens_aff"], _ = count_file_ops(trace, root)
    row["npy_opens"] = npy_per_frame * row["frames"]
    row["opens_ratio"] = row["npy_opens"] / max(row["opens"], 1)
    row["ratio_aff"] = row["npy_opens"] / max(row["opens_aff"], 1)
    row["load"] = os.getloadavg()[0]
    return row


def npy_baseline(tmp: Path, args) -> float:
    """Opens per frame of the one-.npy-per-frame layout, from an strace'd epoch."""
    from data_prep.synth import write_synth_pack
    root = tmp / "npy_base"
    write_synth_pack(root, args.npy_frames, 10, workers=args.workers)
    n = write_npy(root, args.npy_frames)
    trace = tmp / "trace_npy.txt"
    _child("--epoch", str(root), "npy", str(args.workers), str(n), trace=trace)
    opens, stats = count_file_ops(trace, root / "npy")
    shutil.rmtree(root)
    print(f"one .npy per frame: {opens / n:.2f} opens and {stats / n:.2f} path stats per frame "
          f"({n} frames, {args.workers} workers)", flush=True)
    return opens / n


def index_only_row(tmp: Path, frames: int, shards: int) -> dict:
    from data_prep.synth import write_index_only
    root = tmp / f"index_{frames}_{shards}"
    t = time.perf_counter()
    m = write_index_only(root, frames, shards)
    row = {"frames": m.n_frames, "shards": len(m.shards["name"]), "pack_s": time.perf_counter() - t}
    row.update(_child("--measure", str(root)))
    row["load"] = os.getloadavg()[0]
    shutil.rmtree(root)
    return row


COLS = [("frames", "{:>9}"), ("shards", "{:>6}"), ("pack_s", "{:8.1f}"), ("manifest_s", "{:10.3f}"),
        ("startup_s", "{:9.3f}"), ("worker_s", "{:8.2f}"), ("bytes_per_frame", "{:7.1f}"),
        ("plan_s", "{:6.3f}"), ("opens", "{:7}"), ("stats", "{:6}"), ("npy_opens", "{:9.0f}"),
        ("opens_ratio", "{:7.0f}"), ("opens_aff", "{:9}"), ("ratio_aff", "{:9.0f}"),
        ("frames_per_s", "{:8.0f}"), ("load", "{:4.1f}")]


def print_row(row: dict) -> None:
    cells = [fmt.format(row[k]) if k in row else " " * len(fmt.format(0)) for k, fmt in COLS]
    print("  ".join(cells), flush=True)


def scale_line(rows: list[dict]) -> str:
    top = max(r["frames"] for r in rows if "opens" in r)
    at_top = [r for r in rows if r["frames"] == top]
    real = [r for r in at_top if "opens" in r]
    most = max(at_top, key=lambda r: r["shards"])
    default = min(real, key=lambda r: abs(r["shards"] - top / 1024))
    return (f"scale: startup_s_per_1000_shards={most['startup_s'] / (most['shards'] / 1000):.3f} "
            f"bytes_per_frame={max(r['bytes_per_frame'] for r in at_top):.1f} "
            f"opens_ratio_vs_npy={default['ratio_aff']:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10^4 and 10^5 frames only (< 25 min)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--npy-frames", type=int, default=20_000)
    ap.add_argument("--rate-frames", type=int, default=30_000, help="frames read for frames/s")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch directory (default: system temp)")
    args = ap.parse_args()
    if shutil.which("strace") is None:
        sys.exit("bench_scale: strace is needed to count file opens (apt-get install strace)")
    sizes = QUICK if args.quick else FULL
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_scale_", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        per_frame = npy_baseline(tmp, args)
        print("  ".join(k.rjust(len(f.format(0))) for k, f in COLS), flush=True)
        rows = []
        for frames, shards in sizes:
            rows.append(measure_set(tmp / f"set_{frames}_{shards}", frames, shards, args, per_frame))
            print_row(rows[-1])
            shutil.rmtree(tmp / f"set_{frames}_{shards}")
        for frames, shards in QUICK_INDEX_ONLY if args.quick else INDEX_ONLY:
            rows.append(index_only_row(tmp, frames, shards))
            print_row(rows[-1])
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    print(scale_line(rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        print(json.dumps(measure_index(sys.argv[2])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--epoch":
        print(json.dumps(run_epoch(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    else:
        main()
