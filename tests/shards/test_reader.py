"""ShardDataset + DistributedShardSampler through real DataLoader workers (and torchrun)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lus_dist.shards.manifest import Manifest
from lus_dist.shards.partition import class_balanced_weights
from lus_dist.shards.reader import ShardDataset, clip_indices, select_videos
from lus_dist.shards.sampler import DistributedShardSampler
from shard_helpers import synth_frames

ROOT = Path(__file__).resolve().parents[2]


def _pairs(ds, sampler, workers, batch_size=5):
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers)
    return [(int(v), int(f)) for b in loader for v, f in zip(b["video"], b["frame"])]


def test_frame_items_match_the_source_frames(packed):
    ds = ShardDataset(packed)
    m = ds.manifest
    assert len(ds) == m.n_frames == len(ds.frame_scores) == len(ds.labels) == len(ds.shard_ids)
    for i in (0, 7, len(ds) - 1):
        item = ds[i]
        v, f = int(item["video"]), int(item["frame"])
        seed = int(m.videos["video_id"][v][3:])
        expect = synth_frames(seed, f + 1, 1, 1, False)[f, 0, 0] / 255.0
        assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
        assert torch.allclose(item["image"][:, 2:14], torch.full((1, 12, 16), float(expect)))
        assert (item["image"][:, 0] == 0).all()     # 24x32 source: aspect "pad" adds black rows
        assert item["score"] == (f + seed) % 4 and item["label"] == m.videos["label"][v]


def test_filters_masks_and_channels(packed):
    m = Manifest.load(packed)
    test = ShardDataset(packed, split="test")
    assert set(m.videos["split"][np.unique(test.video_index)]) == {"test"}
    not_fold0 = ShardDataset(packed, exclude_folds=[0])
    assert 0 not in set(m.videos["fold"][np.unique(not_fold0.video_index)])
    one = ShardDataset(packed, patients=["pat01"], probes=["convex"])
    assert set(m.videos["patient_id"][np.unique(one.video_index)]) == {"pat01"}
    masked = ShardDataset(packed, with_masks=True, channels=3)
    assert set(m.videos["video_id"][np.unique(masked.video_index)]) == \
        {f"vid{i:03d}" for i in range(1, 24, 2)}                       # only annotated frames
    item = masked[3]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    assert int(item["mask"][0, 0]) == int(item["score"])            # synthetic mask = score
    with pytest.raises(ValueError, match="unknown split"):
        select_videos(m.videos, split="validation")


def test_clip_mode_uniform_and_random(packed):
    ds = ShardDataset(packed, mode="clip", clip_len=6)
    assert len(ds) == ds.manifest.n_videos
    item = ds[4]
    assert item["frames"].shape == (6, 1, 16, 16)
    n = int(ds.n_frames[4])
    values = (item["frames"][:, 0, 8, 8] * 255).round().long()
    assert values.tolist() == [(4 * 7 + k) % 256 for k in clip_indices(n, 6, "uniform", None)]
    assert clip_indices(30, 10, "uniform", None).tolist()[::3] == [0, 10, 19, 29]
    rnd = ShardDataset(packed, mode="clip", clip_len=3, clip_sampling="random", seed=1)
    assert torch.equal(rnd[2]["frames"], rnd[2]["frames"])           # same (seed, epoch, item)
    starts = {int(rnd[i]["frames"][0, 0, 8, 8] * 255 + 0.5) - (i * 7) % 256 for i in range(24)}
    assert len(starts) > 1                                           # windows really move
    assert clip_indices(2, 4, "random", np.random.default_rng(0)).tolist() == [0, 1, 1, 1]


def test_pickled_dataset_reopens_lazily(packed):
    ds = ShardDataset(packed)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._files == {} and torch.equal(clone[5]["image"], ds[5]["image"])


def test_two_ranks_two_workers_read_every_frame_exactly_once(packed):
    ds = ShardDataset(packed)
    got = []
    for rank in range(2):
        sampler = DistributedShardSampler(ds.shard_ids, 2, rank, seed=3, drop_last=True)
        sampler.set_epoch(1)
        got += _pairs(ds, sampler, workers=2)
    n = len(ds)
    everything = set(zip(ds.video_index.tolist(), ds.frame_index.tolist()))
    assert len(got) == len(set(got)) == n // 2 * 2 and set(got) <= everything
    padded = []
    for rank in range(2):                                            # default: padded equal shares
        padded += _pairs(ds, DistributedShardSampler(ds.shard_ids, 2, rank, seed=3), workers=2)
    assert set(padded) == everything and len(padded) == -(-n // 2) * 2


def test_same_order_for_any_worker_count_and_exact_resume(packed):
    ds = ShardDataset(packed)
    sampler = DistributedShardSampler(ds.shard_ids, 2, 1, seed=9)
    sampler.set_epoch(2)
    orders = {w: _pairs(ds, sampler, workers=w) for w in (0, 1, 2)}
    assert orders[0] == orders[1] == orders[2]
    resumed = DistributedShardSampler(ds.shard_ids, 2, 1, seed=9)
    resumed.load_state_dict({"epoch": 2, "position": 10, "num_replicas": 2})
    assert _pairs(ds, resumed, workers=2) == orders[0][10:]


def test_class_balanced_sampler_over_the_dataset(packed):
    ds = ShardDataset(packed)
    w = class_balanced_weights(ds.frame_scores)
    draws = np.concatenate([list(DistributedShardSampler(ds.shard_ids, 2, r, weights=w, num_samples=8000))
                            for r in range(2)])
    frac = np.bincount(ds.frame_scores[draws], minlength=4) / len(draws)
    assert np.allclose(frac, 0.25, atol=0.03), frac


TORCHRUN_READ = """
import json, os, sys
import torch.distributed as dist
from torch.utils.data import DataLoader
from hpc import world_from_env
from hpc.dist import exit_worker
from lus_dist.shards.reader import ShardDataset
from lus_dist.shards.sampler import DistributedShardSampler
world = world_from_env(os.environ)
dist.init_process_group("gloo", rank=world.rank, world_size=world.world_size)
ds = ShardDataset(sys.argv[1])
sampler = DistributedShardSampler(ds.shard_ids, world.world_size, world.rank, drop_last=True)
pairs = [(int(v), int(f)) for b in DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
         for v, f in zip(b["video"], b["frame"])]
