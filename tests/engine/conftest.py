"""The phantom shards the engine's multi-process tests train on."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import child_env


def lus_ok(*args: str) -> None:
    """`lus ARGS` as a subprocess, failing the fixture with its error output."""
    proc = subprocess.run([sys.executable, "-m", "lus", *args], env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def engine_shards(request, tmp_path_factory) -> Path:
    """The lead's session phantom shards if tests/conftest.py provides them, else our own."""
    try:
        return Path(request.getfixturevalue("phantom_shards"))
    except pytest.FixtureLookupError:
        pass
    base = tmp_path_factory.mktemp("engine_phantom")
    lus_ok("prep", "phantom", "--out", str(base / "raw"), "--seed", "0")
    lus_ok("prep", "pack", "--layout", "iclus", "--src", str(base / "raw" / "iclus"),
           "--out", str(base / "shards"), "--size", "64", "--workers", "1")
    return base / "shards"


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory) -> Path:
    """The phantom, as small as every shipped config allows: 14-frame clips (504 frames; the
    shipped batch sizes still make two steps per rank: pretrain 64 frames, cnnlstm 4
    clips) packed at 32 px. Evaluation in bf16 is the costly part of a cell on a CPU
    without native bf16 (15-30x slower than fp32), so the cells read as little as they can."""
    from data_prep.phantom import make_phantom

    base = tmp_path_factory.mktemp("shipped_phantom")
    make_phantom(base / "raw", seed=0, frames_per_video=(14, 14), size=64)
    lus_ok("prep", "pack", "--layout", "iclus", "--src", str(base / "raw" / "iclus"),
           "--out", str(base / "shards"), "--size", "32", "--workers", "1")
    return base / "shards"
