"""How often the ranks agree on a preemption stop.

The agreement is an all-reduce plus a host sync; every step it costs a visible share of a
short GPU step, while a stop only has to land within the seconds between USR1 and the
time limit (`#SBATCH --signal=B:USR1@120`). Any interval resumes exactly: a stop always
lands on a step boundary and the checkpoint records where.
"""
from __future__ import annotations

import time

MEASURED_STEPS = 5   # steps timed (each still checked) before the interval is fixed


def checks_every(step_s: float, target_s: float) -> int:
    """Steps between agreements so that they are about `target_s` of work apart; >= 1."""
    if step_s <= 0 or target_s <= 0:
        return 1
    return max(1, int(target_s / step_s * (1 + 1e-9)))   # 2.0 / 0.1 is 20, not 19


def agreed_max(value: float) -> float:
    """The largest `value` over the ranks (itself outside a process group); a collective."""
    import torch
    import torch.distributed as dist

    from hpc.dist import collective_device, is_distributed
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class StopCadence:
    """`train.stop_check_every` > 0: that many steps. 0 (auto): every step for the first
    MEASURED_STEPS steps of this process, then every checks_every(slowest rank's mean step
    time, train.stop_check_s) steps. The interval is fixed once, by one all-reduce at the
    same step on every rank, so the ranks keep calling the stop agreement together."""

    def __init__(self, every: int, target_s: float, clock=time.perf_counter) -> None:
        self.every = every or None
        self.target_s, self.clock = target_s, clock
        self.seen, self.t0 = 0, 0.0

    def due(self, global_step: int) -> bool:
        if self.every is not None:
            return global_step % self.every == 0
        self.seen += 1
        if self.seen == 1:
            self.t0 = self.clock()
        elif self.seen == MEASURED_STEPS + 1:
            step_s = agreed_max((self.clock() - self.t0) / MEASURED_STEPS)
            self.every = checks_every(step_s, self.target_s)
        return True
