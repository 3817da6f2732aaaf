"""hpc: launch environment, process groups, preemption and a local Slurm cluster.

Knows nothing of models or data. Import-light: torch is imported only inside functions
that need it, so ``lus cluster`` and the world detection start fast.
"""
from hpc.dist import destroy_distributed, init_distributed
from hpc.signals import REQUEUE_EXIT_CODE, PreemptionFlag
from hpc.world import World, WorldError, current_world, device_for, world_from_env

__all__ = ["World", "WorldError", "world_from_env", "current_world", "device_for", "init_distributed",
           "destroy_distributed", "PreemptionFlag", "REQUEUE_EXIT_CODE"]
