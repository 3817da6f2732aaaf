"""A distributed, shard-local, optionally class-balanced sampler with exact resume.

It runs in the DataLoader's main process and yields dataset indices, so the order is the
same for any number of DataLoader workers. All arithmetic is in `partition.py`; this class
only holds (epoch, position) and the dataset facts.

Resume: `state_dict()` records how many indices of this epoch the *training loop* has
consumed. A DataLoader prefetches ahead of the loop, so the sampler's own count of yielded
indices overstates progress; the loop should pass what it knows,
`state_dict(consumed=steps_done * batch_size)`. `load_state_dict` then makes the next
iteration yield exactly the rest of that epoch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from lus_dist.shards.partition import epoch_indices


class DistributedShardSampler(Sampler[int]):
    """Each rank gets an equal (wrap-padded; see partition.py), epoch-seeded share made of
    mostly whole shards. With `weights` (e.g. partition.class_balanced_weights) the epoch is
    a weighted draw with replacement of `num_samples` (default: dataset size) items shared
    out the same way, i.e. WeightedRandomSampler made distributed. Given the DataLoader's
    `loader_workers` and `batch_size`, batches are dealt so that each loader worker reads
    its own shards (partition.worker_affine): file opens per epoch drop from
    shards x workers to about shards, which is what counts on a shared file system."""

    def __init__(self, shard_ids, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, weights=None, drop_last: bool = False,
                 num_samples: int | None = None, loader_workers: int = 0, batch_size: int = 1):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.shard_ids = np.asarray(shard_ids)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.num_samples = num_samples
        self.loader_workers, self.batch_size = loader_workers, batch_size
        self.epoch = 0
        self._start = 0      # where the next iteration begins (non-zero only after resume)
        self._yielded = 0    # indices handed out in the current iteration
        self._cache: tuple | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This rank's full order for the current epoch (ignores the resume position)."""
        key = (self.epoch, self.seed)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, epoch_indices(
                self.shard_ids, self.num_replicas, self.rank, self.seed, self.epoch,
                self.shuffle, self.weights, self.drop_last, self.num_samples,
                self.loader_workers, self.batch_size))
        return self._cache[1]

    def __iter__(self) -> Iterator[int]:
        order = self.indices()[self._start:]
        start, self._start = self._start, 0
        self._yielded = start
        for i in order:
            self._yielded += 1
            yield int(i)

    def __len__(self) -> int:
        return len(self.indices()) - self._start

    def state_dict(self, consumed: int | None = None) -> dict:
        position = self._yielded if consumed is None else int(consumed)
        return {"epoch": int(self.epoch), "position": position, "seed": int(self.seed),
                "num_replicas": int(self.num_replicas), "rank": int(self.rank)}

    def load_state_dict(self, state: dict) -> None:
        """Resume mid-epoch; the world size must match (a different split is a new order)."""
        if int(state.get("num_replicas", self.num_replicas)) != self.num_replicas:
            raise ValueError(f"sampler state is for {state['num_replicas']} replicas, "
                             f"this run has {self.num_replicas}")
        self.epoch, self.seed = int(state["epoch"]), int(state.get("seed", self.seed))
        self._start = self._yielded = int(state["position"])
