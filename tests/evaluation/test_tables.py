"""Paper-shaped tables: shapes, mean ± std arithmetic, n/a handling, Markdown/CSV rendering."""
from __future__ import annotations

import csv
import io
import math
import statistics

import pytest
from hypothesis import given, strategies as st

from lus_dist.evaluation.tables import (FrameScores, MeanStd, barros_columns, cnnlstm_table,
                                        frame_table, mean_std, seg_table, video_table)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=2, max_size=20))
def test_mean_std_matches_statistics_sample_std(xs):
    ms = mean_std(xs)
    assert ms.n == len(xs)
    assert ms.mean == pytest.approx(statistics.fmean(xs), rel=1e-9, abs=1e-6)
    assert ms.std == pytest.approx(statistics.stdev(xs), rel=1e-6, abs=1e-6)


def test_mean_std_skips_missing_folds_and_handles_empty():
    assert mean_std([0.5, None, float("nan"), 0.7]).n == 2
    assert mean_std([0.5, None]).text() == "0.500"
    empty = mean_std([None])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.text() == "n/a"


def test_frame_table_has_roy_table1_columns_and_flags_missing_cells():
    t = frame_table([FrameScores("regstn_fixed", 0.81, {1: 0.82, 3: 0.84, 5: 0.85, 7: 0.86}),
                     FrameScores("cnn_ce", 0.70, {1: 0.71})])
    assert t.columns == ["Model", "F1 Setting 1", "F1 Setting 2 (K=1)", "F1 Setting 2 (K=3)",
                         "F1 Setting 2 (K=5)", "F1 Setting 2 (K=7)"]
    assert t.rows[0] == ["regstn_fixed", 0.81, 0.82, 0.84, 0.85, 0.86]
    assert not t.is_filled()  # cnn_ce lacks K=3..7
    md = t.to_markdown()
    assert "| regstn_fixed | 0.810 | 0.820 | 0.840 | 0.850 | 0.860 |" in md
    assert "| cnn_ce | 0.700 | 0.710 | n/a | n/a | n/a |" in md
    t2 = frame_table([FrameScores("a", 0.5, {k: 0.5 for k in (1, 3, 5, 7)})])
    assert t2.is_filled()


def test_video_table_orders_baselines_first_and_reports_mean_std():
    folds = lambda f: [{"weighted_f1": f, "weighted_precision": f + 0.1, "weighted_recall": f}
                       for _ in range(2)] + [{"weighted_f1": f + 0.2, "weighted_precision": f,
                                              "weighted_recall": f}]
    t = video_table({"uninorm_product": folds(0.6), "argmax_mean": folds(0.5),
                     "max_argmax": folds(0.4)})
    assert [r[0] for r in t.rows] == ["max_argmax", "argmax_mean", "uninorm_product"]
    f1 = t.rows[2][1]
    assert isinstance(f1, MeanStd) and f1.mean == pytest.approx(0.6 + 0.2 / 3)
    assert t.is_filled()
    rows = list(csv.reader(io.StringIO(t.to_csv())))
    assert rows[0][:3] == ["Method", "F1 (weighted) mean", "F1 (weighted) std"]
    assert float(rows[3][1]) == pytest.approx(f1.mean)
    assert float(rows[3][2]) == pytest.approx(f1.std)


def test_seg_table_leaves_out_background():
    classes = ("background", "pleural_line", "b_line", "consolidation")
    t = seg_table({"unet": {"dice": {c: 0.9 for c in classes}, "iou": {c: 0.8 for c in classes}}},
                  classes)
    assert "Dice background" not in t.columns and len(t.columns) == 7
    assert t.rows[0][1:] == [0.9, 0.9, 0.9, 0.8, 0.8, 0.8] and t.is_filled()


def test_cnnlstm_table_rows_are_folds_plus_summary():
    classes = ("covid", "pneumonia", "healthy")
    cols = barros_columns(classes)
    assert cols[:3] == ["accuracy", "covid_precision", "covid_recall"]
    assert len(cols) == 1 + 4 * 3
    per_fold = [{c: 0.5 + 0.1 * i for c in cols} for i in range(5)]
    t = cnnlstm_table(per_fold, classes)
    assert len(t.rows) == 6 and t.rows[-1][0] == "mean ± std"
    assert t.rows[-1][1].mean == pytest.approx(0.7)
    assert t.is_filled()


def test_empty_table_renders_its_reason():
    t = video_table({}, note="run has no predictions/test.h5")
    assert not t.is_filled()
    assert "No data: run has no predictions/test.h5" in t.to_markdown()


def test_published_comparison_puts_each_method_in_a_column():
    from lus_dist.evaluation.tables import published_comparison
    t = published_comparison({"cnnlstm": {"accuracy": mean_std([0.8, 0.9])},
                              "uninorm": {"accuracy": 0.7}},
                             {"accuracy": 0.93, "covid_recall": 0.97}, "Barros et al. 2021")
    assert t.columns == ["Metric", "Published", "Ours: cnnlstm", "Ours: uninorm"]
    assert t.rows[0][1] == 0.93 and t.rows[0][2].mean == pytest.approx(0.85)
    assert t.rows[1][2:] == [None, None]
    assert "| covid_recall | 0.970 | n/a | n/a |" in t.to_markdown()
