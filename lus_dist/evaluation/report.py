"""Gather run outputs into the paper-shaped tables and write report.md + CSV + PNG.

A run directory is read through what the engine writes (summary.json, predictions/,
config.yaml, best.pt); nothing is retrained except the cheap uninorm aggregator when no
`lus aggregate` output is given. Each table says which run lacked what it needs instead
of failing the whole report.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lus_dist.training.metrics import confusion_matrix, decision_metrics, frame_metrics, setting2_mask
from lus_dist.shards.format import VIDEO_CLASSES

from . import plots
from .tables import SETTING2_KS, FrameScores, Table


class ReportError(ValueError):
    """A run directory that cannot be reported on at all (the message names it)."""


# ---------------------------------------------------------------- run directories
@dataclass
class RunInfo:
    path: Path
    family: str                    # a registered family (lus_dist.engine.registry)
    name: str
    summary: dict = field(default_factory=dict)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None


def load_run(path: str | Path) -> RunInfo:
    """The family comes from summary.json (written when a run finishes)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a run directory")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ReportError(f"{path}: no summary.json (the run has not finished; "
                          "resume it with `lus train ... --run-dir {path} --resume auto`)")
    summary = read_json(summary_path)
    family = summary.get("family")
    from lus_dist.engine import registry as families
    if family not in families.names():
        raise ReportError(f"{summary_path}: unknown family {family!r} (registered: "
                          f"{', '.join(families.names())})")
    return RunInfo(path, family, str(summary.get("model") or summary.get("name") or path.name),
                   summary)


# ---------------------------------------------------------------- frame level (Table 1)
def frame_scores(model: str, probs: np.ndarray, scores: np.ndarray, videos: np.ndarray,
                 frames: np.ndarray) -> FrameScores:
    """Weighted F1 over annotated frames, all of them (Setting 1) and without the K frames
    each side of a within-video score change (Setting 2)."""
    known = scores >= 0
    if not known.any():
        return FrameScores(model, None, {})
    pred = probs.argmax(1)
    k = probs.shape[1]

    def f1(keep: np.ndarray) -> float | None:
        sel = keep & known
        return frame_metrics(scores[sel], pred[sel], k)["weighted_f1"] if sel.any() else None

    s2 = {K: f1(setting2_mask(videos, scores, K, frames)) for K in SETTING2_KS}
    return FrameScores(model, f1(np.ones_like(known)), s2)


def frame_scores_of(name: str, preds) -> FrameScores:
    """From a FramePredictions (lus_dist.aggregator.data)."""
    return frame_scores(name, preds.probs, preds.frame_score, preds.video_id, preds.frame_index)


# ---------------------------------------------------------------- video level (Table 2)
def uninorm_label(config: Mapping) -> str:
    """`uninorm (product, off-diag min)`; another variant is named once: `uninorm hierarchy (...)`."""
    variant = config.get("variant", "uninorm")
    name = "uninorm" if variant == "uninorm" else f"uninorm {variant}"
    return f"{name} ({config.get('tnorm', '?')}, off-diag {config.get('off_diagonal', '?')})"


def video_folds_of(result) -> dict[str, list[dict[str, float]]]:
    """ProtocolResult (or its JSON) -> method -> per-fold metrics, uninorm named by config."""
    per_fold = result["per_fold"] if isinstance(result, Mapping) else result.per_fold
    config = result["config"] if isinstance(result, Mapping) else result.config
    return {(uninorm_label(config) if m == "uninorm" else m): folds
            for m, folds in per_fold.items()}


def aggregate_for(preds, seed: int = 0, k: int = 5, cfg=None):
    """The uninorm with default options when no `lus aggregate` output was given: scored by
    the video score when the data has one, else by the video label."""
    from lus_dist.aggregator.train import AggregatorConfig, run_protocol
    if cfg is None:
        target = "video_score" if (preds.video_score >= 0).any() else "video_label"
        cfg = AggregatorConfig(target=target, sord=target == "video_score")
    n_patients = len(np.unique(preds.patient_id))
    return run_protocol(preds, cfg, "kfold", k=min(k, n_patients), seed=seed)


def read_aggregate_dir(path: str | Path) -> dict:
    """The results JSON `lus aggregate --out DIR` writes (first *.json holding per_fold)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    for f in files:
        data = read_json(f)
        if isinstance(data, dict) and "per_fold" in data:
            return data
    raise ReportError(f"{path}: no aggregate results (a JSON with 'per_fold'); "
                      "run `lus aggregate --predictions ... --out DIR` first")


# ---------------------------------------------------------------- CNN-LSTM (Barros et al.)
def cnnlstm_metrics(summary: Mapping) -> dict[str, float] | None:
    """The run's test-split video metrics as Barros et al.'s evaluation.csv columns."""
    test = summary.get("test") or {}
    return dict(test) if "accuracy" in test else None


def read_video_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The CNN-LSTM's per-video test probabilities (video_id, label, prob_<class>...)."""
    import pandas as pd
    if not Path(path).is_file():
        raise ReportError(f"{path}: not found (no per-video predictions for the figures)")
    df = pd.read_csv(path)
    cols = [f"prob_{c}" for c in VIDEO_CLASSES]
    missing = [c for c in ["label", *cols] if c not in df.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}")
    known = df["label"].to_numpy() >= 0
    return df["label"].to_numpy(np.int64)[known], df[cols].to_numpy(np.float64)[known]


def decisions_metrics(y: np.ndarray, pred: np.ndarray, classes) -> dict[str, float]:
    """Barros et al.'s columns from hard decisions (the aggregator reports classes, not
    probabilities, so there is no AUC here)."""
    return decision_metrics(np.asarray(y, np.int64), np.asarray(pred, np.int64), classes)


