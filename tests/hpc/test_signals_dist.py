"""PreemptionFlag with real signals, ranks agreeing in a real gloo group, and hpc.launch
keeping the requeue exit code through a real torchrun."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpc import REQUEUE_EXIT_CODE, PreemptionFlag, init_distributed, world_from_env
from hpc.dist import USAGE_EXIT_CODE
from hpc.launch import AGENT_LOGGER, FailureLines, launch_exit_code, requeue_requested

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK",
                                                                     "WORLD_SIZE", "MASTER_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_sets_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    with PreemptionFlag() as flag:
        assert not flag.should_stop()
        os.kill(os.getpid(), sig)
        assert flag.local and flag.should_stop() and flag.received == sig
    assert signal.getsignal(sig) is before


def test_single_process_world_needs_no_group():
    assert init_distributed(world_from_env({})) is None


def test_requeue_exit_code_is_distinctive():
    assert REQUEUE_EXIT_CODE not in (0, 1, 2, 124, 125, 126, 127) and REQUEUE_EXIT_CODE < 128
    assert requeue_requested([REQUEUE_EXIT_CODE, -15]) and not requeue_requested([1, -15])


def test_bad_input_keeps_its_exit_code_through_the_launcher():
    assert launch_exit_code([2, -15]) == launch_exit_code([2, 2]) == USAGE_EXIT_CODE == 2
    assert launch_exit_code([REQUEUE_EXIT_CODE, 2]) == REQUEUE_EXIT_CODE
    assert launch_exit_code([2, 1]) == launch_exit_code([1, -15]) == 1


def test_agent_failure_lines_are_dropped_for_bad_input_only():
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    def agent_lines(code: int) -> list[str]:
        handler = Keep()
        handler.addFilter(held := FailureLines(handler))
        logger = logging.getLogger(AGENT_LOGGER)
        for level, msg, args in ((logging.WARNING, "Sending process %s closing signal %s", (7, "SIGTERM")),
                                 (logging.ERROR, "failed (exitcode: %s) local_rank: %s", (code, 0)),
                                 (logging.WARNING, "Unable to shutdown process %s", (8,))):
            handler.handle(logger.makeRecord(AGENT_LOGGER, level, __file__, 1, msg, args, None))
        held.flush()
        return handler.lines

    assert agent_lines(2) == ["Unable to shutdown process 8"]
    assert agent_lines(1) == ["Sending process 7 closing signal SIGTERM",
                              "failed (exitcode: 1) local_rank: 0", "Unable to shutdown process 8"]


WORKER = textwrap.dedent("""
    import os, signal, sys, time
    from hpc import PreemptionFlag, REQUEUE_EXIT_CODE, current_world, init_distributed, destroy_distributed
    w = current_world()
    init_distributed(w, timeout_s=60)
    with PreemptionFlag() as flag:
        if w.rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)   # only rank 1 is signalled
        stop = [flag.should_stop() for _ in range(3)]
    print(f"rank {w.rank} local {flag.local} agreed {stop}", flush=True)
    destroy_distributed()
    sys.exit(REQUEUE_EXIT_CODE if stop[0] and w.rank == 0 else 0)
""")


@pytest.mark.slow
def test_ranks_agree_and_launcher_keeps_requeue_code(tmp_path):
    """Rank 1 alone is signalled; both ranks agree to stop (all-reduce MAX over gloo), and
    rank 0's requeue exit code survives torchrun (plain torchrun would exit 1)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    r = subprocess.run([sys.executable, "-m", "hpc.launch", "--standalone", "--nproc-per-node", "2",
                        str(script)], env=_env(), capture_output=True, text=True, timeout=240)
    out = r.stdout + r.stderr
    assert "rank 0 local True agreed [True, True, True]" in out, out
    assert "rank 1 local True agreed [True, True, True]" in out, out
    assert r.returncode == REQUEUE_EXIT_CODE, out
    assert "hpc: rank 1/2 local 1" in out and "backend gloo launcher torchrun" in out


@pytest.mark.slow
def test_launcher_reports_plain_failure_as_1(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-m", "hpc.launch", "--standalone", "--nproc-per-node", "1",
                        str(script)], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "exit codes [3]" in r.stderr
