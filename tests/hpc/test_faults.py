"""The faults a cluster job meets (preemption, a killed trainer, a full disk, the time limit,
requeues past the cap) on the real local two-node Slurm cluster (`slurm2`), each with
the real `slurm/train_regstn.sh` -> srun -> hpc.launch (torchrun) -> `lus train regstn` on
phantom shards, each checking that nothing was lost: the run finishes, no checkpoint is torn,
and the final weights equal an uninterrupted two-node run's (`baseline`, deterministic).

The Ray worker-node fault and token authentication are in tests/tune/test_tune_slurm.py.
"""
from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import pytest
import torch

from hpc.local_slurm import LocalSlurmCluster
from hpc.requeue import newest_committed_step
from slurm_helpers import (assert_done, kill_all, node_pids, submit_train, summary, wait_for_log,
                           wait_until)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 2 epochs x 6 steps with 2 ranks, a committed checkpoint every 2 steps.
DDP = ["train.epochs=2", "train.max_steps_per_epoch=6", "train.deterministic=true", "seed=3",
       "checkpoint.every_steps=2"]
STEPS = 12
TWO_NODES = "--nodes=2"


class Baseline:
    """An uninterrupted two-node run, submitted once per module and awaited only when a test
    compares with it (it runs beside the first fault jobs)."""

    def __init__(self, cluster: LocalSlurmCluster, job: int, run_dir: Path) -> None:
        self.cluster, self.job, self.run_dir = cluster, job, run_dir
        self.record: dict[str, str] | None = None
        self.log = ""

    def summary(self) -> dict:
        """Waits once: slurmctld forgets a finished job after MinJobAge (600 s)."""
        if self.record is None:
            records = self.cluster.wait(self.job, timeout=900)
            self.log = self.cluster.logs(self.job)
            assert_done(records, self.log)
            self.record = records[0]
        return summary(self.run_dir)


@pytest.fixture(scope="module")
def baseline(slurm2, hpc_phantom, tmp_path_factory) -> Baseline:
    run = tmp_path_factory.mktemp("baseline") / "run"
    return Baseline(slurm2, submit_train(slurm2, hpc_phantom[1], run, TWO_NODES, procs=1, overrides=DDP), run)


def assert_same_weights(run_dir: Path, baseline: Baseline) -> None:
    got, want = summary(run_dir), baseline.summary()
    assert got["global_step"] == STEPS and got["world_size"] == 2
    assert got["param_digests"] == want["param_digests"]


def assert_untorn(ckpt_dir: Path) -> list[str]:
    """Every final step-* dir is committed (a torn save may leave only a .tmp-* dir)."""
    finals = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step-"))
    assert finals and all((ckpt_dir / n / "COMMIT").is_file() for n in finals), finals
    return finals


# ------------------------------------------------------------------ (1) USR1, both exit orders

LATE_EXIT = """#!/bin/bash
# Test stand-in for python: holds back a requeue exit (75) on $LUS_TEST_LATE_NODE, so the other
# node's launcher always exits first and srun --kill-on-bad-exit terminates this one.
trap '' USR1          # as hpc.launch does; the trainers install their own handler
"{python}" "$@"
rc=$?
if [[ $rc == 75 && "$(hostname)" == "$LUS_TEST_LATE_NODE" ]]; then sleep 8; fi
exit $rc
"""


def late_exit_python(tmp_path: Path) -> Path:
    path = tmp_path / "late-exit-python"
    path.write_text(LATE_EXIT.format(python=sys.executable))
    path.chmod(stat.S_IRWXU)
    return path