# ---------------------------------------------------------------- segmentation
def seg_metrics(summary: Mapping) -> dict | None:
    test = summary.get("test") or {}
    if "dice" in test and "iou" in test:
        return {"dice": test["dice"], "iou": test["iou"]}
    flat = {k: v for k, v in test.items() if re.match(r"^(dice|iou)_", k)}
    if not flat:
        return None
    out: dict[str, dict[str, float]] = {"dice": {}, "iou": {}}
    for k, v in flat.items():
        kind, cls = k.split("_", 1)
        out[kind][cls] = v
    return out


# ---------------------------------------------------------------- localisation
def box_coverage(boxes: np.ndarray, masks: np.ndarray, marker_ids: Sequence[int]) -> np.ndarray:
    """Fraction of each frame's marker pixels inside its box (N,4 x0,y0,x1,y1, pixel edges);
    NaN for frames without markers. Pixel (r, c) is inside when its centre is."""
    masks = np.asarray(masks)
    n, h, w = masks.shape
    rows, cols = np.arange(h)[None, :] + 0.5, np.arange(w)[None, :] + 0.5
    b = np.asarray(boxes, np.float64).reshape(n, 4)
    in_r = (rows >= b[:, 1:2]) & (rows < b[:, 3:4])            # (N, H)
    in_c = (cols >= b[:, 0:1]) & (cols < b[:, 2:3])            # (N, W)
    marker = np.isin(masks, list(marker_ids))
    inside = (marker & in_r[:, :, None] & in_c[:, None, :]).sum((1, 2))
    total = marker.sum((1, 2))
    return np.where(total > 0, inside / np.maximum(total, 1), np.nan)


def random_boxes_like(boxes: np.ndarray, height: int, width: int, draws: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(draws, N, 4): boxes of the same sizes placed uniformly inside the frame (clipped
    sizes when a box is larger than the frame): the chance baseline for localisation."""
    b = np.asarray(boxes, np.float64)
    bw = np.minimum(b[:, 2] - b[:, 0], width)
    bh = np.minimum(b[:, 3] - b[:, 1], height)
    x0 = rng.uniform(0, 1, (draws, len(b))) * (width - bw)
    y0 = rng.uniform(0, 1, (draws, len(b))) * (height - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], -1)


def localisation_vs_random(boxes: np.ndarray, masks: np.ndarray, marker_ids: Sequence[int],
                           hit: float = 0.5, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """How often the STN crop holds >= `hit` of the markers, against same-size random boxes."""
    cov = box_coverage(boxes, masks, marker_ids)
    ok = ~np.isnan(cov)
    if not ok.any():
        return {"frames": 0}
    h, w = masks.shape[1:]
    rnd = random_boxes_like(np.asarray(boxes)[ok], h, w, draws, np.random.default_rng(seed))
    rcov = np.stack([box_coverage(r, masks[ok], marker_ids) for r in rnd])
    return {"frames": int(ok.sum()), "stn_hit_rate": float((cov[ok] >= hit).mean()),
            "random_hit_rate": float((rcov >= hit).mean()),
            "stn_mean_coverage": float(cov[ok].mean()), "random_mean_coverage": float(rcov.mean())}


# ---------------------------------------------------------------- writing
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "table"


@dataclass
class Report:
    """An ordered list of Markdown blocks; tables also go to CSV files beside report.md."""
    title: str
    out: Path
    blocks: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    csv_names: set = field(default_factory=set)

    def text(self, md: str) -> None:
        self.blocks.append(md.rstrip() + "\n")

    def table(self, t: Table, csv_name: str | None = None) -> Table:
        self.tables.append(t)
        name = csv_name or slug(t.title.split("(")[0])
        while name in self.csv_names:
            name += "_"
        self.csv_names.add(name)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{name}.csv").write_text(t.to_csv())
        self.blocks.append(t.to_markdown() + f"\nCSV: `{name}.csv`\n")
        return t

    def image(self, path: Path, caption: str) -> None:
        rel = Path(path).resolve().relative_to(self.out.resolve())
        self.blocks.append(f"![{caption}]({rel.as_posix()})\n")

    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "report.md"
        path.write_text(f"# {self.title}\n\n" + "\n".join(self.blocks))
        return path


def confusion_and_roc(rep: Report, stem: str, y: np.ndarray, probs: np.ndarray,
                      classes: Sequence[str], what: str) -> None:
    """Both figures for one set of decisions; classes absent from y are still shown."""
    from lus_dist.training.metrics import roc_auc_per_class
    k = len(classes)
    cm = confusion_matrix(y, probs.argmax(1), k)
    aucs = [None if np.isnan(a) else float(a) for a in roc_auc_per_class(y, probs, k)]
    rep.image(plots.confusion_png(cm, classes, rep.out / f"{stem}_confusion.png",
                                  f"{what}: confusion"), f"{what} confusion matrix")
    rep.image(plots.roc_png(y, probs, classes, rep.out / f"{stem}_roc.png", aucs,
                            f"{what}: ROC"), f"{what} ROC")


def generic_section(rep: Report, family: str, runs: Sequence[RunInfo]) -> None:
    """A family without its own tables: each run's test scores (summary.json) in one table.
    Nothing is written when no run of the family was given."""
    if not runs:
        return
    keys = sorted({k for r in runs for k, v in (r.summary.get("test") or {}).items()
                   if isinstance(v, (int, float))})
    rows = [[r.name, *[(r.summary.get("test") or {}).get(k) for k in keys]] for r in runs]
    selected = sorted({str(r.summary.get("best_selected_on")) for r in runs})
    rep.table(Table(f"{family}: test scores", ["run", *keys], rows,
                    note=f"best epoch selected on: {', '.join(selected)}"), f"{family}_test")
