"""Phantom runs shared by the evaluation tests: trained once per session by the real engine.

Each fixture runs the commands a user types (`lus prep phantom`, `lus prep pack`,
`lus train ...`) as subprocesses, CI-sized (64 px, a few epochs).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SIZE = 64


def run_lus(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-m", "lus", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    return proc


def run_lus_ok(*args: str) -> subprocess.CompletedProcess:
    proc = run_lus(*args)
    assert proc.returncode == 0, \
        f"lus {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def lus():
    """`lus ARGS...` as a subprocess -> CompletedProcess (text output captured)."""
    return run_lus


@pytest.fixture
def lus_ok():
    """Like `lus`, failing the test with the command's output if it exits non-zero."""
    return run_lus_ok


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """Fresh per session; LUS_EVAL_TEST_CACHE=DIR keeps the phantom and finished runs
    between sessions (developer convenience: a run with summary.json is not retrained)."""
    cache = os.environ.get("LUS_EVAL_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("phantom")
    if not (root / "shards" / "manifest.json").is_file():
        run_lus_ok("prep", "phantom", "--out", str(root / "raw"), "--seed", "0")
        run_lus_ok("prep", "pack", "--layout", "iclus", "--src", str(root / "raw" / "iclus"),
                   "--out", str(root / "shards"), "--size", str(SIZE), "--workers", "1",
                   "--quiet")
    return root


def train(run: Path, *args: str) -> Path:
    if not (run / "summary.json").is_file():
        run_lus_ok("train", *args[:1], "--run-dir", str(run), "--resume", "auto", *args[1:],
                   *COMMON)
    return run


COMMON = ("logging.progress=plain", "logging.tensorboard=false", "seed=0")


@pytest.fixture(scope="session")
def regstn_run(phantom) -> Path:
    return train(phantom / "runs" / "regstn", "regstn", f"data.root={phantom / 'shards'}",
                 "model.name=regstn_fixed", "train.epochs=4", "data.batch_size=16",
                 "schedule.milestones=[3]", "viz_frames=0", "predict_splits=[train,test]")


@pytest.fixture(scope="session")
def seg_run(phantom) -> Path:
    return train(phantom / "runs" / "seg", "seg", f"data.root={phantom / 'shards'}",
                 "train.epochs=5", "data.batch_size=16", "optim.lr=3e-3",
                 "schedule.name=warmup_cosine", "schedule.min_lr_ratio=0.05")


@pytest.fixture(scope="session")
def cnnlstm_run(phantom) -> Path:
    return train(phantom / "runs" / "cnnlstm", "cnnlstm", f"data.root={phantom / 'shards'}",
                 "train.epochs=2", "data.clip_len=4", "data.batch_size=4")
