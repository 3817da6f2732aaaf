"""The Slurm launcher of `lus experiment` and the `status` view of an experiment directory.

`submit` hands the run graph to Slurm and returns: one batch job per run still to do
(`slurm/experiment_run.sh`, which runs the run's `lus train` under srun + torchrun with the
training scripts' USR1 / requeue / exact resume), each with `--dependency=afterok` on the
jobs of the runs it reads, and a last job, after every run has ended (`afterany`), that
writes the report. Slurm schedules, cancels the dependants of a failed run
(`--kill-on-invalid-dep=yes`) and requeues; nothing here waits for a job. Submitting again
skips runs that finished (their summary.json) and runs whose job is still queued or
running, and makes the new jobs wait for the latter.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .experiment_graph import (LIVE, STATE_ORDER, StageResources, local_facts, run_states,
                               sbatch_argv, stage_of, to_launch)
from .experiment_jobs import Job, log_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "experiment_run.sh"
JOBS_FILE = "slurm_jobs.json"     # run name (and "report") -> its last Slurm job id
PLAN_FILE = "plan.json"           # the run graph, for `lus experiment status`


class SlurmError(RuntimeError):
    """A Slurm client failed (not on a cluster, a refused option); said in one line."""


def lus_args(job: Job) -> list[str]:
    """A run's command as arguments of `lus`: what the batch script runs under torchrun."""
    if job.cmd[1:3] != ["-m", "lus"]:
        raise ValueError(f"{job.name}: not a `lus` command: {shlex.join(job.cmd)}")
    return job.cmd[3:]


def write_plan(jobs: list[Job], out: Path) -> None:
    """The graph as it was planned, so `status` needs neither the config nor the data."""
    plan = [{"name": j.name, "family": j.family, "run_dir": str(j.run_dir), "after": j.after}
            for j in jobs]
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / PLAN_FILE).write_text(json.dumps(plan, indent=1))


def read_plan(out: Path) -> list[Job]:
    path = out / "report" / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not an experiment directory, or one "
                                "that `lus experiment` has not planned yet)")
    return [Job(p["name"], p["family"], Path(p["run_dir"]), [], after=p["after"])
            for p in json.loads(path.read_text())]


def _client(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: not found (no Slurm client on this machine)") from None
    if r.returncode != 0:
        raise SlurmError(f"{shlex.join(argv[:2])} ... exited {r.returncode}: "
                         f"{(r.stderr.strip().splitlines() or [''])[-1]}")
    return r.stdout


def job_states(ids: list[str]) -> dict[str, str]:
    """Slurm job id -> state: squeue for jobs the controller still holds (queued, running,
    or recently ended), sacct for older ones where accounting is on; unknown ids left out."""
    if not ids:
        return {}
    states = {}
    try:
        out = _client(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T"])
        states = dict(line.split()[:2] for line in out.splitlines() if line.strip())
    except SlurmError:
        pass              # squeue refuses a list holding one id it no longer knows
    rest = [i for i in ids if i not in states]
    if rest:
        try:
            out = _client(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(rest)])
            states.update((i, s.split()[0]) for i, s in
                          (line.split("|")[:2] for line in out.splitlines() if "|" in line))
        except SlurmError:
            pass          # accounting off (e.g. `lus cluster`): those jobs read as unknown
    if len(rest) == len(ids) > 1:      # squeue refused the list: one id at a time
        for i in ids:
            states.update(job_states([i]) if i not in states else {})
    return states


def slurm_facts(out: Path, jobs: list[Job]) -> dict[str, str]:
    """run name -> the Slurm state of its last job; without Slurm jobs, the local launcher's
    exit codes read as Slurm would say them."""
    recorded = _read_ids(out)
    if recorded:
        by_id = job_states(sorted({recorded[j.name] for j in jobs if j.name in recorded}))
        return {n: by_id[i] for n, i in recorded.items() if i in by_id}
    codes_file = out / "report" / "exit_codes.json"
    return local_facts(json.loads(codes_file.read_text()) if codes_file.is_file() else {})


def submit(jobs: list[Job], resources: StageResources, out: Path, report_args: list[str],
           tag: str) -> dict[str, str]:
    """sbatch every run still to do and the report job; run name -> job id of this round."""
    if not SCRIPT.is_file():
        raise SlurmError(f"{SCRIPT}: no such file (the launcher needs the project's slurm/)")
    recorded = _read_ids(out)
    states = job_states(sorted({recorded[j.name] for j in jobs if j.name in recorded}))
    live = {j.name: recorded[j.name] for j in jobs
            if j.name in recorded and states.get(recorded[j.name]) in LIVE}
    finished = {j.name for j in jobs if j.done()}
    ids, new = dict(live), {}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {"LUS_ROOT": str(ROOT), "LUS_PYTHON": sys.executable}
    try:     # what was submitted is recorded even when a later sbatch is refused
        for job, waits in to_launch(jobs, finished, live):
            argv = sbatch_argv(str(SCRIPT), lus_args(job), getattr(resources, stage_of(job)),
                               f"{tag}:{job.name}", str(log_path(out / "logs", job)),
                               {**env, "RUN_DIR": str(job.run_dir)}, [ids[a] for a in waits])
            ids[job.name] = new[job.name] = _client(argv).strip().split(";")[0]
        report = sbatch_argv(str(SCRIPT), report_args, resources.report, f"{tag}:report",
                             str(out / "logs" / "report.out"), {**env, "LUS_PLAIN": "1"},
                             after_any=[ids[j.name] for j in jobs if j.name in ids])
        new["report"] = _client(report).strip().split(";")[0]
    finally:
        _write_ids(out, {**recorded, **new})
    return new


def status_text(out: Path) -> tuple[str, bool]:
    """The status table of an experiment directory, and whether every run is done."""
    jobs = read_plan(out)
    states = run_states(jobs, {j.name for j in jobs if j.done()}, slurm_facts(out, jobs))
    ids = _read_ids(out)
    width = max(len(j.name) for j in jobs)
    lines = [f"{'run':<{width}}  {'state':<11}  {'job':>8}  why"]
    for j in jobs:
        st, why = states[j.name]
        lines.append(f"{j.name:<{width}}  {st:<11}  {ids.get(j.name, '-'):>8}  {why}".rstrip())
    counts = [(sum(1 for v, _ in states.values() if v == s), s) for s in STATE_ORDER]
    lines.append(", ".join(f"{n} {s}" for n, s in counts if n))
    if "report" in ids:
        rs = job_states([ids["report"]]).get(ids["report"], "unknown to Slurm")
        lines.append(f"report job {ids['report']}: {rs.lower()}")
    return "\n".join(lines), all(s == "done" for s, _ in states.values())


def _read_ids(out: Path) -> dict[str, str]:
    path = out / "report" / JOBS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_ids(out: Path, ids: dict[str, str]) -> None:
    (out / "report").mkdir(parents=True, exist_ok=True)
    tmp = out / "report" / (JOBS_FILE + ".tmp")
    tmp.write_text(json.dumps(ids, indent=1))
    os.replace(tmp, out / "report" / JOBS_FILE)
