"""The report sections of the built-in families (each family's `report_section` calls one):
Roy et al. Tables 1 and 2 with the STN figures, segmentation Dice/IoU, and Barros et al.'s
CNN-LSTM columns. Every table is always written; one no run could fill says why."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lus_dist.shards.format import MASK_CLASSES, VIDEO_CLASSES

from . import plots
from .report import (Report, ReportError, RunInfo, aggregate_for, cnnlstm_metrics,
                     confusion_and_roc, frame_scores_of, generic_section, localisation_vs_random,
                     read_aggregate_dir, read_video_predictions, seg_metrics,
                     video_folds_of)
from .tables import FrameScores, cnnlstm_table, frame_table, seg_table, video_table

MARKERS = tuple(i for i, c in enumerate(MASK_CLASSES) if c in ("b_line", "consolidation"))


def _predictions(run: RunInfo):
    from lus_dist.aggregator.data import PredictionsError, read_predictions
    path = run.path / "predictions" / "test.h5"
    try:
        return read_predictions(path), None
    except PredictionsError as exc:
        return None, str(exc)


def frame_section(rep: Report, runs: list[RunInfo], aggregate: str | None, n_stn: int) -> None:
    """Tables 1 and 2 first, then each run's figures (confusion, ROC, STN crops)."""
    rows, notes, video_folds, found = [], [], {}, []
    if aggregate:
        video_folds = video_folds_of(read_aggregate_dir(aggregate))
    for run in runs:
        preds, why = _predictions(run)
        found.append(preds)
        if preds is None:
            rows.append(FrameScores(run.name, None, {}))
            notes.append(f"{run.path}: {why}")
            continue
        rows.append(frame_scores_of(run.name, preds))
        if not aggregate:
            prefix = f"{run.name}: " if len(runs) > 1 else ""
            try:
                for m, folds in video_folds_of(aggregate_for(preds)).items():
                    video_folds[prefix + m] = folds
            except ValueError as exc:  # e.g. no video has a target
                notes.append(f"{run.path}: no video table ({exc})")
    why = "no Reg-STN / frame-model run given" if not runs else ""
    rep.table(frame_table(rows, note=why), "table1_frame")
    src = f"from {aggregate}" if aggregate else "uninorm trained k-fold by patient on the test " \
        "predictions (defaults); pass --aggregate for a `lus aggregate` result"
    rep.table(video_table(video_folds, note=why or src), "table2_video")
    for run, preds in zip(runs, found):
        if preds is not None and (preds.frame_score >= 0).any():
            known = preds.frame_score >= 0
            confusion_and_roc(rep, f"frame_{run.path.name}", preds.frame_score[known],
                              preds.probs[known], list(preds.class_names), f"{run.name} frames")
        stn_section(rep, run, n_stn, notes)
    for n in notes:
        rep.text(f"_Note: {n}_")


def stn_section(rep: Report, run: RunInfo, n: int, notes: list[str]) -> None:
    """Boxes on test frames with markers, and how often they hold the markers vs chance."""
    from lus_dist.models.localization import stn_boxes
    from lus_dist.shards.reader import ShardDataset

    from .predict import PredictError, load_run as load_model_run
    if n <= 0:
        return
    try:
        loaded = load_model_run(run.path, "regstn")
    except PredictError as exc:
        notes.append(f"{run.path}: no STN examples ({exc})")
        return
    m = loaded.model
    if not (hasattr(m, "transforms") or hasattr(m, "thetas")):
        return
    d = loaded.config.data
    sel = {"folds": list(d.test_folds)} if d.test_folds else {"split": d.test_split}
    try:
        ds = ShardDataset(d.root, with_masks=True, channels=d.channels,
                          manifest_version=d.manifest_version, **sel)
        items = [ds[i] for i in np.linspace(0, len(ds) - 1, min(len(ds), 256)).astype(int)]
    except Exception as exc:  # no masks packed, shards moved: say so, keep the report
        notes.append(f"{run.path}: no STN examples from {d.root} ({exc})")
        return
    x = np.stack([it["image"] for it in items])
    masks = np.stack([it["mask"] for it in items])
    import torch
    boxes = stn_boxes(m, torch.from_numpy(x)).numpy()
    loc = localisation_vs_random(boxes[:, 0], masks, MARKERS)
    with_markers = np.isin(masks, MARKERS).any((1, 2))
    pool = np.flatnonzero(with_markers) if with_markers.any() else np.arange(len(x))
    pick = pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).astype(int)]
    titles = [f"score {items[i]['score']}" for i in pick]
    path = plots.stn_examples_png(x[pick, 0], boxes[pick], rep.out / f"stn_{run.path.name}.png",
                                  titles, masks[pick], title=f"{run.name}: STN crops on test frames "
                                  "(markers tinted)")
    rep.image(path, f"{run.name} STN crops")
    if loc.get("frames"):
        rep.text(f"Localisation ({run.name}, {loc['frames']} test frames with B-lines or "
                 f"consolidations): crop 1 holds >= half of the marker pixels in "
                 f"{loc['stn_hit_rate']:.0%} of frames vs {loc['random_hit_rate']:.0%} for a "
                 f"random box of the same size (mean coverage {loc['stn_mean_coverage']:.2f} vs "
                 f"{loc['random_mean_coverage']:.2f}).")


