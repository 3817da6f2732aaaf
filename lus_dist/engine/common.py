"""The shared pieces every family's loop calls: start-up, data, model wrapping, stepping.

Not a Trainer: each helper does one thing and the loops in train_*.py call them in order,
so a reader sees the whole run top to bottom in one file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from hpc import World, destroy_distributed, device_for, init_distributed, world_from_env
from lus_dist.config import ConfigError, save_config, to_dict
from lus_dist.shards.partition import class_balanced_weights, split_even
from lus_dist.shards.sampler import DistributedShardSampler

from .checkpoint import Checkpointer, Progress, find_resume, unwrap
from .config import RunConfig


@dataclass
class Session:
    """What a running process knows about itself: world, device, run dir, precision."""
    world: World
    device: torch.device
    run_dir: Path
    bf16: bool

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0


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
    if world.rank == 0:
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
    """Bitwise-reproducible kernels (needed for the preemption-resume equivalence)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


# ---------------------------------------------------------------- data

def open_split(cfg: RunConfig, split: str, **kw):
    """A ShardDataset of one split; with data.test_folds (k-fold), training reads the folds
    that are neither test nor validation folds, val_split reads data.val_folds and every
    other split the test folds. Empty is an error, not a silent no-op."""
    from lus_dist.shards.reader import ShardDataset

    d = cfg.data
    if d.test_folds:
        val = list(d.val_folds or [])
        if split == d.train_split:
            sel = {"exclude_folds": list(d.test_folds) + val}
        else:
            sel = {"folds": val if val and split == d.val_split else list(d.test_folds)}
    else:
        sel = {"split": split}
    ds = ShardDataset(d.root, channels=d.channels, **sel, **kw)
    if len(ds) == 0:
        raise ConfigError(f"{d.root}: no samples for {sel} (check data.*_split / data.test_folds "
                          "against the manifest)")
    return ds


def train_loader(ds, labels: np.ndarray | None, cfg: RunConfig, world: World
                 ) -> tuple[DataLoader, DistributedShardSampler]:
    """Distributed, shard-local, class-balanced (if labels are given) training loader.

    The loader gets its own generator, re-seeded per epoch in `epoch_batches`, so creating
    an iterator never consumes the global torch RNG: a resumed run draws the same dropout
    masks as an uninterrupted one.
    """
    weights = class_balanced_weights(labels) if labels is not None and cfg.data.balanced else None
    sampler = DistributedShardSampler(ds.shard_ids, world.world_size, world.rank, seed=cfg.seed,
                                      shuffle=True, weights=weights)
    if len(sampler) < cfg.data.batch_size:
        raise ConfigError(f"{cfg.data.root}: {len(sampler)} training samples per rank is fewer "
                          f"than data.batch_size={cfg.data.batch_size}")
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, generator=torch.Generator(),
                        pin_memory=torch.cuda.is_available())
    return loader, sampler


def steps_per_epoch(loader: DataLoader, cfg: RunConfig) -> int:
    """Optimizer steps per epoch; equal on every rank because the sampler pads shares equal."""
    full = len(loader.sampler.indices()) // cfg.data.batch_size // cfg.optim.grad_accum
    cap = cfg.train.max_steps_per_epoch
    return min(full, cap) if cap > 0 else full


def epoch_batches(loader: DataLoader, sampler: DistributedShardSampler, epoch: int,
                  seed: int, rank: int) -> Iterator[Any]:
    sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)      # random clip windows depend on (seed, epoch, item)
    loader.generator.manual_seed(seed * 1_000_003 + epoch * 7919 + rank)
    return iter(loader)


def eval_loader(ds, cfg: RunConfig, world: World) -> DataLoader:
    """This rank's contiguous block of an evaluation set (no padding: every item once)."""
    start, stop = split_even(len(ds), world.world_size, world.rank)
    return DataLoader(Subset(ds, range(start, stop)), batch_size=cfg.data.eval_batch_size,
                      shuffle=False, num_workers=cfg.data.num_workers, generator=torch.Generator())


