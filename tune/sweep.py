"""Tuner setup, resume, loud failure and the sweep's outputs.

Ray's `Tuner.fit()` returns normally when trials crash, so `run_sweep` callers must
check `trial_errors(grid)`; `lus tune` exits non-zero when it is not empty.
Outputs sit beside Ray's own experiment state in `<storage>/<name>/`: `results.csv`
(one row per trial), `best.yaml` (the winning config in the exact form the family's
command reads), `best.json` (score, trial, command) and `metric_vs_trial.png`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lus_dist.io.config import save_config
from tune.spaces import SearchSpace, build_config, grid_size, to_ray, with_grid

SCHEDULERS = ("asha", "pbt", "fifo")
MAX_FAILURES_ENV = "LUS_TUNE_MAX_FAILURES"


def default_max_failures() -> int:
    """Retries of a failed trial (Ray's FailureConfig.max_failures): 0 unless the environment
    says otherwise. slurm/tune.sh sets 2, where a Ray node can die under a trial; on one
    machine a failure is a bug and retrying it only hides it."""
    raw = os.environ.get(MAX_FAILURES_ENV, "0")
    try:
        value = int(raw)
    except ValueError:
        raise SweepError(f"{MAX_FAILURES_ENV}={raw!r}: expected an integer (retries per trial)") from None
    if value < -1:
        raise SweepError(f"{MAX_FAILURES_ENV}={value}: expected -1 (retry forever) or >= 0")
    return value
SEARCHERS = ("random", "grid", "optuna")


DEFAULT_TRIALS = 16
OUTPUTS = ("quiet", "lines", "verbose")   # summary only | + a line per trial | + Ray's tables
SWEEP_FILE = "lus_sweep.json"             # what a sweep was started with, for --resume


@dataclass(frozen=True)
class SweepOptions:
    trials: int | None = None   # None: DEFAULT_TRIALS for a new sweep, as started on --resume
    scheduler: str = "asha"
    search: str = "random"
    storage: str = "runs/tune"
    name: str = "sweep"
    resume: bool = False
    max_concurrent: int | None = None
    seed: int | None = 0
    grace_period: int = 1
    reduction_factor: int = 2
    # Reusing trial actors halves a sweep of cheap trials; a Ray Train driver cannot be
    # reset in place (Ray refuses and fails the next trial), so those families turn it off.
    reuse_actors: bool = True
    output: str = "lines"
    max_failures: int = field(default_factory=default_max_failures)

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage).resolve() / self.name


class SweepError(RuntimeError):
    """The sweep could not start, or finished with failed trials."""


def make_scheduler(opts: SweepOptions, space: SearchSpace):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if opts.scheduler == "asha":
        # ASHA stops every trial that reaches max_t, i.e. inside its last report, before
        # the engine writes its test scores and predictions: one past the last report
        # lets trials finish on their own. One-report trials just run.
        grace = max(1, min(opts.grace_period, space.max_t))
        return ASHAScheduler(time_attr="training_iteration", max_t=space.max_t + 1,
                             grace_period=grace, reduction_factor=opts.reduction_factor)
    if opts.scheduler == "pbt":
        if space.max_t < 2:
            raise SweepError(f"{space.source}: PBT perturbs between reports, but max_t is "
                             f"{space.max_t}; use asha/fifo or a multi-epoch family")
        return PopulationBasedTraining(time_attr="training_iteration",
                                       perturbation_interval=max(1, space.max_t // 4),
                                       hyperparam_mutations=to_ray(space))
    return FIFOScheduler()


def make_searcher(opts: SweepOptions, space: SearchSpace):
    """Random/grid sampling is Ray's BasicVariantGenerator, seeded for reproducible sweeps."""
    if opts.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=opts.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=opts.seed)


