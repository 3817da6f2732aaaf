"""Data plumbing every family shares: which shards a split reads, the distributed training
loader, evaluation blocks and gathering them back in dataset order."""
from __future__ import annotations

import multiprocessing
import os
import warnings
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from hpc import World
from hpc.dist import is_distributed
from lus_dist.io.config import ConfigError
from lus_dist.shards.partition import class_balanced_weights, split_even
from lus_dist.shards.sampler import DistributedShardSampler

from .config import RunConfig


def open_split(cfg: RunConfig, split: str, **kw):
    """A ShardDataset of one split, as `selection` assigns its videos. Empty is an error,
    not a silent no-op."""
    from lus_dist.shards.manifest import Manifest
    from lus_dist.shards.reader import ShardDataset

    d = cfg.data
    manifest = Manifest.load(d.root, d.manifest_version)
    sel = selection(d, split, manifest.videos, cfg.seed)
    ds = ShardDataset(d.root, channels=d.channels, manifest=manifest, **sel, **kw)
    if len(ds) == 0:
        raise ConfigError(f"{d.root}: no samples for {split!r} ({describe(sel)}; check "
                          "data.*_split / data.test_folds against the manifest)")
    return ds


HOLDOUT = "holdout"   # data.val_split: hold training patients out to pick the epoch


def validation_name(d) -> str:
    """What the best epoch is picked on, as summary.json names it."""
    return d.val_split or d.test_split


def selection(d, split: str, videos: dict, seed: int) -> dict:
    """ShardDataset selection (split / folds / patients) of `split`; pure.

    Validation (where the best epoch is picked) is, in order: `data.val_folds` (k-fold);
    `holdout`, which holds `data.val_fraction` of the training patients (of the training
    split, or of the training folds in k-fold CV) out of training, stratified by video
    class and seeded (the default); a named `data.val_split`; empty or the test split's
    name means the test split or folds, which must be asked for.
    """
    if d.val_split == HOLDOUT and not d.val_folds and split in (d.train_split, HOLDOUT):
        base = {"exclude_folds": sorted(d.test_folds)} if d.test_folds else {"split": d.train_split}
        pool = training_pool(d, videos)
        held = held_out_patients(videos, pool, d.val_fraction, seed)
        patients = np.unique(np.asarray(videos["patient_id"])[pool].astype(str))
        keep = [p for p in patients if (p in held) == (split != d.train_split)]
        return {**base, "patients": keep}
    if d.test_folds:
        test = list(d.test_folds)
        val = list(d.val_folds) if d.val_folds else test
        if split == d.train_split:
            return {"exclude_folds": sorted(set(test) | set(val))}
        return {"folds": val if split == validation_name(d) else test}
    return {"split": split}


def training_pool(d, videos: dict) -> np.ndarray:
    """Which videos may train (before any hold-out): the training split, or the non-test
    folds in k-fold CV."""
    if d.test_folds:
        return ~np.isin(np.asarray(videos["fold"]), list(d.test_folds))
    return np.asarray(videos["split"]) == d.train_split


def held_out_patients(videos: dict, in_train: np.ndarray, fraction: float, seed: int) -> set[str]:
    """About `fraction` of the patients of the `in_train` videos, at least one, stratified
    by video class: one fold of a seeded stratified group k-fold, k = round(1 / fraction)
    but at most the number of patients (4 patients at 0.2 hold out 1, not 0)."""
    from lus_dist.shards.splits import group_kfold

    patients = np.asarray(videos["patient_id"])[in_train].astype(str)
    labels = np.asarray(videos["label"])[in_train]
    n = len(set(patients))
    if n < 2:
        raise ConfigError(f"{n} training patient(s) are too few to hold any out for picking "
                          "the best epoch (data.val_split=holdout); name a validation split "
                          "(data.val_split=val, or data.val_split=test to pick on the test split)")
    k = min(max(2, int(round(1 / fraction))), n)
    fold = group_kfold(patients.tolist(), k, seed, strata=labels.tolist())
    return set(patients[fold == 0].tolist())


def describe(sel: dict) -> str:
    """`patients=[7 ids]` rather than the ids: one short line for logs and errors."""
    return ", ".join(f"{k}=[{len(v)} ids]" if k == "patients" else f"{k}={v}"
                     for k, v in sel.items())


