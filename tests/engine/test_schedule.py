"""The learning-rate schedule as a configured component: pure warmup + cosine arithmetic,
config validation, and torch schedulers that resume exactly from their state_dict."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from lus_dist.io.config import ConfigError
from lus_dist.engine.checkpoint import _load
from lus_dist.engine.config import ScheduleConfig, warmup_cosine_factor


def test_warmup_rises_linearly_then_cosine_reaches_the_floor():
    f = [warmup_cosine_factor(u, warmup=4, total=20, min_ratio=0.1) for u in range(25)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f[4] == pytest.approx(1.0)
    assert f[12] == pytest.approx(0.1 + 0.9 * 0.5)              # half way down the cosine
    assert f[20] == pytest.approx(0.1) and f[24] == pytest.approx(0.1)   # held at the floor
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


@given(st.integers(0, 50), st.integers(1, 500), st.floats(0, 1))
def test_factor_stays_between_floor_and_one(warmup, total, floor):
    for u in range(0, total + warmup + 2, max(1, total // 20)):
        v = warmup_cosine_factor(u, warmup, total, floor)
        assert min(floor, 1.0) - 1e-12 <= v <= 1.0 + 1e-12 or (u < warmup and 0 < v <= 1)


@pytest.mark.parametrize("bad", ["schedule.name=linear", "schedule.interval=batch",
                                 "schedule.warmup=-1", "schedule.min_lr_ratio=2"])
def test_bad_schedule_is_a_config_error(bad):
    from lus_dist.engine.registry import load_run_config
    with pytest.raises(ConfigError, match="schedule"):
        load_run_config("regstn", None, [bad])


@pytest.mark.parametrize("cfg", [ScheduleConfig(name="warmup_cosine", interval="step", warmup=3),
                                 ScheduleConfig(name="multistep", milestones=[2, 5]),
                                 ScheduleConfig(name="constant")])
def test_scheduler_resumes_exactly_through_a_weights_only_checkpoint(cfg, tmp_path):
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        return opt, cfg.build(opt, steps_per_epoch=4, epochs=3)

    opt, sched = make()
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if len(lrs) == 5:
            torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, tmp_path / "s.pt")
    opt2, sched2 = make()
    saved = _load(tmp_path / "s.pt")       # as a checkpoint restores them: both together
    opt2.load_state_dict(saved["o"])
    sched2.load_state_dict(saved["s"])
    resumed = [opt2.param_groups[0]["lr"]]
    for _ in range(6):
        opt2.step()
        sched2.step()
        resumed.append(opt2.param_groups[0]["lr"])
    assert resumed == lrs[5:12]
    assert all(math.isfinite(v) and v >= 0 for v in lrs)
