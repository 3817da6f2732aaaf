"""Pure partition and shuffle arithmetic for the sampler and the packer's task split.

Every function here is a deterministic function of its arguments (seeds are explicit, no
global RNG), so each rank, each DataLoader worker and each Slurm array task can compute
the same answer independently, and property tests can check it exhaustively.

The epoch order is built in four steps:
  1. pool: the sample indices of the epoch (each index once, or a class-balanced draw
     with replacement, as torch's WeightedRandomSampler but identical on every rank);
  2. locality: the pool grouped by shard, shards in an epoch-seeded order;
  3. share: contiguous equal blocks of that order, one per rank, so a rank reads mostly
     whole shards (few files opened, page cache friendly on a shared file system);
  4. mix: each rank's block shuffled again, within windows of WINDOW_SHARDS shards, so a
     batch mixes up to that many shards while a reader keeps only those open.
Shares are padded to equal length by wrapping around (DDP needs every rank to run the same
number of steps); `drop_last=True` truncates instead. Only the <= num_replicas - 1 padded
positions repeat an item; all other positions are disjoint across ranks.
"""
from __future__ import annotations

import numpy as np


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """A generator per (seed, epoch, stream): independent streams, no shared state."""
    return np.random.default_rng([int(seed), int(epoch), *map(int, stream)])


