"""The sbatch scripts on a real two-node Slurm cluster (loopback-only namespace): the cluster
itself, srun without torchrun, and the real `lus prep pack` job array. Training jobs, their
preemption, requeue and faults are in test_faults.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hpc.local_slurm import LocalSlurmCluster
from hpc.slurm_conf import ClusterLayout, parse_scontrol_record, render_hosts, render_slurm_conf
from slurm_helpers import ROOT, SLURM_DIR, assert_done


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
    manifest = json.loads((out / "manifest.json").read_text())   # metadata + tables sidecar
    assert manifest["n_shards"] == 3 and manifest["n_videos"] == 12


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


@pytest.mark.parametrize("argv_of", ["holder", "slurmd"])
def test_paths_reach_commands_unparsed(tmp_path, argv_of):
    """The namespace holder's and the slurmds' `sh -c` scripts run by the real sh, with stand-in
    ip/mount/hostname/slurmd/sleep that record their argv: a work dir named like `$(touch x) 'q'`
    arrives as one argument and nothing in it runs."""
    from hpc.local_slurm import holder_argv, slurmd_argv

    stubs, calls = tmp_path / "bin", tmp_path / "calls"
    stubs.mkdir()
    for tool in ("ip", "mount", "hostname", "slurmd", "sleep"):
        (stubs / tool).write_text(f'#!/bin/sh\nprintf "{tool}" >> "{calls}"; printf " <%s>" "$@" >> "{calls}"; echo >> "{calls}"\n')
        (stubs / tool).chmod(0o755)
    weird = tmp_path / f"c $(touch {tmp_path}/ran) 'q'"
    argv = (holder_argv(weird / "hosts", weird / "resolv.conf") if argv_of == "holder"
            else slurmd_argv("node1", weird / "slurm.conf"))
    script = argv[argv.index("-c"):]                     # from `sh -c SCRIPT sh ARGS...`
    import os
    import subprocess

    subprocess.run(["sh", *script], env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}, check=True)
    log = calls.read_text()
    if argv_of == "holder":
        assert f"mount <--bind> <{weird}/hosts> </etc/hosts>" in log
        assert f"mount <--bind> <{weird}/resolv.conf> </etc/resolv.conf>" in log
    else:
        assert f"slurmd <-D> <-N> <node1> <-f> <{weird}/slurm.conf>" in log
    assert not (tmp_path / "ran").exists()
