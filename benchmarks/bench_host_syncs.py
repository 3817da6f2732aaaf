"""Host syncs per training step, and step time, before and after the hot-loop changes.

A host sync is a device-to-host read the training loop waits for: `.item()`, `.tolist()`,
`float(t)`/`bool(t)` on a tensor, `.cpu()`/`.numpy()`. On a GPU each one stalls the
stream; on this CPU they cost little, so the count is the measure and the step time the
check that nothing got slower. Counted with a TorchFunctionMode around the loop's step
methods only (micro-steps, logging, the preemption agreement), not data loading or eval.

"before" = the old per-step behaviour (losses read and the preemption all-reduce every
step: logging.every_steps=1, train.stop_check_every=1); "after" = losses stay on the
device until the logging interval and the agreement runs every 10 steps.

    python benchmarks/bench_host_syncs.py [--shards DIR] [--steps 40]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import make_shards, overrides  # noqa: E402

SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
         torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy}


class CountSyncs(TorchFunctionMode):
    """Counts sync calls by the code that made them. torch.optim's own `.item()` on its CPU
    step counters is left out: with CUDA parameters those counters stay on the host, so
    they are no device sync there (they are on CPU here only because everything is)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.where: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            caller = sys._getframe(1)
            path = caller.f_code.co_filename
            if f"torch{os.sep}optim{os.sep}" not in path:
                self.count += 1
                self.where[f"{Path(path).name}:{caller.f_lineno}"] += 1
        return func(*args, **(kwargs or {}))


def measure(shards: Path, steps: int, every: int, out: Path) -> tuple[float, float]:
    """(host syncs per optimizer step, seconds per step) of one single-process run."""
    from lus_dist.engine import registry as families
    from lus_dist.engine.loop import Trainer, RunHooks

    cfg = families.load_run_config("regstn", None, [
        *overrides(shards, 16, steps), f"logging.every_steps={every}",
        f"train.stop_check_every={every}"])
    trainer = Trainer(families.make("regstn", cfg), out, None, RunHooks())
    counter = CountSyncs()
    for name in ("micro_step", "log_step", "at_step_boundary"):
        method = getattr(trainer, name)

        def counted(*a, _m=method, **kw):
            with counter:
                return _m(*a, **kw)
        setattr(trainer, name, counted)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    print(f"  every={every}: where (calls): {dict(counter.where.most_common(6))}", flush=True)
    return counter.count / steps, wall / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default=None)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID"):
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(args.shards) if args.shards else make_shards(Path(tmp))
        rows = {}
        for label, every in (("before", 1), ("after", 10), ("before", 1), ("after", 10)):
            syncs, step_s = measure(shards, args.steps, every, Path(tmp) / f"{label}-{every}-{len(rows)}")
            rows.setdefault(label, []).append((syncs, step_s))
    print(f"{'':8} {'syncs/step':>10} {'s/step (best of 2)':>20}")
    best = {k: (v[0][0], min(s for _, s in v)) for k, v in rows.items()}
    for k, (syncs, s) in best.items():
        print(f"{k:8} {syncs:10.2f} {s:20.4f}")
    print(f"host_syncs: before={best['before'][0]:.2f} after={best['after'][0]:.2f} per step; "
          f"step time after/before={best['after'][1] / best['before'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
