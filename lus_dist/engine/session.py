"""What a running process knows about itself, and the start-up every run does first."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpc import World, init_distributed, world_from_env
from hpc.dist import barrier
from hpc.device_plan import CudaFacts, RunPlan, apply_plan, plan_run, probe_cuda
from lus_dist.io.config import save_config

from .checkpoint import CHECKPOINT_DIR
from .config import RunConfig

# What a run leaves in its directory that another run would mix with: a run that stopped
# before any of them (a bad model setting) left only config.yaml, which the next overwrites
RUN_FILES = ("metrics.csv", CHECKPOINT_DIR, "best.pt", "summary.json", "features")


@dataclass
class Session:
    """World, device, run dir and precision of this process (`plan` holds the reasons)."""
    world: World
    device: torch.device
    run_dir: Path
    bf16: bool
    plan: RunPlan | None = None


class RunDirError(ValueError):
    """A run directory that holds another run: starting there would mix two runs' files."""


def run_dir_conflict(run_dir: Path, resume: str | None) -> str | None:
    """Why this run may not write into `run_dir`, or None. A new run needs a directory
    without another run's files; `--resume auto` continues the run the directory holds;
    a checkpoint path continues that checkpoint's run, which may be this directory's own
    or start a new directory, never land beside another run."""
    if run_dir.exists() and not run_dir.is_dir():
        return f"{run_dir} is a file, not a directory; give --run-dir a directory"
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    own = run_dir / CHECKPOINT_DIR
    if not found or resume == "auto" or (resume and Path(resume).resolve().is_relative_to(
            own.resolve())):
        return None
    held = f"{run_dir} holds another run ({', '.join(found)})"
    if resume:
        return f"{held}, not the run of {resume}; start from that checkpoint in a new --run-dir"
    return f"{held}; continue it with --resume auto, or start this run in a new --run-dir"


def start(cfg: RunConfig, run_dir: Path, resume: str | None = None) -> Session:
    """Join the process group, pick the device, seed, and save the resolved config (rank 0).
    Every rank looks at the run dir before any rank writes there, so a refused run leaves
    the directory as it was."""
    conflict = run_dir_conflict(run_dir, resume)
    if conflict:
        raise RunDirError(conflict)
    world = world_from_env(os.environ)
    if world.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_world_size))
    plan = run_plan(cfg, world, probe_cuda())
    apply_plan(plan)
    init_distributed(world, timeout_s=cfg.dist.timeout_s, plan=plan)
    barrier()   # (NCCL's init is no barrier) every rank has looked before rank 0 writes
    set_deterministic(cfg.train.deterministic)
    seed_everything(cfg.seed)
    pin_manifest_version(cfg, run_dir)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return Session(world, plan.torch_device(), run_dir, plan.bf16, plan)


def pin_manifest_version(cfg: RunConfig, run_dir: Path | None = None) -> None:
    """Train on one manifest version and say which: `data.manifest_version` unset means the
    version this run dir already trained on (its config.yaml, same data.root), else the
    newest; written into the run's config.yaml, so neither a resume nor a later `lus prep
    pack --append` silently changes the data under the run."""
    from lus_dist.shards.manifest import Manifest

    if cfg.data.manifest_version is None:
        saved = saved_manifest_version(run_dir / "config.yaml", cfg.data.root) if run_dir else None
        cfg.data.manifest_version = saved or Manifest.load(cfg.data.root).version


def saved_manifest_version(config_yaml: Path, root: str) -> int | None:
    """The manifest version a run dir's saved config names for the same data root."""
    import yaml

    if not config_yaml.is_file():
        return None
    data = (yaml.safe_load(config_yaml.read_text()) or {}).get("data") or {}
    same_root = Path(str(data.get("root", ""))).resolve() == Path(root).resolve()
    version = data.get("manifest_version")
    return int(version) if same_root and version is not None else None


def run_plan(cfg: RunConfig, world: World, facts: CudaFacts) -> RunPlan:
    """The device / process group / precision / TF32 decision for this config (pure;
    `lus doctor` prints the same plan the run will use)."""
    return plan_run(world, facts, device=cfg.train.device, bf16=cfg.train.bf16,
                    process_group=cfg.dist.process_group, dist_backend=cfg.dist.backend,
                    tf32=cfg.train.tf32)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int) -> None:
    """After the model is built (same init everywhere), give each rank its own dropout stream."""
    seed_everything(seed * 1_000_003 + 7919 * (rank + 1))


def set_deterministic(on: bool) -> None:
    """Bitwise-reproducible kernels (needed for the preemption-resume equivalence on CPU)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on
