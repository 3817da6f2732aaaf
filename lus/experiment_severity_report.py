"""Results of `lus experiment severity`: per frame scorer, seed and fold, the uninorm fitted
on the validation fold's frame scores and graded on the test fold beside the mean, max and
majority of the same frame scores; report.md with accuracy, weighted F1 and quadratic-
weighted kappa against the experts, the STN crops on real frames and one localisation GIF
per score."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from lus_dist.shards.format import SCORE_CLASSES

from .experiment_report import (header_text, mean_curves_figure, merge_predictions, target_row,
                                TARGET_COLUMNS, tried_text)

KEYS = {"accuracy": "Accuracy", "weighted_f1": "Weighted F1", "quadratic_kappa": "QW kappa"}
# the better aggregator's floor (a frozen-feature probe sits at 0.32 / 0.04), then the mark
TARGETS = {"floor": {"weighted_f1": 0.45, "quadratic_kappa": 0.40},
           "mark": {"weighted_f1": 0.60, "quadratic_kappa": 0.60}}
# a new user's probe, outside the project: frozen ImageNet EfficientNet-Lite0 features of 16
# evenly spaced frames, the video's mean feature, logistic regression (C 0.1, balanced),
# 5 folds by patient
PROBE = {"64 px": (0.32, 0.32, 0.04), "224 px": (0.29, 0.30, 0.15)}
METHOD_NAMES = {"argmax_mean": "mean of frame probabilities", "max_argmax": "max frame score",
                "majority_argmax": "majority of frame scores"}
TRIED_LOG = "BLUES_TRIED.md"


def fit_and_grade(val, test, cfg, seed: int):
    """The uninorm trained on the validation fold's frame scores (split train), graded on
    the test fold's with the fixed baselines beside (one fold of `run_protocol`)."""
    from lus_dist.aggregator.train import run_protocol

    train = replace(val, split=np.full(len(val.split), "train"))
    test = replace(test, split=np.full(len(test.split), "test"))
    return run_protocol(merge_predictions([train, test]), cfg, "train_test", seed=seed)


def collect(cfg, jobs: list, out: Path) -> dict:
    """Per model: each (seed, fold)'s video metrics per aggregator, the graded videos, the
    test-fold frame predictions (per seed) and the run dirs."""
    from lus_dist.aggregator.data import read_predictions, write_predictions
    from lus_dist.evaluation.report import ReportError, video_folds_of
    from lus_dist.evaluation.sections import epoch_curve

    res: dict = {"missing": [], "models": {}}
    for job in jobs:
        r = res["models"].setdefault(job.route, {"per_fold": {}, "videos": [], "tests": {},
                                                 "runs": [], "curves": []})
        if not job.done():
            res["missing"].append(f"{job.name}: no summary.json (see logs/)")
            continue
        try:
            val, test = (read_predictions(job.run_dir / "predictions" / f"{s}.h5")
                         for s in ("holdout", "test"))
            agg = fit_and_grade(val, test, cfg.aggregator, job.seed)
        except (ReportError, ValueError) as exc:
            res["missing"].append(f"{job.name}: {exc}")
            continue
        for method, folds in video_folds_of(agg).items():
            r["per_fold"].setdefault(method, []).append(dict(folds[0], seed=job.seed))
        r["videos"].append(agg.videos)
        r["tests"].setdefault(job.seed, []).append(test)
        r["runs"].append(job.run_dir)
        r["curves"].append(epoch_curve(job.run_dir, "val_weighted_f1"))
    for model, r in res["models"].items():
        for seed, parts in r["tests"].items():
            write_predictions(out / "predictions" / f"frame_out_of_fold_{model}_seed{seed}.h5",
                              merge_predictions(parts))
    return res


def initialisation(step) -> str:
    """Where the frame models' weights start, as the step's overrides say."""
    from .experiment_jobs import ENCODER_KEY

    given = [o.split("=", 1)[1] for o in step.overrides if o.startswith(ENCODER_KEY + "=")]
    return (f"started from `{given[-1]}` (`{ENCODER_KEY}`)" if given else
            "from random weights (no ImageNet or other outside weights)")


