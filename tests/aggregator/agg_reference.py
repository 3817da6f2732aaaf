"""Per-video reference uninorm and trainer, written from the definition the way the
authors compute it: a Python recursion that halves the frame axis (left part T // 2),
pairs combined by boolean-mask assignment per region, one video at a time, and a
trainer that accumulates per-video losses before one Adam step per epoch. Tests and
benchmarks/bench_aggregator.py compare the batched implementation against it."""
from __future__ import annotations

import torch


def _t(x, kind):
    if kind == "product":
        return x[:, 0] * x[:, 1]
    return torch.maximum(torch.zeros_like(x[:, 0]), x.sum(1) - 1)


def _s(x, kind):
    if kind == "product":
        return x.sum(1) - x[:, 0] * x[:, 1]
    return torch.minimum(torch.ones_like(x[:, 0]), x.sum(1))


def ref_pair(x, e, kind="product", off="min"):
    """x: (C, 2), e: (C,) -> (C,): the three-region uninorm per class."""
    y = torch.zeros(x.shape[0], dtype=x.dtype)
    low = (x[:, 0] <= e) & (x[:, 1] <= e)
    high = (x[:, 0] > e) & (x[:, 1] > e)
    mixed = ~low & ~high
    if low.any():
        el = e[low]
        safe = torch.where(el > 0, el, torch.ones_like(el))[:, None]
        y[low] = el * _t(x[low] / safe, kind)
    if high.any():
        eh = e[high]
        safe = torch.where(eh < 1, 1 - eh, torch.ones_like(eh))[:, None]
        y[high] = eh + (1 - eh) * _s((x[high] - eh[:, None]) / safe, kind)
    if mixed.any():
        xm = x[mixed]
        y[mixed] = {"min": xm.min(1).values, "max": xm.max(1).values,
                    "mean": xm.mean(1)}[off]
    return y


def ref_uninorm(x, neutral, kind="product", off="min"):
    """x: (C, T) one video; neutral: (C,). Returns (C,)."""
    if x.shape[1] == 1:
        return x[:, 0]
    if x.shape[1] == 2:
        return ref_pair(x, neutral, kind, off)
    half = x.shape[1] // 2
    left = ref_uninorm(x[:, :half], neutral, kind, off)
    right = ref_uninorm(x[:, half:], neutral, kind, off)
    return ref_pair(torch.stack([left, right], dim=1), neutral, kind, off)


def ref_sord(label, num_classes, gap, multiplier=2.0):
    """The authors' per-element SORD target loop."""
    out = torch.zeros(num_classes, dtype=torch.float64)
    for c in range(num_classes):
        yl = -gap if (gap and label == 0) else label
        cl = -gap if (gap and c == 0) else c
        out[c] = -multiplier * abs(yl - cl) ** 2
    return torch.softmax(out, 0)


def ref_train(videos, labels, num_classes, lr=0.01, epochs=30, gamma=1.0,
              milestones=(15, 20, 25), kind="product", off="min", init=0.0, gap=0.5,
              logit_scale=1.0):
    """One fold, the authors' loop (their logits: logit_scale 1): videos is a list of
    (C, T) tensors. Returns neutral."""
    neutral = torch.nn.Parameter(torch.full((num_classes,), init, dtype=torch.float64))
    opt = torch.optim.Adam([neutral], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=gamma)
    targets = [ref_sord(int(y), num_classes, gap) for y in labels]
    for _ in range(epochs):
        opt.zero_grad()
        for x, t in zip(videos, targets):
            out = ref_uninorm(x, neutral, kind, off)
            loss = -(t * torch.log_softmax(out * logit_scale, 0)).sum()
            loss.backward()
        opt.step()
        with torch.no_grad():
            neutral.clamp_(0.0, 1.0)
        sched.step()
    return neutral.detach()


def ref_binary(x, e_local, e_global, kind="product", off="min"):
    """COVID/no-COVID, per frame then per video: x (C, T) -> (2,)."""
    pos = torch.stack([ref_uninorm(x[1:, t][None, :], e_local, kind, off)[0]
                       for t in range(x.shape[1])])
    return ref_uninorm(torch.stack([x[0], pos]), e_global, kind, off)


def ref_hierarchy(x, e, kind="product", off="min"):
    """The authors' ScoreHierarchyNet forward for one video: x (C, T) -> (C,)."""
    pos_neg = torch.softmax(torch.stack([x[0].mean(), x[1:].sum(0).mean()]), 0)
    u = ref_uninorm(x[1:], e, kind, off)
    if pos_neg[0] >= 0.5:
        return torch.cat([pos_neg[:1], pos_neg[1] * torch.softmax(u, 0)])
    return torch.cat([torch.zeros(1, dtype=x.dtype), u])
