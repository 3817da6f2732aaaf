"""Results of `lus experiment pocus`: collect the runs per route, pool the out-of-fold frame
predictions for the uninorm, and write report.md with the pretraining ablation, the
per-epoch validation curves and the paper-shaped tables per route."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lus_dist.shards.format import VIDEO_CLASSES

from .experiment_jobs import frame_model_name

# Barros et al. 2021 (Sensors 21:5486): Xception (ImageNet) + LSTM, 185 POCUS clips, 5-fold CV.
PUBLISHED = {"accuracy": 0.93, "covid_recall": 0.97}
PUBLISHED_SOURCE = ("Barros et al. 2021: ImageNet-pretrained Xception + LSTM, 185 clips, "
                    "5-fold CV; COVID recall = sensitivity")
KEYS = ("accuracy", "covid_recall")
# What this experiment aims at, mean over folds: the better of its routes, and the CNN-LSTM
# alone; below PUBLISHED, which an ImageNet-pretrained Xception reached at 224 px on 185 clips
TARGETS = {"better route": {"accuracy": 0.88, "covid_recall": 0.85},
           "CNN-LSTM": {"accuracy": 0.85, "covid_recall": 0.80}}
MODELS = {"cnnlstm": "CNN-LSTM", "frame": "frame CNN + uninorm"}
TRIED_LOG = "POCUS_TRIED.md"   # in docs/: the attempts against the targets, measured


def frame_predictions_as_video_classes(preds):
    """Frame predictions named as the video classes. The frame classifier trains on the clip
    class with `frame_classes` = the video classes, so its predictions already are; a run
    trained through the 4-way score head keeps the first 3 columns, renormalised."""
    from lus_dist.aggregator.data import FramePredictions

    if tuple(preds.class_names) == tuple(VIDEO_CLASSES):
        return preds
    k = len(VIDEO_CLASSES)
    p = preds.probs[:, :k]
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    return FramePredictions.from_arrays(
        p, preds.video_id, preds.patient_id, preds.frame_index, hospital_id=preds.hospital_id,
        frame_score=preds.frame_score, video_score=preds.video_score,
        video_label=preds.video_label, split=preds.split, class_names=VIDEO_CLASSES,
        source=preds.source)


def merge_predictions(parts: list):
    from lus_dist.aggregator.data import FramePredictions

    cols = ("video_id", "patient_id", "frame_index", "hospital_id", "frame_score",
            "video_score", "video_label", "split")
    cat = {c: np.concatenate([getattr(p, c) for p in parts]) for c in cols}
    return FramePredictions.from_arrays(
        np.concatenate([p.probs for p in parts]), cat.pop("video_id"), cat.pop("patient_id"),
        cat.pop("frame_index"), class_names=parts[0].class_names, source="out-of-fold", **cat)


def collect(cfg, jobs: list, out: Path, cv: bool = True) -> dict:
    """Per route: each (seed, fold)'s CNN-LSTM metrics and run dir, and per seed the pooled
    out-of-fold frame predictions with the aggregator fitted on them (k-fold over the pooled
    predictions; held-out: trained on the training clips', tested on the held-out clips')."""
    from lus_dist.aggregator.data import write_predictions
    from lus_dist.aggregator.train import run_protocol
    from lus_dist.evaluation.sections import epoch_curve

    res: dict = {"missing": [], "routes": {}, "pretrain": []}
    for job in jobs:
        route = res["routes"].setdefault(job.route, {"cnnlstm": [], "frame": [], "runs": {},
                                                     "parts": {}, "aggregate": {}})
        if not job.done():
            res["missing"].append(f"{job.name}: no summary.json (see logs/)")
        elif job.family == "pretrain":
            res["pretrain"].append(job.run_dir)
        elif job.family == "cnnlstm":
            _collect_cnnlstm(job, route, res["missing"])
        else:
            _collect_frame(job, route, res["missing"], ("test",) if cv else ("train", "test"))
    for route in res["routes"].values():
        route["curves"] = {model: [epoch_curve(d, "val_accuracy") for d in dirs]
                           for model, dirs in route["runs"].items()}
    res["knn_curves"] = [epoch_curve(d, "val_knn_accuracy") for d in res["pretrain"]]
    for name, route in res["routes"].items():
        for seed, parts in route["parts"].items():
            oof = merge_predictions(parts)
            write_predictions(out / "predictions" / f"frame_out_of_fold_{name}_seed{seed}.h5", oof)
            protocol = cfg.aggregator_protocol if cv else "train_test"
            agg = run_protocol(oof, cfg.aggregator, protocol,
                               k=min(cfg.folds, len(np.unique(oof.patient_id))), seed=seed)
            route["aggregate"][seed] = agg
            route["frame"] += [dict(m, seed=seed) for m in uninorm_folds(agg)]
    return res


def _collect_cnnlstm(job, route: dict, missing: list) -> None:
    from lus_dist.evaluation.report import cnnlstm_metrics, read_json

    m = cnnlstm_metrics(read_json(job.run_dir / "summary.json"))
    if m is None:
        missing.append(f"{job.name}: summary.json has no test metrics")
        return
    route["cnnlstm"].append(dict(m, seed=job.seed))
    route["runs"].setdefault("cnnlstm", []).append(job.run_dir)
    route.setdefault("by_fold", {}).setdefault(job.name.rsplit("/", 1)[-1], []).append(job.run_dir)


def seed_ensemble(by_fold: dict[str, list[Path]]) -> list[dict]:
    """The CNN-LSTM's seeds as one model: per fold (or the held-out set) the seeds' test
    probabilities are averaged per clip and the mean decides. Only test clips are read, and
    nothing is chosen on them (every seed counts, equally). [] unless a fold has 2+ seeds."""
    import pandas as pd

    from lus_dist.evaluation.report import decisions_metrics

    cols = [f"prob_{c}" for c in VIDEO_CLASSES]
    out = []
    for run_dirs in by_fold.values():
        if len(run_dirs) < 2:
            return []
        tables = [pd.read_csv(d / "predictions" / "test_videos.csv").set_index("video_id")
                  for d in run_dirs]
        mean = sum(t[cols] for t in tables) / len(tables)     # aligned on video_id
        if mean.isna().any().any():
            raise ValueError(f"seed runs {[str(d) for d in run_dirs]} predicted different test clips")
        labels = tables[0]["label"].reindex(mean.index).to_numpy(np.int64)
        known = labels >= 0
        out.append(decisions_metrics(labels[known], mean.to_numpy().argmax(1)[known], VIDEO_CLASSES))
    return out


def _collect_frame(job, route: dict, missing: list, splits: tuple[str, ...]) -> None:
    from lus_dist.aggregator.data import read_predictions
    from lus_dist.evaluation.report import ReportError

    route["runs"].setdefault("frame", []).append(job.run_dir)
    try:
        for split in splits:
            preds = read_predictions(job.run_dir / "predictions" / f"{split}.h5")
            route["parts"].setdefault(job.seed, []).append(frame_predictions_as_video_classes(preds))
    except (ReportError, ValueError) as exc:
        missing.append(f"{job.name}: {exc}")


def uninorm_folds(agg) -> list[dict]:
    """The uninorm's decisions scored per aggregator fold."""
    from lus_dist.evaluation.report import decisions_metrics

    vids = agg.videos
    out = []
    for f in sorted(set(vids["fold"])):
        sel = np.asarray(vids["fold"]) == f
        out.append(decisions_metrics(np.asarray(vids["target"])[sel],
                                     np.asarray(vids["uninorm"])[sel], VIDEO_CLASSES))
    return out


