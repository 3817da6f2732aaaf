"""`lus experiment severity`: Roy et al.'s chain on clips scored per video by experts.

The data: a folder of clips, a table with one ordinal score per video and optionally a
table with one class per patient (the `table` ingest layout, named by a TableSpec, e.g.
configs/ingest/covid_blues.yaml). No frame is scored, so every frame carries its video's
score (weak labels) and the frame scorer (Reg-STN and the Table 1 baselines, by
`model.name`, SORD loss) learns from those; the aggregators then turn a video's frame
scores back into one video score, which is what the experts gave.

Per seed and patient fold k: the frame scorer trains on the other folds except k+1, its
best epoch is picked on fold k+1 (never on k); its fold k+1 frame scores train the uninorm
(the frames it did not train on, like the test fold's); its fold k frame scores are graded,
through the uninorm and through the mean, max and majority of frame scores beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lus_dist.aggregator.train import AggregatorConfig
from lus_dist.io.config import ConfigError

from .experiment_graph import StageResources
from .experiment_jobs import Experiment, Job, TrainStep, fold_grid, train_cmd


def frame_step_default() -> TrainStep:
    """The frame scorers' recipe of the severity and Roy experiments."""
    # the POCUS frame recipe (cosine per step, EMA, augmentations, bf16 where native) with
    # SORD targets over the 4 scores; validation frames are kept (predict_splits) to fit
    # the uninorm on
    return TrainStep(epochs=10, overrides=[
        "data.batch_size=32", "data.eval_batch_size=64", "train.max_steps_per_epoch=30",
        "optim.lr=1e-3", "viz_frames=0", "data.num_workers=0", "data.balanced=true",
        "schedule.name=warmup_cosine", "schedule.interval=step", "schedule.warmup=30",
        "schedule.min_lr_ratio=0.05", "train.ema_decay=0.98", "augment={}",
        "train.bf16=native", "model.channels_last=true", "predict_splits=[holdout,test]"])


@dataclass
class SeverityExperimentConfig:
    size: int = 64                 # frame side after packing
    folds: int = 5                 # by patient, stratified by the patient class when given
    seed: int = 0                  # of the fold assignment
    max_frames: int = 24           # per clip, evenly spaced (0: all); bounds CPU time
    pack_workers: int = 2
    parallel: int = 2              # training runs at once (each one process, one thread)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    # frame scorers by model.name: Reg-STN (its crops are drawn) and Table 1 baselines
    models: list[str] = field(default_factory=lambda: ["regstn_fixed"])
    frame: TrainStep = field(default_factory=frame_step_default)
    aggregator: AggregatorConfig = field(default_factory=lambda: AggregatorConfig(
        target="video_score", sord=True, epochs=30))
    examples: bool = True          # STN crop picture and one localisation GIF per score
    keep_checkpoints: bool = False
    # --launcher slurm: per stage nodes, processes / GPUs per node, CPUs, time, partition,
    # sbatch flags (e.g. slurm.regstn.gpus_per_node=4)
    slurm: StageResources = field(default_factory=StageResources)

    def __post_init__(self) -> None:
        check_frame_grid(self.folds, self.seeds, self.models)


def check_frame_grid(folds: int, seeds: list[int], models: list[str]) -> None:
    """The folds x seeds x frame models of a frame-scorer experiment, or a ConfigError."""
    if folds < 3:
        raise ConfigError(f"folds must be >= 3 (a test, a validation and a training fold), "
                          f"got {folds}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {seeds}")
    if not models or len(set(models)) != len(models):
        raise ConfigError(f"models must be distinct model names, got {models}")


# ---------------------------------------------------------------- data
def table_folder(args) -> str | None:
    """A usage error for a missing clip folder or spec, else None."""
    if not Path(args.data).is_dir():
        return f"{args.data}: no such folder"
    if not args.spec and not args.set:
        return "--spec (a table spec YAML, e.g. configs/ingest/covid_blues.yaml) is required"
    return None


def pack_table(cfg, args, out: Path, frame_scores: str, name: str = "shards"):
    """Ingest the `table` layout as the spec names it (frames scored by `frame_scores`:
    video | patient) and pack; returns the manifest."""
    from data_prep.ingest_table import ingest_table, load_spec
    from data_prep.pack import PackConfig, pack, provenance
    from lus_dist.io.config import to_dict
    from lus_dist.shards.format import Preprocessing

    spec = load_spec(args.spec, [*args.set, f"frame_scores={frame_scores}",
                                 f"max_frames={cfg.max_frames}"])
    report = ingest_table(args.data, spec)
    print(report.summary(), flush=True)
    pcfg = PackConfig(preprocessing=Preprocessing(size=cfg.size), folds=cfg.folds,
                      split_seed=cfg.seed, shard_frames=1024,
                      patient_classes=report.patient_classes)
    prov = provenance("table", args.data, report.skipped, {"spec": to_dict(spec)})
    return pack(report.sources, out / name, pcfg, prov, workers=cfg.pack_workers, progress=False)


def frame_jobs(step: TrainStep, models: list[str], seeds: list[int], folds: int, out: Path,
               shards: Path, classes: tuple[str, ...] | None = None, group: str = "") -> list[Job]:
    """One frame classifier per model, seed and test fold, its epoch picked on the next fold
    (a Job's `route` is its model name). `classes` names the frame targets when they are not
    the 4 scores."""
    extra = (f"frame_classes=[{', '.join(classes)}]",) if classes else ()
    jobs = []
    for seed, fold, tag, val in fold_grid(seeds, folds):
        for model in models:
            run_dir = out / "runs" / group / model / tag
            jobs.append(Job(f"{group}{'/' if group else ''}{model}/{tag}", "regstn", run_dir,
                            train_cmd("regstn", step, run_dir, shards, fold, seed, val,
                                      (f"model.name={model}", *extra)), model, seed))
    return jobs


def _prepare(cfg, args, out: Path):
    return pack_table(cfg, args, out, "video")


def _plan(cfg, args, out: Path) -> list[Job]:
    return frame_jobs(cfg.frame, cfg.models, cfg.seeds, cfg.folds, out, out / "shards")


def _report(cfg, args, jobs, out: Path, command: str, wall: str, manifest) -> Path:
    from .experiment_severity_report import collect, write_report

    return write_report(cfg, collect(cfg, jobs, out), out, command, wall, manifest)


SEVERITY = Experiment(SeverityExperimentConfig, "clips + tables (--spec)", table_folder,
                      _prepare, _plan, _report)
