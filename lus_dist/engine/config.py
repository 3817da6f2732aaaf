"""The config sections every model family shares, built from YAML + dotted overrides.

One override vocabulary for every family (`optim.lr=3e-4 dist.backend=deepspeed`); a
family's own config subclasses `RunConfig` in its plug-in module (lus_dist/families).
`build()` methods turn a section into the object it describes, so the loop stays short.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpc.device_plan import BF16_MODES
from lus_dist.io.config import ConfigError

# forkserver first: why, in lus_dist.engine.data.worker_context
WORKER_STARTS = ("forkserver", "spawn", "fork")
DEEPSPEED_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"


@dataclass
class DataConfig:
    """Where the shards are and how to read them, and which videos do what.

    `val_split` `holdout` (the default) holds `val_fraction` of the training patients out
    of training (stratified, seeded) to pick the epoch on, so the test split never picks
    the model; a named split (e.g. `val`) is used as is; `test` must be asked for by name.
    `test_folds` (k-fold CV) trains on the other folds and grades on these; `val_folds`
    then picks the epoch instead of the test folds. See lus_dist.engine.data.selection.
    """
    root: str = "data/shards"
    manifest_version: int | None = None   # None: the newest, pinned into the saved config
    train_split: str = "train"
    val_split: str = "holdout"
    test_split: str = "test"
    test_folds: list[int] | None = None
    val_folds: list[int] | None = None
    val_fraction: float = 0.2     # of training patients, when no validation split exists
    batch_size: int = 32          # per rank
    eval_batch_size: int = 64
    num_workers: int = 0
    worker_start: str = "forkserver"   # how loader workers start: forkserver | spawn | fork
    balanced: bool = True         # class-balanced distributed draw (frame families)
    clip_len: int = 10            # CNN-LSTM
    clip_sampling: str = "uniform"
    channels: int | None = None   # None: as packed

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_folds:
            if not self.test_folds:
                raise ConfigError("data.val_folds needs data.test_folds (k-fold CV)")
            if set(self.val_folds) & set(self.test_folds):
                raise ConfigError(f"data.val_folds {self.val_folds} overlap data.test_folds "
                                  f"{self.test_folds}: a fold cannot both pick and grade the model")
            self.val_split = self.val_split or "val"
            if self.val_split in (self.train_split, self.test_split):
                raise ConfigError(f"data.val_split {self.val_split!r} must differ from the train "
                                  "and test split names when data.val_folds is set")
        if self.worker_start not in WORKER_STARTS:
            raise ConfigError(f"data.worker_start must be {'|'.join(WORKER_STARTS)}, got "
                              f"{self.worker_start!r}")
        if self.clip_sampling not in ("uniform", "random"):
            raise ConfigError(f"data.clip_sampling must be uniform|random, got {self.clip_sampling!r}")


@dataclass
class ModelConfig:
    """`name` is a frame model name, a seg arch, or "cnnlstm"; `kwargs` go to the builder."""
    name: str = "regstn_fixed"
    kwargs: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False


@dataclass
class OptimConfig:
    """Adam with weight decay 1e-4, as both papers use."""
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_accum: int = 1
    grad_clip: float = 0.0        # 0 disables clipping

    def __post_init__(self) -> None:
        if self.name not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"optim.name must be adam|adamw|sgd, got {self.name!r}")
        if self.grad_accum < 1:
            raise ConfigError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")

    def build(self, params) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.name == "adamw" else torch.optim.Adam
        return cls(params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay)


SCHEDULES = ("multistep", "warmup_cosine", "constant")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule: a named torch scheduler stepped once per `interval`.

    `multistep` multiplies by `gamma` at each milestone (Roy et al.: x0.1 at epoch 70);
    `warmup_cosine` rises linearly for `warmup` units, then follows a cosine down to
    `min_lr_ratio` x lr at the end of training (the pretraining / fine-tuning recipe);
    `constant` keeps lr. Milestones and warmup count in `interval` units: epochs, or
    optimizer steps (`step`, resumed exactly mid-epoch because the scheduler is in every
    checkpoint).
    """
    name: str = "multistep"
    interval: str = "epoch"       # epoch | step
    milestones: list[int] = field(default_factory=lambda: [70])
    gamma: float = 0.1
    warmup: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"schedule.name must be one of {'|'.join(SCHEDULES)}, got {self.name!r}")
        if self.interval not in ("epoch", "step"):
            raise ConfigError(f"schedule.interval must be epoch|step, got {self.interval!r}")
        if self.warmup < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"schedule.warmup must be >= 0 and schedule.min_lr_ratio in [0, 1], "
                              f"got {self.warmup} and {self.min_lr_ratio}")

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
              epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        """`steps_per_epoch` and `epochs` size the cosine; stepped by the loop per interval."""
        sched = torch.optim.lr_scheduler
        if self.name == "multistep":
            return sched.MultiStepLR(optimizer, list(self.milestones), self.gamma)
        if self.name == "constant":
            return sched.LambdaLR(optimizer, functools.partial(constant_factor))
        total = epochs * (steps_per_epoch if self.interval == "step" else 1)
        return sched.LambdaLR(optimizer, functools.partial(
            warmup_cosine_factor, warmup=self.warmup, total=total, min_ratio=self.min_lr_ratio))


