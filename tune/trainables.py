"""One Tune function trainable per family, plus the resources each trial asks for.

Every trial receives only its sampled params from Ray (that is what lands in the results
table); the fixed part of the config travels in a `TrialContext` through
`tune.with_parameters`, and the typed config is rebuilt with `tune.spaces.build_config`
so a trial runs exactly what `best.yaml` will say.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tune.ray_env import TRAIN_DRIVER_RESOURCE
from tune.spaces import build_config


@dataclass(frozen=True)
class TrialContext:
    family: str
    base: dict[str, Any]
    metric: str
    predictions: str | None = None   # aggregator: frame-predictions file
    protocol: str = "kfold"
    k: int = 5
    seed: int = 0
    num_workers: int = 2             # regstn/seg: Ray Train workers per trial
    cpus_per_worker: float = 1.0
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
LOOPS = {"regstn": "lus_dist.engine.train_regstn", "seg": "lus_dist.engine.train_seg",
         "cnnlstm": "lus_dist.engine.train_cnnlstm"}


def engine_config_cls(family: str) -> type:
    from lus_dist.engine.config import FAMILIES as ENGINE_FAMILIES

    return ENGINE_FAMILIES[family]


def _no_signal_flag() -> type:
    """PreemptionFlag without signal handlers: Ray runs trials off the main thread (where
    Python refuses handlers), and Ray, not Slurm, stops and restarts them here."""
    from hpc.signals import PreemptionFlag

    class RayManagedFlag(PreemptionFlag):
        def install(self) -> "RayManagedFlag":
            return self

        def uninstall(self) -> None:
            return None

    return RayManagedFlag


@contextlib.contextmanager
def engine_hooks(loop: Any, report: Callable[[dict[str, float]], None]) -> Iterator[None]:
    """Report every epoch's validation metrics while `loop.run` trains.

    The engine has no per-epoch callback (yet); each loop calls `RunLogger.epoch` on every
    rank after validation, so a subclass that also reports stands in for the run. Ray
    needs the report on every rank (Ray Train) and raises SystemExit from it when ASHA
    stops the trial, which unwinds the engine loop like any exception.
    """
    saved = {"RunLogger": loop.RunLogger, "PreemptionFlag": loop.PreemptionFlag}

    class ReportingLogger(saved["RunLogger"]):  # type: ignore[misc, valid-type]
        def epoch(self, epoch: int, global_step: int, metrics: dict[str, float]) -> None:
            super().epoch(epoch, global_step, metrics)
            report({**{k: float(v) for k, v in metrics.items()}, "epoch": int(epoch)})

    loop.RunLogger, loop.PreemptionFlag = ReportingLogger, _no_signal_flag()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(loop, name, value)


def run_engine(family: str, cfg: Any, run_dir: Path,
               report: Callable[[dict[str, float]], None]) -> None:
    """One training run of the engine, resuming its own checkpoints after a restart."""
    loop = importlib.import_module(LOOPS[family])
    with engine_hooks(loop, report):
        code = loop.run(cfg, run_dir, resume="auto")
    if code != 0:
        raise RuntimeError(f"lus train {family} exited {code} (run dir {run_dir})")


def _trial_run_dir(ctx: TrialContext) -> Path:
    """On the sweep's shared storage, so every node (and a resumed sweep) finds it."""
    from ray import tune

    return Path(ctx.experiment_dir) / "runs" / tune.get_context().get_trial_id()


def cnnlstm_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The CNN-LSTM in the trial process, reporting validation metrics each epoch."""
    from ray import tune

    cfg = build_config(engine_config_cls("cnnlstm"), ctx.base, config)
    run_engine("cnnlstm", cfg, _trial_run_dir(ctx), tune.report)


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: Ray has set RANK/WORLD_SIZE/MASTER_* and joined the process group,
    which the engine's init_distributed then reuses."""
    import ray.train

    from lus_dist.config import from_dict

    family = loop_config["family"]
    cfg = from_dict(engine_config_cls(family), loop_config["config"], "trial config")
    run_engine(family, cfg, Path(loop_config["run_dir"]), ray.train.report)