def seg_section(rep: Report, runs: list[RunInfo]) -> None:
    per_arch, notes = {}, []
    for run in runs:
        m = seg_metrics(run.summary)
        if m is None:
            notes.append(f"{run.path}/summary.json has no test Dice/IoU")
            m = {}
        per_arch[run.name] = m
    note = "; ".join(notes) or ("" if runs else "no segmentation run given")
    rep.table(seg_table(per_arch, MASK_CLASSES, note=note), "segmentation")


def cnnlstm_section(rep: Report, runs: list[RunInfo]) -> None:
    """One row per run (= per CV fold); figures over the pooled test videos of all runs."""
    folds, notes, ys, ps = [], [], [], []
    for run in runs:
        m = cnnlstm_metrics(run.summary)
        if m is None:
            notes.append(f"{run.path}/summary.json has no test metrics")
        folds.append(m or {})
        try:
            y, p = read_video_predictions(run.path / "predictions" / "test_videos.csv")
            ys.append(y)
            ps.append(p)
        except ReportError as exc:
            notes.append(str(exc))
    note = "; ".join(notes) or ("" if runs else "no CNN-LSTM run given")
    rep.table(cnnlstm_table(folds, VIDEO_CLASSES, note=note), "cnnlstm_evaluation")
    if ys and len(np.concatenate(ys)):
        confusion_and_roc(rep, "cnnlstm", np.concatenate(ys), np.concatenate(ps), VIDEO_CLASSES,
                          "CNN-LSTM test videos")


def epoch_curve(run_dir: Path, metric: str) -> list[float]:
    """A run's per-epoch validation `metric` from its metrics.csv (the last value logged for
    an epoch wins: a resumed run may log an epoch twice)."""
    import csv

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    by_epoch: dict[int, float] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["kind"] == "epoch" and row["name"] == metric:
                by_epoch[int(row["epoch"])] = float(row["value"])
    return [by_epoch[e] for e in sorted(by_epoch)]


def pretrain_section(rep: Report, runs: list[RunInfo]) -> None:
    """Test kNN accuracy per run, the per-epoch kNN curve that picked the epoch, and which
    clips each stage saw (pretraining never reads the test clips)."""
    if not runs:
        return
    generic_section(rep, "pretrain", runs)
    curves = {r.name: epoch_curve(r.path, "val_knn_accuracy") for r in runs}
    if any(curves.values()):
        rep.image(plots.curves_png(curves, rep.out / "pretrain_knn_curves.png",
                                   "pretraining: kNN accuracy of frozen features",
                                   "validation kNN accuracy"), "per-epoch validation kNN accuracy")
    for r in runs:
        data = r.summary.get("data") or {}
        rep.text(f"`{r.name}`: encoder `{r.path / str(r.summary.get('encoder_file', 'encoder.pt'))}`; "
                 + "; ".join(f"{k}: {v}" for k, v in data.items())
                 + f". Pretrained on `{data.get('train', '?')}` only; the epoch was picked on "
                   f"`{r.summary.get('best_selected_on')}`; the test split only graded it.")