def param_space(opts: SweepOptions, space: SearchSpace) -> tuple[dict[str, Any], int, int]:
    """Ray param_space, num_samples and the trials that makes: a grid runs each point once,
    `trials` times over."""
    trials = opts.trials or DEFAULT_TRIALS
    if opts.search == "grid":
        grid = with_grid(space)
        samples = max(1, trials // grid_size(grid))
        return to_ray(grid), samples, samples * grid_size(grid)
    return to_ray(space), trials, trials


def build_tuner(trainable: Callable, space: SearchSpace, opts: SweepOptions,
                callbacks: list | None = None):
    """A fresh Tuner, or the restored one when `--resume` finds a previous run."""
    from ray import tune

    path = opts.experiment_dir
    if opts.resume and tune.Tuner.can_restore(str(path)):
        total = resumed_trials(path, opts.trials)
        print(f"lus tune: resuming {path}" + (f" ({total} trials" if total else " (")
              + "; finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        set_output(tuner, opts, output_callbacks(opts, space, total) + (callbacks or []))
        return tuner
    if path.exists() and any(path.iterdir()):
        if not opts.resume:
            raise SweepError(f"{path} already holds a sweep; pass --resume to continue it "
                             f"or --name for a new one")
        raise SweepError(f"{path} exists but holds no restorable Tune state; move it away")
    pspace, samples, total = param_space(opts, space)
    path.mkdir(parents=True)
    (path / SWEEP_FILE).write_text(json.dumps({"trials": total}) + "\n")
    tune_cfg = tune.TuneConfig(
        metric=space.metric, mode=space.mode, num_samples=samples,
        scheduler=make_scheduler(opts, space), search_alg=make_searcher(opts, space),
        max_concurrent_trials=opts.max_concurrent, reuse_actors=opts.reuse_actors)
    run_cfg = tune.RunConfig(storage_path=str(path.parent), name=path.name,
                             verbose=ray_verbosity(opts),
                             failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                             callbacks=output_callbacks(opts, space, total) + (callbacks or [])
                             or None)
    return tune.Tuner(trainable, param_space=pspace, tune_config=tune_cfg, run_config=run_cfg)


def resumed_trials(path: Path, asked: int | None) -> int | None:
    """How many trials the sweep at `path` was started with (None: not recorded). Ray
    continues a sweep as it was started, so a different --trials is an error, not ignored."""
    try:
        total = int(json.loads((path / SWEEP_FILE).read_text())["trials"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if asked is not None and asked != total:
        raise SweepError(f"{path} is a sweep of {total} trials and --resume continues it as it "
                         f"was started; for {asked} trials start a new one with --name")
    return total


def ray_verbosity(opts: SweepOptions) -> int:
    """Ray's own output: its tables only with --verbose."""
    return 1 if opts.output == "verbose" else 0


def choose_output_engine(opts: SweepOptions) -> None:
    """Ray's output engine for this driver: its current one for --verbose; otherwise the
    legacy one (RAY_AIR_NEW_OUTPUT=0), which prints nothing at verbosity 0, where the
    current one still prints its experiment header."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if opts.output == "verbose" else "0"


def output_callbacks(opts: SweepOptions, space: SearchSpace, total: int | None) -> list:
    if opts.output != "lines":
        return []
    from tune.progress import TrialLines

    return [TrialLines(space.metric, space.mode, total or param_space(opts, space)[2])]


def set_output(tuner, opts: SweepOptions, callbacks: list) -> None:
    """This invocation's output settings on a restored sweep: Ray restores the run config
    the sweep was started with (Tuner.restore takes none), its verbosity and callbacks
    included, which would ignore --verbose/--quiet on --resume."""
    run_cfg = tuner._local_tuner.get_run_config()
    run_cfg.verbose = ray_verbosity(opts)
    run_cfg.callbacks = callbacks or None


def trial_errors(grid) -> list[str]:
    """One line per failed trial: the exception's last line and where the full traceback
    is (Ray's fit() does not raise for failed trials)."""
    out = []
    for result in grid:
        if result.error is not None:
            lines = str(result.error).strip().splitlines() or [type(result.error).__name__]
            out.append(f"{lines[-1]}\n    traceback: {Path(result.path or '?') / 'error.txt'}")
    return out


def results_frame(grid, space: SearchSpace):
    """One row per trial (last report), ordered by trial id, params as plain columns."""
    df = grid.get_dataframe()
    df = df.rename(columns={c: c[len("config/"):] for c in df.columns if c.startswith("config/")})
    keep = ["trial_id", space.metric, "training_iteration", "time_total_s",
            *space.params.keys()]
    rest = [c for c in df.columns if c not in keep and c != "logdir"]
    cols = [c for c in keep if c in df.columns] + rest
    return df[cols].sort_values("trial_id").reset_index(drop=True)


def best_trial(grid, space: SearchSpace):
    ok = [r for r in grid if r.error is None and r.metrics and space.metric in r.metrics]
    if not ok:
        raise SweepError(f"no trial reported {space.metric!r}; nothing to write")
    return grid.get_best_result(metric=space.metric, mode=space.mode, scope="last",
                                filter_nan_and_inf=True)


def write_outputs(grid, space: SearchSpace, cls: type, base: dict[str, Any],
                  out_dir: Path, command: str, grade=None) -> dict[str, Path]:
    """results.csv, best.yaml, best.json and metric_vs_trial.png in `out_dir`. `grade`
    (aggregator with --test-predictions): best config -> its scores on unseen videos."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = results_frame(grid, space)
    paths = {"csv": out_dir / "results.csv", "best": out_dir / "best.yaml",
             "json": out_dir / "best.json", "plot": out_dir / "metric_vs_trial.png"}
    df.to_csv(paths["csv"], index=False)
    best = best_trial(grid, space)
    params = {k: best.config[k] for k in space.params}
    best_cfg = build_config(cls, base, params, where="best trial")
    save_config(best_cfg, paths["best"])
    summary = {"metric": space.metric, "mode": space.mode,
               "value": float(best.metrics[space.metric]),
               "trial_id": best.metrics.get("trial_id"), "params": _jsonable(params),
               "trials": int(len(df)), "reproduce": command.format(best=paths["best"]),
               **unselected_scores(out_dir, best.metrics.get("trial_id"), space,
                                   graded=None if grade is None else grade(best_cfg))}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    plot_metric(df, space, paths["plot"])
    return paths


def unselected_scores(out_dir: Path, trial_id: str | None, space: SearchSpace,
                      graded: dict | None = None) -> dict[str, Any]:
    """What the winner's `value` was selected on, and its scores on data no trial was
    ranked by: an engine trial's run dir holds summary.json with the split that picked its
    epoch (`best_selected_on`, held-out training patients by default) and its test scores.
    The aggregator sweep ranks on the folds it reports: say so rather than imply a test;
    `graded` is the chosen config's scores on --test-predictions when they were given."""
    if space.family == "aggregator":
        selected = {"selected_on": "the folds of --predictions (value is the selection score, "
                                   "optimistic; --test-predictions grades the chosen config)"}
        if graded is None:
            return {**selected, "test": None}
        return {**selected, "test": _jsonable(graded),
                "test_note": "the chosen config fitted on all of --predictions, graded "
                             "once on --test-predictions; no trial saw them"}
    summary_path = out_dir / "runs" / str(trial_id) / "summary.json"
    if not summary_path.is_file():
        return {"selected_on": None, "test": None,
                "test_note": f"{summary_path}: not written (the trial did not finish)"}
    summary = json.loads(summary_path.read_text())
    return {"selected_on": f"{space.metric} on {summary.get('best_selected_on')}",
            "test": summary.get("test"),
            "test_note": "the chosen trial's test scores; no trial was ranked on them"}


def _jsonable(value: Any) -> Any:
    """numpy scalars (Ray's samplers, sklearn's metrics) -> Python, through nested dicts."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value.item() if hasattr(value, "item") else value


def plot_metric(df, space: SearchSpace, path: Path) -> None:
    """Each trial's final metric in trial order, with the running best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    y = df[space.metric].to_numpy(dtype=float)
    best = np.fmax.accumulate(y) if space.mode == "max" else np.fmin.accumulate(y)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(1, len(y) + 1)
    ax.plot(x, y, "o", ms=4, label="trial")
    ax.plot(x, best, "-", label=f"running {space.mode}")
    ax.set_xlabel("trial")
    ax.set_ylabel(space.metric)
    ax.set_title(f"{space.family} sweep ({len(y)} trials)")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
