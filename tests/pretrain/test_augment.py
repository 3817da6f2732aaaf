"""Batched ultrasound augmentations: exact geometry on chosen parameters, per-sample and
reproducible random draws, ranges respected, device/dtype kept."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lus_dist.training.augment import (AugmentConfig, AugmentStream, affine_thetas, apply_params, augment_batch,
                              augment_with_masks, sample_params, sampling_grid, step_generator)

OFF = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), depth=(1.0, 1.0), rotation_deg=0.0,
                    flip_p=0.0, brightness=0.0, contrast=0.0, gamma=1.0, speckle=0.0)


def frames(b=4, c=1, h=16, w=16, seed=0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def params(b: int, **over) -> dict[str, torch.Tensor]:
    p = sample_params(b, OFF, torch.Generator().manual_seed(0))
    p.update({k: torch.as_tensor(v).expand(b).clone() for k, v in over.items()})
    return p


def test_all_ops_off_is_identity():
    x = frames(c=3, h=12, w=20)
    assert torch.allclose(augment_batch(x, OFF, torch.Generator().manual_seed(1)), x, atol=1e-6)


def test_flip_is_exact_mirror_and_per_sample():
    x = frames(b=2)
    p = params(2, flip=torch.tensor([True, False]))
    out = apply_params(x, p, OFF)
    assert torch.allclose(out[0], x[0].flip(-1), atol=1e-6)
    assert torch.allclose(out[1], x[1], atol=1e-6)


def test_quarter_turn_on_square_frame_is_rot90():
    x = frames(b=1, h=8, w=8)
    out = apply_params(x, params(1, angle=torch.tensor(math.pi / 2, dtype=torch.float64)), OFF)
    assert torch.allclose(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5) or \
        torch.allclose(out, torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5)


def test_depth_keeps_the_top_rows_stretched():
    """depth 0.5 shows the top half (near the probe) over the whole height, all columns."""
    x = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 1, 8, 4) / 8
    out = apply_params(x, params(1, depth=torch.tensor(0.5, dtype=torch.float64)), OFF)
    assert out[0, 0, :, 0].max() < x[0, 0, 4, 0]                 # lower half: at most blended in
    assert torch.allclose(out[0, 0, ::2, 0], x[0, 0, :4, 0], atol=0.07)


def test_thetas_compose_crop_after_flip():
    p = params(1, flip=torch.tensor([True]), crop_w=torch.tensor(0.5, dtype=torch.float64),
               crop_x=torch.tensor(0.25, dtype=torch.float64))
    theta = affine_thetas(p, 10, 10)[0]
    # output x -> -x (flip) -> 0.5 * (-x) + 0.25 (crop box centred at 0.25, half width)
    assert torch.allclose(theta, torch.tensor([[-0.5, 0, 0.25], [0, 1, 0]], dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), b=st.integers(1, 6))
def test_random_params_stay_in_their_ranges(seed, b):
    cfg = AugmentConfig()
    p = sample_params(b, cfg, torch.Generator().manual_seed(seed))
    area = p["crop_w"] * p["crop_h"]
    assert ((area >= cfg.crop_scale[0] - 1e-9) | (p["crop_w"] == 1) | (p["crop_h"] == 1)).all()
    assert (area <= 1 + 1e-9).all()
    assert ((p["crop_x"].abs() <= 1 - p["crop_w"] + 1e-9) & (p["crop_y"].abs() <= 1 - p["crop_h"] + 1e-9)).all()
    assert ((p["depth"] >= cfg.depth[0]) & (p["depth"] <= 1)).all()
    assert (p["angle"].abs() <= math.radians(cfg.rotation_deg) + 1e-12).all()
    assert ((p["gamma"] >= 1 / cfg.gamma - 1e-9) & (p["gamma"] <= cfg.gamma + 1e-9)).all()


def test_reproducible_per_step_and_independent_per_sample():
    x = frames(b=6).expand(6, 1, 16, 16).contiguous()
    x[:] = x[0]                                                   # six copies of one frame
    cfg = AugmentConfig()
    a = augment_batch(x, cfg, step_generator(3, 1, 7, rank=0))
    b = augment_batch(x, cfg, step_generator(3, 1, 7, rank=0))
    c = augment_batch(x, cfg, step_generator(3, 1, 8, rank=0))
    d = augment_batch(x, cfg, step_generator(3, 1, 7, rank=1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)
    assert all(not torch.allclose(a[0], a[i]) for i in range(1, 6)), "one draw per sample"
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape


def test_keeps_the_memory_format_with_the_same_values():
    x = torch.rand(3, 3, 16, 20)                 # RGB: channels_last is a real layout here
    last = x.contiguous(memory_format=torch.channels_last)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment_batch(last, AugmentConfig(), torch.Generator().manual_seed(1))
    assert a.is_contiguous() and not a.is_contiguous(memory_format=torch.channels_last)
    assert b.is_contiguous(memory_format=torch.channels_last) and torch.equal(a, b)


def test_keeps_dtype_and_device_and_checks_input():
    x = frames(b=2).to(torch.bfloat16)
    out = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.dtype == torch.bfloat16 and out.device == x.device
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment_batch(x[0], AugmentConfig(), torch.Generator())
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.9, 1.2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu_up_to_the_speckle_stream():
    x, cfg = frames(b=3), AugmentConfig(speckle=0.0)
    cpu = augment_batch(x, cfg, step_generator(0, 0, 0))
    gpu = augment_batch(x.cuda(), cfg, step_generator(0, 0, 0))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


def test_masks_follow_their_frames():
    """A mask equal to (frame > 0.5) stays aligned with the geometric part of the frame."""
    x = frames(b=5, h=20, w=20)
    masks = (x[:, 0] > 0.5).long() * 2
    geo = AugmentConfig(brightness=0.0, contrast=0.0, gamma=1.0, speckle=0.0)
    out, moved = augment_with_masks(x, masks, geo, step_generator(1, 0, 0))
    assert torch.equal(out, augment_batch(x, geo, step_generator(1, 0, 0)))
    assert set(moved.unique().tolist()) <= {0, 2} and moved.dtype == masks.dtype
    nearest = F.grid_sample(x, sampling_grid(sample_params(5, geo, step_generator(1, 0, 0)), x),
                            mode="nearest", align_corners=False)
    assert torch.equal(moved, (nearest[:, 0] > 0.5).long() * 2)
    with pytest.raises(ValueError, match="do not match"):
        augment_with_masks(x, masks[:, :10], geo, step_generator(1, 0, 0))


def test_stream_resumes_from_rank0_state_on_every_rank():
    x = frames(b=2)
    runs = {r: AugmentStream(seed=4, rank=r) for r in (0, 1)}
    for s in runs.values():
        s.next(), s.next()
    saved = runs[0].state_dict()                       # rank 0 writes the checkpoint
    want = {r: augment_batch(x, AugmentConfig(), s.next()) for r, s in runs.items()}
    for r in (0, 1):
        resumed = AugmentStream(seed=4, rank=r)
        resumed.load_state_dict(saved)
        assert torch.equal(augment_batch(x, AugmentConfig(), resumed.next()), want[r])
    assert not torch.equal(want[0], want[1])
    with pytest.raises(ValueError, match="seed"):
        AugmentStream(seed=5).load_state_dict(saved)
