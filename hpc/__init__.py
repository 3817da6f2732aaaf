"""hpc: launch environment, process groups, preemption and a local Slurm cluster.

Knows nothing of models or data. Import-light: torch is imported only inside functions
that need it, so ``lus cluster`` and the world detection start fast.

* :func:`world_from_env` / :func:`current_world`: rank, sizes, node and rendezvous from
  torchrun, srun (without torchrun) or a plain process; :class:`WorldError` with a hint.
* :func:`plan_run` / :class:`RunPlan` (:mod:`hpc.device_plan`): device, process-group backend,
  bf16, TF32 and DeepSpeed accelerator of a rank as one pure decision from injected facts
  (:func:`probe_cuda`), applied by :func:`apply_plan`; :func:`deepspeed_bf16` for DeepSpeed.
* :func:`init_distributed`: gloo on CPU, nccl on GPU, always an explicit timeout.
* :class:`PreemptionFlag` + :data:`REQUEUE_EXIT_CODE` (75): signal -> flag -> ranks agree at a
  step boundary -> checkpoint -> exit 75 -> ``slurm/common.sh`` runs ``scontrol requeue``.
* ``python -m hpc.launch``: torchrun that keeps exit 75 and leaves USR1 to the workers.
* :mod:`hpc.local_slurm` / ``lus cluster up|down|status|run``: a real loopback-only cluster.

Environment knobs read by the sbatch scripts (``slurm/*.sh``): LUS_PYTHON (else
$VIRTUAL_ENV/bin/python, else the project's .venv), NPROC_PER_NODE / CPU_PROCS_PER_NODE,
MAX_RESTARTS, DRY_RUN=1. Under ``torchrun --max-restarts`` keep
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (the scripts and hpc.launch set it; see hpc.dist).
"""
from hpc.device_plan import (CudaFacts, PlanError, RunPlan, apply_plan, deepspeed_bf16, device_for,
                             plan_run, probe_cuda, with_deepspeed_precision)
from hpc.dist import destroy_distributed, exit_worker, init_distributed
from hpc.signals import REQUEUE_EXIT_CODE, PreemptionFlag
from hpc.world import World, WorldError, current_world, world_from_env

__all__ = ["World", "WorldError", "world_from_env", "current_world", "device_for", "init_distributed",
           "destroy_distributed", "exit_worker", "PreemptionFlag", "REQUEUE_EXIT_CODE", "CudaFacts",
           "RunPlan", "PlanError", "plan_run", "probe_cuda", "apply_plan", "deepspeed_bf16",
           "with_deepspeed_precision"]
