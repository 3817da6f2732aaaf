"""The pretraining pieces together, without the engine: pairs from packed phantom shards ->
batched augmentations -> encoder + projection -> NT-Xent, a few AdamW steps; the loss on a
fixed batch falls and the kNN accuracy of the frozen features on a held-aside fold is
computed. The family plug-in wires exactly these calls into the shared loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from lus_dist.training.augment import AugmentConfig, step_generator
from lus_dist.pretraining.contrastive import pair_loss
from lus_dist.models import ContrastiveModel, build_frame_model, export_encoder
from lus_dist.pretraining.pairs import FramePairs
from lus_dist.pretraining.probe import knn_monitor
from lus_dist.shards.reader import ShardDataset
from lus_dist.shards.sampler import DistributedShardSampler

SEED, BATCH, STEPS, HELD_FOLD, TEMPERATURE = 0, 16, 24, 0, 0.2


def knn_on_held_fold(model, root) -> float:
    bank = ShardDataset(root, split="train", exclude_folds=[HELD_FOLD])
    held = ShardDataset(root, split="train", folds=[HELD_FOLD])
    return knn_monitor(model.features, DataLoader(bank, batch_size=64),
                       DataLoader(held, batch_size=64), k=10)


@pytest.mark.learning
def test_pretraining_lowers_the_loss_and_reports_knn(pretrain_shards, tmp_path):
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    pairs = FramePairs.open(pretrain_shards, max_gap=3, seed=SEED, split="train",
                            exclude_folds=[HELD_FOLD])     # never the held-aside clips
    sampler = DistributedShardSampler(pairs.shard_ids, num_replicas=1, rank=0, seed=SEED)
    loader = DataLoader(pairs, batch_size=BATCH, sampler=sampler, drop_last=True)
    model = ContrastiveModel("small_cnn", in_channels=1, proj_dim=32, proj_hidden=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    cfg = AugmentConfig()
    spread = np.linspace(0, len(pairs) - 1, 32).round().astype(int).tolist()  # many clips
    fixed = next(iter(DataLoader(Subset(pairs, spread), batch_size=32)))

    def fixed_loss() -> float:
        with torch.no_grad():
            return pair_loss(model, fixed["view1"], fixed["view2"], cfg,
                             step_generator(SEED, 0, 0, stream=1), TEMPERATURE).item()

    knn_before, loss_before = knn_on_held_fold(model, pretrain_shards), fixed_loss()
    step, epoch, losses = 0, 0, []
    while step < STEPS:
        sampler.set_epoch(epoch)
        pairs.set_epoch(epoch)
        for batch in loader:
            loss = pair_loss(model, batch["view1"], batch["view2"], cfg,
                             step_generator(SEED, epoch, step), TEMPERATURE)
            losses.append(round(loss.item(), 3))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == STEPS:
                break
        epoch += 1
    loss_after, knn_after = fixed_loss(), knn_on_held_fold(model, pretrain_shards)
    print(f"training NT-Xent per step {losses}\nfixed-batch NT-Xent {loss_before:.3f} -> {loss_after:.3f}; "
          f"held-fold kNN accuracy {knn_before:.3f} -> {knn_after:.3f}")
    assert loss_after < loss_before - 0.3
    assert 0.0 <= knn_before <= 1.0 and 0.0 <= knn_after <= 1.0

    frame_model = build_frame_model("cnn_sord", 1, 4, encoder_weights=str(
        export_encoder(model, tmp_path / "encoder.pt")))
    x = fixed["view1"][:4]
    model.eval(), frame_model.eval()
    with torch.no_grad():
        assert torch.allclose(model.encoder[0](x), frame_model.classifier.features(x), atol=1e-5)
