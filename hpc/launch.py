"""torchrun, with two fixes for batch jobs: the requeue exit code survives, and USR1 reaches only the workers.

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
* ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` is the default, see :mod:`hpc.dist`.
"""
from __future__ import annotations

import os
import signal
import sys

from hpc.requeue import write_marker
from hpc.signals import REQUEUE_EXIT_CODE


def requeue_requested(exitcodes: list[int]) -> bool:
    """The group asks for a requeue if any worker exited with the requeue code.

    The others may have been torn down by the agent after the first one exited, so their
    codes (e.g. -15) say nothing.
    """
    return REQUEUE_EXIT_CODE in exitcodes


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        if requeue_requested(codes):
            print(f"hpc.launch: worker asked for a requeue (exit codes {codes})", file=sys.stderr)
            write_marker(os.environ.get("LUS_REQUEUE_MARKER_DIR"), codes)
            return REQUEUE_EXIT_CODE
        print(f"hpc.launch: workers failed with exit codes {codes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