def split_even(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of block `index` when n items are cut into `parts` contiguous blocks
    whose sizes differ by at most one."""
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"block {index} of {parts} is not a valid partition index")
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def task_items(n_items: int, num_tasks: int, task_index: int) -> np.ndarray:
    """Items (e.g. shards) a pack task owns: strided, so tasks get interleaved sizes."""
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is outside 0..{num_tasks - 1}")
    return np.arange(task_index, n_items, num_tasks)


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weight 1/count(class) as Roy et al.'s WeightedRandomSampler; unknown
    labels (-1) get weight 0 so they are never drawn."""
    labels = np.asarray(labels)
    known = labels >= 0
    if not known.any():
        raise ValueError("class-balanced sampling needs at least one labelled sample")
    counts = np.bincount(labels[known])
    weights = np.zeros(len(labels), dtype=np.float64)
    weights[known] = 1.0 / counts[labels[known]]
    return weights


def epoch_pool(n: int, seed: int, epoch: int, weights: np.ndarray | None = None,
               num_samples: int | None = None) -> np.ndarray:
    """The epoch's sample indices: every index once, or a weighted draw with replacement."""
    if weights is None:
        return np.arange(n, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) != n or (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum")
    size = n if num_samples is None else num_samples
    return epoch_rng(seed, epoch, 0).choice(n, size=size, replace=True, p=weights / weights.sum())


def locality_order(pool: np.ndarray, shard_ids: np.ndarray, seed: int, epoch: int,
                   shuffle: bool) -> np.ndarray:
    """The pool grouped by shard; shards in an epoch-seeded order, items shuffled inside."""
    shard_ids = np.asarray(shard_ids)
    pool = np.asarray(pool, dtype=np.int64)
    if not shuffle:
        return pool[np.argsort(shard_ids[pool], kind="stable")]
    rng = epoch_rng(seed, epoch, 1)
    shards = np.unique(shard_ids)
    rank_of_shard = np.empty(shards.max() + 1 if len(shards) else 0, dtype=np.int64)
    rank_of_shard[shards] = rng.permutation(len(shards))
    pool = pool[rng.permutation(len(pool))]
    return pool[np.argsort(rank_of_shard[shard_ids[pool]], kind="stable")]


def rank_share(order: np.ndarray, num_replicas: int, rank: int, drop_last: bool) -> np.ndarray:
    """Rank's contiguous block of `order`; blocks are equal (padded by wrap-around, or
    truncated with drop_last)."""
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
    n = len(order)
    per_rank = n // num_replicas if drop_last else -(-n // num_replicas)
    total = per_rank * num_replicas
    if total > n:
        order = np.resize(order, total)  # np.resize repeats from the start: wrap-around pad
    return order[rank * per_rank:(rank + 1) * per_rank]


WINDOW_SHARDS = 64   # shards mixed together at a time: a worker's open-file set stays small


def windowed_mix(share: np.ndarray, share_shards: np.ndarray, rng: np.random.Generator | None,
                 window: int = WINDOW_SHARDS) -> np.ndarray:
    """`share` (in locality order, grouped by shard) shuffled within consecutive windows of
    `window` shards, so a reader has about `window` shards in use at any time instead of
    all of them (bounded open files and handle memory at 10^4 shards; see the reader's
    max_open_shards). With one window (<= `window` shards) it is a plain permutation of
    the share. rng None keeps the order."""
    if rng is None:
        return share
    starts = np.flatnonzero(np.diff(share_shards)) + 1      # where a new shard begins
    parts = np.split(share, starts[window - 1::window])
    return np.concatenate([p[rng.permutation(len(p))] for p in parts]) if len(share) else share


def worker_block_sizes(n: int, workers: int, batch_size: int) -> list[int]:
    """How many of n items each DataLoader worker reads when the loader cuts them into
    batches of `batch_size` and hands batch j to worker j % workers: whole batches, and the
    one short batch (the last) to the worker it falls to. Cutting the share into blocks of
    exactly these sizes keeps every batch, the last included, inside one worker's block."""
    n_batches = -(-n // batch_size)
    counts = [len(range(w, n_batches, workers)) for w in range(workers)]
    sizes = [c * batch_size for c in counts]
    if n_batches:
        sizes[(n_batches - 1) % workers] -= n_batches * batch_size - n
    return sizes


def worker_affine(share: np.ndarray, share_shards: np.ndarray, workers: int, batch_size: int,
                  rng: np.random.Generator | None, window: int = WINDOW_SHARDS) -> np.ndarray:
    """A rank's share (in locality order) reordered so that DataLoader worker w reads
    only block w of it: the share is cut into `workers` contiguous blocks sized by
    `worker_block_sizes` (disjoint shards but for the <= workers - 1 shards on a cut), each
    mixed by `windowed_mix`, and batches are dealt round-robin, batch j from block
    j % workers, as the DataLoader hands batch j to worker j % workers. Each shard is then
    opened by one worker per epoch instead of by every worker. Pure and a permutation of
    `share`."""
    cuts = np.cumsum([0] + worker_block_sizes(len(share), workers, batch_size))
    batches = []
    for w in range(workers):
        block = windowed_mix(share[cuts[w]:cuts[w + 1]], share_shards[cuts[w]:cuts[w + 1]], rng, window)
        batches.append([block[i:i + batch_size] for i in range(0, len(block), batch_size)])
    dealt = [bl[j] for j in range(max(map(len, batches), default=0)) for bl in batches if j < len(bl)]
    return np.concatenate(dealt) if dealt else share[:0]


def epoch_indices(shard_ids: np.ndarray, num_replicas: int, rank: int, seed: int, epoch: int,
                  shuffle: bool = True, weights: np.ndarray | None = None,
                  drop_last: bool = False, num_samples: int | None = None,
                  loader_workers: int = 0, batch_size: int = 1) -> np.ndarray:
    """This rank's sample indices for one epoch, in the order it should read them. The mix
    step is `windowed_mix`, or `worker_affine` given loader_workers > 1 and the loader's
    batch size."""
    shard_ids = np.asarray(shard_ids)
    pool = epoch_pool(len(shard_ids), seed, epoch, weights, num_samples)
    share = rank_share(locality_order(pool, shard_ids, seed, epoch, shuffle),
                       num_replicas, rank, drop_last)
    rng = epoch_rng(seed, epoch, 2, rank) if shuffle else None
    if loader_workers > 1:
        return worker_affine(share, shard_ids[share], loader_workers, batch_size, rng)
    return windowed_mix(share, shard_ids[share], rng)
