"""Helpers for the engine's multi-process tests: launch, wait, read a run dir.

Every run here is a real process group: `python -m hpc.launch` (torchrun that keeps the
requeue exit code) with gloo on CPU, one thread per rank.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
               PYTHONUNBUFFERED="1")
    return env


def one_process_session(run_dir: Path, backend: str, bf16: str = "false"):
    """The Session a plain CPU process starts with (a real plan, injected facts: no GPU)."""
    from hpc import World
    from hpc.device_plan import CudaFacts, plan_run
    from lus_dist.engine.session import Session

    world = World(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0,
                  num_nodes=1, master_addr="127.0.0.1", master_port=29500, launcher="single")
    plan = plan_run(world, CudaFacts(), device="cpu", bf16=bf16, dist_backend=backend)
    return Session(world, torch.device("cpu"), run_dir, plan.bf16, plan)


def launch_cmd(family: str, run_dir: Path, overrides: list[str], nproc: int = 2,
               config: str | None = None, max_restarts: int = 0, resume: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "hpc.launch", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "lus", "train", family, "--run-dir", str(run_dir)]
    if config:
        cmd += ["--config", str(CONFIGS / config)]
    if resume:
        cmd += ["--resume", resume]
    return cmd + overrides


def run_train(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return run_launch(launch_cmd(*args, **kw), timeout)


def run_cells(cells: list[list[str]], work: Path, nproc: int = 2,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Several `lus` command lines, one after another in the same torchrun ranks
    (train_cells.py): one launch's start-up for all of them."""
    spec = work / "cells.json"
    spec.write_text(json.dumps(cells))
    return run_launch([sys.executable, "-m", "hpc.launch", "--standalone",
                       f"--nproc-per-node={nproc}", "--max-restarts=0",
                       str(Path(__file__).with_name("train_cells.py")), str(spec)], timeout)


def cell_output(launch: subprocess.CompletedProcess, k: int) -> str:
    """Rank 0's standard output of cell k of a run_cells launch."""
    from train_cells import CELL_MARK

    parts = launch.stdout.split(CELL_MARK)
    mine = [p for p in parts[1:] if p.split("\n", 1)[0] == str(k)]
    return mine[0] if mine else ""


def run_launch(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """A timeout kills the whole run (launcher, ranks, loader workers: nothing left behind
    for the rest of the suite) and fails with all the run printed, not its first lines."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**child_env(), "PYTHONPATH": path}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"no exit after {timeout:.0f} s: {' '.join(cmd[2:])}\n--- stdout ---\n"
                    f"{out[-4000:]}\n--- stderr ---\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it. torchrun starts each rank in a session
    of its own, so killing the launcher (or its process group) alone orphans the ranks."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def explain(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def step_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "step" and r["name"] == "loss"]
    return [float(r["value"]) for r in sorted(rows, key=lambda r: int(r["global_step"]))]


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as fh:
        steps = [int(r["global_step"]) for r in csv.DictReader(fh) if r["kind"] == "step"]
    return max(steps, default=0)


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll until predicate() holds; fail clearly if the run ends or time runs out first."""
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (exit {proc.returncode}) before {what}\n{out[-3000:]}\n{err[-3000:]}")
        if time.time() > deadline:
            kill_tree(proc.pid)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def worker_pids(agent_pid: int) -> list[int]:
    """The torchrun agent's worker processes (its direct children)."""
    path = Path(f"/proc/{agent_pid}/task/{agent_pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def preempt_mid_run(family: str, run_dir: Path, overrides: list[str], at_step: int = 3) -> str:
    """Launch 2 ranks, and once step `at_step` is logged send USR1 to the agent
    (hpc.launch ignores it) and to ONE worker: the other rank must learn of it through the
    step-boundary agreement. Asserts the requeue exit; returns the run's stdout."""
    import signal

    from hpc import REQUEUE_EXIT_CODE

    proc = subprocess.Popen(launch_cmd(family, run_dir, overrides, resume="auto"), env=child_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: last_step(run_dir) >= at_step, proc, 240, f"training step {at_step}")
    os.kill(proc.pid, signal.SIGUSR1)
    os.kill(worker_pids(proc.pid)[-1], signal.SIGUSR1)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == REQUEUE_EXIT_CODE, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return out


class ParentPids(torch.utils.data.Dataset):
    """Item i is the pid of the process that started the loader worker reading it (here,
    not in a test module, so a forkserver child can import it by name)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return os.getppid()
