"""`lus train FAMILY`: one entry point for a plain process, torchrun and srun.

The launcher is detected from the environment (hpc.world_from_env), so the same command
line works as `python -m lus train ...`, under `torchrun --standalone|--rdzv-backend c10d`,
and as one srun task per GPU. Exit codes: 0 done, 2 bad config/arguments,
hpc.REQUEUE_EXIT_CODE (75) checkpointed on SIGUSR1/SIGTERM and asks to be requeued.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpc import exit_worker
from hpc.dist import exit_user_error
from lus_dist.engine import registry as families
from lus_dist.engine.loop import run

EPILOG = """examples:
  lus train regstn --config configs/demo_regstn.yaml data.root=data/shards train.epochs=5
  torchrun --standalone --nproc-per-node 2 -m lus train regstn --config configs/regstn.yaml \\
      data.root=data/shards --run-dir runs/regstn --resume auto
  torchrun --standalone --nproc-per-node 2 -m lus train regstn --config configs/regstn.yaml \\
      dist.backend=deepspeed dist.zero_stage=2
  srun --ntasks-per-node 4 python -m lus train seg --config configs/seg.yaml

Run dir: config.yaml, checkpoints/, tb/, metrics.csv, viz/, predictions/, summary.json;
it holds one run: a new run into one holding another stops (--resume auto continues that).
Exit 75 (hpc.REQUEUE_EXIT_CODE) means "checkpointed on a preemption signal, requeue me";
rerun the same command with --resume auto to continue exactly where it stopped. Exit 2 is
bad input (config, data, run dir), said in one line. Plain torchrun reports any worker
failure as 1 and adds its traceback; `python -m hpc.launch` (same arguments) keeps 75 and 2.
Set OMP_NUM_THREADS=1 per process on CPU, and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 under
torchrun --max-restarts (elastic restarts)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus train", description="Train a model family (" + ", ".join(families.names())
        + ") on HDF5 shards with DDP or DeepSpeed; resumable to the step.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=families.names(),
                   help="model family (lus_dist.engine.registry; plug-ins via LUS_FAMILIES)")
    p.add_argument("--config", default=None, help="YAML config (defaults of the family if omitted)")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<name>)")
    p.add_argument("--resume", default=None,
                   help="'auto' = newest valid checkpoint of the run dir if any, or a checkpoint path")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4")
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (config, data dir, checkpoint, launch env), not a bug:
    reported as one line naming the file and the problem, exit 2."""
    from hpc import WorldError
    from lus_dist.engine.checkpoint import CheckpointError
    from lus_dist.io.config import ConfigError
    from lus_dist.shards.manifest import ManifestError
    from lus_dist.engine.session import RunDirError
    return ConfigError, ManifestError, CheckpointError, RunDirError, WorldError, FileNotFoundError


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    from lus_dist.io.config import ConfigError
    try:
        cfg = families.load_run_config(args.family, args.config, args.overrides)
    except ConfigError as exc:
        return exit_user_error(f"lus train: {exc}")
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    try:
        return exit_worker(run(families.make(args.family, cfg), run_dir, resume=args.resume))
    except user_errors() as exc:
        return exit_user_error(f"lus train: {exc}")


if __name__ == "__main__":
    sys.exit(main())
