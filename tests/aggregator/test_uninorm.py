"""The batched, masked uninorm against the per-video reference recursion (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.aggregator.uninorm import (OFF_DIAGONALS, TNORMS, BinaryUninormAggregator,
                                         ScoreHierarchyAggregator, UninormAggregator,
                                         argmax_mean, build_schedule, majority_argmax,
                                         max_argmax, pack)
from agg_reference import ref_binary, ref_hierarchy, ref_uninorm

TOL = 1e-6


def padded(lengths, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    x = torch.rand(len(lengths), int(lengths.max()), num_classes, generator=g,
                   dtype=torch.float64)
    mask = torch.arange(x.shape[1])[None] < lengths[:, None]
    return x.requires_grad_(True), mask


def neutral_values(num_classes, seed):
    """Random in (0, 1), with the boundary values 0 and 1 mixed in."""
    rng = np.random.default_rng(seed)
    v = rng.random(num_classes)
    v[rng.random(num_classes) < 0.2] = 0.0
    v[rng.random(num_classes) < 0.1] = 1.0
    return torch.tensor(v)


def close(a, b):
    return torch.allclose(a, b, atol=TOL, rtol=0)


def grad(t):
    """A parameter no video reached (all one-frame videos) has no gradient: zero."""
    return torch.zeros_like(t) if t.grad is None else t.grad


cases = st.tuples(st.lists(st.integers(1, 70), min_size=1, max_size=6),
                  st.integers(1, 5), st.sampled_from(TNORMS), st.sampled_from(OFF_DIAGONALS),
                  st.booleans(), st.integers(0, 2 ** 16))


@settings(max_examples=25, deadline=None)
@given(cases)
def test_batched_matches_reference_outputs_and_gradients(case):
    lengths, C, kind, off, normalize, seed = case
    x, mask = padded(lengths, C, seed)
    model = UninormAggregator(C, kind, off, normalize_neutral=normalize)
    with torch.no_grad():
        model.neutral.copy_(neutral_values(C, seed))
    out = model(x, mask)
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed + 1),
                         dtype=torch.float64)
    (out * weights).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    n_ref = model.neutral.detach().clone().requires_grad_(True)
    ref = torch.stack([ref_uninorm(x_ref[v, :t].T, n_ref / t if normalize else n_ref, kind, off)
                       for v, t in enumerate(lengths)])
    (ref * weights).sum().backward()
    assert close(out, ref)
    assert close(grad(model.neutral), grad(n_ref))
    assert close(grad(x), grad(x_ref))
    assert (x.grad[~mask] == 0).all()  # padding never influences anything


def test_fold_axis_equals_separate_models():
    x, mask = padded([5, 1, 33, 64, 17], 4, seed=3)
    batched = UninormAggregator(4, "lukasiewicz", "mean", n_models=3)
    with torch.no_grad():
        batched.neutral.copy_(torch.rand(3, 4, dtype=torch.float64))
    out = batched(x, mask)
    assert out.shape == (3, 5, 4)
    for f in range(3):
        single = UninormAggregator(4, "lukasiewicz", "mean")
        with torch.no_grad():
            single.neutral.copy_(batched.neutral[f])
        assert close(out[f], single(x, mask))


@pytest.mark.parametrize("kind", TNORMS)
@pytest.mark.parametrize("off", OFF_DIAGONALS)
def test_one_frame_videos_return_the_frame(kind, off):
    x, mask = padded([1, 1, 1], 4, seed=0)
    model = UninormAggregator(4, kind, off, init_neutral=0.3)
    out = model(x, mask)
    assert torch.equal(out, x[:, 0])
    out.sum().backward()
    assert torch.count_nonzero(grad(model.neutral)) == 0


@pytest.mark.parametrize("kind", TNORMS)
@pytest.mark.parametrize("length", [2, 3, 7, 64])
def test_all_frames_at_the_neutral_element_give_it_back(kind, length):
    e = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    x = e.expand(1, length, 4).clone()
    model = UninormAggregator(4, kind)
    with torch.no_grad():
        model.neutral.copy_(e)
    assert torch.allclose(model(x, torch.ones(1, length, dtype=torch.bool))[0], e, atol=1e-12)


@pytest.mark.parametrize("kind", TNORMS)
@pytest.mark.parametrize("off", OFF_DIAGONALS)
def test_single_class_present(kind, off):
    """Every frame certain of class 2: evidence for 2 accumulates, the others vanish."""
    x = torch.zeros(2, 9, 4, dtype=torch.float64)
    x[..., 2] = 1.0
    mask = torch.arange(9)[None] < torch.tensor([[9], [4]])
    model = UninormAggregator(4, kind, off, init_neutral=0.5)
    out = model(x, mask)
    assert torch.equal(out.argmax(-1), torch.tensor([2, 2]))
    assert torch.allclose(out[:, 2], torch.ones(2, dtype=torch.float64))
    one_class = UninormAggregator(1, kind, off, init_neutral=0.5)(x[..., 2:3], mask)
    assert torch.allclose(one_class, torch.ones(2, 1, dtype=torch.float64))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=4), st.integers(2, 5),
       st.sampled_from(TNORMS), st.integers(0, 2 ** 16))
def test_binary_and_hierarchy_variants_match_reference(lengths, C, kind, seed):
    x, mask = padded(lengths, C, seed)
    x = x.detach()
    binary = BinaryUninormAggregator(C, tnorm=kind, off_diagonal="mean")
    hier = ScoreHierarchyAggregator(C, tnorm=kind, off_diagonal="max")
    with torch.no_grad():
        binary.local.neutral.fill_(0.4)
        binary.global_.neutral.copy_(torch.tensor([0.3, 0.6]))
        hier.score.neutral.copy_(neutral_values(C - 1, seed))
    out_b, out_h = binary(x, mask), hier(x, mask)
    for v, t in enumerate(lengths):
        video = x[v, :t].T
        assert close(out_b[v], ref_binary(video, binary.local.neutral, binary.global_.neutral,
                                          kind, "mean"))
        assert close(out_h[v], ref_hierarchy(video, hier.score.neutral, kind, "max"))


def test_baselines_match_their_definitions():
    x, mask = padded([3, 10, 1, 25], 4, seed=5)
    x = x.detach()
    for v, t in enumerate([3, 10, 1, 25]):
        assert argmax_mean(x, mask)[v] == x[v, :t].mean(0).argmax()
        assert max_argmax(x, mask)[v] == x[v, :t].argmax(-1).max()
        votes = np.bincount(x[v, :t].argmax(-1).numpy(), minlength=4)
        assert majority_argmax(x, mask)[v] == np.flatnonzero(votes == votes.max())[0]


def test_majority_breaks_a_tie_towards_the_lower_class_and_ignores_padding():
    one_hot = torch.eye(4, dtype=torch.float64)
    # frames vote 3, 1, 3, 1 (a tie) then padding that would vote 0 three times
    x = torch.stack([one_hot[[3, 1, 3, 1, 0, 0, 0]], one_hot[[2, 2, 0, 0, 0, 0, 0]]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert majority_argmax(x, mask).tolist() == [1, 2]
    assert max_argmax(x, mask).tolist() == [3, 2]


def test_mask_must_be_a_prefix():
    x, mask = padded([4, 4], 2, seed=0)
    mask = mask.clone()
    mask[0, 1] = False
    with pytest.raises(ValueError, match="prefix"):
        pack(x, mask)


def test_schedule_rejects_empty_videos():
    with pytest.raises(ValueError, match=">= 1"):
        build_schedule([3, 0])


def test_schedule_depth_is_logarithmic():
    assert len(build_schedule([1000, 3]).levels) == 10  # ceil(log2(1000))
