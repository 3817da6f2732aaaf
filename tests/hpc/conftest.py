"""Fixtures for the real local Slurm tests: phantom data (the two-node cluster fixture,
`slurm2`, is in tests/conftest.py: the tune tests use it too).

`hpc_phantom` makes its own tiny raw phantom and shards (the Slurm tests need the raw data
too, for the pack array, and a train/test split small enough for CI-sized jobs).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# With tests/ on sys.path (pytest's prepend import mode, e.g. `pytest tests/test_cli.py tests/hpc`)
# `import hpc` can resolve to this folder as a namespace package; make it the project's package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if getattr(sys.modules.get("hpc"), "__file__", "") is None:
    del sys.modules["hpc"]


def lus(*args: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "lus", *args], cwd=cwd or ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"lus {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"


# 12 patients x 1 video: 3 patients per class go to test; 32x32 frames in 128-frame shards
# give 3 shards (one per task of the pack array).
PACK_ARGS = ("--size", "32", "--shard-frames", "128", "--folds", "0")


@pytest.fixture(scope="session")
def hpc_pack_args() -> tuple[str, ...]:
    return PACK_ARGS


@pytest.fixture(scope="session")
def hpc_phantom(tmp_path_factory) -> tuple[Path, Path]:
    """(raw ICLUS-layout phantom dir, packed shard dir)."""
    base = tmp_path_factory.mktemp("hpc_phantom")
    lus("prep", "phantom", "--out", str(base / "raw"), "--patients", "12", "--videos-per-patient", "1",
        "--size", "64")
    lus("prep", "pack", "--layout", "iclus", "--src", str(base / "raw" / "iclus"), "--out",
        str(base / "shards"), "--quiet", *PACK_ARGS)
    return base / "raw" / "iclus", base / "shards"
