"""Loader workers start as `data.worker_start` says. The default, forkserver, forks them from
a single-threaded server rather than from the rank, which runs gloo's and the previous
loaders' threads by then: CI saw an evaluation worker forked from a 2-rank CNN-LSTM run hang
forever in CPython 3.11.7's after-fork hook (python/cpython#112275)."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

from engine_helpers import ParentPids
from lus_dist.engine.data import worker_options
from lus_dist.engine.registry import load_run_config


@pytest.mark.parametrize("start, forked_by_us", [(None, False), ("forkserver", False),
                                                 ("fork", True)])
def test_workers_start_where_the_config_says(start, forked_by_us):
    overrides = ["data.num_workers=2"] + ([f"data.worker_start={start}"] if start else [])
    cfg = load_run_config("cnnlstm", None, overrides)
    opts = worker_options(cfg, torch.device("cpu"))
    parents = {int(p) for p in DataLoader(ParentPids(), batch_size=1, **opts)}
    assert len(parents) == 1 and (parents == {os.getpid()}) == forked_by_us


def test_no_workers_no_context():
    cfg = load_run_config("cnnlstm", None, ["data.num_workers=0"])
    assert worker_options(cfg, torch.device("cpu"))["multiprocessing_context"] is None


def test_too_many_workers_are_said_once_per_run_not_per_loader():
    """torch warns at every loader (each epoch and evaluation, on every rank); the run says
    it once (rank 0's log, at start) and quiets torch's repetitions."""
    import warnings

    from lus_dist.engine.data import loader_workers_note, quiet_worker_count_warning

    assert loader_workers_note(2, 2) is None
    assert loader_workers_note(4, 2) == ("data.num_workers=4 loader workers per rank, but a rank "
                                         "here may use 2 CPU(s): they compete with it for them; "
                                         "at most 2 is suggested")
    too_many = (os.cpu_count() or 1) + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DataLoader(ParentPids(), num_workers=too_many)              # torch's check, no workers yet
        assert any("worker processes in total" in str(w.message) for w in caught)
        caught.clear()
        quiet_worker_count_warning()
        for _ in range(3):
            DataLoader(ParentPids(), num_workers=too_many)
        assert not caught, [str(w.message) for w in caught]
