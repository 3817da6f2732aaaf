"""Who am I in the job? One pure answer from the environment.

The world (rank, sizes, node, rendezvous address) is read from exactly one place so that
the engine, the sbatch scripts and the tests agree. Order of precedence:

1. torchrun (``TORCHELASTIC_RUN_ID`` or ``RANK`` + ``WORLD_SIZE`` + ``LOCAL_RANK``): torchrun
   is the source of truth even inside an srun step, because it may run several processes
   per Slurm task.
2. srun without torchrun (``SLURM_PROCID`` within a step with ``SLURM_STEP_ID``/``SLURM_NTASKS``):
   one process per Slurm task; the master is the first host of ``SLURM_JOB_NODELIST``.
3. otherwise a single process.

Misconfigurations raise :class:`WorldError` whose message names the variable and gives a
hint, in the spirit of Lightning's ``SLURMEnvironment`` checks, so a bad allocation fails
at start and not at the first collective 30 minutes later.
"""
from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Launcher = Literal["torchrun", "srun", "single"]

DEFAULT_MASTER_PORT = 29500
_PORT_BASE, _PORT_SPAN = 20000, 20000


class WorldError(RuntimeError):
    """The launch environment is inconsistent; the message says which variable and why."""


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    launcher: Launcher
    hostname: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# ---------------------------------------------------------------- pure helpers

def port_from_job_id(job_id: int | str) -> int:
    """A rendezvous port derived from the Slurm job id: two jobs sharing a node rarely collide.

    Mirrors slurm/common.sh (``20000 + job_id % 20000``); both must stay in sync.
    """
    return _PORT_BASE + int(job_id) % _PORT_SPAN


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist (``"node[1-2,5],gpu-a[01-02]"``) without calling ``scontrol``.

    Zero padding in ranges is kept (``[01-03]`` -> 01, 02, 03). Raises WorldError on a
    malformed list rather than guessing a master address.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        m = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\]([^\[\]]*)", item)
        if m is None:
            if not item or "[" in item or "]" in item:
                raise WorldError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot parse {item!r}")
            hosts.append(item)
            continue
        prefix, ranges, suffix = m.groups()
        for part in ranges.split(","):
            hosts.extend(f"{prefix}{n}{suffix}" for n in _expand_range(part, nodelist))
    if not hosts:
        raise WorldError(f"SLURM_JOB_NODELIST={nodelist!r} is empty")
    return hosts


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, cur = [], 0, []
    for ch in s:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _expand_range(part: str, nodelist: str) -> list[str]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
    if m is None:
        raise WorldError(f"SLURM_JOB_NODELIST={nodelist!r}: bad range {part!r}")
    lo_s, hi_s = m.group(1), m.group(2) or m.group(1)
    lo, hi = int(lo_s), int(hi_s)
    if hi < lo:
        raise WorldError(f"SLURM_JOB_NODELIST={nodelist!r}: descending range {part!r}")
    width = len(lo_s) if lo_s.startswith("0") else 0
    return [str(n).zfill(width) for n in range(lo, hi + 1)]


