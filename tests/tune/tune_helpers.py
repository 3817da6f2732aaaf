"""Helpers for the tune tests: run `lus tune` in a loopback-only network namespace, and
synthetic frame predictions.

Run `lus tune` as a real subprocess inside a loopback-only network namespace.

Outside a namespace Ray binds the machine's external address even when told 127.0.0.1;
inside `unshare -n` only `lo` exists, so no Ray traffic can leave the machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def netns_available() -> str | None:
    """None if we can make a loopback-only namespace, else the reason we cannot."""
    if os.geteuid() != 0:
        return "needs root for `unshare -n` (loopback-only network namespace for Ray)"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs util-linux `unshare` and iproute2 `ip`"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare -n` failed here: {probe.stderr.strip()}"
    return None


def tune_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PYTHONUNBUFFERED="1", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="0",
               # the experiment state is written every second so a killed driver loses little
               TUNE_GLOBAL_CHECKPOINT_S="1")
    return env


def netns_cmd(*args: str) -> list[str]:
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
            sys.executable, "-m", "lus", *args]


def run_lus(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # a guard against a hung sweep, not a speed target: a resumed sweep of a few trials takes
    # ~60 s alone and over 150 s on 2 cores shared with the rest of the suite
    proc = subprocess.run(netns_cmd(*args), cwd=tmp_path, env=tune_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)
    return proc


def popen_lus(args: list[str], tmp_path: Path, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen(netns_cmd(*args), cwd=tmp_path, env=tune_env(tmp_path),
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def synthetic_predictions(path: Path, n_videos: int = 24, seed: int = 0,
                          lengths: tuple[int, int] = (20, 60)) -> Path:
    """The aggregator tests' synthetic frame predictions (informative, noisy), written to
    `path` for `lus tune aggregator --predictions`."""
    sys.path.insert(0, str(ROOT / "tests" / "aggregator"))
    from agg_synthetic import synthetic_predictions as make

    from lus_dist.aggregator.data import write_predictions

    return write_predictions(path, make(n_videos=n_videos, lengths=lengths, seed=seed))
