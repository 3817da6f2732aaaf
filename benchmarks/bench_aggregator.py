"""Uninorm aggregator k-fold training: batched (all folds, all videos at once) vs the
authors' per-video loop (Python recursion per video, one fold after another).

Both train the README's configuration (product t-norm, min off-diagonal, SORD gap 0.5,
lr 0.01, 30 epochs, init 0) on the same 5 patient-level folds of 60 synthetic videos of
40-160 frames and 4 scores. The script checks that the learned neutral elements agree,
then prints both wall times and the ratio.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_aggregator.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_aggregator.py --epochs 5  # quick
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "aggregator"))
from agg_reference import ref_train  # noqa: E402
from agg_synthetic import synthetic_predictions  # noqa: E402

from lus_dist.aggregator.data import pad_videos  # noqa: E402
from lus_dist.aggregator.protocols import make_folds  # noqa: E402
from lus_dist.aggregator.train import AggregatorConfig, fit, run_protocol  # noqa: E402
from lus_dist.aggregator.uninorm import pack  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=60)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5, help="batched timing: best of N")
    args = p.parse_args()
    torch.set_num_threads(1)
    preds = synthetic_predictions(n_videos=args.videos, lengths=(40, 160), seed=0)
    batch = pad_videos(preds)
    y = batch.video_score
    # the README's settings are the defaults; the reference loop returns its last epoch
    cfg = AggregatorConfig(epochs=args.epochs, early_stop="last")
    folds = make_folds(batch.patient_id, y, "kfold", k=args.folds, seed=0)
    print(f"{args.videos} videos, {int(batch.mask.sum())} frames, lengths "
          f"{batch.lengths.min()}-{batch.lengths.max()}, {args.folds} folds, {args.epochs} epochs")

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model = fit(pack(batch.x, batch.mask), torch.from_numpy(y),
                    torch.from_numpy(folds.train), cfg, 4)
        times.append(time.perf_counter() - t0)
    batched = min(times)
    t0 = time.perf_counter()
    run_protocol(preds, cfg, "kfold", k=args.folds, seed=0)
    full_protocol = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = []
    for f in range(folds.num_folds):
        idx = np.nonzero(folds.train[f])[0]
        videos = [batch.x[v, :int(batch.mask[v].sum())].T for v in idx]
        ref.append(ref_train(videos, y[idx], 4, lr=cfg.lr, epochs=cfg.epochs,
                             gamma=cfg.lr_gamma, milestones=cfg.lr_milestones,
                             kind=cfg.tnorm, off=cfg.off_diagonal, init=cfg.init_neutral,
                             gap=cfg.zero_score_gap, logit_scale=cfg.logit_scale))
    reference = time.perf_counter() - t0
    diff = (model.neutral.detach() - torch.stack(ref)).abs().max().item()

    print(f"learned neutral elements (fold 0): {np.round(ref[0].numpy(), 4).tolist()}")
    print(f"max |batched - reference| over folds and classes: {diff:.2e}")
    print(f"per-video reference loop : {reference:8.2f} s")
    print(f"batched (best of {args.repeats})     : {batched:8.3f} s   "
          f"(whole run_protocol incl. evaluation: {full_protocol:.3f} s)")
    print(f"speed-up                 : {reference / batched:8.1f}x")
    if diff > 1e-6:
        raise SystemExit(f"neutral elements differ by {diff:.2e} > 1e-6")


if __name__ == "__main__":
    main()
