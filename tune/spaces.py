"""Search spaces as YAML files a user can copy and edit, turned into Ray search spaces.

A space file looks like::

    family: aggregator          # aggregator or a registered family (lus_dist.engine.registry)
    metric: mean_weighted_f1    # what the trial reports; the sweep optimises it
    mode: max
    max_t: 1                    # reports per trial; default: train.epochs of the base config
    base:                       # fixed values, nested like the family's config file
      epochs: 30
    params:                     # dotted keys into the family's config
      tnorm: {choice: [product, lukasiewicz]}
      lr: {loguniform: [1.0e-3, 1.0e-1]}
      model.lstm_units: {qrandint: [32, 1024, 32]}

The trial's config is: family defaults <- `--config` file <- overrides <- `base` <- the
sampled params, built with `lus_dist.io.config` so an unknown key fails before any trial
runs, and the best trial is saved in exactly the form `lus train --config` reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lus_dist.io.config import ConfigError, from_dict, to_dict



def space_families() -> tuple[str, ...]:
    """What a space can sweep: the aggregator and every registered engine family."""
    from lus_dist.engine import registry as families

    return ("aggregator", *families.names())


# kind -> number of arguments
DOMAIN_KINDS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "quniform": 3,
                "qloguniform": 3, "randint": 2, "qrandint": 3}


class SpaceError(ConfigError):
    """A search-space file that cannot be turned into a sweep."""


@dataclass(frozen=True)
class Param:
    kind: str
    args: tuple

    def example(self) -> Any:
        """A value inside the domain, used to validate keys and types before any trial."""
        if self.kind in ("choice", "grid"):
            return self.args[0]
        if self.kind in ("randint", "qrandint"):
            return int(self.args[0])
        return float(self.args[0])


@dataclass(frozen=True)
class SearchSpace:
    family: str
    metric: str
    mode: str
    params: dict[str, Param]
    base: dict[str, Any] = field(default_factory=dict)
    max_t: int | None = None     # None: the engine config's train.epochs, else 1
    source: str = "<memory>"

    def horizon(self, base: dict[str, Any]) -> int:
        """ASHA's max_t: reports a trial makes at most (epochs for the engine families)."""
        if self.max_t is not None:
            return self.max_t
        epochs = (base.get("train") or {}).get("epochs") if isinstance(base, dict) else None
        return int(epochs) if isinstance(epochs, int) and epochs > 0 else 1


def _parse_param(key: str, raw: Any, where: str) -> Param:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SpaceError(f"{where}: params.{key} must be a one-key mapping like "
                         f"{{choice: [a, b]}} or {{loguniform: [1e-4, 1e-2]}}, got {raw!r}")
    (kind, args), = raw.items()
    if kind not in DOMAIN_KINDS:
        raise SpaceError(f"{where}: params.{key}: unknown domain {kind!r}; "
                         f"use one of {sorted(DOMAIN_KINDS)}")
    if not isinstance(args, list) or not args:
        raise SpaceError(f"{where}: params.{key}.{kind} needs a non-empty list, got {args!r}")
    n = DOMAIN_KINDS[kind]
    if n is not None:
        if len(args) != n or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                     for a in args):
            raise SpaceError(f"{where}: params.{key}.{kind} needs {n} numbers, got {args!r}")
        if not args[0] < args[1]:
            raise SpaceError(f"{where}: params.{key}.{kind}: lower bound {args[0]} must be "
                             f"below upper bound {args[1]}")
        if "log" in kind and args[0] <= 0:
            raise SpaceError(f"{where}: params.{key}.{kind}: bounds must be > 0, got {args!r}")
    return Param(kind, tuple(args))


