from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lus_dist.io.config import ConfigError, apply_overrides, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    milestones: list[int] = field(default_factory=lambda: [70])
    nesterov: bool = False


@dataclass
class Run:
    name: str = "x"
    epochs: int = 10
    root: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\noptim:\n  lr: 0.01\n")
    cfg = load_config(Run, path, ["optim.milestones=[5, 8]", "optim.nesterov=true", "root=/d"])
    assert cfg == Run(name="x", epochs=3, root="/d",
                      optim=Optim(lr=0.01, milestones=[5, 8], nesterov=True))


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(Run, None, ["optim.lr=3e-4", "name=best"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Run, tmp_path / "run" / "config.yaml") == cfg


def test_unknown_key_names_the_file_and_valid_keys(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml\.optim: unknown key\(s\) \['lrr'\]"):
        load_config(Run, path)


@pytest.mark.parametrize("override, message", [
    ("epochs=2.5", "expected an integer"),
    ("epochs=many", "expected int"),
    ("optim.nesterov=maybe", "expected true/false"),
    ("optim=3", "expected a mapping"),
    ("epochs", "not of the form"),
])
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, [override])


def test_override_text_yaml_cannot_parse_is_a_string():
    assert load_config(Run, None, ["name=*.mp4", "root=@d"]) == Run(name="*.mp4", root="@d")
    with pytest.raises(ConfigError, match="expected a list"):
        load_config(Run, None, ["optim.milestones=[5,"])


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, bad)


def test_overrides_do_not_mutate_their_input():
    data = {"optim": {"lr": 1.0}}
    apply_overrides(data, ["optim.lr=2"])
    assert data == {"optim": {"lr": 1.0}}
