"""Requeue or not: what the batch shell decides once its job step has ended.

After a step, ``slurm/common.sh`` asks ``python -m hpc.requeue decide`` instead of trusting
srun's single exit code: with ``--kill-on-bad-exit`` the first node whose launcher exits 75
gets the others terminated (exit 143 or worse), so srun's code depends on which node exited
first. A requeue counts as asked for if the shell forwarded USR1 itself, or srun exited 75,
or any node's launcher left a marker file (``hpc.launch`` writes one in
``LUS_REQUEUE_MARKER_DIR``, on storage every node sees).

Two stops keep a job that cannot finish from looping: ``LUS_MAX_REQUEUES`` (submitit caps its
timeouts the same way) and "no training progress since the last requeue" (the newest
committed checkpoint step did not advance during a requeued run).
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpc.signals import REQUEUE_EXIT_CODE

DEFAULT_MAX_REQUEUES = 10
_STEP_DIR = re.compile(r"^step-(\d{9})$")     # the engine's checkpoints/step-NNNNNNNNN/COMMIT


@dataclass(frozen=True)
class StepOutcome:
    """What the batch shell knows once its job step has ended."""

    exit_code: int
    usr1_forwarded: bool = False
    markers: tuple[str, ...] = ()       # hosts whose launcher asked for a requeue
    finished: bool = False              # the run wrote its summary during this step
    restarts: int = 0                   # SLURM_RESTART_COUNT of this run
    max_requeues: int = DEFAULT_MAX_REQUEUES
    step_before: int | None = None      # newest committed checkpoint step at the start
    step_after: int | None = None       # ... and at the end
    progress_known: bool = False        # False: no run dir, so no progress check


@dataclass(frozen=True)
class Decision:
    requeue: bool
    exit_code: int       # the batch shell's exit code when it does not requeue
    message: str         # one line for the job log


def _why(o: StepOutcome) -> str:
    parts = [f"step exit {o.exit_code}"]
    if o.usr1_forwarded:
        parts.append("USR1 forwarded to the trainers")
    if o.markers:
        parts.append("requeue marker from " + ",".join(sorted(set(o.markers))))
    return "; ".join(parts)


def _made_progress(o: StepOutcome) -> bool:
    if o.step_after is None:
        return False
    return o.step_before is None or o.step_after > o.step_before


def requeue_decision(o: StepOutcome) -> Decision:
    """Requeue, or exit with which code and why. Pure, so every case has a test.

    A finished run is never requeued (a late USR1 may land after the last checkpoint). A cap
    on requeues (submitit caps its timeouts the same way) and a "no progress since the last
    requeue" stop keep a job that cannot finish from looping forever; the first run gets one
    requeue without progress (it may be signalled before its first checkpoint).
    """
    asked = o.exit_code == REQUEUE_EXIT_CODE or o.usr1_forwarded or bool(o.markers)
    if o.finished or o.exit_code == 0:
        note = "" if not asked else " (a requeue was asked for, but the run had finished)"
        return Decision(False, o.exit_code, f"lus: step finished with exit code {o.exit_code}{note}")
    if not asked:
        return Decision(False, o.exit_code, f"lus: step finished with exit code {o.exit_code}")
    if o.restarts >= o.max_requeues:
        return Decision(False, 1, f"lus: not requeueing: the job was already requeued {o.restarts} "
                                  f"time(s), the cap is LUS_MAX_REQUEUES={o.max_requeues} ({_why(o)})")
    if o.progress_known and o.restarts >= 1 and not _made_progress(o):
        last = "none" if o.step_after is None else f"step {o.step_after}"
        return Decision(False, 1, f"lus: not requeueing: no training progress since the last requeue "
                                  f"(newest committed checkpoint: {last}) ({_why(o)})")
    return Decision(True, 0, f"lus: requeue asked for ({_why(o)}); requeue "
                             f"{o.restarts + 1} of at most {o.max_requeues}")


def newest_committed_step(ckpt_dir: str | Path) -> int | None:
    """Step of the newest checkpoint with a COMMIT marker (torn and temp dirs do not count)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return None
    steps = [int(m[1]) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "COMMIT").is_file()]
    return max(steps, default=None)


def read_markers(marker_dir: str | Path | None) -> tuple[str, ...]:
    """Hosts that left a requeue marker (file name ``<host>.<pid>``) in ``marker_dir``."""
    if not marker_dir or not Path(marker_dir).is_dir():
        return ()
    return tuple(sorted(p.name.rsplit(".", 1)[0] for p in Path(marker_dir).iterdir()))


def write_marker(marker_dir: str | Path | None, exitcodes: list[int]) -> Path | None:
    """Record on shared storage that this node's workers asked for a requeue."""
    if not marker_dir:
        return None
    path = Path(marker_dir) / f"{socket.gethostname()}.{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"exit codes {exitcodes}\n")
    except OSError as exc:       # the exit code still carries the request
        print(f"hpc.launch: cannot write requeue marker {path}: {exc}", file=sys.stderr)
        return None
    return path


def _run_finished(summary: str | None, since: float) -> bool:
    """The run wrote its summary (the engine's last act) after the step started."""
    try:
        return bool(summary) and Path(summary).stat().st_mtime >= since
    except OSError:
        return False


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.requeue", description=(
        "slurm/common.sh helpers: `newest-step DIR` prints the newest committed checkpoint step "
        "(or none); `decide ...` prints `requeue` or `exit N` and logs why on stderr"))
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("newest-step").add_argument("checkpoints")
    d = sub.add_parser("decide")
    d.add_argument("--exit-code", type=int, required=True)
    d.add_argument("--usr1", action="store_true", help="the shell forwarded USR1")
    d.add_argument("--marker-dir")
    d.add_argument("--restarts", type=int, default=0)
    d.add_argument("--max-requeues", type=int, default=DEFAULT_MAX_REQUEUES)
    d.add_argument("--checkpoints", help="the run's checkpoints/ (enables the progress check)")
    d.add_argument("--step-before", default="none")
    d.add_argument("--summary", help="the run's summary.json")
    d.add_argument("--started", type=float, default=0.0, help="step start, seconds since epoch")
    args = p.parse_args(argv)
    if args.action == "newest-step":
        step = newest_committed_step(args.checkpoints)
        print("none" if step is None else step)
        return 0
    outcome = StepOutcome(
        exit_code=args.exit_code, usr1_forwarded=args.usr1, markers=read_markers(args.marker_dir),
        finished=_run_finished(args.summary, args.started or time.time()),
        restarts=args.restarts, max_requeues=args.max_requeues,
        step_before=None if args.step_before == "none" else int(args.step_before),
        step_after=newest_committed_step(args.checkpoints) if args.checkpoints else None,
        progress_known=bool(args.checkpoints))
    decision = requeue_decision(outcome)
    print(decision.message, file=sys.stderr, flush=True)
    print("requeue" if decision.requeue else f"exit {decision.exit_code}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
