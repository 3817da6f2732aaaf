"""channels_last under DeepSpeed: a real DeepSpeed engine (ZeRO-2, a one-rank group in this
process) starts with the shipped Reg-STN's channels_last setting, keeps the weights in the
layout its broadcast and flat buffers need, still computes its convolutions in
channels_last, and trains to the weights plain torch reaches with channels_last weights
(what DDP runs) on the same batches."""
from __future__ import annotations

import copy

import pytest
import torch

from engine_helpers import CONFIGS, one_process_session
from lus_dist.engine.layout import LayoutProbe, layout_of, summarize
from lus_dist.engine.registry import load_run_config
from lus_dist.models import build_frame_model


def test_layout_is_read_from_the_strides_and_ambiguous_ones_do_not_count():
    x = torch.rand(2, 8, 5, 5)
    assert layout_of(x) == "contiguous"
    assert layout_of(x.contiguous(memory_format=torch.channels_last)) == "channels_last"
    assert layout_of(torch.rand(2, 1, 5, 5)) is None           # one channel: both at once
    assert layout_of(torch.rand(2, 8, 1, 1)) is None
    assert summarize([None, "channels_last", "channels_last"]) == "channels_last"
    assert summarize(["contiguous", "channels_last"]) == "mixed (1 of 2 convolutions channels_last)"
    assert summarize([None]) is None


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(8, 1, 64, 64, generator=g), torch.randint(0, 4, (8,), generator=g))
            for _ in range(n)]


def train(model, step, data) -> None:
    torch.manual_seed(1)                    # the same dropout masks in both runs
    for x, y in data:
        loss = torch.nn.functional.cross_entropy(model(x).logits.float(), y)
        step(loss)


@pytest.mark.slow
def test_deepspeed_computes_channels_last_and_trains_like_plain_torch(tmp_path):
    from lus_dist.engine.fit import build_fit
    from hpc.dist import destroy_distributed

    cfg = load_run_config("regstn", CONFIGS / "regstn.yaml", [
        "dist.backend=deepspeed", f"dist.deepspeed_config={CONFIGS / 'deepspeed' / 'zero2.json'}",
        "optim.lr=0.001"])
    assert cfg.model.channels_last
    torch.manual_seed(0)
    model = build_frame_model(cfg.model.name, 1, 4, 64)
    reference = copy.deepcopy(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(3)

    fit = build_fit(model, cfg, one_process_session(tmp_path, "deepspeed"), steps_per_epoch=3)
    try:
        assert fit.engine is not None and fit.engine.zero_optimization_stage() == 2
        assert all(p.is_contiguous() for p in fit.net.parameters())   # what DeepSpeed holds
        fit.model.train()
        train(fit.model, lambda loss: fit.backward(loss, 0), data)
        assert fit.describe()["memory_format"] == "channels_last"
        trained = {k: v.detach().clone() for k, v in fit.net.state_dict().items()}
    finally:
        fit.release()
        destroy_distributed()

    # what DDP trains: the weights themselves channels_last, in plain torch
    reference = reference.to(memory_format=torch.channels_last).train()
    opt = cfg.optim.build(reference.parameters())

    def plain_step(loss):
        loss.backward()
        opt.step()
        opt.zero_grad()

    train(reference, plain_step, data)
    ref = reference.state_dict()
    for name, _ in reference.named_parameters():
        moved = (ref[name] - start[name]).norm()
        assert moved > 0, name
        assert (trained[name] - ref[name]).norm() <= 0.01 * moved, name


def test_without_the_hooks_a_one_channel_frame_runs_the_nchw_kernels():
    """Why DeepSpeed needs the hooks: with contiguous weights, a 1-channel input's strides
    fit both layouts and the convolutions pick NCHW (the Reg-STN's crops likewise)."""
    from lus_dist.engine.layout import convs_take_channels_last

    torch.manual_seed(0)
    net = build_frame_model("regstn_fixed", 1, 4, 64)
    x = torch.rand(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    probe = LayoutProbe(net)
    net(x)
    assert probe.result() == "contiguous"
    convs_take_channels_last(net)
    probe = LayoutProbe(net)
    net(x)
    assert probe.result() == "channels_last" and not probe.handles   # hooks removed after use
