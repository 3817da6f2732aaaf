"""SORD targets against the formula, sord_loss, and the segmentation Dice + CE loss."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.training.losses import dice_ce_loss, sord_loss, sord_targets

classes = st.integers(2, 6)
mults = st.floats(0.1, 8.0)


def formula(y: int, k: int, m: float, gap: float = 0.0) -> list[float]:
    pos = [(-gap if (c == 0 and gap) else float(c)) for c in range(k)]
    e = [math.exp(-m * (pos[y] - p) ** 2) for p in pos]
    return [v / sum(e) for v in e]


@settings(max_examples=60, deadline=None)
@given(classes, mults, st.floats(0.0, 3.0), st.data())
def test_sord_matches_formula(k, m, gap, data):
    y = data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=8))
    got = sord_targets(torch.tensor(y), k, m, gap).double()
    want = torch.tensor([formula(v, k, m, gap) for v in y], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(len(y), dtype=torch.float64), atol=1e-6)
    assert (got.argmax(-1) == torch.tensor(y)).all()


@settings(max_examples=40, deadline=None)
@given(classes, mults)
def test_sord_symmetric(k, m):
    t = sord_targets(torch.arange(k), k, m)
    assert torch.allclose(t, t.flip(0).flip(1), atol=1e-7)  # mirror: y -> k-1-y, c -> k-1-c
    for y in range(1, k - 1):  # equal mass at equal distance either side
        assert t[y, y - 1] == pytest.approx(t[y, y + 1].item(), rel=1e-6)
        assert (t[y, :y].diff() >= 0).all() and (t[y, y:].diff() <= 0).all()


def test_wide_gap_moves_score0_away():
    plain, wide = sord_targets(torch.tensor([0, 1]), 4, 2.0), sord_targets(
        torch.tensor([0, 1]), 4, 2.0, zero_gap=1.0)
    assert wide[0, 0] > plain[0, 0] and wide[1, 0] < plain[1, 0]
    assert wide[1, 2] > plain[1, 2]  # the mass leaves score 0 for the pathological side
    assert torch.equal(sord_targets(torch.tensor([2]), 4, 2.0, 0.0),
                       sord_targets(torch.tensor([2]), 4, 2.0))


def test_sord_bad_inputs_and_float64():
    with pytest.raises(ValueError, match="multiplier"):
        sord_targets(torch.tensor([0]), 4, 0.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got \[-1, 2\]"):
        sord_targets(torch.tensor([2, -1]), 4)
    t = sord_targets(torch.tensor([1, 3]), 4, 2.0, 0.5, dtype=torch.float64)
    want = torch.tensor([formula(1, 4, 2.0, 0.5), formula(3, 4, 2.0, 0.5)], dtype=torch.float64)
    assert t.dtype == torch.float64 and torch.allclose(t, want, atol=1e-15)


def test_sord_loss_is_kl_per_sample_and_ignores_unknown():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4, requires_grad=True), torch.tensor([0, 3, -1, 2, 1])
    loss = sord_loss(logits, y)
    logp = torch.log_softmax(logits, -1)
    per = [sum(t * (math.log(t) - logp[i, c].item()) for c, t in enumerate(formula(v, 4, 2.0)))
           for i, v in enumerate(y.tolist()) if v >= 0]
    assert loss.item() == pytest.approx(sum(per) / 4, rel=1e-5)
    loss.backward()
    assert logits.grad[2].abs().max() == 0  # unknown score: no gradient
    perfect = sord_targets(torch.tensor([1]), 4).log() + 7.0  # softmax = the target
    assert sord_loss(perfect, torch.tensor([1])).item() == pytest.approx(0.0, abs=1e-5)


def test_dice_ce_perfect_vs_wrong():
    mask = torch.randint(0, 4, (2, 16, 16))
    good = 30 * torch.nn.functional.one_hot(mask, 4).permute(0, 3, 1, 2).float()
    assert dice_ce_loss(good, mask).item() == pytest.approx(0.0, abs=1e-3)
    bad = good.roll(1, dims=1)
    assert dice_ce_loss(bad, mask).item() > 10
    with pytest.raises(ValueError, match="do not match"):
        dice_ce_loss(good, mask[:, :8])
