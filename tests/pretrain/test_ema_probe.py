"""EMA of the weights (exact resume through state_dict) and frozen-feature accuracy."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from lus_dist.engine.ema import EMA
from lus_dist.pretraining.probe import embed, knn_accuracy, linear_probe_accuracy


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def sgd_steps(model, opt, ema, steps, start):
    for s in range(start, start + steps):
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update(model)


def test_ema_follows_the_formula():
    model = net()
    ema = EMA(model, decay=0.9)
    first = [p.detach().clone() for p in model.parameters()]
    mean0 = model[1].running_mean.clone()
    ema.update(model)                                   # first update copies
    with torch.no_grad():
        model(torch.randn(8, 4) + 3)                    # moves the BatchNorm running mean
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for avg, w0, p in zip(ema.module.parameters(), first, model.parameters()):
        assert torch.allclose(avg, 0.9 * w0 + 0.1 * p)
    mean1 = model[1].running_mean
    assert not torch.allclose(mean0, mean1)
    assert torch.allclose(ema.module[1].running_mean, 0.9 * mean0 + 0.1 * mean1)  # buffers too
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_ema_resume_is_bitwise_exact():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = EMA(model, decay=0.95)
    sgd_steps(model, opt, ema, 3, 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict()}, buf)
    sgd_steps(model, opt, ema, 4, 3)                    # uninterrupted run

    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = net()
    model2.load_state_dict(ck["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ck["opt"])
    ema2 = EMA(model2, decay=0.95)
    ema2.load_state_dict(ck["ema"])
    sgd_steps(model2, opt2, ema2, 4, 3)                 # resumed run
    for a, b in zip(ema.averaged.state_dict().values(), ema2.averaged.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="decay"):
        EMA(model2, decay=0.5).load_state_dict(ck["ema"])


def clustered(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 5) * 4
    labels = np.repeat(np.arange(3), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), 5)), labels


def test_knn_and_probe_separate_clusters_and_not_noise():
    xb, yb = clustered(30, 0)
    xq, yq = clustered(10, 1)
    assert knn_accuracy(xb, yb, xq, yq, k=5) > 0.9
    assert linear_probe_accuracy(xb, yb, xq, yq) > 0.9
    shuffled = np.random.default_rng(2).permutation(yb)
    assert knn_accuracy(xb, shuffled, xq, yq, k=5) < 0.7
    yq_unknown = yq.copy()
    yq_unknown[:15] = -1                                 # unknown labels are dropped, not scored
    assert knn_accuracy(xb, yb, xq, yq_unknown, k=5) == knn_accuracy(xb, yb, xq[15:], yq[15:], k=5)
    with pytest.raises(ValueError, match="no labelled"):
        knn_accuracy(xb, yb, xq, np.full(len(yq), -1))


def test_embed_restores_the_mode():
    model = net().train()
    loader = [{"image": torch.randn(4, 4), "score": torch.tensor([0, 1, 1, 0])}] * 2
    feats, labels = embed(model, loader)
    assert feats.shape == (8, 2) and labels.tolist() == [0, 1, 1, 0] * 2 and model.training
