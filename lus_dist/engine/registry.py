"""The model-family registry: the one place the families are listed.

`lus train`, `lus tune`, `lus eval`, `lus predict` and the reports read it. Adding a family
is one plug-in module (a `lus_dist.engine.family.Family` subclass) and one entry here, plus
its YAML config and sbatch script. A family that lives outside this package registers
itself without editing it, either with an entry point in its distribution's metadata
(group `lus_dist.families`, `name = "module:Class"`) or, for a quick experiment, with the
environment variable `LUS_FAMILIES="name=module:Class[,...]"` (child processes inherit it,
so torchrun workers and Ray trials see the same families).
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from lus_dist.io.config import ConfigError, load_config

if TYPE_CHECKING:
    from lus_dist.engine.config import RunConfig
    from lus_dist.engine.family import Family

BUILTIN = {
    "regstn": "lus_dist.families.regstn:RegSTN",
    "seg": "lus_dist.families.seg:Segmentation",
    "cnnlstm": "lus_dist.families.cnnlstm:CNNLSTMFamily",
    "pretrain": "lus_dist.families.pretrain:Pretrain",
}
ENTRY_POINT_GROUP = "lus_dist.families"
ENV_VAR = "LUS_FAMILIES"


def _from_env(value: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in value.split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise ConfigError(f"{ENV_VAR}={value!r}: expected name=module:Class[,...]")
        out[name.strip()] = target.strip()
    return out


def targets() -> dict[str, str]:
    """name -> "module:Class" for every registered family (built-ins cannot be shadowed)."""
    extra = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    extra.update(_from_env(os.environ.get(ENV_VAR, "")))
    return {**extra, **BUILTIN}


def names() -> list[str]:
    return sorted(targets())


@lru_cache(maxsize=None)
def _load(target: str) -> type["Family"]:
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model family {target!r} cannot be loaded: {exc}") from None


def get(name: str) -> type["Family"]:
    """The family class registered as `name`."""
    table = targets()
    if name not in table:
        raise ConfigError(f"unknown model family {name!r}; choose from {sorted(table)}")
    return _load(table[name])


def load_run_config(family: str, path: str | Path | None, overrides: list[str]) -> "RunConfig":
    """A family's typed config from YAML (or its defaults) plus dotted overrides."""
    return load_config(get(family).config_cls, path, overrides)


def make(family: str, cfg: "RunConfig") -> "Family":
    return get(family)(cfg)


__all__ = ["BUILTIN", "get", "names", "targets", "load_run_config", "make"]
