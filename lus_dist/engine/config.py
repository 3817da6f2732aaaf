"""Typed run configs, one per model family, built from YAML + dotted overrides.

Sections are shared (data, optim, schedule, train, dist, checkpoint, logging) so one
override vocabulary works for every family: `optim.lr=3e-4 dist.backend=deepspeed`.
`build()` methods turn a section into the object it describes, so the loops stay short.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lus_dist.config import ConfigError, load_config
from lus_dist.losses import FrameLossConfig
from lus_dist.shards.format import SCORE_CLASSES

DEEPSPEED_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"


@dataclass
class DataConfig:
    """Where the shards are and how to read them.

    `val_split` empty means "validate on test_split" (the ICLUS layout only has train/test).
    `test_folds` (k-fold CV) trains on the other folds and evaluates on these instead;
    `val_folds` then holds further folds out for picking the best epoch, so the test folds
    never influence the model (val_split names them in the summary, default "val").
    """
    root: str = "data/shards"
    train_split: str = "train"
    val_split: str = ""
    test_split: str = "test"
    test_folds: list[int] | None = None
    val_folds: list[int] | None = None
    batch_size: int = 32          # per rank
    eval_batch_size: int = 64
    num_workers: int = 0
    balanced: bool = True         # class-balanced distributed draw (frame families)
    clip_len: int = 10            # CNN-LSTM
    clip_sampling: str = "uniform"
    channels: int | None = None   # None: as packed

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
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


@dataclass
class ScheduleConfig:
    """Per-epoch MultiStep decay (Roy et al.: x0.1 at epoch 70)."""
    milestones: list[int] = field(default_factory=lambda: [70])
    gamma: float = 0.1

    def build(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.milestones), self.gamma)


@dataclass
class TrainConfig:
    epochs: int = 80
    max_steps_per_epoch: int = 0  # 0: the whole epoch; >0 caps it (smoke runs, benchmarks)
    bf16: str = "auto"            # auto: on for CUDA, off on CPU; "true"/"false" force it
    deterministic: bool = False
    device: str = "auto"          # auto|cpu|cuda

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"train.bf16 must be auto|true|false, got {self.bf16!r}")

    def use_bf16(self, device: torch.device) -> bool:
        mode = str(self.bf16).lower()
        return device.type == "cuda" if mode == "auto" else mode == "true"


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


@dataclass
class RegSTNConfig(RunConfig):
    """Reg-STN and the Table 1 frame baselines (any `build_frame_model` name)."""
    name: str = "regstn"
    loss: FrameLossConfig = field(default_factory=FrameLossConfig)
    viz_frames: int = 8           # frames in the STN localisation grid per epoch
    predict_splits: list[str] = field(default_factory=lambda: ["test"])
    # names of the per-frame targets in the shards (one output each): the severity scores,
    # or, for data without frame scores (POCUS), the clip classes the packer stored there
    frame_classes: list[str] = field(default_factory=lambda: list(SCORE_CLASSES))

    def __post_init__(self) -> None:
        if len(self.frame_classes) < 2 or len(set(self.frame_classes)) != len(self.frame_classes):
            raise ConfigError(f"frame_classes must be >= 2 distinct names, got {self.frame_classes}")


@dataclass
class SegConfig(RunConfig):
    name: str = "seg"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        name="unet", kwargs={"encoder": "resnet18"}))
    ce_weight: float = 1.0
    dice_weight: float = 1.0


@dataclass
class CNNLSTMConfig(RunConfig):
    name: str = "cnnlstm"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="cnnlstm"))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(milestones=[], gamma=1.0))
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=4, eval_batch_size=8,
                                                                 balanced=False))


FAMILIES: dict[str, type[RunConfig]] = {"regstn": RegSTNConfig, "seg": SegConfig,
                                        "cnnlstm": CNNLSTMConfig}


def load_run_config(family: str, path: str | Path | None, overrides: list[str]) -> RunConfig:
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; choose from {sorted(FAMILIES)}")
    return load_config(FAMILIES[family], path, overrides)


def replace(cfg: Any, **changes: Any) -> Any:
    """dataclasses.replace, re-exported so loops need one import."""
    return dataclasses.replace(cfg, **changes)