out = [None] * world.world_size
dist.all_gather_object(out, {"rank": world.rank, "pid": os.getpid(), "pairs": pairs})
if world.rank == 0:
    json.dump(out, open(sys.argv[2], "w"))
dist.destroy_process_group()
sys.exit(exit_worker(0))   # no interpreter teardown: gloo threads can abort there
"""


@pytest.mark.slow
def test_torchrun_two_processes_read_disjoint_complete_shares(packed, tmp_path):
    script, result = tmp_path / "read.py", tmp_path / "out.json"
    script.write_text(TORCHRUN_READ)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(torchrun + [str(script), str(packed), str(result)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(result.read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
    a, b = ({tuple(p) for p in r["pairs"]} for r in ranks)
    n = Manifest.load(packed).n_frames
    assert not a & b and len(a) + len(b) == n // 2 * 2
    assert Counter(len(r["pairs"]) for r in ranks) == Counter({n // 2: 2})


def test_uncompressed_fast_path_reads_the_same_items(packed, tmp_path):
    from shard_helpers import pack_synthetic, small_config
    pack_synthetic(tmp_path / "raw", cfg=small_config(compression="none"))
    a, b = ShardDataset(packed, with_masks=True), ShardDataset(tmp_path / "raw", with_masks=True)
    assert len(a) == len(b) > 0
    for i in range(0, len(a), 7):
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert b._files[int(b.shard_ids[0])][1][("frames", "direct")] is True


def test_open_files_are_bounded_and_reads_unchanged(packed):
    ds, few = ShardDataset(packed), ShardDataset(packed, max_open_shards=2)
    for i in np.random.default_rng(0).permutation(len(ds))[:40]:
        assert torch.equal(ds[int(i)]["image"], few[int(i)]["image"])
        assert len(few._files) <= 2
    assert len(ds._files) > 2


def test_index_of_short_clips_stays_within_64_bytes_a_frame(tmp_path):
    """10-frame clips, one shard each (index only: no pixels needed): the whole dataset a rank
    and each loader worker holds, ids and paths included, is <= 64 B a frame."""
    import tracemalloc

    from data_prep.synth import write_index_only
    write_index_only(tmp_path, 10_000, 1_000)
    tracemalloc.start()
    ds = ShardDataset(tmp_path)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(ds) == 10_000 and held / len(ds) <= 64, held / len(ds)
    assert ds.manifest.videos["video_id"][0].startswith("h00-p")
