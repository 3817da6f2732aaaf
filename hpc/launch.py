"""torchrun, with fixes for batch jobs: the requeue exit code survives, USR1 reaches only the workers, and bad input ends in one line.

``python -m hpc.launch <torchrun args>`` is ``python -m torch.distributed.run <torchrun args>``
except that:

* when a worker exits with :data:`hpc.signals.REQUEUE_EXIT_CODE`, this process exits with it
  too (plain torchrun turns every worker failure into exit code 1, so the sbatch script
  could not tell "checkpointed, requeue me" from a crash);
* SIGUSR1 is ignored by the agent itself. Slurm signals every process of a step, and the
  agent's default action for USR1 would kill it (and orphan the workers) while the workers
  are still saving their checkpoint; the workers install their own handler
  (:class:`hpc.signals.PreemptionFlag`);
* when it exits with the requeue code it also leaves a marker file in
  ``$LUS_REQUEUE_MARKER_DIR`` (if set): srun reports one exit code for all nodes, and a node
  torn down by ``--kill-on-bad-exit`` hides the others' 75, so the batch shell counts the
  markers instead (:mod:`hpc.requeue`);
* when the workers stop on bad input (exit :data:`hpc.dist.USAGE_EXIT_CODE`, after one
  line saying what is wrong), this process exits with that code too and adds nothing: no
  traceback, and the agent's own two lines about the failed group are dropped;
* ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` is the default, see :mod:`hpc.dist`.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from hpc.dist import USAGE_EXIT_CODE
from hpc.requeue import write_marker
from hpc.signals import REQUEUE_EXIT_CODE

AGENT_LOGGER = "torch.distributed.elastic.multiprocessing.api"


def requeue_requested(exitcodes: list[int]) -> bool:
    """The group asks for a requeue if any worker exited with the requeue code.

    The others may have been torn down by the agent after the first one exited, so their
    codes (e.g. -15) say nothing.
    """
    return REQUEUE_EXIT_CODE in exitcodes


def launch_exit_code(exitcodes: list[int]) -> int:
    """This launcher's exit code for a failed worker group: the requeue code if any worker
    asked for it, the usage code if the workers stopped on bad input (the others were torn
    down by a signal or stopped the same way), else 1."""
    if requeue_requested(exitcodes):
        return REQUEUE_EXIT_CODE
    if USAGE_EXIT_CODE in exitcodes and all(c in (USAGE_EXIT_CODE, 0) or c < 0 for c in exitcodes):
        return USAGE_EXIT_CODE
    return 1


class FailureLines(logging.Filter):
    """The agent's lines on a failed group ("Sending process N closing signal ...", then
    "failed (exitcode: C) ..."), held until C is known: dropped when the workers stopped on
    bad input (they said it in one line), passed on otherwise."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler, self.held = handler, []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != AGENT_LOGGER:
            return True
        message = record.getMessage()
        if message.startswith("Sending process"):
            self.held.append(record)
            return False
        if message.startswith("failed (exitcode:"):
            if record.args and record.args[0] == USAGE_EXIT_CODE:
                self.held = []
                return False
            self.flush()
        return True

    def flush(self) -> None:
        held, self.held = self.held, []
        for record in held:
            self.handler.emit(record)


def hold_failure_lines() -> list[FailureLines]:
    """Install FailureLines on every handler the agent's log lines reach."""
    logger, filters = logging.getLogger(AGENT_LOGGER), []
    while logger is not None:
        for handler in logger.handlers:
            filters.append(FailureLines(handler))
            handler.addFilter(filters[-1])
        logger = logger.parent if logger.propagate else None
    return filters


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    held = hold_failure_lines()
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        code = launch_exit_code(codes)
        if code == REQUEUE_EXIT_CODE:
            print(f"hpc.launch: worker asked for a requeue (exit codes {codes})", file=sys.stderr)
            write_marker(os.environ.get("LUS_REQUEUE_MARKER_DIR"), codes)
        elif code != USAGE_EXIT_CODE:
            print(f"hpc.launch: workers failed with exit codes {codes}", file=sys.stderr)
        return code
    finally:
        for f in held:
            f.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
