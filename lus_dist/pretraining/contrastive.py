"""NT-Xent (SimCLR's InfoNCE) with the negatives of the whole global batch.

Each rank embeds its B pairs (z1, z2); the embeddings of all ranks are gathered with the
autograd-aware gather below, whose backward sums the gradients every rank's loss sends
to a rank's own embeddings. Each rank's loss is the mean
over its own 2B anchors, and DDP (or DeepSpeed) averages the parameter gradients over the
W ranks, so the averaged gradient is exactly that of the mean over all 2WB anchors: 2 ranks
x B equals 1 rank x 2B (tests/pretrain/test_contrastive.py checks loss and gradients). No
extra world-size factor is needed; adding one (as some SimCLR ports do for backends whose
gather has no backward) would scale the gradient by W.

Every rank must pass the same B: use `drop_last=True` on the pretraining DataLoader
(DistributedShardSampler already gives every rank the same number of items).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for each rank's slice and hands
    a rank its own: the gradient of the sum of all ranks' losses. (torch's
    `distributed.nn.functional.all_gather` does the same but is deprecated in favour of a
    private module.)"""

    @staticmethod
    def forward(ctx, z: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, z, group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(dist.get_world_size(ctx.group))[dist.get_rank(ctx.group)], None


def gather_global(z: torch.Tensor, group=None) -> tuple[torch.Tensor, int, int]:
    """(all ranks' z concatenated in rank order, this rank's index, world size).

    Without an initialised process group (or with one rank) it is z itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return z, 0, 1
    both = _GatherWithGrad.apply(z.contiguous(), group)
    return both, dist.get_rank(group), dist.get_world_size(group)


def nt_xent_logits_targets(z1: torch.Tensor, z2: torch.Tensor, all1: torch.Tensor,
                           all2: torch.Tensor, rank: int,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2B, 2N) of the local anchors against every global embedding, and targets.

    Anchors are [z1; z2] (this rank's rows rank*B .. rank*B+B-1 of all1/all2, N = W*B);
    candidates are [all1; all2]. An anchor's positive is its other view; its own column is
    masked out; all other 2N - 2 columns are negatives. Pure given its inputs.
    """
    b, n = z1.shape[0], all1.shape[0]
    anchors = torch.cat([z1, z2])
    logits = anchors @ torch.cat([all1, all2]).T / temperature
    own = rank * b + torch.arange(b, device=z1.device)
    self_col = torch.cat([own, own + n])
    targets = torch.cat([own + n, own])
    logits = logits.masked_fill(F.one_hot(self_col, 2 * n).bool(), float("-inf"))
    return logits, targets


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
                 group=None) -> torch.Tensor:
    """Mean NT-Xent over this rank's 2B anchors with global-batch negatives.

    z1, z2: (B, D) projections of the two views of the same B frames (any scale: they are
    L2-normalised here, in float32 so bf16 autocast does not round the similarities).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent_loss expects two (B, D) tensors of one shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    both, rank, _ = gather_global(torch.cat([z1, z2], dim=1), group)  # one collective
    all1, all2 = both.split(z1.shape[1], dim=1)
    logits, targets = nt_xent_logits_targets(z1, z2, all1, all2, rank, temperature)
    return F.cross_entropy(logits, targets)


def pair_loss(model: torch.nn.Module, view1: torch.Tensor, view2: torch.Tensor, augment_cfg,
              generator: torch.Generator, temperature: float = 0.1, group=None) -> torch.Tensor:
    """The pretraining loss step: augment both views, one forward, NT-Xent.

    view1, view2: (B, C, H, W) frames of this rank's pairs, already on the model's device
    (view2 takes view1's dtype: a loop that casts only its `input_key` entry casts view1).
    Both views go through `model` as one batch of 2B: one forward per backward (what DDP
    expects) and BatchNorm statistics over both views, as SimCLR. `generator` is a CPU
    generator, e.g. `augment.step_generator(seed, epoch, step, rank)` (exact on resume).
    """
    from lus_dist.training.augment import augment_batch

    x = torch.cat([augment_batch(view1, augment_cfg, generator),
                   augment_batch(view2.to(view1.dtype), augment_cfg, generator)])
    z1, z2 = model(x).chunk(2)
    return nt_xent_loss(z1, z2, temperature, group)