def parse_tasks_per_node(value: str) -> list[int]:
    """Expand ``SLURM_TASKS_PER_NODE`` (``"2(x3),1"`` -> [2, 2, 2, 1])."""
    out: list[int] = []
    for item in value.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if m is None:
            raise WorldError(f"SLURM_TASKS_PER_NODE={value!r}: cannot parse {item!r}")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise WorldError(f"{name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise WorldError(f"{name}={raw!r} is not an integer") from None


def _gpus_per_node(env: Mapping[str, str]) -> int | None:
    """GPUs Slurm gave this node (``SLURM_GPUS_ON_NODE``, else the ``--gpus-per-node`` value)."""
    if env.get("SLURM_GPUS_ON_NODE"):
        return _int(env, "SLURM_GPUS_ON_NODE")
    raw = env.get("SLURM_GPUS_PER_NODE", "")
    m = re.fullmatch(r"(?:[\w-]+:)?(\d+)", raw)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- detection

def world_from_env(env: Mapping[str, str]) -> World:
    """Detect the world from an environment mapping (pass ``os.environ``); pure."""
    hostname = env.get("SLURMD_NODENAME") or env.get("HOSTNAME") or ""
    if "TORCHELASTIC_RUN_ID" in env or {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= env.keys():
        world = _torchrun_world(env, hostname)
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        world = _srun_world(env, hostname)
    else:
        world = World(0, 0, 1, 1, 0, 1, "127.0.0.1", DEFAULT_MASTER_PORT, "single", hostname)
    _check(world)
    return world


def _torchrun_world(env: Mapping[str, str], hostname: str) -> World:
    rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local_rank = _int(env, "LOCAL_RANK")
    local_world = _int(env, "LOCAL_WORLD_SIZE", default=world_size)
    if world_size % local_world:
        raise WorldError(f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={local_world}; "
                         "hint: every node must run the same --nproc-per-node")
    num_nodes = world_size // local_world
    node_rank = _int(env, "GROUP_RANK", default=rank // local_world)
    if world_size > 1 and not env.get("MASTER_ADDR"):
        raise WorldError("MASTER_ADDR is not set although WORLD_SIZE>1; hint: launch with torchrun "
                         "(--standalone or --rdzv-endpoint) instead of setting RANK by hand")
    master_port = _int(env, "MASTER_PORT", default=DEFAULT_MASTER_PORT)
    _check_slurm_nodes(env, num_nodes, "torchrun --nnodes")
    return World(rank, local_rank, world_size, local_world, node_rank, num_nodes,
                 env.get("MASTER_ADDR", "127.0.0.1"), master_port, "torchrun", hostname)


def _srun_world(env: Mapping[str, str], hostname: str) -> World:
    rank, world_size = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
    local_rank = _int(env, "SLURM_LOCALID")
    node_rank = _int(env, "SLURM_NODEID", default=0)
    per_node = parse_tasks_per_node(env.get("SLURM_TASKS_PER_NODE") or str(world_size))
    if sum(per_node) != world_size:
        raise WorldError(f"SLURM_TASKS_PER_NODE={env.get('SLURM_TASKS_PER_NODE')!r} sums to "
                         f"{sum(per_node)} but SLURM_NTASKS={world_size}")
    if len(set(per_node)) != 1:
        raise WorldError(f"uneven tasks per node {per_node}; hint: use --ntasks-per-node so "
                         "every node runs the same number of ranks")
    local_world, num_nodes = per_node[0], len(per_node)
    gpus = _gpus_per_node(env)
    if gpus and local_world != gpus:
        raise WorldError(f"{local_world} tasks per node but {gpus} GPUs per node; hint: without "
                         "torchrun use --ntasks-per-node equal to --gpus-per-node (one rank per GPU)")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if "MASTER_ADDR" in env:
        master = env["MASTER_ADDR"]
    elif nodelist:
        master = expand_nodelist(nodelist)[0]
    elif world_size > 1:
        raise WorldError("MASTER_ADDR is not set and SLURM_JOB_NODELIST is missing; hint: export "
                         "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)")
    else:
        master = "127.0.0.1"
    job_id = env.get("SLURM_JOB_ID")
    port = _int(env, "MASTER_PORT", default=port_from_job_id(job_id) if job_id else DEFAULT_MASTER_PORT)
    _check_slurm_nodes(env, num_nodes, "srun --nodes")
    return World(rank, local_rank, world_size, local_world, node_rank, num_nodes, master, port,
                 "srun", hostname or env.get("SLURMD_NODENAME", ""))


def _check_slurm_nodes(env: Mapping[str, str], num_nodes: int, what: str) -> None:
    """Inside a Slurm job, the world must span exactly the allocated nodes."""
    alloc = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if alloc and alloc.isdigit() and "SLURM_JOB_ID" in env and int(alloc) != num_nodes:
        raise WorldError(f"the world spans {num_nodes} node(s) but Slurm allocated {alloc} "
                         f"(SLURM_JOB_NUM_NODES); hint: {what} must equal $SLURM_NNODES")


def _check(w: World) -> None:
    if w.world_size < 1:
        raise WorldError(f"world size {w.world_size} < 1")
    if not 0 <= w.rank < w.world_size:
        raise WorldError(f"rank {w.rank} is outside [0, {w.world_size}); hint: the launcher's "
                         "world size disagrees with the number of started processes")
    if not 0 <= w.local_rank < w.local_world_size:
        raise WorldError(f"local rank {w.local_rank} is outside [0, {w.local_world_size})")
    if not 0 <= w.node_rank < w.num_nodes:
        raise WorldError(f"node rank {w.node_rank} is outside [0, {w.num_nodes})")
    if w.local_world_size * w.num_nodes != w.world_size:
        raise WorldError(f"{w.num_nodes} nodes x {w.local_world_size} ranks per node != "
                         f"world size {w.world_size}")
    if not 0 < w.master_port < 65536:
        raise WorldError(f"MASTER_PORT={w.master_port} is not a valid port")


def current_world() -> World:
    """``world_from_env(os.environ)`` with the hostname filled in when the env lacks it."""
    import dataclasses
    import os

    world = world_from_env(os.environ)
    return world if world.hostname else dataclasses.replace(world, hostname=socket.gethostname())

