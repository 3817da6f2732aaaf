"""Search-space parsing, dotted config building and the Ray conversion (no Ray cluster)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lus_dist.io.config import load_config
from tune.spaces import (SpaceError, build_config, check_space, grid_size, load_space, merge,
                         parse_space, set_dotted, to_ray, with_grid)

SPACES = Path(__file__).resolve().parents[2] / "tune" / "spaces"


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    batch_size: int = 8


@dataclasses.dataclass
class Cfg:
    name: str = "x"
    tnorm: str = "product"
    sord: bool = True
    optim: Optim = dataclasses.field(default_factory=Optim)


def _space(**params):
    return {"family": "aggregator", "metric": "f1", "mode": "max", "params": params}


def test_parse_and_convert_every_domain():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = parse_space(_space(
        tnorm={"choice": ["product", "lukasiewicz"]}, lr={"loguniform": [1e-4, 1e-1]},
        drop={"uniform": [0.0, 0.5]}, units={"qrandint": [32, 1024, 32]},
        epochs={"randint": [10, 60]}, q={"quniform": [0.0, 1.0, 0.1]}))
    ray_space = to_ray(space)
    assert isinstance(ray_space["tnorm"], Categorical)
    assert isinstance(ray_space["lr"], Float) and isinstance(ray_space["units"], Integer)
    # randint bounds in the YAML are inclusive, Ray's upper bound is exclusive
    assert ray_space["epochs"].upper == 61
    samples = [ray_space["units"].sample() for _ in range(200)]
    assert all(32 <= s <= 1024 and s % 32 == 0 for s in samples)


@pytest.mark.parametrize("params, message", [
    ({"lr": {"loguniform": [0.0, 1.0]}}, "must be > 0"),
    ({"lr": {"uniform": [1.0, 0.5]}}, "lower bound"),
    ({"lr": {"gaussian": [0, 1]}}, "unknown domain 'gaussian'"),
    ({"lr": [1, 2]}, "one-key mapping"),
    ({"lr": {"choice": []}}, "non-empty list"),
    ({"lr": {"uniform": [1, "a"]}}, "needs 2 numbers"),
])
def test_bad_params_name_the_file_and_key(params, message):
    with pytest.raises(SpaceError, match=message) as info:
        parse_space(_space(**params), where="my.yaml")
    assert "my.yaml" in str(info.value)


def test_bad_top_level():
    with pytest.raises(SpaceError, match="family must be one of"):
        parse_space({"family": "nope", "metric": "m", "params": {"a": {"choice": [1]}}})
    with pytest.raises(SpaceError, match=r"unknown key\(s\) \['pramas'\]"):
        parse_space({"family": "seg", "metric": "m", "pramas": {}})
    with pytest.raises(SpaceError, match="metric"):
        parse_space({"family": "seg", "params": {"a": {"choice": [1]}}})


def test_load_space_missing_and_invalid(tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: [unclosed\n")
    with pytest.raises(SpaceError, match="bad.yaml: not valid YAML"):
        load_space(bad)


def test_build_config_applies_dotted_params_and_validates():
    cfg = build_config(Cfg, {"name": "base"}, {"optim.lr": 0.01, "tnorm": "lukasiewicz"})
    assert cfg == Cfg(name="base", tnorm="lukasiewicz", optim=Optim(lr=0.01))
    space = parse_space(_space(**{"optim.lrr": {"choice": [0.1]}}), where="s.yaml")
    with pytest.raises(SpaceError, match=r"s.yaml.*unknown key\(s\) \['lrr'\]"):
        check_space(space, Cfg, {})
    typed = parse_space(_space(**{"optim.batch_size": {"choice": ["big"]}}), where="t.yaml")
    with pytest.raises(SpaceError, match="expected int"):
        check_space(typed, Cfg, {})


def test_best_config_round_trips_through_load_config(tmp_path):
    from lus_dist.io.config import save_config

    cfg = build_config(Cfg, {}, {"optim.batch_size": 32, "sord": False})
    save_config(cfg, tmp_path / "best.yaml")
    assert load_config(Cfg, tmp_path / "best.yaml") == cfg


def test_grid_mode():
    space = parse_space(_space(a={"choice": [1, 2, 3]}, b={"grid": ["x", "y"]}))
    assert grid_size(with_grid(space)) == 6
    with pytest.raises(SpaceError, match="--search grid needs discrete params"):
        with_grid(parse_space(_space(lr={"uniform": [0.1, 0.2]})))


keys = st.lists(st.sampled_from("abc"), min_size=1, max_size=3).map(".".join)


@given(st.lists(st.tuples(keys, st.integers()), max_size=6))
def test_set_dotted_matches_sequential_merge(items):
    """set_dotted(k, v) is merge with the nested one-key mapping, when k's path is free."""
    data: dict = {}
    for key, value in items:
        parts = key.split(".")
        nested: object = value
        for part in reversed(parts):
            nested = {part: nested}
        node, blocked = data, False
        for part in parts[:-1]:
            node = node.get(part, {})
            if not isinstance(node, dict):
                blocked = True
                break
        if blocked:
            with pytest.raises(SpaceError):
                set_dotted(data, key, value)
            continue
        before = yaml.safe_dump(data)
        new = set_dotted(data, key, value)
        assert yaml.safe_dump(data) == before  # pure: input untouched
        assert new == merge(data, nested)
        data = new


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_parse(path):
    space = load_space(path)
    assert space.family == path.stem
    to_ray(space)
