"""`lus experiment pocus`: the real-data experiment on the POCUS clips, end to end.

packs the clips -> 5-fold video-level CV, stratified by class (folds computed once, at pack
time, by patient = never a video in two folds) -> per fold (a) the CNN-LSTM of Barros et
al. and (b) a frame classifier whose out-of-fold frame probabilities feed the uninorm
aggregator -> report.md with the paper-shaped tables beside Barros et al.'s figures.

Frames of a POCUS clip carry no severity score; the frame classifier is trained on the
clip's class instead (every frame inherits its video's label, as Born et al. did), so the
packed per-frame target column holds the video label (said in the manifest provenance).
Training runs as `lus train` subprocesses (the same commands a cluster job runs), so the
same experiment scales up through config: larger `size`, longer schedules, torchrun.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lus_dist.aggregator.train import AggregatorConfig
from lus_dist.io.config import ConfigError
from lus_dist.models.imagenet import IMAGENET, imagenet_weights

from .experiment_graph import StageResources
from .experiment_jobs import (DEFAULT_ROUTES, ROUTES, Experiment, TrainStep, frame_encoder,
                              plan_jobs)
from .experiment_run import argv_without, run_experiment, status_main
from .experiment_report import (collect, frame_predictions_as_video_classes,  # noqa: F401
                                merge_predictions, write_report)

def _cnnlstm_default() -> TrainStep:
    return TrainStep(epochs=20, overrides=[
        "model.kwargs={encoder: small_cnn, lstm_units: 64, dense_units: 64, dropout: 0.3}",
        "data.clip_len=10", "data.batch_size=4", "data.eval_batch_size=8", "optim.lr=1e-3",
        "data.balanced=true",   # class-balanced draw: 23 COVID vs 47 healthy clips
        "train.ema_decay=0.95"])  # ~20 steps (about one epoch): steadier validation curves


def _frame_default() -> TrainStep:
    # ResNet-18 (random init, CE): over Roy et al.'s six-block CNN, seeds 0-1 on the real
    # clips, frame + uninorm accuracy 0.808 vs 0.768 and COVID recall 0.640 vs 0.505 (16
    # epochs); a step costs ~1.6x, so 12 epochs keep the 3-seed default under an hour
    return TrainStep(epochs=12, overrides=[
        "model.name=resnet18_ce", "frame_classes=[covid, pneumonia, healthy]",
        "data.batch_size=32", "data.eval_batch_size=64",
        "train.max_steps_per_epoch=30", "optim.lr=1e-3", "viz_frames=0",
        # warmup + cosine per step: at constant lr the scratch model's validation accuracy
        # still jumped by 0.12 between late epochs; the cosine's small last steps settle it
        "schedule.name=warmup_cosine", "schedule.interval=step", "schedule.warmup=30",
        "schedule.min_lr_ratio=0.05",
        "train.ema_decay=0.98",   # ~50 steps (under two epochs)
        # the pretraining augmentations: same accuracy, steadier validation (seed 0, 5 folds:
        # frame accuracy 0.774 vs 0.782, largest last-half jump 0.066 vs 0.155)
        "augment={}",
        "train.bf16=native",      # AMX CPUs and bf16 GPUs: a step 2-3x faster than fp32
        "model.channels_last=true"])


def _pretrain_default() -> TrainStep:
    # 4 epochs: over 10, the kNN accuracy peaked at epochs 0-7 (median 3) on POCUS
    return TrainStep(config="", epochs=4, overrides=[
        "data.batch_size=64", "train.max_steps_per_epoch=30", "pretrain.knn_bank_frames=2048",
        "schedule.warmup=20", "optim.lr=1e-3", "data.num_workers=0",
        "model.channels_last=true", "train.bf16=native"])


@dataclass
class PocusExperimentConfig:
    size: int = 64                 # frame side after packing (Barros et al.: 224)
    folds: int = 5
    seed: int = 0
    viral: str = "skip"            # Vir_* clips: skip | pneumonia
    include_images: bool = False   # stills as 1-frame videos (the CNN-LSTM needs clips)
    max_frames: int = 32           # per clip, evenly spaced (0: all); bounds CPU time
    pack_workers: int = 2
    parallel: int = 2              # training jobs at once (each one process, one thread)
    cnnlstm: TrainStep = field(default_factory=_cnnlstm_default)
    frame: TrainStep = field(default_factory=_frame_default)
    aggregator: AggregatorConfig = field(default_factory=lambda: AggregatorConfig(
        target="video_label", sord=False, zero_score_gap=0.0, epochs=30))
    aggregator_protocol: str = "stratified_kfold"
    # pick each fold's best epoch on the next fold (train on k-2 folds), never on the test fold
    select_on_next_fold: bool = True
    # the ablation: from scratch and from a contrastively pretrained encoder, same folds;
    # `weights` starts the frame CNN from `init_weights`, a local file (never downloaded), or
    # `imagenet`: the frame model's ImageNet weights on this machine (e.g. efficientnet_lite0_ce)
    routes: list[str] = field(default_factory=lambda: list(DEFAULT_ROUTES))
    init_weights: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])   # the ablation's mean +- std
    pretrain: TrainStep = field(default_factory=_pretrain_default)
    # the CNN-LSTM's frame features: frame_cnn = its route's frame CNN, frozen (Barros et al.'s
    # two stages); own = its own encoder, end to end (scratch) or from the pretrained one
    cnnlstm_features: str = "frame_cnn"
    pretrained_cnnlstm: str = "cached"   # with `own`: cached = pretrained encoder frozen | frames: fine-tuned
    # finished runs' resumable checkpoints (RUN_DIR/checkpoints) are deleted unless true;
    # best.pt and encoder.pt stay
    keep_checkpoints: bool = False
    # --launcher slurm: per stage nodes, processes / GPUs per node, CPUs, time, partition,
    # sbatch flags (e.g. slurm.regstn.gpus_per_node=4)
    slurm: StageResources = field(default_factory=StageResources)

    def __post_init__(self) -> None:
        if not self.routes or set(self.routes) - set(ROUTES):
            raise ConfigError(f"routes must be a non-empty subset of {list(ROUTES)}, got {self.routes}")
        if ("weights" in self.routes) != bool(self.init_weights):
            raise ConfigError("the `weights` route and init_weights go together: name a local "
                              "encoder file (e.g. init_weights=/shared/resnet18-f37072fd.pth) or "
                              "init_weights=imagenet and "
                              f"add `weights` to routes, got routes={self.routes}, "
                              f"init_weights={self.init_weights!r}")
        if self.init_weights == IMAGENET:   # said now, not in the first run's log after packing
            try:
                imagenet_weights(frame_encoder(self.frame))
            except ValueError as exc:
                raise ConfigError(f"init_weights=imagenet: {exc}") from None
        elif self.init_weights:
            if not Path(self.init_weights).is_file():
                raise ConfigError(f"init_weights {self.init_weights}: no such file")
            # the runs are subprocesses: a path that reads the same anywhere
            self.init_weights = str(Path(self.init_weights).resolve())
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.cnnlstm_features not in ("frame_cnn", "own"):
            raise ConfigError(f"cnnlstm_features must be frame_cnn|own, got {self.cnnlstm_features!r}")
        if self.pretrained_cnnlstm not in ("cached", "frames"):
            raise ConfigError(f"pretrained_cnnlstm must be cached|frames, got {self.pretrained_cnnlstm!r}")


# name -> "module:attribute" of its Experiment (imported when chosen)
EXPERIMENTS = {"pocus": "lus.experiment:POCUS", "severity": "lus.experiment_severity:SEVERITY",
               "prospective": "lus.experiment_prospective:PROSPECTIVE", "roy": "lus.experiment_roy:ROY"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus experiment",
        description="End-to-end experiments on real data. `pocus`: pack the POCUS clips, run "
                    "k-fold video-level CV (stratified by class) of (a) the CNN-LSTM and (b) a "
                    "frame classifier + uninorm aggregator, and write paper-style reports with "
                    "Barros et al.'s published figures beside ours. `severity`: clips + a "
                    "per-video score table (--spec): frame scorers from weak labels (Reg-STN "
                    "and baselines), the uninorm vs mean / max / majority of frame scores, k "
                    "folds by patient. `prospective`: a patient-level class of the same layout "
                    "from a model trained on --source POCUS clips (zero-shot) and trained here. "
                    "`roy`: an ICLUS-layout folder (a score per frame): Roy et al.'s Table 1 "
                    "(Reg-STN and baselines, Settings 1 and 2) and video table (the uninorm and "
                    "its baselines), k folds by patient x seeds.",
        epilog="example:\n  lus experiment pocus --data ../shared/data/pocus --out runs/pocus\n"
               "  lus experiment pocus --data DIR --out runs/big size=224 cnnlstm.epochs=40 "
               "frame.epochs=30\n  lus experiment pocus --data train_dir --test-data other_dir "
               "--out runs/held_out\n  lus experiment severity --data ../shared/data/covid_blues "
               "--spec configs/ingest/covid_blues.yaml --out runs/blues_severity\n"
               "  lus experiment prospective --data ../shared/data/covid_blues --spec "
               "configs/ingest/covid_blues.yaml --source ../shared/data/pocus --out runs/blues_covid"
               "\n  lus prep phantom --out data/phantom_raw && lus experiment roy --data "
               "data/phantom_raw/iclus --out runs/roy seeds=[0] frame.epochs=3"
               "\n\non a Slurm cluster (each run a job, the report the last; returns at once):\n"
               "  lus experiment pocus --data ../shared/data/pocus --out runs/pocus --launcher slurm "
               "slurm.regstn.gpus_per_node=1 slurm.regstn.partition=gpu\n"
               "  lus experiment roy --data ICLUS_DIR --out runs/roy --launcher slurm "
               "slurm.regstn.gpus_per_node=1 slurm.regstn.time=02:00:00\n"
               "  lus experiment status runs/pocus     # done / running / pending / failed per run\n"
               "  (again after a failure: finished runs are kept, the rest resubmitted)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=list(EXPERIMENTS))
    p.add_argument("--data", required=True, help="pocus: POCUS-layout folder (videos/<probe>/...); "
                   "severity, prospective: the clips + tables folder --spec describes; "
                   "roy: an ICLUS-layout folder (frame table dataset.csv|xlsx|parquet)")
    p.add_argument("--out", required=True, help="output folder (shards, runs, report)")
    p.add_argument("--folds", type=int, default=None, help="CV folds (default 5)")
    p.add_argument("--test-data", default=None,
                   help="pocus: train on --data, test on this folder (no CV)")
    p.add_argument("--spec", default=None, help="severity, prospective: table spec YAML "
                   "(data_prep/ingest_table.py TableSpec, e.g. configs/ingest/covid_blues.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="severity, prospective: one table spec value, over --spec (repeatable)")
    p.add_argument("--source", default=None,
                   help="prospective: POCUS-layout folder the zero-shot model trains on")
    p.add_argument("--config", default=None, help="experiment YAML (the experiment's config class)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: the runs as processes here (`parallel` at once), then the report; "
                   "slurm: every run an sbatch job (afterok on the runs it reads) and a report "
                   "job, submitted at once (resources: the config's `slurm` section)")
    p.add_argument("--stage", choices=("report",), default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value, e.g. size=128 cnnlstm.epochs=20")
    return p


# ---------------------------------------------------------------- data
def prepare_shards(cfg: PocusExperimentConfig, data: Path, out: Path,
                   test_data: Path | None = None):
    """Ingest (+ held-out folder) and pack; returns the manifest."""
    from data_prep.ingest_pocus import ingest_pocus, with_frame_labels
    from data_prep.pack import PackConfig, pack, provenance
    from lus_dist.shards.format import Preprocessing

    report = ingest_pocus(data, include_images=cfg.include_images, viral=cfg.viral)
    print(report.summary(), flush=True)
    if test_data is None:
        sources = [with_frame_labels(s, cfg.max_frames) for s in report.sources]
    else:
        held = ingest_pocus(test_data, include_images=cfg.include_images, viral=cfg.viral)
        print("held-out " + held.summary(), flush=True)
        sources = [with_frame_labels(s, cfg.max_frames, "train:", "train") for s in report.sources]
        sources += [with_frame_labels(s, cfg.max_frames, "test:", "test") for s in held.sources]
        report.skipped += held.skipped
    pcfg = PackConfig(preprocessing=Preprocessing(size=cfg.size), folds=cfg.folds,
                      split_seed=cfg.seed, shard_frames=512)
    prov = provenance("pocus", data, report.skipped, {
        "frame_target": "video label (POCUS frames have no severity score)",
        "max_frames_per_clip": cfg.max_frames, "viral": cfg.viral,
        "test_data": str(test_data) if test_data else None})
    return pack(sources, out, pcfg, prov, workers=cfg.pack_workers, progress=False)


def _selection_text(cfg: PocusExperimentConfig, cv: bool) -> str:
    if not cv:
        return ("each model's best epoch is picked on held-out training patients "
                "(`data.val_split=holdout`, the engine's default); the --test-data clips only "
                "grade the models")
    if cfg.select_on_next_fold:
        return ("each fold's best epoch is picked on the next fold's clips (`data.val_folds`), "
                "so models train on k-2 folds and the test fold never influences them")
    return ("each fold's best epoch is picked on that fold's test clips "
            "(select_on_next_fold=false, `data.val_split=test`), which flatters both models")


def pocus_folder(path: Path | None) -> str | None:
    if path is not None and not (Path(path) / "videos").is_dir():
        return f"{path}: not a POCUS-layout folder (no videos/ inside)"
    return None


def _pocus_check(args) -> str | None:
    return pocus_folder(Path(args.data)) or pocus_folder(args.test_data and Path(args.test_data))


def _pocus_prepare(cfg, args, out: Path):
    return prepare_shards(cfg, Path(args.data), out / "shards",
                          Path(args.test_data) if args.test_data else None)


def _pocus_plan(cfg, args, out: Path):
    return plan_jobs(cfg, out, out / "shards", cv=args.test_data is None)


def _pocus_report(cfg, args, jobs, out: Path, command: str, wall: str, manifest) -> Path:
    cv = args.test_data is None
    return write_report(cfg, collect(cfg, jobs, out, cv=cv), out, command, wall, manifest,
                        _selection_text(cfg, cv), cv=cv)


POCUS = Experiment(PocusExperimentConfig, "POCUS-layout folder", _pocus_check, _pocus_prepare,
                   _pocus_plan, _pocus_report)


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        return status_main(argv[1:])
    args = _parser().parse_intermixed_args(argv)
    module, attr = EXPERIMENTS[args.experiment].split(":")
    experiment = getattr(importlib.import_module(module), attr)
    args.argv = argv
    command = shlex.join(["lus", "experiment", *argv_without(argv, "--stage")])
    return run_experiment(experiment, args, command)