def distributed_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Reg-STN / segmentation: the trial drives a TorchTrainer with `num_workers` ranks;
    rank 0's per-epoch reports reach Tune through TuneReportCallback."""
    import torch
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from lus_dist.config import to_dict

    cfg = build_config(engine_config_cls(ctx.family), ctx.base, config)
    run_dir = _trial_run_dir(ctx)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"family": ctx.family, "config": to_dict(cfg), "run_dir": str(run_dir)},
        scaling_config=ScalingConfig(num_workers=ctx.num_workers,
                                     use_gpu=torch.cuda.is_available(),
                                     resources_per_worker={"CPU": ctx.cpus_per_worker}),
        torch_config=TorchConfig(init_method="env", timeout_s=cfg.dist.timeout_s),
        run_config=RunConfig(name="train", storage_path=str(run_dir.parent / f"{run_dir.name}-ray"),
                             callbacks=[TuneReportCallback()],
                             # fail the trial loudly; Tune (--resume) restarts it, and the
                             # engine resumes from the run dir's checkpoints
                             failure_config=FailureConfig(max_failures=0,
                                                          controller_failure_limit=0)))
    with release_leaked_groups():
        trainer.fit()


@contextlib.contextmanager
def release_leaked_groups(grace_s: float = 30.0) -> Iterator[None]:
    """Remove the worker placement group a finished Ray Train run leaves behind.

    Ray Train's controller frees its group on a clean exit; when the controller dies first
    (its owner, this trial, is torn down by Tune) the group stays reserved, because Ray's
    own cleaner asks the dashboard's state API, which we do not run. The next trial then
    waits forever for CPUs. Only groups created during this run, holding no TRAIN_DRIVER
    slot, placed entirely on this node (one driver slot per node means one distributed
    trial per node) and still alive after `grace_s` are removed.
    """
    import time

    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table

    node = ray.get_runtime_context().get_node_id()
    before = set(placement_group_table())
    try:
        yield
    finally:
        deadline = time.monotonic() + grace_s
        while True:
            leaked = [pg_id for pg_id, info in placement_group_table().items()
                      if pg_id not in before and info["state"] == "CREATED"
                      and not any(TRAIN_DRIVER_RESOURCE in b for b in info["bundles"].values())
                      and set(info["bundles_to_node_id"].values()) == {node}]
            if not leaked or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        for pg_id in leaked:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Family:
    name: str
    config_cls: Callable[[], type]
    trial: Callable[[dict[str, Any], TrialContext], None]
    command: str   # how to reproduce the best trial; {best} is the YAML path


def families() -> dict[str, Family]:
    return {
        "aggregator": Family("aggregator", aggregator_config_cls, aggregator_trial,
                             "lus aggregate --predictions {predictions} --config {best} "
                             "--protocol {protocol} --folds {k} --seed {seed}"),
        "cnnlstm": Family("cnnlstm", functools.partial(engine_config_cls, "cnnlstm"),
                          cnnlstm_trial, "lus train cnnlstm --config {best}"),
        "regstn": Family("regstn", functools.partial(engine_config_cls, "regstn"),
                         distributed_trial, "lus train regstn --config {best}"),
        "seg": Family("seg", functools.partial(engine_config_cls, "seg"),
                      distributed_trial, "lus train seg --config {best}"),
    }


def trial_resources(ctx: TrialContext) -> Any:
    """One CPU for in-process trials. A Ray Train trial's driver holds no CPU, only the
    custom TRAIN_DRIVER slot: its TorchTrainer asks Ray for the workers' CPUs itself, and a
    driver holding a CPU on a 2-CPU node would leave them unschedulable (a silent hang).
    One slot per node also caps concurrent distributed trials at one per node."""
    if ctx.family in ("regstn", "seg"):
        return {"cpu": 0, TRAIN_DRIVER_RESOURCE: 1}
    return {"cpu": 1}


def make_trainable(family: Family, ctx: TrialContext) -> Any:
    from ray import tune

    fn = tune.with_parameters(family.trial, ctx=ctx)
    return tune.with_resources(fn, trial_resources(ctx))


def resolve_path(path: str | None) -> str | None:
    """Trials run in other directories (and on other nodes): pass absolute paths."""
    return str(Path(path).resolve()) if path else None
