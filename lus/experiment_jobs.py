"""The training runs of `lus experiment pocus` and the small scheduler that runs them.

Per seed and fold: for the `pretrained` route, contrastive pretraining on that fold's
training clips first (never the test fold), then the frame CNN fine-tuned from its encoder;
for the `scratch` route the frame CNN from random weights; for the `weights` route from the
local encoder file `init_weights` names (e.g. a cluster's ImageNet ResNet-18). The CNN-LSTM
then trains on the frozen, cached features of its route's frame CNN (Barros et al.'s two
stages, with our frame CNN, trained on the same training folds, in place of ImageNet
Xception), or with `cnnlstm_features=own` on its own encoder (end to end, or the route's
starting encoder). Every run is a `lus train` subprocess (the commands a cluster job runs);
a run waits for the runs it reads (`after`).
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hpc.dist import child_env
from lus_dist.engine.checkpoint import CHECKPOINT_DIR
from lus_dist.models.encoder import ENCODER_FILE

from .experiment_graph import SKIPPED, check_graph, dependants, to_launch

ROUTES = ("scratch", "pretrained", "weights")
DEFAULT_ROUTES = ("scratch", "pretrained")   # `weights` needs a file
ENCODER_KEY = "model.kwargs.encoder_weights"


@dataclass(frozen=True)
class Experiment:
    """One `lus experiment NAME`: what `lus.experiment.run_experiment` needs to carry it out
    (load config, pack, plan, run the plan, report), so every experiment shares that path."""
    config_cls: type
    data_help: str                                  # what --data must be
    check: Callable[[Any], str | None]              # args -> a bad input, said in one line
    prepare: Callable[..., Any]                     # (cfg, args, out) -> Manifest
    plan: Callable[..., list]                       # (cfg, args, out) -> [Job]
    report: Callable[..., Path]                     # (cfg, args, jobs, out, command, wall, manifest)


@dataclass
class TrainStep:
    """One `lus train` family: a YAML (empty: the family's defaults) + overrides."""
    config: str = ""
    epochs: int = 8
    overrides: list[str] = field(default_factory=list)


@dataclass
class Job:
    name: str                      # route/model/seedS/foldK
    family: str                    # pretrain | cnnlstm | regstn (the frame classifier)
    run_dir: Path
    cmd: list[str]
    route: str = "scratch"
    seed: int = 0
    after: list[str] = field(default_factory=list)   # names of jobs this one reads

    def done(self) -> bool:
        return (self.run_dir / "summary.json").is_file()


def train_cmd(family: str, step: TrainStep, run_dir: Path, shards: Path, fold: int | None,
              seed: int, val_fold: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    # --resume auto: a run an interrupted experiment left unfinished continues, never restarts
    # beside its own files
    cmd = [sys.executable, "-m", "lus", "train", family, "--resume", "auto", "--run-dir",
           str(run_dir)]
    if step.config:
        cmd += ["--config", step.config]
    cmd += [f"data.root={shards}", f"seed={seed}", f"train.epochs={step.epochs}",
            "logging.progress=plain", "logging.tensorboard=false"]
    if fold is not None:
        cmd.append(f"data.test_folds=[{fold}]")
        # picking the epoch on the test fold must be asked for by name (select_on_next_fold=false)
        cmd.append(f"data.val_folds=[{val_fold}]" if val_fold is not None else "data.val_split=test")
    else:  # held-out folder: the engine holds training patients out to pick the epoch, and
        # the aggregator trains on the training clips' frame scores
        cmd += ["data.train_split=train", "data.test_split=test"]
        cmd += ["predict_splits=[train,test]"] if family == "regstn" else []
    return cmd + list(step.overrides) + list(extra)


def frame_model_name(step: TrainStep) -> str:
    """The frame CNN's `model.name` as `lus train regstn` will resolve it (family defaults,
    then the step's YAML, then its overrides)."""
    from lus_dist.io.config import load_config
    from lus_dist.families.regstn import RegSTNConfig

    return load_config(RegSTNConfig, step.config or None, list(step.overrides)).model.name


def frame_encoder(step: TrainStep) -> str:
    """The encoder architecture the frame CNN exports (`small_cnn`, `resnet18`): the CNN-LSTM
    on its frozen features must be built with the same one."""
    from lus_dist.models.encoder import encoder_slot
    from lus_dist.models.registry import build_frame_model

    return encoder_slot(build_frame_model(frame_model_name(step), 1, 3))[0]


def plan_jobs(cfg, out: Path, shards: Path, cv: bool) -> list[Job]:
    """Every run of the experiment, each after the runs whose encoder it reads."""
    # every encoder file of the experiment has the frame CNN's architecture
    arch = f"model.kwargs.encoder={frame_encoder(cfg.frame)}"
    jobs = []
    for seed, fold, tag, val in fold_grid(cfg.seeds, cfg.folds, cv, cfg.select_on_next_fold):
        for route in cfg.routes:
            jobs += route_jobs(cfg, out, shards, route, tag, fold, seed, val, arch)
    return jobs


def fold_grid(seeds: list[int], folds: int, cv: bool = True, select_on_next_fold: bool = True):
    """(seed, test fold, run tag, validation fold) of every model an experiment trains: per
    seed each test fold (or the held-out folder: fold None), its best epoch picked on the
    next fold (None: the engine's default, or the test fold when select_on_next_fold is off)."""
    for seed in seeds:
        for fold in (range(folds) if cv else [None]):
            tag = f"seed{seed}/" + (f"fold{fold}" if fold is not None else "heldout")
            val = (fold + 1) % folds if fold is not None and select_on_next_fold else None
            yield seed, fold, tag, val


def route_jobs(cfg, out: Path, shards: Path, route: str, tag: str, fold: int | None,
               seed: int, val: int | None, arch: str) -> list[Job]:
    """One route's runs for one seed and fold: [pretraining,] the frame CNN, the CNN-LSTM.
    `arch` (`model.kwargs.encoder=...`) builds pretraining and any CNN-LSTM that reads an
    encoder file with the frame CNN's encoder."""
    jobs, frame_after, frame_extra = [], [], ()
    if route == "pretrained":
        pre = out / "runs" / "pretrain" / tag
        jobs.append(Job(f"pretrain/{tag}", "pretrain", pre, train_cmd(
            "pretrain", cfg.pretrain, pre, shards, fold, seed, val, (arch,)), route, seed))
        frame_after, frame_extra = [jobs[-1].name], (f"{ENCODER_KEY}={pre / ENCODER_FILE}",)
    elif route == "weights":
        frame_extra = (f"{ENCODER_KEY}={cfg.init_weights}",)
    frame_dir = out / "runs" / route / "frame" / tag
    frame = Job(f"{route}/frame/{tag}", "regstn", frame_dir, train_cmd(
        "regstn", cfg.frame, frame_dir, shards, fold, seed, val, frame_extra), route, seed, frame_after)
    if cfg.cnnlstm_features == "frame_cnn":    # Barros et al.'s two stages, our frame CNN frozen
        lstm_after, lstm_extra = [frame.name], (f"{ENCODER_KEY}={frame_dir / ENCODER_FILE}", arch,
                                                "features=cached")
    elif route != "scratch":                   # the route's starting encoder, frozen or fine-tuned
        lstm_after = frame_after
        lstm_extra = frame_extra + (arch, f"features={cfg.pretrained_cnnlstm}")
    else:                                      # end to end from random weights
        lstm_after, lstm_extra = [], ()
    lstm_dir = out / "runs" / route / "cnnlstm" / tag
    return jobs + [frame, Job(f"{route}/cnnlstm/{tag}", "cnnlstm", lstm_dir, train_cmd(
        "cnnlstm", cfg.cnnlstm, lstm_dir, shards, fold, seed, val, lstm_extra), route, seed, lstm_after)]


def run_jobs(jobs: list[Job], parallel: int, logs: Path,
             keep_checkpoints: bool = False) -> dict[str, int]:
    """The local launcher: run up to `parallel` jobs at once on this machine, each when the
    jobs it reads have succeeded; the graph rules (`experiment_graph`) say what is left to
    run (a finished run, with its summary.json, is not rerun, so re-invoking the experiment
    after an interruption continues where it stopped) and what a failure skips (named).
    Exit codes by run name; a skipped run's is SKIPPED.

    A run that finishes here loses its resumable checkpoints unless `keep_checkpoints`: the
    experiment never resumes a finished run, and at ResNet-18 size they were two thirds of
    an 18 GB default experiment. best.pt, encoder.pt, predictions and metrics stay; a failed
    run keeps everything, to resume or inspect."""
    check_graph(jobs)
    logs.mkdir(parents=True, exist_ok=True)
    codes = {j.name: 0 for j in jobs if j.done()}
    pending = [j for j, _ in to_launch(jobs, set(codes))]
    running: list[tuple[Job, subprocess.Popen, float]] = []
    while pending or running:
        failed = {n for n, c in codes.items() if c not in (0, SKIPPED)}
        for name, roots in dependants(pending, failed).items():
            pending = [j for j in pending if j.name != name]
            codes[name] = SKIPPED
            print(f"[skipped] {name}: {', '.join(roots)} failed", flush=True)
        ready = [j for j in pending if all(codes.get(a) == 0 for a in j.after)]
        while ready and len(running) < max(1, parallel):
            job = ready.pop(0)
            pending.remove(job)
            running.append((job, _start(job, logs), time.time()))
        time.sleep(1)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            codes[item[0].name] = _finish(*item, logs, keep_checkpoints)
    return codes


def _start(job: Job, logs: Path) -> subprocess.Popen:
    print(f"[start] {job.name}: {shlex.join(job.cmd)}", flush=True)
    with log_path(logs, job).open("w") as fh:
        return subprocess.Popen(job.cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env())


def _finish(job: Job, proc: subprocess.Popen, t0: float, logs: Path, keep_checkpoints: bool) -> int:
    if proc.returncode == 0 and job.done() and not keep_checkpoints:
        shutil.rmtree(job.run_dir / CHECKPOINT_DIR, ignore_errors=True)
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    print(f"[{status}] {job.name} in {time.time() - t0:.0f} s", flush=True)
    if proc.returncode != 0:
        print("\n".join(log_path(logs, job).read_text().splitlines()[-15:]), flush=True)
    return proc.returncode


def log_path(logs: Path, job: Job) -> Path:
    return logs / (job.name.replace("/", "_") + ".log")
