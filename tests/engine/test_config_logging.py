"""Run configs (shipped YAMLs, overrides, errors), DeepSpeed JSON filling, and run logging."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from hpc import World
from lus_dist.io.config import ConfigError
from lus.train import main as train_main
from lus_dist.engine import registry as families
from lus_dist.engine.fit import deepspeed_json
from lus_dist.engine.session import Session, run_dir_conflict
from lus_dist.engine.registry import load_run_config
from lus_dist.engine.logging import RunLogger, format_metrics, read_metrics, use_tqdm
from lus_dist.engine.config import LoggingConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("family,name", [("regstn", "regstn.yaml"), ("seg", "seg.yaml"),
                                         ("cnnlstm", "cnnlstm.yaml"), ("regstn", "demo_regstn.yaml")])
def test_shipped_configs_load(family, name):
    cfg = load_run_config(family, CONFIGS / name, ["optim.lr=3e-4", "dist.backend=deepspeed"])
    assert isinstance(cfg, families.get(family).config_cls)
    assert cfg.optim.lr == 3e-4 and cfg.dist.backend == "deepspeed"
    assert cfg.optim.weight_decay == 1e-4          # both papers' Adam weight decay


def test_regstn_schedule_is_the_papers():
    cfg = load_run_config("regstn", CONFIGS / "regstn.yaml", [])
    opt = cfg.optim.build(torch.nn.Linear(2, 2).parameters())
    sched = cfg.schedule.build(opt, steps_per_epoch=10, epochs=cfg.train.epochs)
    assert cfg.schedule.interval == "epoch"
    lrs = []
    for _ in range(cfg.train.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[69] == pytest.approx(1e-4) and lrs[70] == pytest.approx(1e-5)


@pytest.mark.parametrize("override,msg", [
    ("dist.backend=horovod", "dist.backend must be ddp|deepspeed"),
    ("optim.lr=fast", "expected float"),
    ("checkpoint.keep=1", "checkpoint.keep must be >= 2"),
    ("data.bacth_size=4", "unknown key"),
    ("data.worker_start=thread", "data.worker_start must be forkserver|spawn|fork"),
])
def test_bad_overrides_are_clear_errors(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_run_config("regstn", None, [override])


def test_cli_reports_config_errors_with_exit_2(tmp_path, capsys):
    assert train_main(["regstn", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err


def _session(world_size=2):
    world = World(rank=0, local_rank=0, world_size=world_size, local_world_size=world_size,
                  node_rank=0, num_nodes=1, master_addr="127.0.0.1", master_port=29500,
                  launcher="torchrun")
    return Session(world, torch.device("cpu"), Path("."), bf16=False)


def test_deepspeed_json_takes_batch_accumulation_and_clipping_from_the_config():
    cfg = load_run_config("regstn", None, ["data.batch_size=8", "optim.grad_accum=3",
                                           "optim.grad_clip=1.5", "dist.zero_stage=2"])
    ds = deepspeed_json(cfg, _session())
    assert ds["train_batch_size"] == 8 * 3 * 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 1.5 and ds["zero_optimization"]["stage"] == 2
    assert "optimizer" not in ds


def test_deepspeed_json_refuses_a_json_optimizer(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    cfg = load_run_config("regstn", None, [f"dist.deepspeed_config={bad}"])
    with pytest.raises(ConfigError, match="FusedAdam"):
        deepspeed_json(cfg, _session())


def test_a_resumed_run_drops_the_rows_after_its_checkpoint_and_logs_them_again(tmp_path):
    cfg = LoggingConfig(every_steps=1, tensorboard=False, progress="plain")
    log = RunLogger(tmp_path, rank=0, cfg=cfg)
    for step in range(1, 5):
        log.step(0, step, {"loss": 1.0 / step})
    log.epoch(0, 4, {"val_f1": 0.5})
    log.close()
    log = RunLogger(tmp_path, rank=0, cfg=cfg, resumed_at=2)   # its checkpoint was step 2
    log.step(0, 3, {"loss": 0.1})
    log.close()
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = [(r["kind"], int(r["global_step"]), float(r["value"])) for r in rows]
    assert got == [("step", 1, 1.0), ("step", 2, 0.5), ("step", 3, 0.1)]
    assert read_metrics(tmp_path / "metrics.csv") == rows


def test_a_new_run_refuses_a_directory_holding_another_run(tmp_path):
    run = tmp_path / "run"
    assert run_dir_conflict(run, None) is None                     # nothing there yet
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")                  # a run that stopped at once
    assert run_dir_conflict(run, None) is None
    (run / "metrics.csv").write_text("kind\n")
    (run / "checkpoints").mkdir()
    why = run_dir_conflict(run, None)
    assert why == (f"{run} holds another run (metrics.csv, checkpoints); continue it with "
                   "--resume auto, or start this run in a new --run-dir")
    assert run_dir_conflict(run, "auto") is None                   # continues its own run
    assert run_dir_conflict(run, str(run / "checkpoints" / "step-000000004")) is None
    other = tmp_path / "other" / "checkpoints" / "step-000000004"
    assert "not the run of" in run_dir_conflict(run, str(other))
    assert run_dir_conflict(tmp_path / "new", str(other)) is None   # from it, in a new dir
    (tmp_path / "file").write_text("")
    assert run_dir_conflict(tmp_path / "file", "auto") == (
        f"{tmp_path / 'file'} is a file, not a directory; give --run-dir a directory")


def test_other_ranks_write_nothing_and_progress_is_plain_without_a_tty(tmp_path, capsys):
    log = RunLogger(tmp_path / "r1", rank=1, cfg=LoggingConfig())
    log.step(0, 10, {"loss": 1.0})
    assert not (tmp_path / "r1").exists()
    log0 = RunLogger(tmp_path, rank=0, cfg=LoggingConfig(every_steps=2, tensorboard=False))
    assert list(log0.progress(range(4), 4, "epoch 0")) == [0, 1, 2, 3]
    out = capsys.readouterr().out
    assert "epoch 0: 2/4" in out and "epoch 0: 4/4" in out
    assert not use_tqdm("auto", stream=io.StringIO())     # a Slurm log is not a terminal
    assert use_tqdm("tqdm") and not use_tqdm("plain")
    assert format_metrics({"loss": 0.123456, "f1": 1.0}) == "loss=0.1235 f1=1"


def test_cli_reports_a_missing_shard_dir_with_exit_2(tmp_path, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    missing = tmp_path / "no_shards"
    code = train_main(["regstn", "--run-dir", str(tmp_path / "run"), f"data.root={missing}"])
    assert code == 2 and str(missing) in capsys.readouterr().err