def max_epoch_jump(values: list[float]) -> float | None:
    """Largest change of a validation score between consecutive epochs over the last half
    of training (the stability criterion of the recipe)."""
    tail = values[len(values) // 2:]
    if len(tail) < 2:
        return None
    return float(np.max(np.abs(np.diff(tail))))


def ablation_table(res: dict):
    """Model x route: mean ± std over every (seed, fold), the spread of the per-seed means,
    and the largest epoch-to-epoch jump of validation accuracy in the last half (per run,
    averaged)."""
    from lus_dist.evaluation.tables import Table, mean_std

    rows = []
    for route, r in res["routes"].items():
        for model, label in MODELS.items():
            folds = r[model]
            seeds = sorted({f["seed"] for f in folds})
            seed_means = [np.mean([f["accuracy"] for f in folds if f["seed"] == s]) for s in seeds]
            jumps = [max_epoch_jump(c) for c in r["curves"].get(model, [])]
            rows.append([label, route, *[mean_std([f.get(k) for f in folds]) for k in KEYS],
                         mean_std(seed_means), mean_std(jumps), len(seeds), len(folds)])
        ensemble = seed_ensemble(r.get("by_fold", {}))
        if ensemble:
            rows.append([f"{MODELS['cnnlstm']}, seed ensemble", route,
                         *[mean_std([f.get(k) for f in ensemble]) for k in KEYS], "", "",
                         len(next(iter(r["by_fold"].values()))), len(ensemble)])
    return Table("Pretraining ablation (same folds; mean ± std over seeds x folds)",
                 ["Model", "Route", "Accuracy", "COVID recall", "Accuracy: per-seed means",
                  "Max val-accuracy jump, last half of training", "Seeds", "Folds x seeds"], rows,
                 note="frame CNN + uninorm folds are the aggregator's folds over the pooled "
                      "out-of-fold frame predictions; the jump is of the frame classifier's or "
                      "CNN-LSTM's own validation accuracy (EMA weights), target < 0.10; a seed "
                      "ensemble averages every seed's test probabilities per clip (its folds "
                      "are the test folds)")


def targets_table(ours: dict):
    """Each target beside the best of our models it applies to (by mean accuracy) and the
    gap, so a miss is stated with its size rather than hidden."""
    from lus_dist.evaluation.tables import Table

    rows = []
    for target, bar in TARGETS.items():
        pool = {m: v for m, v in ours.items() if target != "CNN-LSTM" or m.startswith("CNN-LSTM")}
        best = max(pool, key=lambda m: pool[m]["accuracy"].mean)
        rows += [target_row(target, best, k, want, pool[best][k].mean) for k, want in bar.items()]
    return Table("Targets of this experiment (mean over folds)", TARGET_COLUMNS, rows)


TARGET_COLUMNS = ["Target", "Our best", "Metric", "Target value", "Ours", "Verdict"]


def target_row(target: str, best: str, metric: str, want: float, got: float) -> list:
    """One row of a targets table: a miss is stated with its size rather than hidden."""
    return [target, best, metric, want, got, "met" if got >= want else f"missed by {want - got:.3f}"]


def mean_curve(curves: list[list[float]]) -> np.ndarray | None:
    """Epoch-wise mean over runs, over the epochs every run has (None without curves)."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    n = min(map(len, curves))
    return np.mean([c[:n] for c in curves], 0)


def curves_figure(rep, res: dict) -> None:
    """Mean per-epoch validation accuracy per model and route, and the pretraining kNN."""
    curves = {f"{label.split(' +')[0]} ({route})": r["curves"].get(model, [])
              for route, r in res["routes"].items() for model, label in MODELS.items()}
    curves["pretraining kNN accuracy"] = res["knn_curves"]
    mean_curves_figure(rep, curves, "validation accuracy")


def mean_curves_figure(rep, curves: dict[str, list[list[float]]], ylabel: str) -> None:
    """One line per name: the epoch-wise mean of its runs' validation curves."""
    from lus_dist.evaluation import plots

    means = {name: m for name, runs in curves.items() if (m := mean_curve(runs)) is not None}
    if means:
        rep.image(plots.curves_png(means, rep.out / "validation_curves.png",
                                   "validation per epoch (mean over folds and seeds)", ylabel),
                  "per-epoch validation curves")


def route_tables(rep, name: str, r: dict, cfg, cv: bool) -> None:
    """Barros et al.'s columns for both models, Roy et al.'s video and frame tables."""
    from lus_dist.evaluation.report import (ReportError, confusion_and_roc, frame_scores_of,
                                            read_video_predictions, video_folds_of)
    from lus_dist.evaluation.tables import cnnlstm_table, frame_table, video_table

    rep.text(f"## Route: {name}")
    rep.table(cnnlstm_table(r["cnnlstm"], VIDEO_CLASSES, title=f"CNN-LSTM video classification, "
                            f"{name} (Barros et al. 2021 evaluation.csv columns)",
                            note="" if r["cnnlstm"] else "no finished CNN-LSTM fold"),
              f"cnnlstm_evaluation_{name}")
    preds = []
    for run_dir in r["runs"].get("cnnlstm", []):
        try:
            preds.append(read_video_predictions(run_dir / "predictions" / "test_videos.csv"))
        except ReportError as exc:
            rep.text(f"_Note: {exc}_")
    if preds:
        confusion_and_roc(rep, f"cnnlstm_{name}", np.concatenate([y for y, _ in preds]),
                          np.concatenate([p for _, p in preds]), VIDEO_CLASSES,
                          f"CNN-LSTM, {name} (test folds pooled)")
    rep.table(cnnlstm_table(r["frame"], VIDEO_CLASSES, title=f"Frame CNN + uninorm aggregator, "
                            f"{name} (Barros et al. evaluation.csv columns)",
                            note="" if r["frame"] else "no out-of-fold frame predictions"),
              f"uninorm_evaluation_{name}")
    per_fold: dict = {}
    for agg in r["aggregate"].values():
        for method, folds in video_folds_of(agg).items():
            per_fold.setdefault(method, []).extend(folds)
    rep.table(video_table(per_fold, note="video label target; aggregator CV over the pooled "
                                         "out-of-fold frame predictions"), f"video_table_{name}")
    # one out-of-fold set per seed (a clip's frames once per seed); the figures pool seeds
    oofs = {seed: merge_predictions(tested) for seed, parts in r["parts"].items()
            if (tested := [p for p in parts if (p.split == "test").all()])}
    if oofs:
        model = frame_model_name(cfg.frame)
        rep.table(frame_table([frame_scores_of(f"{model}, {name} (out-of-fold, seed {seed})", oof)
                               for seed, oof in oofs.items()],
                              note="frame target = the clip's class, constant within a clip, so "
                                   "Setting 2 equals Setting 1 here"), f"frame_table_{name}")
        confusion_and_roc(rep, f"frame_{name}", np.concatenate([o.frame_score for o in oofs.values()]),
                          np.concatenate([o.probs for o in oofs.values()]), VIDEO_CLASSES,
                          f"Frame classifier, {name} (out-of-fold, {len(oofs)} seed(s) pooled)")


def write_report(cfg, res: dict, out: Path, command: str, wall: str, manifest,
                 selection: str, cv: bool = True) -> Path:
    from lus_dist.evaluation.report import Report
    from lus_dist.evaluation.tables import mean_std, published_comparison

    rep = Report("POCUS experiment: CNN-LSTM and frame classifier + uninorm", out / "report")
    v = manifest.videos
    counts = {c: int((v["label"] == i).sum()) for i, c in enumerate(VIDEO_CLASSES)}
    rep.text(header_text(command, wall) + f"\n\nData: {len(v['video_id'])} clips {counts}, {int(v['n_frames'].sum())} "
             f"frames packed at {cfg.size}x{cfg.size} (at most {cfg.max_frames or 'all'} evenly "
             f"spaced frames per clip); " + (
                 f"{cfg.folds}-fold CV stratified by class, folds by patient (no clip in two "
                 "folds), assigned once at pack time." if cv else "one model per route trained "
                 "on the --data clips and graded once on the --test-data clips (no CV).")
             + f" Seeds {list(cfg.seeds)}, routes {list(cfg.routes)}.\n\nConfig: `experiment.yaml`.")
    lstm = ("the CNN-LSTM trains on the frozen features of its route's frame CNN (the "
            "best-epoch encoder of the run on the same training folds, selected on the same "
            "validation clips)" if cfg.cnnlstm_features == "frame_cnn" else
            "the CNN-LSTM trains its own encoder, from random weights (route `scratch`) or "
            f"from the pretrained one (`features={cfg.pretrained_cnnlstm}`)")
    rep.text(f"Model selection: {selection}. Pretraining (route `pretrained`) reads only each "
             "fold's training clips (labels unused) and picks its epoch by kNN accuracy on the "
             f"same validation clips; its encoder then starts the frame CNN (fine-tuned); {lstm}."
             + (f" Route `weights` starts the frame CNN from the local file `{cfg.init_weights}`"
                " (fine-tuned; what that file was trained on is outside this experiment)."
                if "weights" in cfg.routes else "")
             + "\n\nCaveats: the uninorm's "
             "folds are drawn over the pooled out-of-fold frame predictions (stratified by "
             "class), not the pack folds. Barros et al.'s figures come from ImageNet-pretrained "
             f"Xception at 224 px on 185 clips; ours from `{frame_model_name(cfg.frame)}` at "
             f"{cfg.size} px, from random weights or contrastively pretrained on these clips "
             "only" + (", or from the `weights` route's file." if "weights" in cfg.routes else "."))
    if res["missing"]:
        rep.text("**Missing results**:\n\n" + "\n".join(f"- {m}" for m in res["missing"]))
    ours = {f"{label} ({name})": {k: mean_std([f.get(k) for f in r[model]]) for k in KEYS}
            for name, r in res["routes"].items() for model, label in MODELS.items()}
    rep.table(published_comparison(ours, PUBLISHED, PUBLISHED_SOURCE), "published_vs_ours")
    targets = targets_table(ours)
    rep.table(targets, "targets")
    if any(str(row[-1]).startswith("missed") for row in targets.rows):
        rep.text(tried_text())
    rep.table(ablation_table(res), "ablation")
    curves_figure(rep, res)
    for name, r in res["routes"].items():
        route_tables(rep, name, r, cfg, cv)
    return rep.write()


def header_text(command: str, wall: str) -> str:
    return f"Command: `{command}`\n\nWall time: {wall} on {os.cpu_count()} CPU core(s)."


def tried_text(name: str = TRIED_LOG) -> str:
    """What was tried against the missed targets: the project's log of attempts
    (docs/<name>, measured on the real data), so the report says it beside the gap."""
    log = Path(__file__).resolve().parents[1] / "docs" / name
    if not log.is_file():
        return f"A target is missed; what was tried is logged in lus-dist's `docs/{name}`."
    body = log.read_text().split("\n", 1)[1].strip()   # without its own title
    return f"**A target is missed. What was tried so far** (`docs/{name}`):\n\n{body}"