def gather(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each rank's eval outputs in rank order (= dataset order, see eval_loader)."""
    if not (dist.is_available() and dist.is_initialized()):
        return arrays
    parts: list[dict[str, np.ndarray] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def to_device(batch: dict[str, torch.Tensor], device: torch.device,
              channels_last: bool = False) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last and "image" in out:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


# ---------------------------------------------------------------- model, optimizer, stepping

@dataclass
class Fit:
    """The wrapped model and its optimizer state; `backward` does accumulation and clipping."""
    model: torch.nn.Module          # DDP / DeepSpeed engine / plain module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accum: int
    clip: float
    bf16: bool
    device: torch.device
    engine: Any = None              # the DeepSpeed engine when dist.backend=deepspeed

    @property
    def net(self) -> torch.nn.Module:
        """The unwrapped module (evaluation, visualisation, saving)."""
        return unwrap(self.model)

    def autocast(self):
        if not self.bf16 or self.engine is not None:   # DeepSpeed casts the model itself
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def input_dtype(self) -> torch.dtype:
        if self.engine is not None and self.bf16:
            return torch.bfloat16
        return torch.float32

    def sync_context(self, micro: int):
        """Skip the DDP all-reduce on all but the last micro-batch of an accumulation."""
        last = (micro + 1) % self.accum == 0
        if self.engine is None and not last and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, micro: int) -> bool:
        """Backward one micro-batch; step the optimizer at the accumulation boundary."""
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()       # a no-op inside an accumulation window
            return (micro + 1) % self.accum == 0
        (loss / self.accum).backward()
        if (micro + 1) % self.accum:
            return False
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True


def build_fit(model: torch.nn.Module, cfg: RunConfig, session: Session) -> Fit:
    """Move, optionally channels_last, and wrap the model for DDP or DeepSpeed."""
    model = model.to(session.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = cfg.optim.build(model.parameters())
    world = session.world
    if cfg.dist.backend == "deepspeed":
        engine = deepspeed_engine(model, optimizer, cfg, session)
        scheduler = cfg.schedule.build(optimizer)
        return Fit(engine, optimizer, scheduler, cfg.optim.grad_accum, cfg.optim.grad_clip,
                   session.bf16, session.device, engine=engine)
    if world.world_size > 1:
        ids = [session.device.index] if session.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    scheduler = cfg.schedule.build(optimizer)
    return Fit(model, optimizer, scheduler, cfg.optim.grad_accum, cfg.optim.grad_clip,
               session.bf16, session.device)


def deepspeed_json(cfg: RunConfig, session: Session) -> dict:
    """The DeepSpeed JSON with batch, accumulation, clipping and precision from our config."""
    path = cfg.dist.deepspeed_json()
    try:
        ds = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{path}: remove 'optimizer'/'scheduler': the engine passes its own torch "
                          "optimizer (optim.*) and schedule (schedule.*); a JSON optimizer would "
                          "JIT-compile FusedAdam")
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = cfg.optim.grad_accum
    ds["train_batch_size"] = cfg.data.batch_size * cfg.optim.grad_accum * session.world.world_size
    ds["gradient_clipping"] = cfg.optim.grad_clip
    bf16 = ds.setdefault("bf16", {})
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = session.bf16
    session.bf16 = bool(bf16.get("enabled", False))
    ds.setdefault("zero_optimization", {})["stage"] = ds.get("zero_optimization", {}).get(
        "stage", cfg.dist.zero_stage)
    return ds


def deepspeed_engine(model, optimizer, cfg: RunConfig, session: Session):
    """deepspeed.initialize without the two CPU traps: the shm_comm op JIT build (disabled:
    gloo does the collectives) and FusedAdam (we pass a torch optimizer)."""
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_json(cfg, session),
                                           dist_init_required=False)
    return engine


