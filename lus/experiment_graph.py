"""An experiment's run graph, and what a launcher does with it, as pure functions.

An experiment plans its runs (`Job`s: a command, a run directory, the runs it reads); the
local launcher (`experiment_jobs.run_jobs`, processes on this machine) and the Slurm
launcher (`experiment_slurm.submit`, one batch job per run with `--dependency=afterok`)
both take the same graph and the same answers from here: which runs are left to do and
which of them each waits for, which runs a failure takes down with it, what state each
run is in, and how a run's stage (its family) maps to cluster resources. Nothing here
starts a process or reads a queue, so every rule is tested with facts given to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lus_dist.io.config import ConfigError

SKIPPED = -1      # the local launcher's exit code of a run a failure upstream kept from starting
STAGES = ("pretrain", "regstn", "cnnlstm", "report")   # a run's stage is its family

# a run's state as `lus experiment status` says it
DONE, RUNNING, PENDING, FAILED, CANCELLED, NOT_STARTED = (
    "done", "running", "pending", "failed", "cancelled", "not started")
STATE_ORDER = (DONE, RUNNING, PENDING, FAILED, CANCELLED, NOT_STARTED)
LIVE = {"PENDING": PENDING, "CONFIGURING": RUNNING, "RUNNING": RUNNING, "COMPLETING": RUNNING,
         "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING, "REQUEUE_FED": PENDING,
         "RESIZING": RUNNING, "SUSPENDED": RUNNING, "STOPPED": RUNNING, "SIGNALING": RUNNING,
         "STAGE_OUT": RUNNING}


@dataclass
class Resources:
    """One stage's share of a cluster: one torchrun per node, `procs_per_node` training
    processes under it (one per GPU on GPU nodes)."""
    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1          # per node: processes x (1 + data.num_workers)
    time: str = "04:00:00"
    partition: str = ""
    sbatch_args: list[str] = field(default_factory=list)   # anything else, e.g. --account=X

    def __post_init__(self) -> None:
        if min(self.nodes, self.procs_per_node, self.cpus_per_task) < 1 or self.gpus_per_node < 0:
            raise ConfigError(f"resources: nodes, procs_per_node and cpus_per_task must be >= 1 "
                              f"and gpus_per_node >= 0, got {self}")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ConfigError(f"resources: {self.procs_per_node} processes per node on "
                              f"{self.gpus_per_node} GPUs; one process per GPU at most")


@dataclass
class StageResources:
    """Per stage resources of `--launcher slurm` (`slurm.regstn.gpus_per_node=4` ...);
    the local launcher runs everything as one process per run."""
    pretrain: Resources = field(default_factory=Resources)
    regstn: Resources = field(default_factory=Resources)
    cnnlstm: Resources = field(default_factory=Resources)
    report: Resources = field(default_factory=lambda: Resources(time="01:00:00"))


def check_graph(jobs: list) -> None:
    """Distinct names, known dependencies, no cycle: a plan either launcher can carry out."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"run graph: duplicate run names {sorted({n for n in names if names.count(n) > 1})}")
    for j in jobs:
        unknown = [a for a in j.after if a not in set(names)]
        if unknown:
            raise ValueError(f"run graph: {j.name} reads unknown runs {unknown}")
    topological(jobs)


def topological(jobs: list) -> list:
    """Every run after the runs of the list it reads (a run outside the list: finished, or
    started already), otherwise in plan order."""
    order, left = [], list(jobs)
    while left:
        waiting = {j.name for j in left}
        ready = [j for j in left if not waiting & set(j.after)]
        if not ready:
            raise ValueError(f"run graph: a cycle among {sorted(waiting)}")
        order += ready
        done = {j.name for j in ready}
        left = [j for j in left if j.name not in done]
    return order


def to_launch(jobs: list, finished: set[str], live: dict[str, str] | None = None) -> list:
    """(run, the runs it waits for) for every run still to start, in an order that starts
    the read before the reader. A finished run is not rerun and satisfies its readers; a
    run `live` already (submitted earlier and still queued or running, name -> job id) is
    not submitted twice, its readers wait for that job."""
    live = live or {}
    return [(j, [a for a in j.after if a not in finished])
            for j in topological(jobs) if j.name not in finished and j.name not in live]


