"""Helpers of the real-Slurm tests (test_local_slurm.py, test_faults.py): submit the real
`slurm/train_regstn.sh`, wait for log lines, read results, find a node's processes."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from hpc.local_slurm import TERMINAL_STATES, LocalSlurmCluster

ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = ROOT / "slurm"
# CI-sized Reg-STN: 32x32 frames, 14 steps per epoch with 2 ranks x batch 8.
# The phantom runs train in about a second: the trainers check for a stop every step and the
# shell resends USR1 every 0.2 s (a USR1 that reaches a trainer still starting up is
# ignored), so a preemption the tests send always lands before the run ends.
TRAIN = ["logging.tensorboard=false", "data.batch_size=8", "viz_frames=0", "predict_splits=[test]",
         "train.stop_check_every=1"]


def submit_train(cluster: LocalSlurmCluster, shards: Path, run_dir: Path, *sbatch_args: str,
                 procs: int, overrides: list[str], env: dict[str, str] | None = None,
                 script: str = "train_regstn.sh", config: str = "demo_regstn.yaml",
                 common: list[str] | None = None) -> int:
    """sbatch a training script (Reg-STN with the TRAIN settings unless told otherwise);
    `sbatch_args` come last, so they override the defaults here."""
    base = {"CONFIG": str(ROOT / "configs" / config), "DATA": str(shards),
            "RUN_DIR": str(run_dir), "CPU_PROCS_PER_NODE": str(procs), "LUS_PYTHON": sys.executable,
            "LUS_USR1_RESEND_S": "0.2"}
    return cluster.sbatch(SLURM_DIR / script, f"--cpus-per-task={procs}", "--time=00:15:00",
                          f"--output={run_dir.parent}/%x-%j.out", *sbatch_args,
                          script_args=[*(TRAIN if common is None else common), *overrides],
                          env={**base, **(env or {})}, cwd=run_dir.parent)


def assert_done(records: list[dict[str, str]], log: str) -> None:
    assert [r["JobState"] for r in records] == ["COMPLETED"] * len(records), log[-4000:]


def wait_for_log(cluster: LocalSlurmCluster, job: int, needle: str, timeout: float,
                 count: int = 1) -> None:
    """Until `needle` appears `count` times in the job's log (the job must not end first).

    Only a terminal state fails the wait: a requeue passes through COMPLETING and REQUEUED
    between RUNNING and PENDING, and a poll can land there."""
    deadline = time.monotonic() + timeout
    while cluster.logs(job).count(needle) < count:
        assert time.monotonic() < deadline, f"no {needle!r} in job {job} log:\n{cluster.logs(job)[-3000:]}"
        state = cluster.job_state(job)
        assert not set(state.split(",")) & TERMINAL_STATES, \
            f"job {job} ended ({state}) before {needle!r}:\n{cluster.logs(job)[-3000:]}"
        time.sleep(0.5)


def wait_until(cond, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"no {what} after {timeout:.0f}s")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ------------------------------------------------------------------ a node's processes

def node_uts(cluster: LocalSlurmCluster, node: str) -> str:
    """Every slurmd runs in its own UTS namespace, so it names all processes of that "node"."""
    pid = int((cluster.run_dir / f"lus-slurmd-{node}.pid").read_text().split()[0])
    return os.readlink(f"/proc/{pid}/ns/uts")


def node_pids(cluster: LocalSlurmCluster, node: str, *words: str, without: tuple[str, ...] = ()) -> list[int]:
    """Pids on `node` whose command line contains every one of `words` and none of `without`."""
    uts, out = node_uts(cluster, node), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "uts") != uts:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(w in cmd for w in words) and not any(w in cmd for w in without):
            out.append(int(entry.name))
    return out


def kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