def train_loader(ds, labels: np.ndarray | None, cfg: RunConfig, world: World,
                 device: torch.device) -> tuple[DataLoader, DistributedShardSampler]:
    """Distributed, shard-local, class-balanced (if labels are given) training loader.

    The loader gets its own generator, re-seeded per epoch in `epoch_batches`, so creating
    an iterator never consumes the global torch RNG: a resumed run draws the same dropout
    masks as an uninterrupted one.
    """
    quiet_worker_count_warning()
    weights = class_balanced_weights(labels) if labels is not None and cfg.data.balanced else None
    # worker-affine batches: each loader worker reads only its own shards (one open per
    # shard per epoch on shared storage)
    sampler = DistributedShardSampler(ds.shard_ids, world.world_size, world.rank, seed=cfg.seed,
                                      shuffle=True, weights=weights,
                                      loader_workers=cfg.data.num_workers,
                                      batch_size=cfg.data.batch_size)
    if len(sampler) < cfg.data.batch_size:
        raise ConfigError(f"{cfg.data.root}: {len(sampler)} training samples per rank is fewer "
                          f"than data.batch_size={cfg.data.batch_size}")
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                        generator=torch.Generator(),
                        **worker_options(cfg, device, getattr(ds, "epoch_dependent", True)))
    return loader, sampler


def worker_options(cfg: RunConfig, device: torch.device, epoch_dependent: bool = False) -> dict:
    """Loader workers that live across epochs (no re-fork, no reopening every shard each
    epoch) unless items depend on the epoch, started as `data.worker_start` says, and pinned
    host memory when feeding a GPU."""
    n = cfg.data.num_workers
    return {"num_workers": n, "pin_memory": device.type == "cuda",
            "persistent_workers": n > 0 and not epoch_dependent,
            "multiprocessing_context": worker_context(cfg.data.worker_start) if n > 0 else None}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. a Slurm task's cgroup/cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def loader_workers_note(num_workers: int, cpus: int) -> str | None:
    """The run's one line when each rank starts more loader workers than it has CPUs
    (torch's own rule, which torch repeats for every loader iterator: each epoch, each
    evaluation, on every rank)."""
    if num_workers <= cpus:
        return None
    return (f"data.num_workers={num_workers} loader workers per rank, but a rank here may use "
            f"{cpus} CPU(s): they compete with it for them; at most {cpus} is suggested")


def quiet_worker_count_warning() -> None:
    """Torch's repetitions of that warning: the run says it once (loader_workers_note)."""
    warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker process",
                            category=UserWarning, module=r"torch\.utils\.data\.dataloader")


# what a loader worker unpickles its dataset from: the forkserver imports them (and torch) once
WORKER_PRELOAD = ["lus_dist.shards.reader", "lus_dist.engine.features", "lus_dist.pretraining.pairs"]


def worker_context(method: str) -> multiprocessing.context.BaseContext:
    """The multiprocessing context loader workers start from.

    A rank is multithreaded by the time it makes a loader (gloo's threads, the queue feeders
    of the loaders before), and a plain fork then may copy a lock another thread holds: on
    CPython 3.8-3.11 before its fix the child can hang in its after-fork hook on the
    interpreter's thread-list lock (python/cpython#112275); this repo's CI (3.11.7) saw a
    2-rank CNN-LSTM run wait forever on such an evaluation worker. `forkserver` (Python
    3.14's default) forks workers from a single-threaded server that imports WORKER_PRELOAD
    once per rank; `fork` stays available.
    """
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


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


def eval_loader(ds, cfg: RunConfig, world: World, device: torch.device) -> DataLoader:
    """This rank's contiguous block of an evaluation set (no padding: every item once).
    A fresh loader per call: its workers end with it (evaluation sets change per split)."""
    start, stop = split_even(len(ds), world.world_size, world.rank)
    opts = {**worker_options(cfg, device), "persistent_workers": False}
    return DataLoader(Subset(ds, range(start, stop)), batch_size=cfg.data.eval_batch_size,
                      shuffle=False, generator=torch.Generator(), **opts)


def gather(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each rank's eval outputs in rank order (= dataset order, see eval_loader)."""
    if not is_distributed():
        return arrays
    parts: list[dict[str, np.ndarray] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def stack_outputs(out: dict[str, list], empty_widths: dict[str, int]) -> dict[str, np.ndarray]:
    """Concatenate per-batch arrays; a rank whose block is empty gets (0,) or (0, K) arrays
    so the gather still concatenates."""
    return {n: np.concatenate(v) if v else np.zeros((0, empty_widths[n]) if n in empty_widths
                                                  else 0) for n, v in out.items()}


def to_device(batch: dict[str, torch.Tensor], device: torch.device,
              channels_last: bool = False) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last and "image" in out:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out
