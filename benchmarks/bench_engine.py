"""Engine benchmarks on phantom shards (CPU, one thread per rank), ratios measured in one run.

1. Overhead: Reg-STN training samples/s through `lus train` (sampler, logging, preemption
   all-reduce, checkpoint bookkeeping) vs a bare 20-line loop on the same model, data and
   batch. Target >= 0.95.
2. DDP scaling: 2 ranks x 1 thread vs 1 rank x 1 thread at the same global batch.
   Efficiency = samples/s(2 ranks) / (2 x samples/s(1 rank)). Target >= 0.8.

Throughput is read from metrics.csv step timestamps (steps 2..N, so start-up, validation
and the final checkpoint are excluded). The overhead pair runs in this process, alternating,
so both sides see the same threads and machine load; the scaling pair runs under torchrun.

    python benchmarks/bench_engine.py [--shards DIR] [--steps 40] [--batch 32] [--repeats 2]
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def make_shards(base: Path) -> Path:
    for cmd in (["prep", "phantom", "--out", str(base / "raw")],
                ["prep", "pack", "--layout", "iclus", "--src", str(base / "raw" / "iclus"),
                 "--out", str(base / "shards"), "--size", "64"]):
        subprocess.run([sys.executable, "-m", "lus", *cmd], check=True, env=env(),
                       stdout=subprocess.DEVNULL)
    return base / "shards"


def overrides(shards: Path, batch: int, steps: int) -> list[str]:
    return [f"data.root={shards}", f"data.batch_size={batch}", "train.epochs=1",
            f"train.max_steps_per_epoch={steps}", "logging.every_steps=1",
            "logging.tensorboard=false", "logging.progress=plain", "viz_frames=0",
            "predict_splits=[]", "data.eval_batch_size=128"]


def step_rate(run_dir: Path, global_batch: int) -> float:
    """Global samples/s over steps 2..N from metrics.csv timestamps."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        t = {int(r["global_step"]): float(r["time"]) for r in csv.DictReader(fh)
             if r["kind"] == "step" and r["name"] == "loss"}
    first, last = 2, max(t)
    return (last - first) * global_batch / (t[last] - t[first])


def engine_in_process(shards: Path, run_dir: Path, batch: int, steps: int) -> float:
    """The engine's Reg-STN loop in this process (same threads and load as the bare loop)."""
    import contextlib
    import io

    from lus_dist.engine import registry as families
    from lus_dist.engine import run
    from lus_dist.engine.registry import load_run_config

    cfg = load_run_config("regstn", None, overrides(shards, batch, steps))
    with contextlib.redirect_stdout(io.StringIO()):
        run(families.make("regstn", cfg), run_dir)
    return step_rate(run_dir, batch)


def engine_launched(shards: Path, run_dir: Path, nproc: int, batch: int, steps: int) -> float:
    """`lus train regstn` under torchrun (hpc.launch) with nproc ranks of one thread."""
    cmd = [sys.executable, "-m", "hpc.launch", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lus", "train", "regstn", "--run-dir", str(run_dir),
           *overrides(shards, batch, steps)]
    subprocess.run(cmd, check=True, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return step_rate(run_dir, batch * nproc)


def bare_sps(shards: Path, batch: int, steps: int) -> float:
    """The 20-line loop: same model, loss, optimizer and data, nothing else."""
    from lus_dist.training.losses import FrameLossConfig, frame_loss
    from lus_dist.models import build_frame_model
    from lus_dist.shards.reader import ShardDataset

    torch.manual_seed(0)
    ds = ShardDataset(shards, split="train")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
    model = build_frame_model("regstn_fixed", 1, 4, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    cfg, stamps = FrameLossConfig(), []
    model.train()
    while len(stamps) < steps:
        for b in loader:
            loss, _ = frame_loss(model(b["image"]), b["score"], cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
            stamps.append(time.perf_counter())
            if len(stamps) >= steps:
                break
    return (steps - 2) * batch / (stamps[-1] - stamps[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, default=None, help="packed 64x64 phantom shards (made if absent)")
    p.add_argument("--steps", type=int, default=20, help="steps per run (<= one epoch)")
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or make_shards(Path(tmp))
        eng, bare, one, two = [], [], [], []
        for r in range(args.repeats):   # alternate so machine load hits both sides alike
            bare.append(bare_sps(shards, args.batch, args.steps))
            eng.append(engine_in_process(shards, Path(tmp) / f"e{r}", args.batch, args.steps))
            one.append(engine_launched(shards, Path(tmp) / f"o{r}", 1, args.batch, args.steps))
            two.append(engine_launched(shards, Path(tmp) / f"t{r}", 2, args.batch // 2, args.steps))
    med = statistics.median
    print(f"Reg-STN 64x64, global batch {args.batch}, {args.steps} steps, median of {args.repeats}")
    print(f"bare loop        : {med(bare):8.1f} samples/s")
    print(f"engine (1 rank)  : {med(eng):8.1f} samples/s   overhead ratio engine/bare = "
          f"{med(eng) / med(bare):.3f} (target >= 0.95)")
    print(f"DDP 2 ranks x 1 thread: {med(two):8.1f} samples/s vs 1 x 1: {med(one):.1f}  "
          f"scaling efficiency = {med(two) / (2 * med(one)):.3f} (target >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
