"""Paper-shaped result tables (Roy et al. 2020 Tables 1-2, segmentation, Barros et al. 2021).

Pure: numbers in, `Table` out; no file or model access here, so the shapes and the
mean +- std arithmetic are tested in isolation and the report layer only gathers data.
A cell that could not be computed is `None` and renders as "n/a"; the table's `note`
says why, so a partially-trained sweep still yields a readable report instead of a crash.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

SETTING2_KS: tuple[int, ...] = (1, 3, 5, 7)
VIDEO_METHOD_ORDER: tuple[str, ...] = ("max_argmax", "argmax_mean", "majority_argmax")  # uninorms follow



@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[object]]
    note: str = ""
    digits: int = 3
    notes: list[str] = field(default_factory=list)

    def cell_text(self, value: object) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.{self.digits}f}"
        if isinstance(value, MeanStd):
            return value.text(self.digits)
        return str(value)

    def is_filled(self) -> bool:
        """True when every cell holds a number or label: what CI requires of a finished table."""
        return bool(self.rows) and all(self.cell_text(v) != "n/a" for r in self.rows for v in r)

    def to_markdown(self) -> str:
        head = f"### {self.title}\n\n"
        if not self.rows:
            return head + f"_No data: {self.note or 'nothing to report'}_\n"
        lines = ["| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(self.cell_text(v) for v in r) + " |" for r in self.rows]
        tail = "".join(f"\n_{n}_\n" for n in ([self.note] if self.note else []) + self.notes)
        return head + "\n".join(lines) + "\n" + tail

    def to_csv(self) -> str:
        """Machine-readable: mean and std go to separate columns, n/a to empty cells."""
        columns: list[str] = []
        for i, c in enumerate(self.columns):
            if any(isinstance(r[i], MeanStd) for r in self.rows):
                columns += [f"{c} mean", f"{c} std"]
            else:
                columns.append(c)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in self.rows:
            out: list[object] = []
            for i, v in enumerate(r):
                split = any(isinstance(rr[i], MeanStd) for rr in self.rows)
                if isinstance(v, MeanStd):
                    out += [_num(v.mean), _num(v.std)]
                elif split:
                    out += [_num(v), ""]
                else:
                    out.append(_num(v))
            w.writerow(out)
        return buf.getvalue()


def _num(v: object) -> object:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float
    n: int

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_std(values: Sequence[float | None]) -> MeanStd:
    """Mean and sample std (ddof=1, as over CV folds); missing folds are left out, not zeroed."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return MeanStd(math.nan, math.nan, 0)
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return MeanStd(m, 0.0, len(xs))
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return MeanStd(m, math.sqrt(var), len(xs))


# ---- Roy et al. Table 1: frame-based scores --------------------------------------------
@dataclass
class FrameScores:
    """One frame model's F1: Setting 1 = all frames; Setting 2 = K frames dropped each side
    of every score transition within a video (computed by lus_dist.training.metrics)."""
    model: str
    f1_setting1: float | None
    f1_setting2: Mapping[int, float | None]


def frame_table(scores: Sequence[FrameScores], note: str = "") -> Table:
    cols = ["Model", "F1 Setting 1"] + [f"F1 Setting 2 (K={k})" for k in SETTING2_KS]
    rows = [[s.model, s.f1_setting1] + [s.f1_setting2.get(k) for k in SETTING2_KS]
            for s in scores]
    return Table("Frame-based scoring (Roy et al. 2020, Table 1 shape; weighted F1)",
                 cols, rows, note=note)


# ---- Roy et al. Table 2: video-based scores -------------------------------------------
def video_method_order(methods: Sequence[str]) -> list[str]:
    """Baselines first, as in the paper, then the uninorm variants in the given order."""
    base = [m for m in VIDEO_METHOD_ORDER if m in methods]
    return base + [m for m in methods if m not in VIDEO_METHOD_ORDER]


def video_table(per_fold: Mapping[str, Sequence[Mapping[str, float]]], note: str = "") -> Table:
    """`per_fold[method]` is a list of {weighted_f1, weighted_precision, weighted_recall}."""
    keys = ("weighted_f1", "weighted_precision", "weighted_recall")
    rows = []
    for method in video_method_order(list(per_fold)):
        folds = per_fold[method]
        rows.append([method] + [mean_std([f.get(k) for f in folds]) for k in keys]
                    + [len(folds)])
    return Table("Video-based scoring (Roy et al. 2020, Table 2 shape; mean ± std over folds)",
                 ["Method", "F1 (weighted)", "Precision (weighted)", "Recall (weighted)", "Folds"],
                 rows, note=note)


# ---- segmentation ---------------------------------------------------------------------
def seg_table(per_arch: Mapping[str, Mapping[str, Mapping[str, float | None]]],
              classes: Sequence[str], note: str = "") -> Table:
    """`per_arch[arch]["dice"|"iou"][class]`; background is not a marker and is left out."""
    markers = [c for c in classes if c != "background"]
    cols = ["Architecture"] + [f"Dice {c}" for c in markers] + [f"IoU {c}" for c in markers]
    rows = []
    for arch, m in per_arch.items():
        rows.append([arch] + [m.get("dice", {}).get(c) for c in markers]
                    + [m.get("iou", {}).get(c) for c in markers])
    return Table("Segmentation (per-class Dice / IoU on the test split)", cols, rows, note=note)


# ---- Barros et al. evaluation.csv -----------------------------------------------------
BARROS_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "specificity")


def barros_columns(classes: Sequence[str]) -> list[str]:
    return ["accuracy"] + [f"{c}_{m}" for c in classes for m in BARROS_METRICS]


def cnnlstm_table(per_fold: Sequence[Mapping[str, float | None]], classes: Sequence[str],
                  title: str = "CNN-LSTM video classification (Barros et al. 2021 evaluation.csv "
                               "columns)", note: str = "") -> Table:
    """One row per fold plus a mean ± std row; recall is the per-class sensitivity."""
    cols = barros_columns(classes)
    rows: list[list[object]] = [[f"fold {i}"] + [f.get(c) for c in cols]
                                for i, f in enumerate(per_fold)]
    if per_fold:
        rows.append(["mean ± std"] + [mean_std([f.get(c) for f in per_fold]) for c in cols])
    return Table(title, ["Fold"] + cols, rows, note=note)


def published_comparison(ours: Mapping[str, Mapping[str, MeanStd | float | None]],
                         published: Mapping[str, float], source: str) -> Table:
    """A paper's headline figures beside each of our methods (`ours[method][metric]`), for
    context only: data sets and sizes differ."""
    methods = list(ours)
    rows = [[k, published[k]] + [ours[m].get(k) for m in methods] for k in published]
    return Table(f"Published figures beside ours ({source})",
                 ["Metric", "Published"] + [f"Ours: {m}" for m in methods], rows)