def test_two_node_usr1_requeues_whichever_node_exits_first(slurm2, hpc_phantom, baseline, tmp_path):
    """The two-node requeue race, forced both ways: one node's launcher exits 75 first, srun kills
    the other and reports its own code; the job must still requeue, resume and finish with
    the uninterrupted run's weights."""
    python = late_exit_python(tmp_path)
    jobs = {}
    for late in ("node2", "node1"):
        run = tmp_path / f"late-{late}" / "run"
        run.parent.mkdir()
        jobs[late] = (submit_train(slurm2, hpc_phantom[1], run, TWO_NODES, procs=1, overrides=DDP,
                                   env={"LUS_PYTHON": str(python), "LUS_TEST_LATE_NODE": late}), run)
    for job, _ in jobs.values():
        wait_for_log(slurm2, job, "steps/epoch", timeout=600)
        slurm2.run(["scancel", "--signal=USR1", "--batch", str(job)])
    for late, (job, run) in jobs.items():
        records = slurm2.wait(job, timeout=600)
        log = slurm2.logs(job)
        assert_done(records, log)
        assert int(records[0]["Restarts"]) >= 1, log[-3000:]
        asked = re.search(r"lus: requeue asked for \(step exit (\d+)[^)]*requeue marker from ([\w,]+)", log)
        assert asked, log[-3000:]
        assert int(asked[1]) != 75, f"srun reported 75: the {late}-late order was not forced\n{log[-3000:]}"
        assert "restart 1 python" in log and "resumed from step-" in log, log[-3000:]
        assert_untorn(run / "checkpoints")
        assert_same_weights(run, baseline)


def test_uninterrupted_two_node_run(baseline):
    """The reference itself: one DDP group whose two ranks run on node1 and node2 (c10d orders
    the nodes by arrival), committed checkpoints, metrics, the same weights on both ranks."""
    got = baseline.summary()
    record, log = baseline.record, baseline.log
    assert record["NodeList"] == "node[1-2]" and record["Restarts"] == "0"
    seen = {int(r): (host, int(node)) for r, host, node in
            re.findall(r"hpc: rank (\d)/2 local 0 on (\S+) node (\d) backend gloo", log)}
    assert sorted(seen) == [0, 1] and {h for h, _ in seen.values()} == {"node1", "node2"}, log[-3000:]
    assert all(node == rank for rank, (_, node) in seen.items())
    assert got["world_size"] == 2 and got["global_step"] == STEPS and len(set(got["param_digests"])) == 1
    assert len(assert_untorn(baseline.run_dir / "checkpoints")) == 2          # checkpoint.keep
    metrics = (baseline.run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("kind,") and len(metrics) > 3


# ------------------------------------------------------------------ (3) a node's trainer dies

def test_trainer_sigkilled_mid_epoch_then_resubmitted_resumes(slurm2, hpc_phantom, baseline, tmp_path):
    """SIGKILL node2's trainer (a node failure as its launcher sees it) after a checkpoint was
    committed: the job fails (MAX_RESTARTS=0), is not requeued, and the same command with the
    same RUN_DIR resumes from the last committed checkpoint and ends as if never stopped."""
    run, shards = tmp_path / "run", hpc_phantom[1]
    job = submit_train(slurm2, shards, run, TWO_NODES, procs=1, overrides=DDP)
    wait_until(lambda: newest_committed_step(run / "checkpoints"), 600, "committed checkpoint")
    trainer = wait_until(lambda: node_pids(slurm2, "node2", "-m lus train", without=("hpc.launch",)),
                         60, "trainer on node2")
    kill_all(trainer)
    records = slurm2.wait(job, timeout=300)
    log = slurm2.logs(job)
    assert records[0]["JobState"] == "FAILED" and records[0]["Restarts"] == "0", log[-3000:]
    assert "requeue asked for" not in log
    last = newest_committed_step(run / "checkpoints")
    assert last is not None and last < STEPS
    assert_untorn(run / "checkpoints")

    again = submit_train(slurm2, shards, run, TWO_NODES, procs=1, overrides=DDP)
    records = slurm2.wait(again, timeout=600)
    log = slurm2.logs(again)
    assert_done(records, log)
    assert f"resumed from step-{last:09d}" in log, log[-3000:]
    assert_same_weights(run, baseline)


# ------------------------------------------------------------------ (4) checkpoint disk full

def tmpfs_pages(path: Path) -> int:
    """Bytes a directory's files take on tmpfs (whole 4 KiB pages per file)."""
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in path.rglob("*") if f.is_file())


