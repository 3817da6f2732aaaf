"""Results of `lus experiment roy`: Roy et al. 2020's Table 1 (frame scorers, weighted F1 in
Settings 1 and 2) and Table 2 (video scores through the uninorm and its baselines, weighted
F1 / precision / recall), each of our rows beside the published row of the same method when
a file of published figures is given (`published=FILE`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from lus_dist.evaluation.tables import SETTING2_KS, Table, mean_std, video_method_order
from lus_dist.io.config import ConfigError
from lus_dist.shards.format import SCORE_CLASSES

from .experiment_report import header_text, mean_curves_figure, merge_predictions

FRAME_KEYS = ("setting1", *(f"setting2_k{k}" for k in SETTING2_KS))
VIDEO_KEYS = ("weighted_f1", "weighted_precision", "weighted_recall")
VIDEO_METHODS = ("uninorm", "max_argmax", "argmax_mean", "majority_argmax")
WHERE = ("Roy et al. 2020, IEEE TMI 39(8): Table 1 (frame-based F1, Settings 1 and 2) and "
         "the video-based table; lus-dist does not ship a transcription of them")
SELECTION = (
    "Selection: per seed and test fold k, each frame scorer trains on the other folds except "
    "k+1 and its best epoch (highest frame weighted F1) is picked on fold k+1; the uninorm is "
    "trained on fold k+1's frame scores (frames the scorer never trained on); everything is "
    "graded once on fold k. The mean, max and majority baselines fit nothing. No number here "
    "was chosen on a test fold.")


def read_published(path: str | Path) -> dict:
    """The published figures a user gives (fractions in [0, 1]):

        source: "Roy et al. 2020, IEEE TMI 39(8), Table 1 and the video table"
        frame:  {regstn_fixed: {setting1: F1, setting2_k1: F1, ...}, cnn_sord: {...}}
        video:  {uninorm: {weighted_f1: F1, weighted_precision: P, weighted_recall: R}, ...}

    Frame rows are keyed by our `model.name`, video rows by aggregator (uninorm, max_argmax,
    argmax_mean, majority_argmax). Anything else is a ConfigError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the published figures: {exc}") from None
    if not isinstance(data, dict) or not str(data.get("source") or "").strip():
        raise ConfigError(f"{path}: needs a `source:` saying where the figures are from")
    unknown = sorted(set(data) - {"source", "frame", "video"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; use source, frame, video")
    for section, keys in (("frame", FRAME_KEYS), ("video", VIDEO_KEYS)):
        rows = data.get(section) or {}
        if not isinstance(rows, dict):
            raise ConfigError(f"{path}: `{section}` must map a method to its figures")
        for method, figures in rows.items():
            _check_figures(path, f"{section}.{method}", figures, keys)
        if section == "video" and (bad := sorted(set(rows) - set(VIDEO_METHODS))):
            raise ConfigError(f"{path}: video method(s) {bad} unknown; use {list(VIDEO_METHODS)}")
    return {"source": str(data["source"]), "frame": data.get("frame") or {},
            "video": data.get("video") or {}}


def _check_figures(path: Path, where: str, figures, keys: tuple[str, ...]) -> None:
    if not isinstance(figures, dict) or not figures:
        raise ConfigError(f"{path}: `{where}` must map {list(keys)} to numbers")
    for key, value in figures.items():
        if key not in keys:
            raise ConfigError(f"{path}: `{where}.{key}` unknown; use {list(keys)}")
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{path}: `{where}.{key}` = {value!r}: a fraction in [0, 1] "
                              "(65.1% is 0.651)")


def _published_cells(published: dict | None, section: str, method: str, keys) -> list:
    if published is None:
        return ["not given"] * len(keys)
    figures = published[section].get(method, {})
    return [figures.get(k, "not published") for k in keys]


def frame_scores_by_seed(res: dict) -> dict[str, list]:
    """Model -> one FrameScores per seed, on the seed's pooled out-of-fold test frames."""
    from lus_dist.evaluation.report import frame_scores_of

    return {model: [frame_scores_of(model, merge_predictions(parts))
                    for _, parts in sorted(r["tests"].items())]
            for model, r in res["models"].items()}


def table1(res: dict, published: dict | None) -> Table:
    """Our frame scorers (mean ± std over seeds), each followed by its published row."""
    rows = []
    for model, per_seed in frame_scores_by_seed(res).items():
        s1 = mean_std([s.f1_setting1 for s in per_seed])
        s2 = [mean_std([s.f1_setting2.get(k) for s in per_seed]) for k in SETTING2_KS]
        rows.append([f"{model} (ours)", s1, *s2, len(per_seed)])
        rows.append([f"{model} (published)", *_published_cells(published, "frame", model,
                                                                FRAME_KEYS), "-"])
    return Table("Table 1: frame-based scoring (weighted F1; Roy et al. 2020's shape)",
                 ["Model", "F1 Setting 1", *[f"F1 Setting 2 (K={k})" for k in SETTING2_KS],
                  "Seeds"], rows,
                 note="ours: every test fold's frames pooled per seed (out of fold), mean ± std "
                      "over seeds; Setting 2 drops K frames each side of a score change in a "
                      "video")


def table2(res: dict, published: dict | None) -> Table:
    """Per frame scorer and aggregator: video F1 / precision / recall over folds x seeds;
    the published rows (the authors aggregated Reg-STN's frame scores) follow."""
    rows = []
    for model, r in res["models"].items():
        for method in video_method_order(list(r["per_fold"])):
            folds = r["per_fold"][method]
            rows.append([f"{model} + {method} (ours)", *[mean_std([f[k] for f in folds])
                                                        for k in VIDEO_KEYS], len(folds)])
    for method in VIDEO_METHODS:
        rows.append([f"{method} (published)",
                     *_published_cells(published, "video", method, VIDEO_KEYS), "-"])
    return Table("Table 2: video-based scoring (weighted; Roy et al. 2020's shape)",
                 ["Frame scorer + aggregator", "F1", "Precision", "Recall", "Folds x seeds"],
                 rows, note="ours: mean ± std over every (seed, test fold); the same test-fold "
                            "frame scores go through every aggregator")


def published_text(cfg, published: dict | None) -> str:
    if published is not None:
        return f"Published rows: `{cfg.published}` ({published['source']})."
    return (f"Published rows say `not given`: the figures are in {WHERE}. Give them with "
            "`published=FILE` (its shape: `lus/experiment_roy_report.py:read_published`) to "
            "print them beside ours.")


def data_text(cfg, manifest) -> str:
    v = manifest.videos
    scores = np.bincount(v["video_score"][v["video_score"] >= 0], minlength=len(SCORE_CLASSES))
    return (f"Data: {len(v['video_id'])} videos of {len(np.unique(v['patient_id']))} patients "
            f"({manifest.provenance.get('src')}), video scores "
            f"{dict(enumerate(scores.tolist()))}, {int(v['n_frames'].sum())} frames packed at "
            f"{cfg.size}x{cfg.size}, each with its expert score; {cfg.folds} folds by patient, "
            f"assigned once at pack time. Seeds {list(cfg.seeds)}, frame scorers "
            f"{list(cfg.models)}.\n\nConfig: `experiment.yaml`.")


def write_report(cfg, res: dict, out: Path, command: str, wall: str, manifest) -> Path:
    from lus_dist.evaluation.report import Report

    from .experiment_examples import localisation_examples
    from .experiment_severity_report import confusion_figure

    published = read_published(cfg.published) if cfg.published else None
    rep = Report("Roy et al. 2020's experiment: frame scorers and the uninorm", out / "report")
    rep.text(header_text(command, wall) + "\n\n" + data_text(cfg, manifest))
    rep.text(SELECTION + "\n\n" + published_text(cfg, published))
    if res["missing"]:
        rep.text("**Missing results**:\n\n" + "\n".join(f"- {m}" for m in res["missing"]))
    rep.table(table1(res, published), "table1_frames")
    rep.table(table2(res, published), "table2_videos")
    mean_curves_figure(rep, {model: r["curves"] for model, r in res["models"].items()},
                       "validation weighted F1 (frames)")
    confusion_figure(rep, res)
    if cfg.examples:
        localisation_examples(rep, res, manifest)
    return rep.write()
