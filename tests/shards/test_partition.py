"""Property tests for the pure partition/shuffle arithmetic behind the sampler."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.shards.partition import (class_balanced_weights, epoch_indices, epoch_rng, split_even,
                                       task_items, windowed_mix, worker_affine,
                                       worker_block_sizes)
from lus_dist.shards.sampler import DistributedShardSampler

shard_lists = st.lists(st.integers(0, 6), min_size=1, max_size=120).map(lambda s: np.sort(np.array(s)))
common = dict(max_examples=60, deadline=None)


def shares(shard_ids, world, epoch=0, seed=0, **kw):
    return [epoch_indices(shard_ids, world, r, seed, epoch, **kw) for r in range(world)]


@given(shard_lists, st.integers(1, 7), st.integers(0, 5), st.booleans())
@settings(**common)
def test_padded_shares_are_equal_disjoint_and_complete(shard_ids, world, epoch, shuffle):
    parts = shares(shard_ids, world, epoch, shuffle=shuffle)
    n = len(shard_ids)
    per_rank = -(-n // world)
    assert {len(p) for p in parts} == {per_rank}                  # padded equal for DDP
    flat = np.concatenate(parts)
    assert set(flat.tolist()) == set(range(n))                     # complete
    counts = Counter(flat.tolist())
    assert sum(c - 1 for c in counts.values()) == per_rank * world - n   # only padding repeats


@given(shard_lists, st.integers(1, 7), st.integers(0, 5))
@settings(**common)
def test_drop_last_shares_are_disjoint(shard_ids, world, epoch):
    flat = np.concatenate(shares(shard_ids, world, epoch, drop_last=True))
    assert len(flat) == len(set(flat.tolist())) == len(shard_ids) // world * world


@given(shard_lists, st.integers(1, 4), st.integers(0, 3), st.integers(0, 2**16))
@settings(**common)
def test_deterministic_and_epoch_seeded(shard_ids, world, epoch, seed):
    a = shares(shard_ids, world, epoch, seed)
    b = shares(shard_ids, world, epoch, seed)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_epochs_and_seeds_change_the_order():
    ids = np.repeat(np.arange(8), 50)
    e0, e1 = shares(ids, 2, 0)[0], shares(ids, 2, 1)[0]
    s1 = shares(ids, 2, 0, seed=1)[0]
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, s1)


@given(st.integers(2, 12), st.integers(20, 80), st.integers(1, 4), st.integers(0, 9))
@settings(**common)
def test_shard_locality_rank_reads_few_shards(n_shards, per_shard, world, epoch):
    """Contiguous blocks of a shard-grouped order: a rank touches at most
    ceil(shards/world) + 1 shards, i.e. mostly whole shards, not all of them."""
    ids = np.repeat(np.arange(n_shards), per_shard)
    for part in shares(ids, world, epoch):
        assert len(np.unique(ids[part])) <= -(-n_shards // world) + 1


@given(st.lists(st.integers(0, 2), min_size=3, max_size=60), st.integers(1, 4), st.integers(0, 3))
@settings(**common)
def test_weighted_draw_is_shared_out_like_the_plain_one(labels, world, epoch):
    labels = np.array(labels)
    w = class_balanced_weights(labels)
    ids = np.arange(len(labels)) // 7
    parts = shares(ids, world, epoch, weights=w)
    assert {len(p) for p in parts} == {-(-len(labels) // world)}
    flat = np.concatenate(parts)
    assert set(flat.tolist()) <= set(np.flatnonzero(w > 0).tolist())


def test_class_balanced_draw_balances_classes():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    flat = np.concatenate(shares(np.arange(1000) // 100, 2, 3, weights=class_balanced_weights(labels),
                                 num_samples=30000))
    frac = np.bincount(labels[flat], minlength=3) / len(flat)
    assert np.allclose(frac, 1 / 3, atol=0.02), frac


def test_unknown_labels_are_never_drawn_and_all_unknown_is_an_error():
    w = class_balanced_weights(np.array([-1, 0, 0, 1]))
    assert w[0] == 0 and w[1] == w[2] == 0.5 and w[3] == 1
    with pytest.raises(ValueError, match="at least one labelled"):
        class_balanced_weights(np.array([-1, -1]))


@given(st.integers(0, 200), st.integers(1, 9))
@settings(**common)
def test_split_even_and_task_items_cover_exactly_once(n, parts):
    blocks = [split_even(n, parts, i) for i in range(parts)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1
    tasks = np.concatenate([task_items(n, parts, i) for i in range(parts)])
    assert sorted(tasks.tolist()) == list(range(n))


@given(shard_lists, st.integers(1, 4), st.integers(0, 3), st.data())
@settings(**common)
def test_sampler_resume_yields_exactly_the_rest(shard_ids, world, epoch, data):
    rank = data.draw(st.integers(0, world - 1))
    full = DistributedShardSampler(shard_ids, world, rank, seed=5)
    full.set_epoch(epoch)
    order = list(full)
    cut = data.draw(st.integers(0, len(order)))
    resumed = DistributedShardSampler(shard_ids, world, rank, seed=5)
    resumed.load_state_dict(full.state_dict(consumed=cut) | {"epoch": epoch})
    assert len(resumed) == len(order) - cut
    assert list(resumed) == order[cut:]
    resumed.set_epoch(epoch + 1)                       # next epoch starts from the beginning
    assert len(list(resumed)) == len(order)


def test_sampler_rejects_state_of_another_world_size():
    s = DistributedShardSampler(np.zeros(10, int), 2, 0)
    with pytest.raises(ValueError, match="4 replicas"):
        s.load_state_dict({"epoch": 1, "position": 3, "num_replicas": 4})


@given(st.lists(st.integers(0, 30), min_size=1, max_size=300), st.integers(2, 4), st.integers(1, 16),
       st.integers(0, 5))
@settings(max_examples=60, deadline=None)
def test_worker_affine_is_a_permutation_where_each_worker_reads_its_own_shards(shard_list, workers, batch, seed):
    shard_ids = np.sort(np.array(shard_list))        # a share in locality order: grouped by shard
    share = np.arange(len(shard_ids))
    order = worker_affine(share, shard_ids, workers, batch, epoch_rng(seed, 0, 2), window=3)
    assert sorted(order.tolist()) == share.tolist()
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]   # as the DataLoader cuts
    reads = {(j % workers, int(s)) for j, b in enumerate(batches) for s in shard_ids[b]}
    # every batch, the short last one included: only the <= workers - 1 shards cut between
    # two workers' blocks are opened twice
    assert len(reads) <= len(np.unique(shard_ids)) + workers - 1


@given(st.integers(0, 500), st.integers(1, 5), st.integers(1, 70))
def test_worker_block_sizes_are_what_the_loader_hands_each_worker(n, workers, batch):
    sizes = worker_block_sizes(n, workers, batch)
    cut = [min(batch, n - i) for i in range(0, n, batch)]          # the loader's batches
    assert sizes == [sum(cut[w::workers]) for w in range(workers)]


def test_sampler_with_loader_workers_opens_each_shard_in_one_worker():
    shard_ids = np.repeat(np.arange(8), 64)
    plain = DistributedShardSampler(shard_ids, 1, 0, seed=1).indices()
    affine = DistributedShardSampler(shard_ids, 1, 0, seed=1, loader_workers=2, batch_size=16).indices()
    assert sorted(plain.tolist()) == sorted(affine.tolist())

    def shards_per_worker(order):     # the DataLoader hands batch j to worker j % 2
        batches = np.array_split(order, len(order) // 16)
        return [set(shard_ids[np.concatenate(batches[w::2])].tolist()) for w in range(2)]
    assert sum(map(len, shards_per_worker(plain))) == 16          # every worker opens every shard
    assert sum(map(len, shards_per_worker(affine))) == 8          # each shard in one worker


@given(shard_lists, st.integers(1, 4), st.integers(0, 5))
@settings(**common)
def test_windowed_mix_keeps_each_window_of_shards_together(shard_ids, window, seed):
    share = np.arange(len(shard_ids))                  # shard_ids is sorted: locality order
    mixed = windowed_mix(share, shard_ids, epoch_rng(seed, 0, 2), window)
    assert sorted(mixed.tolist()) == share.tolist()
    rank_in_order = np.unique(shard_ids, return_inverse=True)[1]
    assert (np.diff(rank_in_order[mixed] // window) >= 0).all()   # windows come one after another
    if len(np.unique(shard_ids)) <= window:            # one window: a plain permutation
        assert np.array_equal(mixed, share[epoch_rng(seed, 0, 2).permutation(len(share))])