def test_checkpoint_disk_full_keeps_the_previous_and_resumes(slurm2, hpc_phantom, baseline, tmp_path):
    """checkpoints/ on a tmpfs (mounted inside the cluster's own mount namespace) with room for
    one and a half checkpoints: the first save (step 2) commits, the second hits ENOSPC. The committed
    one stays valid and loadable; once space is back the same command resumes from it."""
    baseline.summary()                                          # waits for it
    one = tmpfs_pages(baseline.run_dir / "checkpoints" / f"step-{STEPS:09d}")
    run, shards = tmp_path / "run", hpc_phantom[1]
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    slurm2.run(["mount", "-t", "tmpfs", "-o", f"size={one * 3 // 2 // 4096 * 4096}", "lus-full", str(ckpts)])
    view = Path(f"/proc/{slurm2._holder_pid()}/root") / ckpts.relative_to("/")   # the job's view
    try:
        job = submit_train(slurm2, shards, run, TWO_NODES, procs=1, overrides=DDP)
        records = slurm2.wait(job, timeout=600)
        full_log = slurm2.logs(job)
        assert records[0]["JobState"] == "FAILED" and records[0]["Restarts"] == "0", full_log[-3000:]
        assert assert_untorn(view) == ["step-000000002"], full_log[-3000:]
        assert json.loads((view / "step-000000002" / "COMMIT").read_text())["global_step"] == 2
        state = torch.load(view / "step-000000002" / "main.pt", map_location="cpu", weights_only=True)
        assert state["states"]["model"] and state["states"]["optimizer"]   # loadable, whole

        slurm2.run(["mount", "-o", "remount,size=256m", str(ckpts)])    # space is back
        again = submit_train(slurm2, shards, run, TWO_NODES, procs=1, overrides=DDP)
        records = slurm2.wait(again, timeout=600)
        log = slurm2.logs(again)
        assert_done(records, log)
        assert "resumed from step-000000002" in log, log[-3000:]
        assert_same_weights(run, baseline)
    finally:
        slurm2.run(["umount", "-l", str(ckpts)], check=False)
    # the trainer's error names the checkpoint path it could not write (engine/checkpoint.py;
    # torch's own error says only "basic_ios::clear: iostream error")
    assert str(ckpts) in full_log, full_log[-3000:]


# ------------------------------------------------------------------ the requeue cap

def test_preempted_more_often_than_the_cap_fails_with_one_clear_line(slurm2, hpc_phantom, tmp_path):
    """One node, two trainer processes. LUS_MAX_REQUEUES=1: the first USR1 requeues and the
    run resumes, the second one is refused with one line naming the cap; the checkpoint of the
    second preemption is still committed."""
    run = tmp_path / "run"
    job = submit_train(slurm2, hpc_phantom[1], run, procs=2, env={"LUS_MAX_REQUEUES": "1"},
                       overrides=["train.epochs=2", "train.max_steps_per_epoch=40", "seed=3"])
    for restart in (1, 2):
        wait_for_log(slurm2, job, "steps/epoch", timeout=600, count=restart)
        slurm2.run(["scancel", "--signal=USR1", "--batch", str(job)])
        if restart == 1:
            wait_for_log(slurm2, job, "restart 1 python", timeout=300)
            wait_for_log(slurm2, job, "resumed from step-", timeout=300)
    records = slurm2.wait(job, timeout=300)
    log = slurm2.logs(job)
    assert records[0]["JobState"] == "FAILED" and records[0]["Restarts"] == "1", log[-3000:]
    lines = [x for x in log.splitlines() if x.startswith("lus: not requeueing")]
    assert len(lines) == 1 and "already requeued 1 time(s)" in lines[0] and "LUS_MAX_REQUEUES=1" in lines[0]
    assert newest_committed_step(run / "checkpoints") and not (run / "summary.json").exists()
    assert_untorn(run / "checkpoints")


