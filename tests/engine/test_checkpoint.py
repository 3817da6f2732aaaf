"""Checkpoint atomicity, torn-checkpoint handling, keep-K pruning and exact state round trips."""
from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from lus_dist.engine.checkpoint import (COMMIT, Checkpointer, CheckpointError, Progress, RNGState,
                                        checkpoint_name, committed, find_resume, prune_plan)


@given(st.sets(st.integers(0, 10**6), max_size=30), st.integers(1, 6))
def test_prune_plan_keeps_the_newest_k(steps, keep):
    names = [checkpoint_name(s) for s in steps] + [".tmp-step-000000001", "junk"]
    doomed = prune_plan(names, keep)
    kept = sorted(set(steps) - {int(n[5:]) for n in doomed})
    assert kept == sorted(steps)[-keep:] if steps else kept == []
    assert all(n.startswith("step-") for n in doomed)  # temp dirs and strangers untouched


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def _train_a_bit(model, opt, sched, steps=3):
    for _ in range(steps):
        loss = model(torch.randn(16, 4)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    sched.step()


def _state(tmp_path, keep=2):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1], 0.1)
    return model, opt, sched, Checkpointer(tmp_path / "checkpoints", rank=0, world_size=1, keep=keep)


class Position:
    """A stand-in sampler position (any object with state_dict/load_state_dict)."""

    def __init__(self, state=None):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def _states(model, opt, sched):
    return {"model": model, "optimizer": opt, "scheduler": sched}


def _save(ckpt, progress, model, opt, sched, **kw):
    return ckpt.save(progress, _states(model, opt, sched), {"rng": RNGState()}, **kw)


def test_round_trip_restores_weights_optimizer_schedule_and_rngs(tmp_path):
    model, opt, sched, ckpt = _state(tmp_path)
    _train_a_bit(model, opt, sched)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = ckpt.save(Progress(epoch=1, step_in_epoch=2, global_step=5, best_metric=0.5),
                     _states(model, opt, sched),
                     {"rng": RNGState(), "sampler": Position({"epoch": 1, "position": 32})},
                     config={"a": 1})
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    saved_epoch = sched.last_epoch
    _train_a_bit(model, opt, sched)          # continue: the original run's future
    want = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2, ckpt2 = _state(tmp_path)
    sampler = Position()
    progress, main = ckpt2.load(path, _states(model2, opt2, sched2),
                                {"rng": RNGState(), "sampler": sampler})
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws
    assert progress == Progress(epoch=1, step_in_epoch=2, global_step=5, best_metric=0.5)
    assert sampler.state == {"epoch": 1, "position": 32} and main["config"] == {"a": 1}
    assert sched2.last_epoch == saved_epoch == 1
    _train_a_bit(model2, opt2, sched2)       # the resumed run reproduces it bit for bit
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_keep_k_and_torn_checkpoints_are_ignored(tmp_path):
    model, opt, sched, ckpt = _state(tmp_path, keep=2)
    for step in (1, 2, 3):
        _save(ckpt, Progress(global_step=step), model, opt, sched)
    assert [p.name for p in committed(ckpt.dir)] == [checkpoint_name(2), checkpoint_name(3)]
    # a save killed before its rename, and a newest one whose COMMIT is torn
    (ckpt.dir / f".tmp-{checkpoint_name(9)}").mkdir()
    torn = ckpt.dir / checkpoint_name(8)
    shutil.copytree(ckpt.dir / checkpoint_name(3), torn)
    (torn / COMMIT).write_text('{"global_step": 8, "fil')
    assert find_resume(ckpt.dir, "auto").name == checkpoint_name(3)
    # a committed one whose payload vanished is not valid either
    (torn / COMMIT).write_text(json.dumps({"global_step": 8, "world_size": 1, "files": ["main.pt"]}))
    (torn / "main.pt").unlink()
    assert find_resume(ckpt.dir, "auto").name == checkpoint_name(3)
    with pytest.raises(CheckpointError, match="not a committed checkpoint"):
        find_resume(ckpt.dir, str(torn))


def test_resume_modes(tmp_path):
    assert find_resume(tmp_path / "none", "auto") is None
    assert find_resume(tmp_path, None) is None
    model, opt, sched, ckpt = _state(tmp_path)
    _save(ckpt, Progress(global_step=4), model, opt, sched)
    assert find_resume(ckpt.dir, str(ckpt.dir)).name == checkpoint_name(4)   # a checkpoints/ dir


def test_world_size_change_is_a_clear_error(tmp_path):
    model, opt, sched, ckpt = _state(tmp_path)
    path = _save(ckpt, Progress(global_step=1), model, opt, sched)
    other = Checkpointer(ckpt.dir, rank=0, world_size=2)
    with pytest.raises(CheckpointError, match="world size 1, now 2"):
        other.load(path, _states(model, opt, sched), {"rng": RNGState()})


def test_new_state_is_one_more_entry_and_a_missing_one_is_named(tmp_path):
    model, opt, sched, ckpt = _state(tmp_path)
    path = ckpt.save(Progress(global_step=2), {**_states(model, opt, sched),
                                               "ema": Position({"decay": 0.99})}, {})
    ema = Position()
    ckpt.load(path, {**_states(model, opt, sched), "ema": ema}, {})
    assert ema.state == {"decay": 0.99}
    with pytest.raises(CheckpointError, match=r"no state for \['teacher'\]"):
        ckpt.load(path, {"teacher": Position()}, {})


def test_a_checkpoint_that_needs_code_to_load_is_refused(tmp_path):
    model, opt, sched, ckpt = _state(tmp_path)
    path = _save(ckpt, Progress(global_step=3), model, opt, sched)
    payload = torch.load(path / "main.pt", weights_only=True)
    payload["config"] = {"evil": Evil()}       # pickles a reference to a callable
    torch.save(payload, path / "main.pt")
    with pytest.raises(CheckpointError, match="refused, it needs arbitrary code"):
        ckpt.load(path, _states(model, opt, sched), {"rng": RNGState()})
    assert not (tmp_path / "pwned").exists()


class Evil:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_path(tmp_path, monkeypatch):
    model, opt, sched, ckpt = _state(tmp_path)
    good = _save(ckpt, Progress(global_step=1), model, opt, sched)
    real_save = torch.save

    def full(obj, f, *a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)          # the real-filesystem case is in tests/hpc
    with pytest.raises(CheckpointError) as err:
        _save(ckpt, Progress(global_step=2), model, opt, sched)
    assert ".tmp-step-000000002" in str(err.value) and "No space left" in str(err.value)
    assert str(good) in str(err.value)
    assert [p.name for p in committed(ckpt.dir)] == [good.name]
    assert not (ckpt.dir / ".tmp-step-000000002").exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert find_resume(ckpt.dir, "auto") == good
