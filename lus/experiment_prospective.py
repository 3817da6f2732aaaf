"""`lus experiment prospective`: a patient-level class (e.g. a PCR result) of clips in the
`table` layout, from frame models, two ways.

- Zero-shot: the POCUS experiment's frame model (its frame CNN recipe on the 3 POCUS
  classes, trained on the --source POCUS clips: folds 2.. train, fold 1 picks the epoch and
  fits the uninorm, fold 0 grades it on POCUS) scores every frame here; each video is
  decided as on POCUS (frame CNN + uninorm), and a patient is positive when the positive
  class (`covid`) has the highest mean over the patient's videos of the uninorm's class
  probabilities. Nothing here is fitted on these patients.
- Trained here: the same frame CNN trained on these clips with every frame carrying its
  patient's class, k folds by patient (the epoch picked on the next fold, the uninorm fitted
  on that fold's frames), each patient decided the same way on its test fold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lus_dist.aggregator.train import AggregatorConfig
from lus_dist.io.config import ConfigError

from .experiment import PocusExperimentConfig, _frame_default, pocus_folder, prepare_shards
from .experiment_graph import StageResources
from .experiment_jobs import (ENCODER_KEY, Experiment, Job, TrainStep, fold_grid, frame_model_name,
                              train_cmd)
from .experiment_severity import frame_jobs, pack_table, table_folder
from lus_dist.models.encoder import ENCODER_FILE


def _here_default() -> TrainStep:
    step = _frame_default()
    return TrainStep(epochs=8, overrides=[*step.overrides, "predict_splits=[holdout,test]",
                                          "data.balanced=true"])


@dataclass
class ProspectiveExperimentConfig:
    size: int = 64
    folds: int = 5                 # patient folds here (stratified by the patient class)
    seed: int = 0
    max_frames: int = 24           # per clip here
    pack_workers: int = 2
    parallel: int = 2
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    positive: str = "covid"        # the POCUS class that reads as a positive patient
    source: PocusExperimentConfig = field(default_factory=lambda: PocusExperimentConfig(
        routes=["scratch"], frame=TrainStep(epochs=12, overrides=[
            *_frame_default().overrides, "predict_splits=[holdout,test]"])))
    here: TrainStep = field(default_factory=_here_default)
    here_model: str = "cnn_ce"     # Table 1 small CNN: 10 runs fit the 30 minutes beside the source runs
    # the frame CNN trained here starts from: scratch | source (the zero-shot model's encoder)
    here_init: str = "scratch"
    aggregator: AggregatorConfig = field(default_factory=lambda: AggregatorConfig(
        target="video_label", sord=False, zero_score_gap=0.0, epochs=30))
    keep_checkpoints: bool = False
    # --launcher slurm: per stage nodes, processes / GPUs per node, CPUs, time, partition,
    # sbatch flags (e.g. slurm.regstn.gpus_per_node=4)
    slurm: StageResources = field(default_factory=StageResources)

    def __post_init__(self) -> None:
        if self.here_init not in ("scratch", "source"):
            raise ConfigError(f"here_init must be scratch|source, got {self.here_init!r}")
        if self.here_init == "source" and self.here_model != frame_model_name(self.source.frame):
            raise ConfigError(f"here_init=source starts {self.here_model} from the source model's "
                              f"encoder: set here_model={frame_model_name(self.source.frame)}")
        if self.folds < 3:
            raise ConfigError(f"folds must be >= 3, got {self.folds}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")


def _check(args) -> str | None:
    if not args.source:
        return "--source (the POCUS-layout folder the zero-shot model trains on) is required"
    return table_folder(args) or pocus_folder(Path(args.source))


def _prepare(cfg, args, out: Path):
    prepare_shards(cfg.source, Path(args.source), out / "source_shards")
    return pack_table(cfg, args, out, "patient")


def source_jobs(cfg, out: Path) -> list[Job]:
    """The zero-shot model per seed: the POCUS frame CNN, test fold 0, epoch on fold 1."""
    jobs = []
    for seed, fold, tag, val in fold_grid(cfg.seeds, cfg.source.folds):
        if fold == 0:
            run_dir = out / "runs" / "source" / tag
            jobs.append(Job(f"source/{tag}", "regstn", run_dir, train_cmd(
                "regstn", cfg.source.frame, run_dir, out / "source_shards", fold, seed, val),
                "source", seed))
    return jobs


def _plan(cfg, args, out: Path) -> list[Job]:
    from lus_dist.shards.manifest import Manifest

    classes = tuple(Manifest.load(out / "shards").patient_classes)
    source = source_jobs(cfg, out)
    here = frame_jobs(cfg.here, [cfg.here_model], cfg.seeds, cfg.folds, out, out / "shards",
                      classes, group="here")
    if cfg.here_init == "source":    # each seed's run starts from that seed's source model
        # (needs here_model with the source frame CNN's encoder, e.g. resnet18_ce)
        by_seed = {j.seed: j for j in source}
        for j in here:
            j.cmd.append(f"{ENCODER_KEY}={by_seed[j.seed].run_dir / ENCODER_FILE}")
            j.after.append(by_seed[j.seed].name)
    return source + here


def _report(cfg, args, jobs, out: Path, command: str, wall: str, manifest) -> Path:
    from .experiment_prospective_report import collect, write_report

    return write_report(cfg, collect(cfg, jobs, out, manifest), out, command, wall, manifest)


PROSPECTIVE = Experiment(ProspectiveExperimentConfig, "clips + tables (--spec)", _check,
                         _prepare, _plan, _report)
