"""World detection from environments recorded on the local Slurm cluster and under torchrun.

The JSON files in recorded_envs/ are the launcher variables of real processes: torchrun
--standalone (2 procs), torchrun inside a 2-node srun step (2x2), srun without torchrun
(2 nodes x 2 tasks) and a plain batch step.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpc.device_plan import device_for
from hpc.world import (World, WorldError, expand_nodelist, parse_tasks_per_node, port_from_job_id,
                       world_from_env)

RECORDED = Path(__file__).parent / "recorded_envs"


def recorded(name: str) -> dict[str, str]:
    return json.loads((RECORDED / f"{name}.json").read_text())


def test_torchrun_single_node():
    w = world_from_env(recorded("torchrun_single-1"))
    assert w == World(rank=1, local_rank=1, world_size=2, local_world_size=2, node_rank=0, num_nodes=1,
                      master_addr="localhost", master_port=35371, launcher="torchrun", hostname="")


@pytest.mark.parametrize("name, rank, local, node, host", [
    ("torchrun_multi-0", 0, 0, 0, "node1"), ("torchrun_multi-3", 3, 1, 1, "node2")])
def test_torchrun_multi_node_inside_srun(name, rank, local, node, host):
    """torchrun wins over the srun variables around it (SLURM_PROCID is the agent's, not the rank)."""
    w = world_from_env(recorded(name))
    assert (w.rank, w.local_rank, w.node_rank, w.hostname) == (rank, local, node, host)
    assert (w.world_size, w.local_world_size, w.num_nodes, w.launcher) == (4, 2, 2, "torchrun")


@pytest.mark.parametrize("name, rank, local, node, host", [
    ("srun-0", 0, 0, 0, "node1"), ("srun-3", 3, 1, 1, "node2")])
def test_srun_without_torchrun(name, rank, local, node, host):
    w = world_from_env(recorded(name))
    assert (w.rank, w.local_rank, w.node_rank, w.hostname) == (rank, local, node, host)
    assert (w.world_size, w.local_world_size, w.num_nodes, w.launcher) == (4, 2, 2, "srun")
    job = int(recorded(name)["SLURM_JOB_ID"])
    assert w.master_addr == "node1" and w.master_port == port_from_job_id(job)


def test_batch_step_and_plain_process_are_single():
    """The batch shell has SLURM_PROCID but no step: running python there is one process."""
    for env in (recorded("batch-0"), {}, {"PATH": "/usr/bin"}):
        w = world_from_env(env)
        assert (w.launcher, w.rank, w.world_size, w.num_nodes) == ("single", 0, 1, 1)


def _srun(**changes: str | None) -> dict[str, str]:
    env = recorded("srun-3")
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _torchrun(**changes: str | None) -> dict[str, str]:
    env = recorded("torchrun_multi-3")
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@pytest.mark.parametrize("env, fragment", [
    # ntasks-per-node vs GPUs: one rank per GPU without torchrun
    (_srun(SLURM_GPUS_ON_NODE="4"), "GPUs per node"),
    (_srun(SLURM_GPUS_PER_NODE="a100:1"), "--gpus-per-node"),
    # world larger than the tasks Slurm started
    (_srun(SLURM_NTASKS="8"), "sums to 4"),
    (_srun(SLURM_PROCID="4", SLURM_NTASKS="4"), "outside [0, 4)"),
    (_srun(SLURM_TASKS_PER_NODE="3,1"), "uneven tasks per node"),
    (_srun(SLURM_TASKS_PER_NODE="two"), "cannot parse"),
    (_srun(SLURM_STEP_NUM_NODES="3", SLURM_NNODES="3", SLURM_TASKS_PER_NODE="2(x2)"), "allocated 3"),
    (_srun(SLURM_LOCALID="x"), "not an integer"),
    (_srun(SLURM_STEP_NODELIST=None, SLURM_JOB_NODELIST=None, SLURM_NODELIST=None), "MASTER_ADDR"),
    (_srun(SLURM_STEP_NODELIST="node[2-1]"), "descending"),
    (_srun(MASTER_PORT="70000"), "not a valid port"),
    # torchrun world that disagrees with the Slurm allocation
    (_torchrun(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", RANK="1", GROUP_RANK="0"), "Slurm allocated 2"),
    (_torchrun(WORLD_SIZE="5"), "not a multiple"),
    (_torchrun(RANK="4"), "outside [0, 4)"),
    (_torchrun(MASTER_ADDR=None), "MASTER_ADDR is not set"),
    (_torchrun(RANK=None), "RANK is not set"),
])
def test_misconfiguration_raises_with_hint(env, fragment):
    with pytest.raises(WorldError, match=None) as err:
        world_from_env(env)
    assert fragment in str(err.value)


def test_device_for_cpu_and_refuses_missing_gpu():
    import torch

    w = world_from_env({})
    assert device_for(w, "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert device_for(w) == torch.device("cpu")
        with pytest.raises(WorldError, match="no CUDA device"):
            device_for(w, "cuda")
    with pytest.raises(WorldError, match="train.device='tpu'"):
        device_for(w, "tpu")


@pytest.mark.parametrize("text, hosts", [
    ("node1", ["node1"]),
    ("node[1-2,5]", ["node1", "node2", "node5"]),
    ("gpu-a[01-03],login", ["gpu-a01", "gpu-a02", "gpu-a03", "login"]),
    ("r[9-11]n1", ["r9n1", "r10n1", "r11n1"]),
    ("a[1],b[2-3]", ["a1", "b2", "b3"]),
])
def test_expand_nodelist_examples(text, hosts):
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize("bad", ["", "node[1-", "node[a-b]", "node]1["])
def test_expand_nodelist_rejects(bad):
    with pytest.raises(WorldError):
        expand_nodelist(bad)


@given(st.lists(st.tuples(st.sampled_from(["n", "gpu", "cn-"]), st.integers(0, 40), st.integers(0, 5)),
                min_size=1, max_size=4))
def test_expand_nodelist_matches_ranges(groups):
    """Whatever ranges we write, expansion yields exactly those hosts in order."""
    text = ",".join(f"{p}[{lo}-{lo + n}]" for p, lo, n in groups)
    expected = [f"{p}{i}" for p, lo, n in groups for i in range(lo, lo + n + 1)]
    assert expand_nodelist(text) == expected


@given(st.lists(st.tuples(st.integers(1, 64), st.integers(1, 9)), min_size=1, max_size=5))
def test_parse_tasks_per_node_roundtrip(runs):
    text = ",".join(f"{n}(x{k})" if k > 1 else str(n) for n, k in runs)
    assert parse_tasks_per_node(text) == [n for n, k in runs for _ in range(k)]


@given(st.integers(0, 2**31))
def test_port_from_job_id_in_range_and_matches_common_sh(job):
    port = port_from_job_id(job)
    assert 20000 <= port < 40000 and port == 20000 + job % 20000
