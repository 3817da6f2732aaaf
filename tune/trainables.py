"""One Tune function trainable per family, plus the resources each trial asks for.

Every trial receives only its sampled params from Ray (that is what lands in the results
table); the fixed part of the config travels in a `TrialContext` through
`tune.with_parameters`, and the typed config is rebuilt with `tune.spaces.build_config`
so a trial runs exactly what `best.yaml` will say.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray import tune as ray_tune

from tune.ray_env import TRAIN_DRIVER_RESOURCE
from tune.spaces import build_config


@dataclass(frozen=True)
class TrialContext:
    family: str
    base: dict[str, Any]
    metric: str
    predictions: str | None = None   # aggregator: frame-predictions file
    test_predictions: str | None = None   # aggregator: graded once, after the sweep
    protocol: str = "kfold"
    k: int = 5
    seed: int = 0
    num_workers: int = 2             # regstn/seg: Ray Train workers per trial
    cpus_per_worker: float = 1.0
    gpus: float = 0.0                # per in-process trial, or per Ray Train worker
    experiment_dir: str = ""         # <storage>/<name>: trial run dirs go under it


# ---------------------------------------------------------------- aggregator
def aggregator_config_cls() -> type:
    from lus_dist.aggregator.train import AggregatorConfig

    return AggregatorConfig


@functools.lru_cache(maxsize=4)
def _videos(path: str):
    """Read and pad once per worker process; with reuse_actors hundreds of trials share it."""
    from lus_dist.aggregator.data import pad_videos, read_predictions

    return pad_videos(read_predictions(path))


def aggregator_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Score one aggregator config by mean weighted F1 over patient-level folds."""
    from ray import tune

    from lus_dist.aggregator.train import run_protocol

    cfg = build_config(aggregator_config_cls(), ctx.base, config)
    result = run_protocol(_videos(ctx.predictions), cfg, protocol=ctx.protocol, k=ctx.k,
                          seed=ctx.seed)
    tune.report(aggregator_metrics(result))


def aggregator_metrics(result: Any) -> dict[str, float]:
    """mean_weighted_f1 (the sweep's metric) plus each method's fold means, so the results
    table shows the baselines beside every trial."""
    out = {"mean_weighted_f1": float(result.mean_weighted_f1)}
    for row in result.summary():
        for key, value in row.items():
            if key.endswith("_mean"):
                out[f"{row['method']}/{key}"] = float(value)
    return out


# ---------------------------------------------------------------- engine families
def engine_config_cls(family: str) -> type:
    from lus_dist.engine import registry as families

    return families.get(family).config_cls


def is_ray_train(family: str) -> bool:
    """Whether a trial of this family is a Ray Train group (several ranks) or one process."""
    from lus_dist.engine import registry as families

    return family != "aggregator" and families.get(family).ray_train


class RayManagedStop:
    """The run's stop flag under Ray: no signal handlers (Ray runs trials off the main
    thread, where Python refuses them), and Ray, not Slurm, stops and restarts trials."""

    def __enter__(self) -> "RayManagedStop":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def should_stop(self) -> bool:
        return False


def run_engine(family: str, cfg: Any, run_dir: Path,
               report: Callable[[dict[str, float]], None]) -> None:
    """One training run of the engine, resuming its own checkpoints after a restart; every
    epoch's validation metrics go to `report` on every rank (Ray Train needs all ranks to
    report, and raises from it when a scheduler stops the trial, which ends the run)."""
    from lus_dist.engine import registry as families
    from lus_dist.engine import RunHooks, run

    hooks = RunHooks(on_epoch_end=lambda epoch, metrics: report(
        {**{k: float(v) for k, v in metrics.items()}, "epoch": int(epoch)}),
        stop_flag=RayManagedStop)
    code = run(families.make(family, cfg), run_dir, resume="auto", hooks=hooks)
    if code != 0:
        raise RuntimeError(f"lus train {family} exited {code} (run dir {run_dir})")


def _trial_run_dir(ctx: TrialContext) -> Path:
    """On the sweep's shared storage, so every node (and a resumed sweep) finds it."""
    from ray import tune

    return Path(ctx.experiment_dir) / "runs" / tune.get_context().get_trial_id()


def in_process_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """A single-process family (the CNN-LSTM) in the trial process, reporting validation
    metrics each epoch."""
    from ray import tune

    cfg = build_config(engine_config_cls(ctx.family), ctx.base, config)
    run_engine(ctx.family, cfg, _trial_run_dir(ctx), with_gpu_ids(tune.report))


def with_gpu_ids(report: Callable[[dict], None]) -> Callable[[dict], None]:
    """Each report also says which of Ray's GPUs the trial holds ("" on CPU), so the
    results table shows where every trial ran."""
    import ray

    ids = ",".join(str(i) for i in ray.get_gpu_ids())
    return lambda metrics: report({**metrics, "trial_gpus": ids})


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: Ray has set RANK/WORLD_SIZE/MASTER_* and joined the process group,
    which the engine's init_distributed then reuses."""
    import ray.train

    from lus_dist.io.config import from_dict

    family = loop_config["family"]
    cfg = from_dict(engine_config_cls(family), loop_config["config"], "trial config")
    run_dir = Path(loop_config["run_dir"])
    if ray.train.get_context().get_world_rank() == 0:
        from ray.util import get_current_placement_group

        pg = get_current_placement_group()
        if pg is not None:   # for ReleaseTrainGroups
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            _pg_file(run_dir).write_text(pg.id.hex())
    run_engine(family, cfg, run_dir, ray.train.report)


