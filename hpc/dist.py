"""Process groups with the two rules that keep CPU and GPU runs alike and debuggable.

* Backend: ``gloo`` on CPU, ``nccl`` when this rank has a GPU of its own (``backend="auto"``);
  the choice is :func:`hpc.device_plan.plan_run`'s, together with device and precision.
* Always an explicit timeout: a rank that died must turn into an error on the others
  within minutes, not the 30-minute (gloo) or 10-minute (nccl) library default.

Elastic restarts (``torchrun --max-restarts``): set ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
in the launching environment (slurm/common.sh does). Otherwise torchrun's rendezvous store
survives a restart and the new group often fails with gloo "connectFullMesh ... Connection
refused" or hangs (pytorch/pytorch#135712, #167288); with it, 11 of 11 restarts passed here.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
import sys
import time

from hpc.device_plan import RunPlan, plan_run, probe_cuda
from hpc.world import World, WorldError, world_from_env

DEFAULT_TIMEOUT_S = 300.0
USAGE_EXIT_CODE = 2   # bad input (config, data, run dir); hpc.launch passes it through
# torchrun ends the group when its first rank exits: rank 0 reports a user error at once and
# the others wait this long, so the job says it once; a rank still alive after it had an
# error of its own (rank 0 is fine) and says it
USER_ERROR_GRACE_S = 5.0


def resolve_backend(world: World, backend: str = "auto", device: str = "auto") -> str:
    """The process-group backend :func:`plan_run` picks for ``train.device=device`` here:
    nccl on a GPU of its own, gloo on CPU or shared GPUs; nccl without a GPU is an error."""
    return plan_run(world, probe_cuda(), device=device, process_group=backend).backend


def init_distributed(world: World, backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
                     plan: RunPlan | None = None) -> str | None:
    """Join the default process group described by ``world``; returns the backend used.

    With a ``plan`` (:func:`hpc.device_plan.plan_run`) its backend and CUDA device are used
    and ``backend`` is ignored; without one the plan for ``train.device=auto`` is made here.

    A no-op (returns None) for a single-process world, so the same training code runs
    unchanged under ``python``, ``torchrun`` and ``srun``. Rendezvous is ``env://`` with
    MASTER_ADDR/PORT taken from ``world`` (torchrun already exported them; for srun they
    come from the node list and the job id).
    """
    import torch
    import torch.distributed as dist

    if world.world_size == 1:
        return None
    if timeout_s <= 0:
        raise WorldError(f"timeout_s={timeout_s} must be positive")
    if dist.is_initialized():
        return dist.get_backend()
    if plan is None:
        plan = plan_run(world, probe_cuda(), process_group=backend)
    chosen = plan.backend
    if plan.on_gpu:
        torch.cuda.set_device(plan.device_index)
    os.environ.setdefault("MASTER_ADDR", world.master_addr)
    os.environ.setdefault("MASTER_PORT", str(world.master_port))
    dist.init_process_group(chosen, init_method="env://", rank=world.rank,
                            world_size=world.world_size,
                            timeout=_dt.timedelta(seconds=timeout_s))
    # One line per rank in the job log: which rank ran where is the first question
    # when a multi-node job misbehaves (and the tests read the rank-to-node map from it).
    print(f"hpc: rank {world.rank}/{world.world_size} local {world.local_rank} on "
          f"{world.hostname or socket.gethostname()} node {world.node_rank} "
          f"backend {chosen} launcher {world.launcher}", file=sys.stderr, flush=True)
    return chosen


def init_one_rank_group(backend: str = "gloo") -> None:
    """A process group of this process alone, over an in-memory store (no port): for a
    library whose collectives need a group even in one process (DeepSpeed)."""
    import torch.distributed as dist

    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def is_distributed() -> bool:
    """A default process group exists (the one spelling of this check)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank; a no-op without a process group (one process)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def collective_device():
    """Where small tensors for a collective live: the current GPU under nccl, else CPU."""
    import torch
    import torch.distributed as dist

    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def child_env(base: dict[str, str] | None = None, threads: int = 1) -> dict[str, str]:
    """The environment for processes we launch (torchrun workers, sbatch, Ray, tests):
    one OpenMP thread per process unless set, a fresh rendezvous store per elastic restart
    (see the module docstring), unbuffered logs, no Ray telemetry. (DeepSpeed's accelerator
    is chosen by the engine at start-up, where torch knows whether a GPU is usable.)"""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def destroy_distributed() -> None:
    """Leave the process group if one exists (safe to call twice or without one)."""
    import torch.distributed as dist

    if is_distributed():
        dist.destroy_process_group()


def exit_worker(code: int) -> int:
    """A torchrun worker whose run is over (results, checkpoints and logs closed, process
    group destroyed) exits without interpreter teardown: gloo/DeepSpeed C++ threads torn
    down during Python finalisation can abort ("terminate called without an active
    exception", SIGABRT) and turn a finished run into a failed job. Any other caller
    (a plain process, a test, a Ray Train worker) gets the code back as usual."""
    if os.environ.get("TORCHELASTIC_RUN_ID") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def exit_user_error(message: str) -> int:
    """Say what is wrong with the input in one line for the whole job (not once per rank),
    then leave like :func:`exit_worker` with :data:`USAGE_EXIT_CODE`."""
    try:
        rank = world_from_env(os.environ).rank
    except WorldError:
        rank = 0
    if rank != 0:
        time.sleep(USER_ERROR_GRACE_S)
    print(message, file=sys.stderr, flush=True)
    return exit_worker(USAGE_EXIT_CODE)
