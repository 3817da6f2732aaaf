"""Every shipped config (configs/*.yaml) trains on both backends in both precisions: DDP and
DeepSpeed ZeRO-2 (the README's configs/deepspeed/zero2.json) x fp32 and bf16, 2 ranks
under real torchrun, each run through the real `lus train` CLI.

A config runs as written but for the data (the phantom shards), the step count and the
cell's backend and precision: the run's saved config is checked against the file, so
model, memory format, loader workers and batch sizes are the shipped ones. All cells run
in one torchrun launch (tests/engine/train_cells.py), one after another in the same ranks.
Each run must record the memory format its convolutions really computed in (channels_last
where the config asks for it, under DeepSpeed too), its ranks must end with bitwise
identical weights, and in fp32 DeepSpeed must reach DDP's weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from engine_helpers import CONFIGS, explain, run_cells, summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
BACKENDS = {"ddp": ["dist.backend=ddp"],
            "zero2": ["dist.backend=deepspeed",
                      f"dist.deepspeed_config={CONFIGS / 'deepspeed' / 'zero2.json'}"]}
PRECISIONS = {"fp32": ["train.bf16=false"], "bf16": ["train.bf16=true"]}
STEPS = 2
# what a cell may set besides data.root: the step count, and the cell's backend and precision
ALLOWED = {"data.root", "data.manifest_version", "train.epochs", "train.max_steps_per_epoch",
           "train.bf16", "dist.backend", "dist.deepspeed_config"}
CELLS = [(c, b, p) for c in SHIPPED for b in BACKENDS for p in PRECISIONS]


def shipped(config: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())


def family_of(config: str) -> str:
    return {"demo_regstn": "regstn"}.get(config, config)


def family_metric(config: str) -> str:
    from lus_dist.engine import registry

    return registry.get(family_of(config)).best_metric


def cell_argv(config: str, backend: str, precision: str, shards: Path, run_dir: Path) -> list[str]:
    return ["train", family_of(config), "--config", str(CONFIGS / f"{config}.yaml"),
            "--run-dir", str(run_dir), f"data.root={shards}", "train.epochs=1",
            f"train.max_steps_per_epoch={STEPS}", *BACKENDS[backend], *PRECISIONS[precision]]


@pytest.fixture(scope="module")
def matrix(small_shards, tmp_path_factory):
    """(runs dir, the launch's result): every cell, one launch."""
    base = tmp_path_factory.mktemp("shipped")
    argvs = [cell_argv(*cell, small_shards, base / "-".join(cell)) for cell in CELLS]
    return base, run_cells(argvs, base, timeout=1700)


def differences(config: str, saved: dict) -> list[str]:
    """Keys of the shipped file whose value the run did not keep, beyond ALLOWED."""
    out = []
    for section, values in shipped(config).items():
        if not isinstance(values, dict):
            if saved.get(section) != values:
                out.append(section)
            continue
        out += [f"{section}.{k}" for k, v in values.items()
                if f"{section}.{k}" not in ALLOWED and saved.get(section, {}).get(k) != v]
    return out


def test_every_shipped_config_is_in_the_matrix():
    from lus_dist.engine import registry as families

    assert {"regstn", "seg", "cnnlstm", "pretrain", "demo_regstn"} <= set(SHIPPED)
    assert all(family_of(c) in families.names() for c in SHIPPED)
    assert any(shipped(c).get("model", {}).get("channels_last") for c in SHIPPED)


@pytest.mark.parametrize("config, backend, precision", CELLS)
def test_shipped_config_trains(matrix, config, backend, precision):
    base, launch = matrix
    run = base / f"{config}-{backend}-{precision}"
    assert (run / "summary.json").is_file(), f"{run.name} did not finish\n{explain(launch)}"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert differences(config, saved) == [], "the run changed more than data and steps"
    s = summary(run)
    assert s["world_size"] == 2 and s["global_step"] == STEPS
    assert s["backend"] == ("deepspeed" if backend == "zero2" else "ddp")
    assert s["zero_stage"] == (2 if backend == "zero2" else None)
    assert s["precision"] == precision
    wanted = "channels_last" if shipped(config).get("model", {}).get("channels_last") else "contiguous"
    assert s["memory_format"] == wanted
    assert len(set(s["param_digests"])) == 1, "ranks ended with different weights"
    assert s["best_selected_on"] != s.get("test_split", "test")
    picked = s[f"best_{s['best_selected_on']}_{family_metric(config)}"]
    assert math.isfinite(picked), "the selection metric is not a number"
    assert all(bool(t.isfinite().all()) for t in weights(run).values())


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The trained parameters of best.pt (BatchNorm statistics left out: DDP broadcasts them
    at every forward, DeepSpeed only before evaluation)."""
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in best.items() if v.is_floating_point() and "running_" not in k}


@pytest.mark.parametrize("config", SHIPPED)
def test_fp32_deepspeed_reaches_the_weights_ddp_reaches(matrix, config):
    """Same start, same batches, fp32: ZeRO-2's sharded Adam step on all-reduced gradients
    is DDP's step, channels_last configs included (their weights stay contiguous under
    DeepSpeed). Two Adam steps move each weight by about lr; a run that trained otherwise
    would differ by that much, not by rounding."""
    base, launch = matrix
    ddp, zero2 = (weights(base / f"{config}-{b}-fp32") for b in ("ddp", "zero2"))
    assert ddp.keys() == zero2.keys()
    diff = sum(float((ddp[k] - zero2[k]).norm() ** 2) for k in ddp) ** 0.5
    norm = sum(float(ddp[k].norm() ** 2) for k in ddp) ** 0.5
    assert diff <= 1e-6 * norm, f"{config}: DeepSpeed and DDP weights differ by {diff / norm:.1e}"


def test_the_launch_ended_cleanly(matrix):
    assert matrix[1].returncode == 0, explain(matrix[1])


def test_more_loader_workers_than_cpus_is_said_once_per_run(matrix):
    """The shipped configs' loader workers on a rank with fewer CPUs: one line per run in
    the run's log, never torch's warning at every loader."""
    from lus_dist.engine.data import usable_cpus

    launch = matrix[1]
    runs = [c for c in CELLS if shipped(c[0]).get("data", {}).get("num_workers", 0) > usable_cpus()]
    assert "This DataLoader will create" not in launch.stdout + launch.stderr, explain(launch)
    assert launch.stdout.count("loader workers per rank") <= len(runs), explain(launch)