def constant_factor(unit: int) -> float:
    return 1.0


def warmup_cosine_factor(unit: int, warmup: int, total: int, min_ratio: float) -> float:
    """lr multiplier after `unit` scheduler steps: linear warmup reaching 1 at `warmup`,
    then half a cosine from 1 to `min_ratio` at `total` (held there after)."""
    if unit < warmup:
        return (unit + 1) / (warmup + 1)
    progress = min(1.0, (unit - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainConfig:
    epochs: int = 80
    max_steps_per_epoch: int = 0  # 0: the whole epoch; >0 caps it (smoke runs, benchmarks)
    bf16: str = "auto"            # auto: GPUs with native bf16; native: also AMX CPUs; true/false
    tf32: bool = True             # TF32 matmul/cuDNN on GPUs (hpc.device_plan)
    deterministic: bool = False
    device: str = "auto"          # auto|cpu|cuda
    # ranks agree on a preemption signal every N optimizer steps (one all-reduce + host sync
    # each); a stop still lands on a step boundary and resumes exactly whatever N is.
    # 0 (auto): N from the measured step time, so agreements are ~stop_check_s apart
    stop_check_every: int = 0
    stop_check_s: float = 2.0
    # >0: an exponential moving average of the weights (lus_dist.engine.ema) is what validation
    # scores, best.pt holds and the exports use; checkpointed, exact on resume. Per
    # optimizer step: 0.999 averages over about the last 1000 steps
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.stop_check_every < 0:
            raise ConfigError(f"train.stop_check_every must be >= 0 (0: auto), got "
                              f"{self.stop_check_every}")
        if str(self.bf16).lower() not in BF16_MODES:
            raise ConfigError(f"train.bf16 must be {'|'.join(BF16_MODES)}, got {self.bf16!r}")


@dataclass
class DistConfig:
    """`ddp` wraps in DistributedDataParallel; `deepspeed` uses deepspeed.initialize."""
    backend: str = "ddp"
    process_group: str = "auto"   # auto|gloo|nccl
    timeout_s: int = 600
    deepspeed_config: str = ""    # JSON path; empty: configs/deepspeed/zero{zero_stage}.json
    zero_stage: int = 2

    def __post_init__(self) -> None:
        if self.backend not in ("ddp", "deepspeed"):
            raise ConfigError(f"dist.backend must be ddp|deepspeed, got {self.backend!r}")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"dist.zero_stage must be 0, 1 or 2, got {self.zero_stage} (ZeRO-3 "
                              "partitions the weights; evaluation and best.pt need them whole)")

    def deepspeed_json(self) -> Path:
        if self.deepspeed_config:
            path = Path(self.deepspeed_config)
        else:
            path = DEEPSPEED_CONFIGS / f"zero{self.zero_stage}.json"
        if not path.is_file():
            raise ConfigError(f"{path}: DeepSpeed config not found (set dist.deepspeed_config)")
        return path


@dataclass
class CheckpointConfig:
    every_steps: int = 0          # 0: only at epoch ends (and on preemption)
    keep: int = 2

    def __post_init__(self) -> None:
        if self.keep < 2:
            raise ConfigError("checkpoint.keep must be >= 2 (a torn newest checkpoint needs a "
                              f"fallback), got {self.keep}")


@dataclass
class LoggingConfig:
    every_steps: int = 10
    tensorboard: bool = True
    progress: str = "auto"        # auto (tqdm on a TTY) | tqdm | plain

    def __post_init__(self) -> None:
        if self.progress not in ("auto", "tqdm", "plain"):
            raise ConfigError(f"logging.progress must be auto|tqdm|plain, got {self.progress!r}")


@dataclass
class RunConfig:
    """Sections every family shares."""
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