def dependants(jobs: list, failed: set[str]) -> dict[str, list[str]]:
    """run -> the failed runs it reads, directly or through other runs: what a failure
    takes down (the local launcher skips them, Slurm cancels them)."""
    roots: dict[str, set[str]] = {}
    for j in topological(jobs):
        if j.name in failed:
            continue
        r = set().union(*[({a} if a in failed else roots.get(a, set())) for a in j.after])
        if r:
            roots[j.name] = r
    return {n: sorted(r) for n, r in roots.items()}


def run_states(jobs: list, finished: set[str], slurm: dict[str, str]) -> dict[str, tuple[str, str]]:
    """name -> (state, why) from the facts: which runs have their summary.json, and the
    Slurm state of each run's last job (name -> JobState; absent: never submitted, or
    forgotten by Slurm). A run is done only by its summary, whatever Slurm says."""
    states: dict[str, tuple[str, str]] = {}
    for j in jobs:
        s = slurm.get(j.name, "")
        if j.name in finished:
            states[j.name] = (DONE, "")
        elif s in LIVE:
            states[j.name] = (LIVE[s], s.lower())
        elif s:
            why = {"FAILED": "", "COMPLETED": "completed, no summary.json"}.get(s, s.lower())
            states[j.name] = (FAILED, why)
        else:
            states[j.name] = (NOT_STARTED, "")
    # a cancelled job is a failure of its own only when nothing it reads failed (scancel)
    failed = {n for n, (st, _) in states.items() if st == FAILED and slurm.get(n) != "CANCELLED"}
    for name, roots in dependants(jobs, failed).items():
        if states[name][0] in (FAILED, NOT_STARTED, PENDING):   # a pending one never starts
            states[name] = (CANCELLED, f"reads {', '.join(roots)}, which failed")
    return states


def local_facts(codes: dict[str, int]) -> dict[str, str]:
    """The local launcher's exit codes as Slurm would state them, for `run_states`."""
    return {n: "CANCELLED" if c == SKIPPED else "FAILED" for n, c in codes.items() if c != 0}


def stage_of(job) -> str:
    return job.family if job.family in STAGES else "regstn"


def sbatch_argv(script: str, lus_args: list[str], res: Resources, name: str, log: str,
                env: dict[str, str], after_ok: list[str] = (), after_any: list[str] = ()) -> list[str]:
    """One run's `sbatch` command line. A run whose dependency fails is cancelled by Slurm
    (--kill-on-invalid-dep), never left pending; the stage's own flags come last and win."""
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--output={log}", f"--nodes={res.nodes}",
            "--ntasks-per-node=1", f"--cpus-per-task={res.cpus_per_task}", f"--time={res.time}"]
    argv += [f"--gpus-per-node={res.gpus_per_node}"] if res.gpus_per_node else []
    argv += [f"--partition={res.partition}"] if res.partition else []
    deps = ([f"afterok:{':'.join(after_ok)}"] if after_ok else []) + \
        ([f"afterany:{':'.join(after_any)}"] if after_any else [])
    argv += [f"--dependency={','.join(deps)}", "--kill-on-invalid-dep=yes"] if deps else []
    exports = {**env, "NPROC_PER_NODE": str(res.procs_per_node)}
    argv.append("--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in exports.items())]))
    return argv + list(res.sbatch_args) + [script, *lus_args]


def unfinished_text(states: dict[str, tuple[str, str]], logs: str) -> str:
    """The report's account of every run without a summary: its state and why."""
    rows = [f"- `{n}`: {st}" + (f" ({why})" if why else "") for n, (st, why) in states.items()
            if st != DONE]
    if not rows:
        return ""
    return ("## Runs that did not finish\n\n" + "\n".join(rows) +
            f"\n\nTheir logs are in `{logs}`; the tables above leave them out.\n")
