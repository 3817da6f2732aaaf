"""What a running process knows about itself, and the start-up every run does first."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpc import World, device_for, init_distributed, world_from_env
from lus_dist.config import save_config

from .config import RunConfig


@dataclass
class Session:
    """World, device, run dir and precision of this process."""
    world: World
    device: torch.device
    run_dir: Path
    bf16: bool


def start(cfg: RunConfig, run_dir: Path) -> Session:
    """Join the process group, pick the device, seed, and save the resolved config (rank 0)."""
    world = world_from_env(os.environ)
    if world.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_world_size))
    if cfg.dist.backend == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    device = device_for(world, cfg.train.device)
    init_distributed(world, cfg.dist.process_group, timeout_s=cfg.dist.timeout_s)
    set_deterministic(cfg.train.deterministic)
    seed_everything(cfg.seed)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return Session(world, device, run_dir, cfg.train.use_bf16(device))


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
