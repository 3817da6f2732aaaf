"""`lus experiment roy`: Roy et al. 2020's tables on an ICLUS-layout data set, in one command.

The data: the ICLUS layout (a frame table with one expert score per frame, patients and
hospitals, optionally the per-video score sheets; `lus prep phantom` writes one). Every
frame has its own score, so the frame scorers (Reg-STN and the Table 1 baselines, by
`model.name`, SORD or cross-entropy as the model says) learn and are graded on frame
scores; the aggregators turn a video's frame scores into the video's score.

Per seed and patient fold k (the severity experiment's rule): a frame scorer trains on the
other folds except k+1, its best epoch is picked on fold k+1 (never on k); its fold k+1
frame scores train the uninorm; its fold k frame scores are graded, frame by frame for
Table 1 (Setting 1: every frame; Setting 2: K frames dropped each side of a score change)
and per video through the uninorm and the mean, max and majority of frame scores (Table 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lus_dist.aggregator.train import AggregatorConfig

from .experiment_graph import StageResources
from .experiment_jobs import Experiment, Job, TrainStep
from .experiment_severity import check_frame_grid, frame_jobs, frame_step_default

# Reg-STN (fixed-scale crops) and the frame baselines of Roy et al.'s Table 1 that need no
# outside weights: a plain CNN with cross-entropy and with SORD, and the CNN with one
# affine STN (no regularised crops)
TABLE1_MODELS = ["regstn_fixed", "cnn_stn", "cnn_sord", "cnn_ce"]


@dataclass
class RoyExperimentConfig:
    size: int = 64                 # frame side after packing
    folds: int = 5                 # by patient, assigned once at pack time
    seed: int = 0                  # of the fold assignment
    pack_workers: int = 2
    parallel: int = 2              # training runs at once (local launcher)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    models: list[str] = field(default_factory=lambda: list(TABLE1_MODELS))
    frame: TrainStep = field(default_factory=frame_step_default)
    aggregator: AggregatorConfig = field(default_factory=lambda: AggregatorConfig(
        target="video_score", sord=True, epochs=30))
    # YAML of Roy et al.'s published figures to print beside ours (its shape:
    # experiment_roy_report.read_published); empty: the published rows say where they are
    published: str = ""
    examples: bool = True          # STN crop picture and one localisation GIF per score
    keep_checkpoints: bool = False
    # --launcher slurm: per stage nodes, processes / GPUs per node, CPUs, time, partition,
    # sbatch flags (e.g. slurm.regstn.gpus_per_node=4)
    slurm: StageResources = field(default_factory=StageResources)

    def __post_init__(self) -> None:
        check_frame_grid(self.folds, self.seeds, self.models)
        if self.published:   # checked now, not after hours of training
            from .experiment_roy_report import read_published

            self.published = str(Path(self.published).resolve())
            read_published(self.published)


def iclus_folder(args) -> str | None:
    """A usage error for a folder that is not in the ICLUS layout, else None."""
    from data_prep.ingest_iclus import TABLE_NAMES

    root = Path(args.data)
    if not root.is_dir():
        return f"{args.data}: no such folder"
    if not any((root / name).is_file() for name in TABLE_NAMES):
        return (f"{args.data}: not an ICLUS-layout folder (no frame table: "
                f"{', '.join(TABLE_NAMES)})")
    return None


def _prepare(cfg: RoyExperimentConfig, args, out: Path):
    """Ingest the ICLUS layout and pack it with patient folds; returns the manifest."""
    from data_prep.ingest_iclus import ingest_iclus
    from data_prep.pack import PackConfig, pack, provenance
    from lus_dist.shards.format import Preprocessing

    report = ingest_iclus(args.data)
    print(report.summary(), flush=True)
    pcfg = PackConfig(preprocessing=Preprocessing(size=cfg.size), folds=cfg.folds,
                      split_seed=cfg.seed, shard_frames=1024)
    return pack(report.sources, out / "shards", pcfg, provenance("iclus", args.data, report.skipped, {}),
                workers=cfg.pack_workers, progress=False)


def _plan(cfg: RoyExperimentConfig, args, out: Path) -> list[Job]:
    return frame_jobs(cfg.frame, cfg.models, cfg.seeds, cfg.folds, out, out / "shards")


def _report(cfg, args, jobs, out: Path, command: str, wall: str, manifest) -> Path:
    from .experiment_roy_report import write_report
    from .experiment_severity_report import collect

    return write_report(cfg, collect(cfg, jobs, out), out, command, wall, manifest)


ROY = Experiment(RoyExperimentConfig, "ICLUS-layout folder", iclus_folder, _prepare, _plan, _report)
