"""How every `lus experiment` is carried out, whichever experiment and launcher: config ->
pack -> plan (the run graph) -> the local launcher's processes and the report, or the Slurm
launcher's jobs (the last one writes the report); and `lus experiment status`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lus_dist.io.config import ConfigError, load_config, save_config

from .experiment_graph import local_facts, run_states, unfinished_text
from .experiment_jobs import Experiment, run_jobs
from .experiment_slurm import write_plan


def status_main(argv: list[str]) -> int:
    from .experiment_slurm import SlurmError, status_text

    p = argparse.ArgumentParser(prog="lus experiment status", description="Which runs of an "
                                "experiment are done, running, pending, failed or cancelled "
                                "(a failed run's dependants), from the run directories and Slurm.",
                                epilog="example:\n  lus experiment status runs/pocus",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the experiment's --out folder")
    try:
        text, done = status_text(Path(p.parse_args(argv).out).resolve())
    except (FileNotFoundError, SlurmError) as exc:
        print(f"lus experiment status: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0 if done else 1


def run_experiment(exp: Experiment, args, command: str) -> int:
    """Config -> pack -> the plan's training runs -> report, for every experiment: a bad
    config or input folder is a usage error (2), a failed run makes the exit code 1. With
    the Slurm launcher the runs and the report are batch jobs (`--stage report` is the last
    one), and this returns once they are submitted."""
    t0 = time.time()
    overrides = list(args.overrides) + ([f"folds={args.folds}"] if args.folds else [])
    try:
        cfg = load_config(exp.config_cls, args.config, overrides)
        cfg.aggregator.validate()
        bad = exp.check(args)
    except (ConfigError, ValueError) as exc:
        print(f"lus experiment: {exc}", file=sys.stderr)
        return 2
    if bad:
        print(f"lus experiment: {bad}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if args.stage == "report":
        return _report_stage(exp, cfg, args, out, command)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "report" / "experiment.yaml")
    try:
        manifest = exp.prepare(cfg, args, out)
    except Exception as exc:  # ingest/pack errors name the file; show them plainly
        print(f"lus experiment: packing failed: {exc}", file=sys.stderr)
        return 1
    print(f"packed {manifest.n_videos} clips, {manifest.n_frames} frames in "
          f"{time.time() - t0:.0f} s", flush=True)
    jobs = exp.plan(cfg, args, out)
    write_plan(jobs, out)
    if args.launcher == "slurm":
        return _submit(cfg, args, jobs, out)
    reused = sum(j.done() for j in jobs)
    codes = run_jobs(jobs, cfg.parallel, out / "logs", cfg.keep_checkpoints)
    (out / "report" / "exit_codes.json").write_text(json.dumps(codes, indent=1))
    wall = f"{(time.time() - t0) / 60:.1f} min" + (
        f" ({reused} of {len(jobs)} training runs were finished by an earlier invocation and "
        "reused)" if reused else "")
    report = _write_report(exp, cfg, args, jobs, out, command, wall, manifest, local_facts(codes))
    print("\n" + report.read_text())
    print(f"\nreport: {report}\nwall time: {(time.time() - t0) / 60:.1f} min")
    return 0 if all(c == 0 for c in codes.values()) else 1


def _write_report(exp, cfg, args, jobs, out, command, wall, manifest, facts) -> Path:
    """The experiment's report, closed by the runs that did not finish and why."""
    report = exp.report(cfg, args, jobs, out, command, wall, manifest)
    states = run_states(jobs, {j.name for j in jobs if j.done()}, facts)
    with report.open("a") as fh:
        fh.write(("\n" + text) if (text := unfinished_text(states, str(out / "logs"))) else "")
    return report


def _submit(cfg, args, jobs, out: Path) -> int:
    from .experiment_slurm import SlurmError, submit

    report_args = ["experiment", *args.argv, "--stage", "report"]
    try:
        ids = submit(jobs, cfg.slurm, out, report_args, f"lus-{args.experiment}")
    except (SlurmError, ValueError) as exc:
        print(f"lus experiment: {exc}", file=sys.stderr)
        return 1
    skipped = len(jobs) + 1 - len(ids)
    for name, job_id in ids.items():
        print(f"submitted {name}: job {job_id}")
    print(f"{len(ids) - 1} runs and the report submitted to Slurm" +
          (f"; {skipped} runs finished or still queued from an earlier submission" if skipped else "")
          + f"\nwatch: lus experiment status {out}\nreport (when every run has ended): "
          f"{out / 'report' / 'report.md'}")
    return 0


def _report_stage(exp: Experiment, cfg, args, out: Path, command: str) -> int:
    """The Slurm launcher's last job: the report of whatever the runs left."""
    from lus_dist.shards.manifest import Manifest

    from .experiment_slurm import slurm_facts

    jobs = exp.plan(cfg, args, out)
    job = os.environ.get("SLURM_JOB_ID", "")
    wall = f"runs as Slurm jobs (report job {job}; run times in each run's summary.json)"
    report = _write_report(exp, cfg, args, jobs, out, command, wall, Manifest.load(out / "shards"),
                           slurm_facts(out, jobs))
    print(f"report: {report}")
    return 0 if all(j.done() for j in jobs) else 1


def argv_without(argv: list[str], option: str) -> list[str]:
    """argv without `option VALUE` / `option=VALUE`."""
    out, skip = [], False
    for a in argv:
        if not skip and a != option and not a.startswith(option + "="):
            out.append(a)
        skip = a == option
    return out