def parse_space(data: Any, where: str = "<space>") -> SearchSpace:
    """Validate the YAML mapping of a space file (pure)."""
    if not isinstance(data, dict):
        raise SpaceError(f"{where}: top level must be a mapping")
    known = {"family", "metric", "mode", "params", "base", "max_t"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    family = data.get("family")
    if family not in space_families():
        raise SpaceError(f"{where}: family must be one of {space_families()}, got {family!r}")
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        raise SpaceError(f"{where}: mode must be max or min, got {mode!r}")
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric:
        raise SpaceError(f"{where}: metric (the reported value to optimise) is required")
    params = data.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{where}: params must be a non-empty mapping")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise SpaceError(f"{where}: base must be a mapping")
    max_t = data.get("max_t")
    if max_t is not None and (not isinstance(max_t, int) or isinstance(max_t, bool) or max_t < 1):
        raise SpaceError(f"{where}: max_t must be a positive integer, got {max_t!r}")
    parsed = {str(k): _parse_param(str(k), v, where) for k, v in params.items()}
    return SearchSpace(family, metric, mode, parsed, base, max_t, where)


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search-space file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML ({exc})") from None
    return parse_space(data, str(path))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Copy of `data` with `a.b.c` set to value (pure; sections are created as needed)."""
    out = dict(data)
    head, _, rest = key.partition(".")
    if not rest:
        out[head] = value
        return out
    sub = out.get(head, {})
    if not isinstance(sub, dict):
        raise SpaceError(f"{key!r}: {head!r} is a value, not a config section")
    out[head] = set_dotted(sub, rest, value)
    return out


def merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Nested update (pure): sections merge, values replace."""
    out = dict(base)
    for k, v in new.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(cls: type, base: dict[str, Any], params: dict[str, Any],
                 where: str = "trial") -> Any:
    """Typed config from a resolved base mapping plus one trial's dotted params."""
    data = merge(to_dict(cls()), base)
    for key, value in params.items():
        data = set_dotted(data, key, _plain_value(value))
    return from_dict(cls, data, where)


def _plain_value(value: Any) -> Any:
    """Ray/numpy scalars -> Python scalars so the saved YAML stays plain."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def check_space(space: SearchSpace, cls: type, base: dict[str, Any]) -> None:
    """Fail before any trial if a param key or type does not fit the config class."""
    example = {k: p.example() for k, p in space.params.items()}
    try:
        build_config(cls, merge(base, space.base), example, where=space.source)
    except ConfigError as exc:
        raise SpaceError(f"{space.source}: does not fit {cls.__name__}: {exc}") from None


def to_ray(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune param_space with one flat dotted key per parameter."""
    from ray import tune

    makers = {
        "choice": lambda a: tune.choice(list(a)),
        "grid": lambda a: tune.grid_search(list(a)),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "quniform": lambda a: tune.quniform(*a),
        "qloguniform": lambda a: tune.qloguniform(*a),
        "randint": lambda a: tune.randint(int(a[0]), int(a[1]) + 1),  # inclusive upper
        "qrandint": lambda a: tune.qrandint(int(a[0]), int(a[1]), int(a[2])),
    }
    return {k: makers[p.kind](p.args) for k, p in space.params.items()}


def grid_size(space: SearchSpace) -> int:
    """Trials one pass of the grid takes (1 if the space has no grid axes)."""
    return math.prod(len(p.args) for p in space.params.values() if p.kind == "grid")


def with_grid(space: SearchSpace) -> SearchSpace:
    """For `--search grid`: every choice becomes a grid axis; continuous axes must not exist."""
    params = {}
    for k, p in space.params.items():
        if p.kind in ("choice", "grid"):
            params[k] = Param("grid", p.args)
        else:
            raise SpaceError(f"{space.source}: --search grid needs discrete params, but {k} "
                             f"is {p.kind}; make it a choice list or use --search random")
    return SearchSpace(space.family, space.metric, space.mode, params, space.base,
                       space.max_t, space.source)


__all__ = ["space_families", "Param", "SearchSpace", "SpaceError", "build_config", "check_space",
           "grid_size", "load_space", "merge", "parse_space", "set_dotted",
           "to_ray", "with_grid"]
