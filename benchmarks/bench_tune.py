"""Aggregator sweep throughput: `lus tune aggregator` on Ray vs the same trials in a loop.

64 trials of the shipped aggregator space with epochs fixed to 30, each a 5-fold
patient-level protocol on 60 synthetic videos of 40-160 frames (4 scores). The Ray side
is the real command (embedded Ray, 2 CPUs, ASHA, actor reuse) run in a loopback-only
network namespace; the baseline replays exactly the configs Ray sampled (read back from
results.csv) one after another in this process. Prints trials/min for both and the
ratio; Ray's number is given with and without its start-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tune.py            # 64 trials
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tune.py --trials 16  # quick
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "aggregator"))
from agg_synthetic import synthetic_predictions  # noqa: E402

from lus_dist.aggregator.data import pad_videos, read_predictions, write_predictions  # noqa: E402
from lus_dist.aggregator.train import AggregatorConfig, run_protocol  # noqa: E402
from tune.spaces import build_config, load_space  # noqa: E402


def bench_space(out: Path, epochs: int) -> Path:
    """The shipped space with epochs fixed, so every trial does the same amount of work."""
    data = yaml.safe_load((ROOT / "tune" / "spaces" / "aggregator.yaml").read_text())
    data["params"].pop("epochs", None)
    data["base"] = {**(data.get("base") or {}), "epochs": epochs}
    out.write_text(yaml.safe_dump(data))
    return out


def run_ray(tmp: Path, preds: Path, space: Path, trials: int) -> tuple[float, float, Path]:
    """Wall time of the whole command and of the sweep alone (from Ray start to the end)."""
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           sys.executable, "-m", "lus", "tune", "aggregator", "--space", str(space),
           "--predictions", str(preds), "--trials", str(trials), "--num-cpus", "2",
           "--storage", str(tmp / "sweeps"), "--name", "bench", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    t_sweep = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if t_sweep is None and line.startswith("lus tune: Ray nodes"):
            t_sweep = time.perf_counter()   # Ray is up; trials start now
    if proc.wait() != 0:
        raise SystemExit("lus tune failed:\n" + "".join(lines[-40:]))
    t1 = time.perf_counter()
    return t1 - t0, t1 - (t_sweep or t0), tmp / "sweeps" / "bench" / "results.csv"


def run_loop(results: Path, preds_path: Path, space_path: Path) -> tuple[float, list[float]]:
    """The same configs, one by one, in this process (data read and padded once)."""
    space = load_space(space_path)
    table = pd.read_csv(results).sort_values("trial_id")
    batch = pad_videos(read_predictions(preds_path))
    base = space.base
    scores = []
    t0 = time.perf_counter()
    for _, row in table.iterrows():
        params = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in space.params}
        cfg = build_config(AggregatorConfig, base, params)
        scores.append(run_protocol(batch, cfg, protocol="kfold", k=5, seed=0).mean_weighted_f1)
    return time.perf_counter() - t0, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--videos", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as d:
        tmp = Path(d)
        preds = write_predictions(tmp / "preds.h5", synthetic_predictions(
            n_videos=args.videos, lengths=(40, 160), seed=0))
        space = bench_space(tmp / "space.yaml", args.epochs)
        wall, sweep, results = run_ray(tmp, preds, space, args.trials)
        loop_s, scores = run_loop(results, preds, space)
        ray_scores = pd.read_csv(results).sort_values("trial_id")["mean_weighted_f1"].tolist()
    same = max(abs(a - b) for a, b in zip(scores, ray_scores))
    n = args.trials
    print(f"{n} trials x 5 folds x {args.epochs} epochs on {args.videos} videos (40-160 frames)")
    print(f"  ray tune (2 CPUs), whole command : {wall:7.1f} s  {60 * n / wall:6.1f} trials/min")
    print(f"  ray tune (2 CPUs), after start-up: {sweep:7.1f} s  {60 * n / sweep:6.1f} trials/min")
    print(f"  plain loop (1 process)           : {loop_s:7.1f} s  {60 * n / loop_s:6.1f} trials/min")
    print(f"  ratio ray/loop trials per minute : {loop_s / wall:.2f} (whole), "
          f"{loop_s / sweep:.2f} (after start-up)")
    print(f"  max |score difference| ray vs loop: {same:.2e} (same configs, same scores)")


if __name__ == "__main__":
    main()