def method_label(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def severity_table(res: dict):
    """Model x aggregator: mean ± std over every (seed, fold), and the spread of the
    per-seed means of weighted F1."""
    from lus_dist.evaluation.tables import Table, mean_std, video_method_order

    rows = []
    for model, r in res["models"].items():
        for method in video_method_order(list(r["per_fold"])):
            folds = r["per_fold"][method]
            seeds = sorted({f["seed"] for f in folds})
            per_seed = [np.mean([f["weighted_f1"] for f in folds if f["seed"] == s]) for s in seeds]
            rows.append([model, method_label(method), *[mean_std([f[k] for f in folds]) for k in KEYS],
                         mean_std(per_seed), len(seeds), len(folds)])
    return Table("Video-level severity against the experts (mean ± std over folds x seeds)",
                 ["Frame model", "Aggregator", *KEYS.values(), "Weighted F1: per-seed means",
                  "Seeds", "Folds x seeds"], rows,
                 note="the same test-fold frame scores go through every aggregator; the "
                      "uninorm is fitted on the validation fold's frame scores")


def targets_table(res: dict):
    """Per frame model, its better aggregator (the higher mean weighted F1 of the four, all
    shown above) against the floor and the mark."""
    from lus_dist.evaluation.tables import Table

    rows = []
    for model, r in res["models"].items():
        if not r["per_fold"]:
            continue
        means = {m: {k: float(np.mean([f[k] for f in folds])) for k in KEYS}
                 for m, folds in r["per_fold"].items()}
        best = max(means, key=lambda m: means[m]["weighted_f1"])
        for target, bar in TARGETS.items():
            rows += [target_row(target, f"{model} + {method_label(best)}", k, want, means[best][k])
                     for k, want in bar.items()]
    return Table("Targets (mean over folds x seeds)", TARGET_COLUMNS, rows,
                 note="'Our best' is the better of the four aggregators compared on the same "
                      "test folds (every one is in the table above): a comparison, not a "
                      "selection any other number depends on")


def probe_table():
    from lus_dist.evaluation.tables import Table

    return Table("For scale: a frozen-feature probe (outside the project)",
                 ["Probe", "Accuracy", "Weighted F1", "QW kappa"],
                 [[f"ImageNet EfficientNet-Lite0 features, video mean, logistic regression, {size}",
                   *vals] for size, vals in PROBE.items()],
                 note="16 evenly spaced frames per video, frozen features, C = 0.1 balanced, "
                      "5 folds by patient")


def confusion_figure(rep, res: dict) -> None:
    from lus_dist.evaluation import plots
    from lus_dist.training.metrics import confusion_matrix

    for model, r in res["models"].items():
        if r["videos"]:
            y = np.concatenate([v["target"] for v in r["videos"]]).astype(np.int64)
            p = np.concatenate([v["uninorm"] for v in r["videos"]]).astype(np.int64)
            path = plots.confusion_png(confusion_matrix(y, p, len(SCORE_CLASSES)), SCORE_CLASSES,
                                       rep.out / f"confusion_uninorm_{model}.png",
                                       f"{model} + uninorm, test folds x seeds pooled")
            rep.image(path, f"{model} + uninorm: video scores vs the experts")


def frame_scores_table(rep, res: dict) -> None:
    from lus_dist.evaluation.report import frame_scores_of
    from lus_dist.evaluation.tables import frame_table

    scores = [frame_scores_of(f"{model} (out-of-fold, seed {seed})", merge_predictions(parts))
              for model, r in res["models"].items() for seed, parts in r["tests"].items()]
    if scores:
        rep.table(frame_table(scores, note="frame target = the video's score (weak label): "
                                           "a frame's own state may differ, so frame F1 "
                                           "understates the scorer"), "frame_table")


def write_report(cfg, res: dict, out: Path, command: str, wall: str, manifest) -> Path:
    from lus_dist.evaluation.report import Report

    from .experiment_examples import localisation_examples

    rep = Report("Severity experiment: frame scorer + uninorm against expert video scores",
                 out / "report")
    v = manifest.videos
    counts = np.bincount(v["video_score"][v["video_score"] >= 0], minlength=len(SCORE_CLASSES))
    rep.text(header_text(command, wall) +
             f"\n\nData: {len(v['video_id'])} clips of {len(np.unique(v['patient_id']))} patients "
             f"({manifest.provenance.get('src')}), scores {dict(enumerate(counts.tolist()))}, "
             f"{int(v['n_frames'].sum())} frames packed at {cfg.size}x{cfg.size} (at most "
             f"{cfg.max_frames or 'all'} evenly spaced per clip); {cfg.folds} folds by patient "
             "(stratified by the patient class where the data has one), assigned once at pack "
             f"time. Seeds {list(cfg.seeds)}, frame models {list(cfg.models)} "
             f"{initialisation(cfg.frame)}.\n\nConfig: `experiment.yaml`.")
    rep.text("Targets: the video score is the one the dataset's experts gave each video (the "
             "per-video table the spec names, e.g. COVID-BLUES' `severity.csv`, Soldati et al. "
             "2020's 0-3 scale). Frames carry no score of their own: every frame is trained "
             "on its video's score (weak labels).\n\nSelection: per seed and test fold k, the "
             "frame model trains on the other folds except k+1 and its best epoch (highest "
             "frame weighted F1) is picked on fold k+1; the uninorm is trained on fold k+1's "
             "frame scores (frames the frame model never trained on); both are graded once "
             "on fold k. The mean, max and majority baselines fit nothing. No number here "
             "was chosen on a test fold.")
    if res["missing"]:
        rep.text("**Missing results**:\n\n" + "\n".join(f"- {m}" for m in res["missing"]))
    rep.table(severity_table(res), "severity")
    targets = targets_table(res)
    rep.table(targets, "targets")
    if any(str(row[-1]).startswith("missed") and row[0] == "floor" for row in targets.rows):
        rep.text(tried_text(TRIED_LOG))
    rep.table(probe_table(), "probe")
    mean_curves_figure(rep, {model: r["curves"] for model, r in res["models"].items()},
                       "validation weighted F1 (frames)")
    confusion_figure(rep, res)
    frame_scores_table(rep, res)
    if cfg.examples:
        localisation_examples(rep, res, manifest)
    return rep.write()