def distributed_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """A Ray Train family (Reg-STN, segmentation): the trial drives a TorchTrainer with `num_workers` ranks;
    rank 0's per-epoch reports reach Tune through TuneReportCallback."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from lus_dist.io.config import to_dict

    cfg = build_config(engine_config_cls(ctx.family), ctx.base, config)
    run_dir = _trial_run_dir(ctx)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"family": ctx.family, "config": to_dict(cfg), "run_dir": str(run_dir)},
        scaling_config=ScalingConfig(num_workers=ctx.num_workers, use_gpu=ctx.gpus > 0,
                                     resources_per_worker=worker_resources(ctx)),
        torch_config=TorchConfig(init_method="env", timeout_s=cfg.dist.timeout_s),
        run_config=RunConfig(name="train", storage_path=str(run_dir.parent / f"{run_dir.name}-ray"),
                             callbacks=[TuneReportCallback()],
                             # fail the trial loudly; Tune (--resume) restarts it, and the
                             # engine resumes from the run dir's checkpoints
                             failure_config=FailureConfig(max_failures=0,
                                                          controller_failure_limit=0)))
    trainer.fit()


def worker_resources(ctx: TrialContext) -> dict[str, float]:
    """What each Ray Train worker asks for: explicit GPUs, never `cuda.is_available()` in a
    driver that holds none (that silently ran GPU sweeps on CPU)."""
    return {"CPU": ctx.cpus_per_worker, **({"GPU": ctx.gpus} if ctx.gpus > 0 else {})}


def _pg_file(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.placement_group"


class ReleaseTrainGroups(ray_tune.Callback):
    """Tune callback: free the worker placement group of each finished Reg-STN/seg trial.

    Ray Train's controller frees its group only on a clean exit. When ASHA stops a trial
    (or it fails) Tune kills the trial's actor, the controller dies with it, and the group
    stays reserved: Ray's own cleaner asks the dashboard's state API, which we do not run.
    The next trial would then wait forever for CPUs. Rank 0 records its group's id in the
    run dir, and this callback (in the sweep driver) removes exactly that group.
    """

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial.trial_id)

    def _release(self, trial_id: str) -> None:
        import ray
        from ray.util.placement_group import PlacementGroup, placement_group_table

        path = _pg_file(Path(self.experiment_dir) / "runs" / trial_id)
        if not path.is_file():
            return
        pg_id = path.read_text().strip()
        if placement_group_table().get(pg_id, {}).get("state") in ("CREATED", "PENDING"):
            ray.util.remove_placement_group(
                PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        path.unlink(missing_ok=True)


def tune_callbacks(ctx: TrialContext) -> list:
    """Callbacks the sweep driver runs (pickled with the sweep, so --resume keeps them)."""
    return [ReleaseTrainGroups(ctx.experiment_dir)] if is_ray_train(ctx.family) else []


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Family:
    name: str
    config_cls: Callable[[], type]
    trial: Callable[[dict[str, Any], TrialContext], None]
    command: str   # how to reproduce the best trial; {best} is the YAML path


def families() -> dict[str, Family]:
    """The aggregator plus every engine family of the registry (lus_dist.engine.registry)."""
    from lus_dist.engine import registry

    out = {"aggregator": Family("aggregator", aggregator_config_cls, aggregator_trial,
                                "lus aggregate --predictions {predictions} --config {best} "
                                "--protocol {protocol} --folds {k} --seed {seed}")}
    for name in registry.names():
        trial = distributed_trial if is_ray_train(name) else in_process_trial
        out[name] = Family(name, functools.partial(engine_config_cls, name), trial,
                           f"lus train {name} --config {{best}}")
    return out


def trial_resources(ctx: TrialContext) -> Any:
    """One CPU for in-process trials. A Ray Train trial's driver holds no CPU, only the
    custom TRAIN_DRIVER slot: its TorchTrainer asks Ray for the workers' CPUs itself, and a
    driver holding a CPU on a 2-CPU node would leave them unschedulable (a silent hang).
    One slot per node also caps concurrent distributed trials at one per node."""
    if is_ray_train(ctx.family):
        return {"cpu": 0, TRAIN_DRIVER_RESOURCE: 1}
    return {"cpu": 1, "gpu": ctx.gpus} if ctx.gpus > 0 else {"cpu": 1}


def gpus_per_trial(requested: float | None, cluster_gpus: float) -> float:
    """--gpus-per-trial, or by default one GPU per trial (per worker) when the Ray cluster
    has GPUs and none otherwise; asking for more than the cluster has is an error."""
    if requested is None:
        return 1.0 if cluster_gpus >= 1 else 0.0
    if requested < 0 or requested > cluster_gpus:
        from lus_dist.io.config import ConfigError
        raise ConfigError(f"--gpus-per-trial {requested:g}: the Ray cluster has {cluster_gpus:g} GPU(s)")
    return float(requested)


def make_trainable(family: Family, ctx: TrialContext) -> Any:
    from ray import tune

    fn = tune.with_parameters(family.trial, ctx=ctx)
    return tune.with_resources(fn, trial_resources(ctx))


def resolve_path(path: str | None) -> str | None:
    """Trials run in other directories (and on other nodes): pass absolute paths."""
    return str(Path(path).resolve()) if path else None
