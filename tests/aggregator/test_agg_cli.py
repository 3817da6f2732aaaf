"""`lus aggregate` end to end, through the real dispatcher."""
from __future__ import annotations

import json

import numpy as np

from agg_synthetic import synthetic_predictions
from lus.cli import main as lus
from lus_dist.aggregator.data import read_predictions, write_predictions
from lus_dist.aggregator.train import AggregatorConfig, run_protocol
from lus_dist.io.config import save_config
from test_agg_data import authors_files


def test_aggregate_writes_results_and_reproduces_a_saved_config(tmp_path, capsys):
    preds = synthetic_predictions(n_videos=20, lengths=(5, 30), seed=6)
    path = write_predictions(tmp_path / "preds.parquet", preds)
    cfg = AggregatorConfig(off_diagonal="max", linear=True, lr=0.1, epochs=10)
    save_config(cfg, tmp_path / "best.yaml")
    rc = lus(["aggregate", "--predictions", str(path), "--config", str(tmp_path / "best.yaml"),
              "--protocol", "stratified_kfold", "--folds", "4", "--seed", "3",
              "--out", str(tmp_path / "out"), "--save-model", str(tmp_path / "agg.pt")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "uninorm" in printed and "argmax_mean" in printed and "max_argmax" in printed
    blob = json.loads((tmp_path / "out" / "results.json").read_text())
    expected = run_protocol(read_predictions(path), cfg, "stratified_kfold", k=4, seed=3)
    assert blob["mean_weighted_f1"] == expected.mean_weighted_f1
    assert set(blob["per_fold"]) == {"uninorm", "argmax_mean", "max_argmax", "majority_argmax"}
    assert len(blob["per_fold"]["uninorm"]) == 4
    csv_rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4 * 4
    assert (tmp_path / "agg.pt").is_file()


def test_overrides_change_the_config(tmp_path, capsys):
    path = write_predictions(tmp_path / "p.h5", synthetic_predictions(n_videos=12, lengths=(3, 9)))
    assert lus(["aggregate", "--predictions", str(path), "tnorm=lukasiewicz", "epochs=2",
                "--protocol", "lopo", "--out", str(tmp_path / "o")]) == 0
    blob = json.loads((tmp_path / "o" / "results.json").read_text())
    assert blob["config"]["tnorm"] == "lukasiewicz" and blob["protocol"] == "lopo"
    assert len(blob["per_fold"]["uninorm"]) == 6  # 12 videos, 2 per patient


def test_errors_name_the_problem(tmp_path, capsys):
    assert lus(["aggregate", "--predictions", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5: predictions file not found" in capsys.readouterr().err
    path = write_predictions(tmp_path / "p.h5", synthetic_predictions(n_videos=6, lengths=(3, 9)))
    assert lus(["aggregate", "--predictions", str(path), "loss=hinge"]) == 2
    assert "loss='hinge'" in capsys.readouterr().err
    assert lus(["aggregate", "--predictions", str(path), "--folds", "9"]) == 2
    assert "9 folds from 3 patients" in capsys.readouterr().err


def test_authors_format_through_the_cli(tmp_path, capsys):
    pkl, ann, vmap = authors_files(tmp_path)
    args = ["aggregate", "--predictions", str(pkl), "--annotations", str(ann),
            "--video-map", str(vmap), "--protocol", "lovo", "epochs=2",
            "--export", str(tmp_path / "imported.h5")]
    assert lus(args) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not (tmp_path / "imported.h5").exists()
    assert lus(args + ["--allow-pickle"]) == 0
    imported = read_predictions(tmp_path / "imported.h5")
    assert np.array_equal(np.unique(imported.video_score), [-1, 0, 2])
    assert "1 video(s) without a target were left out" in capsys.readouterr().out
