"""The sbatch scripts on a real two-node Slurm cluster (loopback-only namespace), with the
real `lus train regstn` on phantom shards and the real `lus prep pack` job array."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from hpc.local_slurm import LocalSlurmCluster
from hpc.slurm_conf import ClusterLayout, parse_scontrol_record, render_hosts, render_slurm_conf
from slurm_helpers import ROOT, SLURM_DIR, assert_done, final_model, submit_train, wait_for_log


# ------------------------------------------------------------------ pure parts (fast)

@pytest.mark.parametrize("nodes", [1, 2])
def test_rendered_conf_has_one_port_per_node(tmp_path, nodes):
    conf = render_slurm_conf(ClusterLayout(tmp_path, nodes=nodes))
    node_lines = [line for line in conf.splitlines() if line.startswith("NodeName=")]
    assert [line.split()[0] for line in node_lines] == [f"NodeName=node{i + 1}" for i in range(nodes)]
    assert len({line.split("Port=")[1].split()[0] for line in node_lines}) == nodes
    assert "NodeAddr=127.0.0.1" in conf and "ProctrackType=proctrack/linuxproc" in conf
    assert f"StateSaveLocation={tmp_path}/state" in conf
    assert render_hosts(ClusterLayout(tmp_path, nodes=nodes), "vm").startswith("127.0.0.1 localhost vm node1")


def test_parse_scontrol_record():
    rec = parse_scontrol_record("JobId=7 JobName=x JobState=COMPLETED Reason=None ExitCode=0:0 "
                                "Restarts=1 StdOut=/tmp/7.out\n")
    assert rec["JobState"] == "COMPLETED" and rec["Restarts"] == "1" and rec["StdOut"] == "/tmp/7.out"
    assert parse_scontrol_record("") == {}


# ------------------------------------------------------------------ the cluster

@pytest.mark.slurm
@pytest.mark.slow
def test_nodes_are_separate_hosts_on_loopback_only(slurm2):
    out = slurm2.run(["srun", "--nodes=2", "--ntasks-per-node=1", "sh", "-c",
                      "echo $(hostname) $(ip -o -4 addr show | awk '{print $4}' | tr '\\n' ' ')"]).stdout
    lines = sorted(out.split("\n")[:-1])
    assert [line.split()[0] for line in lines] == ["node1", "node2"], out
    addresses = {a for line in lines for a in line.split()[1:]}
    assert addresses and all(a.startswith("127.") for a in addresses), out


@pytest.mark.slurm
@pytest.mark.slow
def test_one_node_training_and_preemption_requeue_resume(slurm2, hpc_phantom, tmp_path):
    """Two identical deterministic 1-node x 2-process jobs; one gets USR1 mid-training. It must
    checkpoint, requeue itself, resume (SLURM_RESTART_COUNT=1) and end bit-identical to the other."""
    _, shards = hpc_phantom
    over = ["train.epochs=3", "train.deterministic=true", "seed=3"]
    plain = submit_train(slurm2, shards, tmp_path / "plain", procs=2, overrides=over)
    pre = submit_train(slurm2, shards, tmp_path / "pre", procs=2, overrides=over)
    wait_for_log(slurm2, pre, "steps/epoch", timeout=240)
    time.sleep(1.0)
    slurm2.run(["scancel", "--signal=USR1", "--batch", str(pre)])

    plain_rec, pre_rec = slurm2.wait(plain, timeout=400), slurm2.wait(pre, timeout=400)
    plain_log, pre_log = slurm2.logs(plain), slurm2.logs(pre)
    assert_done(plain_rec, plain_log)
    assert_done(pre_rec, pre_log)

    # the uninterrupted job: 2 CPU processes on one node, checkpoints and metrics
    run = tmp_path / "plain"
    assert plain_log.count("backend gloo launcher torchrun") == 2 and "restart 0" in plain_log
    assert len(sorted((run / "checkpoints").glob("step-*"))) >= 2
    assert all((c / "COMMIT").exists() for c in (run / "checkpoints").glob("step-*"))
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("kind,") and len(metrics) > 10
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 42

    # the preempted one: USR1 -> checkpoint -> exit 75 -> scontrol requeue -> resume
    assert pre_rec[0]["Restarts"] == "1", pre_log[-3000:]
    assert "USR1 received" in pre_log and "asked to be requeued" in pre_log, pre_log[-3000:]
    assert "restart 1 python" in pre_log and "resumed from step-" in pre_log, pre_log[-3000:]
    pre_summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert pre_summary["global_step"] == 42
    assert pre_summary["param_digests"] == summary["param_digests"]
    a, b = final_model(run), final_model(tmp_path / "pre")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slurm
@pytest.mark.slow
def test_two_node_ddp(slurm2, hpc_phantom, tmp_path):
    """--nodes=2, one CPU process per node: one DDP group whose two ranks run on node1 and node2."""
    _, shards = hpc_phantom
    job = submit_train(slurm2, shards, tmp_path / "run", "--nodes=2", procs=1,
                       overrides=["train.epochs=1", "train.max_steps_per_epoch=4"])
    records = slurm2.wait(job, timeout=300)
    log = slurm2.logs(job)
    assert_done(records, log)
    assert records[0]["NodeList"] == "node[1-2]"
    # rank -> (host, node rank) as each rank reported it; c10d orders the nodes by arrival
    seen = {int(r): (host, int(node)) for r, host, node in
            re.findall(r"hpc: rank (\d)/2 local 0 on (\S+) node (\d) backend gloo", log)}
    assert sorted(seen) == [0, 1] and {h for h, _ in seen.values()} == {"node1", "node2"}, log[-3000:]
    assert all(node == rank for rank, (_, node) in seen.items())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    assert len(set(summary["param_digests"])) == 1     # both ranks hold the same weights


def _submit_prep(cluster: LocalSlurmCluster, raw: Path, out: Path, logs: Path,
                 pack_args: tuple[str, ...]) -> tuple[int, int]:
    env = {"SRC": str(raw), "OUT": str(out), "LAYOUT": "iclus", "TASKS": "3", "LUS_PYTHON": sys.executable,
           "SBATCH_ARGS": f"--output={logs}/%x-%j.out"}
    r = cluster.run(["bash", str(SLURM_DIR / "prep_array.sh"), *pack_args], env=env, cwd=logs)
    line = next(x for x in r.stdout.splitlines() if "pack array job" in x)
    words = line.split()
    return int(words[words.index("job") + 1]), int(words[-2])


@pytest.mark.slurm
@pytest.mark.slow
def test_prep_array_failed_task_then_rerun_packs_only_the_missing_shard(slurm2, hpc_phantom,
                                                                      hpc_pack_args, tmp_path):
    raw, _ = hpc_phantom
    out, logs = tmp_path / "shards", tmp_path / "logs"
    logs.mkdir()
    (out / "shard-00001.h5").mkdir(parents=True)   # task 1 cannot rename its shard into place
    array, fin = _submit_prep(slurm2, raw, out, logs, hpc_pack_args)
    tasks = slurm2.wait(array, timeout=300)
    states = {r["ArrayTaskId"]: r["JobState"] for r in tasks}
    assert states == {"0": "COMPLETED", "1": "FAILED", "2": "COMPLETED"}, slurm2.logs(array)[-3000:]
    fin_rec = slurm2.wait(fin, timeout=60)              # afterok never satisfied: cancelled
    assert fin_rec[0]["JobState"] == "CANCELLED" and not (out / "manifest.json").exists()
    kept = {i: (out / f"shard-0000{i}.h5").stat() for i in (0, 2)}

    (out / "shard-00001.h5").rmdir()                    # fix the cause, run the same command
    array, fin = _submit_prep(slurm2, raw, out, logs, hpc_pack_args)
    assert_done(slurm2.wait(array, timeout=300), slurm2.logs(array))
    assert_done(slurm2.wait(fin, timeout=120), slurm2.logs(fin))
    for i, st in kept.items():                          # finished shards were not rewritten
        now = (out / f"shard-0000{i}.h5").stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert (out / "shard-00001.h5").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest and "shards" in manifest


@pytest.mark.slurm
@pytest.mark.slow
def test_cluster_up_down_stops_only_its_own(tmp_path):
    """A separate 1-node cluster: up, one job, down; every process of its namespace is gone."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root")
    from hpc.local_slurm import _netns

    with LocalSlurmCluster(tmp_path / "c1", nodes=1) as c:
        assert c.run(["srun", "hostname"]).stdout.strip() == "node1"
        holder = c._holder_pid()
        ns = _netns(holder)
        members = c._members(holder, ns)
        assert len(members) >= 3                       # munged, slurmctld, slurmd
    assert c._holder_pid() is None and not c._members(holder, ns)
    assert not list((tmp_path / "c1" / "run").glob("lus-*.pid"))
    assert c.status().startswith("no local cluster")


SRUN_WORKER = """
import torch, torch.distributed as dist
from hpc import current_world, init_distributed, destroy_distributed
w = current_world()
init_distributed(w, timeout_s=60)
t = torch.tensor([w.rank + 1.0])
dist.all_reduce(t)
print(f"srun-world rank={w.rank} node={w.node_rank} host={w.hostname} launcher={w.launcher} sum={t.item()}")
destroy_distributed()
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_srun_without_torchrun_forms_a_group(slurm2, tmp_path):
    """One process per Slurm task (as `srun python -m lus train` would start them): the world
    and the rendezvous come from SLURM_* alone, and an all-reduce spans both nodes."""
    script = tmp_path / "worker.py"
    script.write_text(SRUN_WORKER)
    out = slurm2.run(["srun", "--nodes=2", "--ntasks-per-node=1", sys.executable, str(script)],
                     env={"PYTHONPATH": str(ROOT)}, timeout=180).stdout
    lines = sorted(line for line in out.splitlines() if line.startswith("srun-world"))
    assert lines == ["srun-world rank=0 node=0 host=node1 launcher=srun sum=3.0",
                     "srun-world rank=1 node=1 host=node2 launcher=srun sum=3.0"], out