# ------------------------------------------------------------------ (2) a real time limit

LATE_START = """#!/bin/bash
# Test stand-in for python. Slurm sends the time-limit signal up to 60 s early, i.e. 60-120 s
# into a --time=3 --signal=B:USR1@60 run. In the job's first run the launcher waits until the
# batch shell got it (so the run cannot finish before), then starts: the shell's resend must
# reach the trainers. Later runs start at once and finish before their own signal is due.
# Only the training launch waits (the job's lus doctor step runs at once).
trap '' USR1
log="$(dirname "$RUN_DIR")/$SLURM_JOB_NAME-$SLURM_JOB_ID.out"
if [[ "${{SLURM_RESTART_COUNT:-0}}" == 0 && "$1 $2" == "-m hpc.launch" && " $* " == *" train "* ]]; then
    for _ in $(seq 150); do grep -q "USR1 received" "$log" && break; sleep 1; done
fi
exec "{python}" "$@"
"""


def test_time_limit_signal_requeues_and_finishes(slurm2, hpc_phantom, baseline, tmp_path):
    """--time=3 --signal=B:USR1@60: slurmctld itself sends USR1 to the batch shell before the
    time limit; the shell resends it until the trainers take it, they checkpoint, the job
    requeues, resumes and ends with the baseline's weights."""
    python = tmp_path / "late-start-python"
    python.write_text(LATE_START.format(python=sys.executable))
    python.chmod(stat.S_IRWXU)
    run = tmp_path / "run"
    job = submit_train(slurm2, hpc_phantom[1], run, TWO_NODES, "--time=3", "--signal=B:USR1@60",
                       procs=1, overrides=DDP, env={"LUS_PYTHON": str(python)})
    records = slurm2.wait(job, timeout=900)
    log = slurm2.logs(job)
    assert_done(records, log)
    assert int(records[0]["Restarts"]) >= 1 and "DUE TO TIME LIMIT" not in log, log[-3000:]
    first_run = log.split("restart 1 python")[0]
    assert "USR1 received" in first_run and "lus: requeue asked for" in first_run, log[-3000:]
    assert "resumed from step-" in log
    assert_same_weights(run, baseline)


# ------------------------------------------------------------------ (6) DeepSpeed ZeRO-2

def test_deepspeed_zero2_two_nodes_preempted_and_resumed(slurm2, hpc_phantom, tmp_path):
    """ZeRO-2 over node1 + node2 (each rank saves its optimizer shard): an uninterrupted run
    and a preempted one end with the same weights."""
    shards = hpc_phantom[1]
    over = [*DDP, "dist.backend=deepspeed", "dist.zero_stage=2"]
    plain = submit_train(slurm2, shards, tmp_path / "plain", TWO_NODES, procs=1, overrides=over)
    pre = submit_train(slurm2, shards, tmp_path / "pre", TWO_NODES, procs=1, overrides=over)
    wait_for_log(slurm2, pre, "steps/epoch", timeout=600)
    slurm2.run(["scancel", "--signal=USR1", "--batch", str(pre)])
    for job in (plain, pre):
        assert_done(slurm2.wait(job, timeout=900), slurm2.logs(job))
    log = slurm2.logs(pre)
    assert "resumed from step-" in log and "requeue asked for" in log, log[-3000:]
    assert int(slurm2.job_records(pre)[0]["Restarts"]) >= 1
    shards_saved = sorted(p.name for p in (tmp_path / "pre" / "checkpoints").glob("step-*/ds/*"))
    assert any("optim_states" in n for n in shards_saved), shards_saved
    a, b = summary(tmp_path / "plain"), summary(tmp_path / "pre")
    assert a["global_step"] == b["global_step"] == STEPS and a["backend"] == "deepspeed"
    assert b["param_digests"] == a["param_digests"]
