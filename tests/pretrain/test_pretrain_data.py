"""Positive pairs from one clip: the partner arithmetic (pure) and FramePairs on real shards
with the distributed, shard-local sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lus_dist.pretraining.pairs import FramePairs, partner_frame
from lus_dist.shards.partition import epoch_rng
from lus_dist.shards.reader import ShardDataset
from lus_dist.shards.sampler import DistributedShardSampler


@given(n=st.integers(1, 40), gap=st.integers(1, 6), seed=st.integers(0, 10 ** 6), data=st.data())
def test_partner_is_another_frame_within_the_gap(n, gap, seed, data):
    frame = data.draw(st.integers(0, n - 1))
    j = partner_frame(frame, n, gap, np.random.default_rng(seed))
    assert 0 <= j < n and abs(j - frame) <= gap
    assert j != frame or n == 1


def test_partner_reaches_every_allowed_offset():
    rng = np.random.default_rng(0)
    seen = {partner_frame(1, 10, 3, rng) for _ in range(400)}
    assert seen == {0, 2, 3, 4}          # 1-3 clipped at frame 0; never the anchor itself
    with pytest.raises(ValueError, match="max_gap"):
        partner_frame(0, 5, 0, rng)


def test_pairs_on_shards_are_same_clip_deterministic_and_resample_per_epoch(pretrain_shards):
    pairs = FramePairs.open(pretrain_shards, max_gap=3, seed=5, split="train")
    frames = pairs.frames
    assert len(pairs) == len(frames) > 0
    idx = np.arange(0, len(pairs), 7)
    items = [pairs[int(i)] for i in idx]
    for i, item in zip(idx, items):
        j = pairs.partner(int(i))
        assert frames.video_index[j] == frames.video_index[i]            # same clip
        assert 1 <= abs(int(item["frame2"]) - int(item["frame"])) <= 3
        assert torch.equal(item["view2"], frames[j]["image"])            # the partner's pixels
        assert torch.equal(item["view1"], frames[int(i)]["image"])
    again = FramePairs.open(pretrain_shards, max_gap=3, seed=5, split="train")
    assert [again.partner(int(i)) for i in idx] == [pairs.partner(int(i)) for i in idx]
    before = [pairs.partner(int(i)) for i in idx]
    pairs.set_epoch(1)
    assert [pairs.partner(int(i)) for i in idx] != before
    assert pairs.partner(int(idx[3])) == int(pairs.first[idx[3]]) + partner_frame(
        int(frames.frame_index[idx[3]]), int(pairs.n_frames[idx[3]]), 3, epoch_rng(5, 1, int(idx[3]), 1))


def test_pairs_with_the_distributed_sampler_cover_the_epoch(pretrain_shards):
    pairs = FramePairs.open(pretrain_shards, max_gap=2, seed=0)
    shares = [list(DistributedShardSampler(pairs.shard_ids, num_replicas=2, rank=r, seed=0))
              for r in range(2)]
    assert len(shares[0]) == len(shares[1])
    assert set(shares[0]) | set(shares[1]) == set(range(len(pairs)))
    loader = torch.utils.data.DataLoader(pairs, batch_size=8, drop_last=True,
                                         sampler=DistributedShardSampler(pairs.shard_ids, 2, 0))
    batch = next(iter(loader))
    assert batch["view1"].shape == batch["view2"].shape == (8, 1, 32, 32)


def test_masked_frame_sets_are_refused(pretrain_shards):
    with pytest.raises(ValueError, match="with_masks"):
        FramePairs(ShardDataset(pretrain_shards, mode="frame", with_masks=True))


def test_resume_mid_epoch_yields_the_same_remaining_pairs(pretrain_shards):
    def loader_and_sampler():
        pairs = FramePairs.open(pretrain_shards, max_gap=3, seed=2)
        sampler = DistributedShardSampler(pairs.shard_ids, num_replicas=2, rank=1, seed=2)
        return pairs, sampler, torch.utils.data.DataLoader(pairs, batch_size=4, sampler=sampler,
                                                           drop_last=True)

    pairs, sampler, loader = loader_and_sampler()
    sampler.set_epoch(3), pairs.set_epoch(3)
    batches = list(loader)
    state = sampler.state_dict(consumed=2 * 4)          # the loop had finished two steps
    pairs2, sampler2, loader2 = loader_and_sampler()
    sampler2.load_state_dict(state)
    pairs2.set_epoch(state["epoch"])
    resumed = list(loader2)
    assert len(resumed) == len(batches) - 2
    for a, b in zip(batches[2:], resumed):
        assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])
        assert torch.equal(a["frame2"], b["frame2"])