def sync_buffers(fit: Fit) -> None:
    """Make rank 0's buffers (BatchNorm statistics) everyone's before evaluating or saving.

    DDP broadcasts them only at the start of a training forward, so after the last step of
    an epoch each rank holds its own update; DeepSpeed never broadcasts them. Evaluation runs
    the bare module on each rank's block, so without this the ranks would score different
    models and best.pt (rank 0's) would not be the model that was scored.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buf in fit.net.buffers():
        dist.broadcast(buf, 0)


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal digests mean bitwise-equal weights."""
    net = unwrap(model)
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def all_digests(model: torch.nn.Module) -> list[str]:
    mine = params_digest(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return [str(d) for d in out]


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar training metrics over ranks (one all-reduce for all of them)."""
    if not values or not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(values, t.tolist()))


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


def write_frame_predictions(path: Path, pred: dict[str, np.ndarray], ds, split: str,
                            class_names: list[str]) -> Path:
    """Per-frame class probabilities with the manifest's ids, in the aggregator's format."""
    from lus_dist.aggregator.data import write_predictions

    videos = ds.manifest.videos
    v = pred["video"]
    return write_predictions(
        path, pred["probs"], video_id=videos["video_id"][v], patient_id=videos["patient_id"][v],
        hospital_id=videos["hospital_id"][v], frame_index=pred["frame"],
        frame_score=pred["score"], video_score=videos["video_score"][v],
        video_label=videos["label"][v], split=np.full(len(v), split), class_names=class_names)


# ---------------------------------------------------------------- the run's life cycle

def micro_step(fit: Fit, micro: int, loss_fn) -> tuple[bool, torch.Tensor, dict[str, float]]:
    """Forward (autocast) + backward of one micro-batch; True when the optimizer stepped.
    `loss_fn()` runs the model and returns (loss, parts)."""
    with fit.sync_context(micro):
        with fit.autocast():
            loss, parts = loss_fn()
        stepped = fit.backward(loss, micro)
    return stepped, loss, parts


def checkpointer(cfg: RunConfig, session: Session) -> Checkpointer:
    w = session.world
    return Checkpointer(session.run_dir / "checkpoints", w.rank, w.world_size, cfg.checkpoint.keep)


def resume(ckpt: Checkpointer, fit: Fit, sampler, spec: str | None) -> tuple[Progress, Path | None]:
    """Restore the newest valid (or the given) checkpoint; a fresh Progress if there is none."""
    path = find_resume(ckpt.dir, spec)
    if path is None:
        return Progress(), None
    progress, sampler_state, _ = ckpt.load(path, model=fit.model, optimizer=fit.optimizer,
                                           scheduler=fit.scheduler, ds_engine=fit.engine)
    sampler.load_state_dict(sampler_state)
    return progress, path


def save(ckpt: Checkpointer, fit: Fit, sampler, progress: Progress, cfg: RunConfig) -> Path:
    """Checkpoint the whole state; the sampler position is what the loop consumed."""
    sync_buffers(fit)
    consumed = progress.step_in_epoch * cfg.optim.grad_accum * cfg.data.batch_size
    return ckpt.save(progress, model=fit.model, optimizer=fit.optimizer, scheduler=fit.scheduler,
                     sampler_state=sampler.state_dict(consumed=consumed), config=to_dict(cfg),
                     ds_engine=fit.engine)


def after_step(ckpt: Checkpointer, fit: Fit, sampler, progress: Progress, cfg: RunConfig,
               preempt) -> bool:
    """Step-boundary duties: agree on preemption, checkpoint if due; True means stop now."""
    stop = preempt.should_stop()
    every = cfg.checkpoint.every_steps
    if stop or (every and progress.global_step % every == 0):
        save(ckpt, fit, sampler, progress, cfg)
    return stop


def finish(log, code: int = 0) -> int:
    log.close()
    destroy_distributed()
    return code
