"""One Tune function trainable per family, plus the resources each trial asks for.

Every trial receives only its sampled params from Ray (that is what lands in the results
table); the fixed part of the config travels in a `TrialContext` through
`tune.with_parameters`, and the typed config is rebuilt with `tune.spaces.build_config`
so a trial runs exactly what `best.yaml` will say.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- aggregator
def aggregator_config_cls() -> type:
    from lus_dist.aggregator.train import AggregatorConfig

    return AggregatorConfig


@functools.lru_cache(maxsize=4)
def _predictions(path: str):
    """Read once per worker process; with reuse_actors hundreds of trials share it."""
    from lus_dist.aggregator.data import read_predictions

    return read_predictions(path)


def aggregator_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Score one aggregator config by mean weighted F1 over patient-level folds."""
    from ray import tune

    from lus_dist.aggregator.train import run_protocol

    cfg = build_config(aggregator_config_cls(), ctx.base, config)
    result = run_protocol(_predictions(ctx.predictions), cfg, protocol=ctx.protocol, k=ctx.k,
                          seed=ctx.seed)
    tune.report(_scalars(result, ctx.metric))


def _scalars(result: Any, metric: str) -> dict[str, float]:
    """The metric plus any other float fields the protocol result carries."""
    out: dict[str, float] = {}
    for name in dir(result):
        if name.startswith("_"):
            continue
        value = getattr(result, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    if metric not in out:
        raise KeyError(f"the aggregator result has no {metric!r}; it has {sorted(out)}")
    return out


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Family:
    name: str
    config_cls: Callable[[], type]
    trial: Callable[[dict[str, Any], TrialContext], None]
    command: str   # how to reproduce the best trial; {best} is the YAML path


def families() -> dict[str, Family]:
    from tune import engine_trials

    return {
        "aggregator": Family("aggregator", aggregator_config_cls, aggregator_trial,
                             "lus aggregate --predictions {predictions} --config {best} "
                             "--protocol {protocol}"),
        "cnnlstm": Family("cnnlstm", functools.partial(engine_trials.config_cls, "cnnlstm"),
                          engine_trials.cnnlstm_trial, "lus train cnnlstm --config {best}"),
        "regstn": Family("regstn", functools.partial(engine_trials.config_cls, "regstn"),
                         engine_trials.distributed_trial, "lus train regstn --config {best}"),
        "seg": Family("seg", functools.partial(engine_trials.config_cls, "seg"),
                      engine_trials.distributed_trial, "lus train seg --config {best}"),
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
