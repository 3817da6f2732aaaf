"""Preemption: a signal only sets a flag; the ranks agree at a step boundary.

Slurm announces the end of a job with a signal (``#SBATCH --signal=B:USR1@<s>`` before the
time limit, SIGTERM on preemption or ``scancel``). Saving a checkpoint inside a signal
handler is unsafe (a collective may be half done), and a rank that stops alone deadlocks
the others. So the handler only sets a flag; at the next step boundary every rank calls
:meth:`PreemptionFlag.should_stop`, which all-reduces MAX, so all ranks save the same step
and exit together with :data:`REQUEUE_EXIT_CODE`.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

# 75 = EX_TEMPFAIL in sysexits.h ("temporary failure; the user is invited to retry").
# Chosen because it collides with nothing common: 1/2 are errors/usage, 124 is taken by
# timeout(1), 125-127 by the shell, 128+N by "killed by signal N". slurm/common.sh requeues
# the job when the launcher exits with it, and hpc.launch keeps it through torchrun.
REQUEUE_EXIT_CODE = 75

DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    """Set by SIGUSR1/SIGTERM; polled (and agreed on across ranks) at step boundaries.

    Use as a context manager so the previous handlers come back afterwards (tests and
    notebooks run more than one training in a process)::

        with PreemptionFlag() as flag:
            for step in ...:
                train_step()
                if flag.should_stop():
                    save_checkpoint(); sys.exit(REQUEUE_EXIT_CODE)
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self._event = threading.Event()
        self._previous: dict[int, object] = {}
        self.received: signal.Signals | None = None

    # -- installation
    def install(self) -> "PreemptionFlag":
        """Install the handlers (main thread only, as Python requires)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionFlag.install() must run in the main thread")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> "PreemptionFlag":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)
        self._event.set()

    # -- state
    def set(self) -> None:
        """Request a stop without a signal (tests, or a wall-clock budget in the engine)."""
        self._event.set()

    @property
    def local(self) -> bool:
        """This rank's own view, without agreeing with the others."""
        return self._event.is_set()

    def should_stop(self, device=None) -> bool:
        """True on every rank if any rank was signalled; a collective: call it on all ranks.

        ``device`` is where the one-element tensor lives (``cuda`` under nccl); by default
        it follows the process-group backend.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.local
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device())
                      if dist.get_backend() == "nccl" else torch.device("cpu"))
        t = torch.tensor([1 if self.local else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t.item():
            self._event.set()  # keep later local checks consistent with the agreement
        return bool(t.item())

