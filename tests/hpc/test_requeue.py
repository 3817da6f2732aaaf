"""The requeue decision (pure), its helpers, and slurm/common.sh's lus_step run by bash with a
stand-in step and a stand-in `scontrol` that records the requeue (the real Slurm runs of the
same path are in test_faults.py)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpc.requeue import (StepOutcome, newest_committed_step, read_markers, requeue_decision,
                         write_marker)
from hpc.signals import REQUEUE_EXIT_CODE

ROOT = Path(__file__).resolve().parents[2]

outcomes = st.builds(
    StepOutcome, exit_code=st.sampled_from([0, 1, 2, REQUEUE_EXIT_CODE, 137, 143]),
    usr1_forwarded=st.booleans(), markers=st.sampled_from([(), ("node1",), ("node1", "node2")]),
    finished=st.booleans(), restarts=st.integers(0, 12), max_requeues=st.integers(0, 12),
    step_before=st.none() | st.integers(0, 100), step_after=st.none() | st.integers(0, 100),
    progress_known=st.booleans())


@given(outcomes)
def test_decision_invariants(o):
    d = requeue_decision(o)
    asked = o.exit_code == REQUEUE_EXIT_CODE or o.usr1_forwarded or bool(o.markers)
    if d.requeue:   # only when asked, never a finished run, always within the cap
        assert asked and not o.finished and o.exit_code != 0 and o.restarts < o.max_requeues
        assert d.exit_code == 0
    else:
        assert d.exit_code != 0 or o.exit_code == 0 or o.finished
        assert "\n" not in d.message and d.message.startswith("lus: ")
    if o.finished or o.exit_code == 0:
        assert not d.requeue and d.exit_code == o.exit_code


@pytest.mark.parametrize("exit_code", [143, 137, 1])
def test_srun_code_hidden_by_kill_on_bad_exit_still_requeues(exit_code):
    """The two-node requeue race: node1 exited 75, node2 was terminated, srun said 143."""
    for o in (StepOutcome(exit_code, usr1_forwarded=True), StepOutcome(exit_code, markers=("node1",))):
        d = requeue_decision(o)
        assert d.requeue, d
    assert not requeue_decision(StepOutcome(exit_code)).requeue


def test_cap_and_progress_stops_say_why():
    capped = requeue_decision(StepOutcome(REQUEUE_EXIT_CODE, restarts=3, max_requeues=3))
    assert not capped.requeue and capped.exit_code == 1
    assert "already requeued 3 time(s)" in capped.message and "LUS_MAX_REQUEUES=3" in capped.message
    stuck = StepOutcome(REQUEUE_EXIT_CODE, restarts=1, step_before=40, step_after=40, progress_known=True)
    d = requeue_decision(stuck)
    assert not d.requeue and "no training progress since the last requeue" in d.message
    assert "step 40" in d.message
    # the first run may be signalled before its first checkpoint: one free requeue
    assert requeue_decision(StepOutcome(REQUEUE_EXIT_CODE, progress_known=True)).requeue
    moved = StepOutcome(REQUEUE_EXIT_CODE, restarts=1, step_before=40, step_after=44, progress_known=True)
    assert requeue_decision(moved).requeue


def test_finished_run_is_never_requeued():
    d = requeue_decision(StepOutcome(143, usr1_forwarded=True, finished=True))
    assert not d.requeue and d.exit_code == 143 and "had finished" in d.message


def test_newest_committed_step_skips_torn_and_temp(tmp_path):
    assert newest_committed_step(tmp_path / "missing") is None
    for name, commit in (("step-000000004", True), ("step-000000008", True), ("step-000000012", False),
                         (".tmp-step-000000016", True), ("step-12", True)):
        (tmp_path / name).mkdir()
        if commit:
            (tmp_path / name / "COMMIT").write_text("{}")
    assert newest_committed_step(tmp_path) == 8


def test_markers_round_trip(tmp_path):
    assert read_markers(tmp_path / "none") == () and write_marker(None, [75]) is None
    path = write_marker(tmp_path / "m", [75, -15])
    assert path is not None and read_markers(tmp_path / "m") == (os.uname().nodename,)


# ------------------------------------------------------------------ lus_step under bash

STEP = """#!/bin/bash
# stand-in for srun: ignore nothing, exit with $STEP_RC after $STEP_S s; optionally commit a
# checkpoint and leave a requeue marker as hpc.launch would
sleep "${STEP_S:-0.2}"
if [[ -n "${STEP_COMMIT:-}" ]]; then mkdir -p "$LUS_RUN_DIR/checkpoints/$STEP_COMMIT"; echo '{}' > "$LUS_RUN_DIR/checkpoints/$STEP_COMMIT/COMMIT"; fi
if [[ -n "${STEP_MARKER:-}" ]]; then mkdir -p "$LUS_REQUEUE_MARKER_DIR"; echo 75 > "$LUS_REQUEUE_MARKER_DIR/nodeX.1"; fi
exit "${STEP_RC:-0}"
"""
SCONTROL = """#!/bin/bash
echo "$*" >> "$SCONTROL_LOG"
"""


def run_lus_step(tmp_path: Path, **env: str) -> tuple[int, str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("fake_step", STEP), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    log = tmp_path / "scontrol.log"
    log.unlink(missing_ok=True)
    script = (f'source {ROOT}/slurm/common.sh; lus_init; export LUS_RUN_DIR="{tmp_path}/run"; '
              f'lus_step fake_step; echo "returned $?"')
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LUS_"))}
    full = {**base, "PATH": f"{bin_dir}:{base['PATH']}", "LUS_ROOT": str(ROOT), "LUS_PYTHON": sys.executable,
            "SLURM_JOB_ID": "42", "SCONTROL_LOG": str(log), **env}
    r = subprocess.run(["bash", "-c", script], env=full, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr, log.read_text() if log.exists() else ""


def test_lus_step_requeues_on_marker_whatever_srun_says(tmp_path):
    rc, out, calls = run_lus_step(tmp_path, STEP_RC="143", STEP_MARKER="1", STEP_COMMIT="step-000000004")
    assert rc == 0 and calls == "requeue 42\n", out
    assert "requeue marker from nodeX" in out and not (tmp_path / "run" / ".lus-requeue").exists()


def test_lus_step_plain_failure_is_returned(tmp_path):
    rc, out, calls = run_lus_step(tmp_path, STEP_RC="3")
    assert "returned 3" in out and calls == "", out


def test_lus_step_stops_without_progress_after_a_requeue(tmp_path):
    (tmp_path / "run" / "checkpoints" / "step-000000004").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-000000004" / "COMMIT").write_text("{}")
    rc, out, calls = run_lus_step(tmp_path, STEP_RC="75", SLURM_RESTART_COUNT="1")
    assert "returned 1" in out and calls == "", out
    assert "no training progress since the last requeue (newest committed checkpoint: step 4)" in out


def test_lus_step_cap(tmp_path):
    rc, out, calls = run_lus_step(tmp_path, STEP_RC="75", STEP_COMMIT="step-000000008",
                                  SLURM_RESTART_COUNT="2", LUS_MAX_REQUEUES="2")
    assert "returned 1" in out and calls == "" and "LUS_MAX_REQUEUES=2" in out, out


COUNTING_STEP = ("counting_step() { local n=0; trap 'n=$((n+1))' USR1; "
                 "while (( n < 2 )); do sleep 0.1; done; exit 75; }")


def run_usr1_script(tmp_path, body: str) -> tuple[str, str]:
    """Run `body` after sourcing slurm/common.sh (resend every 1 s, a fake scontrol that
    logs its calls) -> (output, scontrol calls). `counting_step` ignores the first USR1
    (as a trainer still starting up does) and exits 75 on the second."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "usr1.sh"
    script.write_text(f"source {ROOT}/slurm/common.sh; lus_init; LUS_USR1_RESEND_S=1\n"
                      f"{COUNTING_STEP}\n{body}\n")
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "scontrol").chmod(stat.S_IRWXU)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LUS_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", LUS_ROOT=str(ROOT), LUS_PYTHON=sys.executable,
               SLURM_JOB_ID="7", SCONTROL_LOG=str(tmp_path / "calls"))
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    calls = tmp_path / "calls"
    return r.stdout + r.stderr, calls.read_text() if calls.exists() else ""


def test_lus_step_forwards_usr1_until_the_step_ends(tmp_path):
    """USR1 reaches the shell once; the step ignores the first one and exits 75 on the
    second, resent by the shell."""
    out, calls = run_usr1_script(tmp_path, """(sleep 1; kill -USR1 $$) &
lus_step counting_step; echo "returned $?"
""")
    assert calls == "requeue 7\n", out
    assert "USR1 forwarded to the trainers" in out


def test_usr1_during_lus_doctor_is_kept_for_the_training_step(tmp_path):
    """The time-limit USR1 lands while the job's `lus doctor` step runs: the shell neither
    dies (bash's default for USR1) nor loses it; the training step gets it (and the resend)
    as soon as it starts, checkpoints, and the job requeues."""
    out, calls = run_usr1_script(tmp_path, """\
lus_torchrun_cmd() { LUS_CMD=(bash -c "kill -USR1 $$; sleep 0.5"); }   # the doctor step
lus_doctor regstn; echo "doctor returned $?"
lus_step counting_step; echo "returned $?"
""")
    assert "USR1 received during lus doctor" in out and "doctor returned 0" in out, out
    assert calls == "requeue 7\n", out
