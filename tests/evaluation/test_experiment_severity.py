"""`lus experiment severity` and `lus experiment prospective` on a small synthetic study in
the `table` layout (clips + a per-video score table + a per-patient class table): the
plan's honest selection, the aggregator baselines on the same frame scores, the reports.
The real COVID-BLUES run is a realdata test (skipped without ../shared/data/covid_blues)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lus_dist.io.video import write_video

SPEC = """videos: clips
video_table: scores.csv
video_id: file
score: score
patient_pattern: '^p(\\d+)_'
patient_table: patients.csv
patient_id: pid
patient_class: pcr
classes: {0: negative, 1: positive}
"""
REAL_BLUES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "covid_blues"


def write_study(root: Path, patients: int = 15, videos: int = 2, frames: int = 5,
                size: int = 32) -> Path:
    """Score s = s bright vertical lines (B-line-like) on a dark speckled frame; a patient's
    class is its parity."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(patients):
        for v in range(videos):
            score = (p + v) % 4
            clip = rng.integers(0, 40, (frames, size, size)).astype(np.uint8)
            for k in range(score):
                clip[:, size // 4:, 4 + k * (size // 5)] = 230
            write_video(root / "clips" / f"p{p}_v{v}.mp4", clip)
            rows.append((f"p{p}_v{v}", score))
    pd.DataFrame(rows, columns=["file", "score"]).to_csv(root / "scores.csv", index=False)
    pd.DataFrame({"pid": range(patients), "pcr": [p % 2 for p in range(patients)]}).to_csv(
        root / "patients.csv", index=False)
    (root / "spec.yaml").write_text(SPEC)
    return root


def _preds(video_ids, patients, scores, probs, split):
    from lus_dist.aggregator.data import FramePredictions

    n = len(video_ids)
    return FramePredictions.from_arrays(np.asarray(probs, float), np.asarray(video_ids),
                                        np.asarray(patients), video_score=np.asarray(scores),
                                        frame_score=np.asarray(scores), split=np.full(n, split),
                                        class_names=("score0", "score1", "score2", "score3"))


def test_the_plan_picks_each_epoch_on_the_next_fold_and_keeps_its_frames(tmp_path):
    from lus.experiment_severity import SeverityExperimentConfig, _plan

    cfg = SeverityExperimentConfig(models=["regstn_fixed", "cnn_sord"], seeds=[0, 1])
    jobs = _plan(cfg, None, tmp_path)
    assert len(jobs) == 2 * 5 * 2 and cfg.folds == 5
    for job in jobs:
        test = int(next(c for c in job.cmd if c.startswith("data.test_folds"))[-2])
        val = int(next(c for c in job.cmd if c.startswith("data.val_folds"))[-2])
        assert val == (test + 1) % 5 != test, job.cmd          # never the test fold
        assert f"model.name={job.route}" in job.cmd and "predict_splits=[holdout,test]" in job.cmd
        assert "data.val_split=test" not in job.cmd
    assert {j.route for j in jobs} == {"regstn_fixed", "cnn_sord"}
    assert not any(j.after for j in jobs)


@pytest.mark.learning
def test_the_uninorm_is_fitted_on_validation_frames_and_graded_on_the_test_fold():
    """Validation videos teach the uninorm; only test videos are graded, and every
    aggregator (uninorm, mean, max, majority) is graded on the same test frames."""
    from lus.experiment_severity import SeverityExperimentConfig
    from lus.experiment_severity_report import fit_and_grade

    rng = np.random.default_rng(0)

    def fold(prefix, n_videos, split):
        vids, pats, scores, probs = [], [], [], []
        for v in range(n_videos):
            s = v % 4
            for _ in range(6):
                p = rng.dirichlet(np.ones(4)) * 0.5
                p[s] += 0.5                        # informative frames: the video's score leads
                vids.append(f"{prefix}{v}"), pats.append(f"{prefix}p{v // 2}")
                scores.append(s), probs.append(p)
        return _preds(vids, pats, scores, probs, split)

    agg = fit_and_grade(fold("val", 12, "holdout"), fold("test", 8, "test"),
                        SeverityExperimentConfig().aggregator, seed=0)
    assert set(agg.videos["video_id"]) == {f"test{v}" for v in range(8)}
    assert set(agg.per_fold) == {"uninorm", "argmax_mean", "max_argmax", "majority_argmax"}
    for method, (f,) in agg.per_fold.items():
        assert f["n"] == 8 and f["accuracy"] >= 0.75, (method, f)   # the signal is strong
        assert f["quadratic_kappa"] >= 0.75


def test_patient_decision_is_the_highest_mean_video_probability():
    from lus.experiment_prospective_report import patient_decisions, patient_metrics

    pids = np.array(["a", "a", "b", "b", "c"])
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.45, 0.55], [0.2, 0.8]])
    decided = patient_decisions(pids, probs, positive=1)
    assert decided == {"a": True, "b": False, "c": True}    # a: mean 0.55 positive
    m = patient_metrics(decided, {"a": 1, "b": 1, "c": 0, "d": 1})
    assert m == {"accuracy": 1 / 3, "sensitivity": 0.5, "specificity": 0.0, "patients": 3}


def test_a_missing_spec_and_source_are_usage_errors(tmp_path, capsys):
    from lus.experiment import main

    assert main(["severity", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--spec" in capsys.readouterr().err
    assert main(["severity", "--data", str(tmp_path / "nope"), "--spec", "x.yaml", "--out",
                 str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["prospective", "--data", str(tmp_path), "--spec", "x.yaml", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["severity", "--data", str(tmp_path), "--spec", "x.yaml", "--out",
                 str(tmp_path / "o"), "folds=2"]) == 2
    assert "folds must be >= 3" in capsys.readouterr().err


@pytest.mark.slow
def test_severity_experiment_end_to_end_on_a_synthetic_study(tmp_path, lus_ok):
    """Pack, train Reg-STN per fold, aggregate, report: the tables, the crop picture and a
    GIF per score drawn from the test folds' own clips."""
    study = write_study(tmp_path / "study")
    out = tmp_path / "exp"
    lus_ok("experiment", "severity", "--data", str(study), "--spec", str(study / "spec.yaml"),
           "--out", str(out), "--folds", "3", "size=32", "max_frames=4", "frame.epochs=1",
           "aggregator.epochs=5", "seeds=[0]")
    rep = out / "report"
    table = pd.read_csv(rep / "severity.csv")
    assert len(table) == 4 and table["Folds x seeds"].tolist() == [3] * 4
    assert set(table["Aggregator"]) == {"max frame score", "mean of frame probabilities",
                                        "majority of frame scores", "uninorm (product, off-diag min)"}
    text = (rep / "report.md").read_text()
    assert "picked on fold k+1" in text and "QW kappa" in text
    assert (rep / "stn_crops_regstn_fixed.png").is_file()
    assert sorted(p.name for p in rep.glob("localisation_score*.gif")) == [
        f"localisation_score{s}.gif" for s in range(4)]
    assert (out / "predictions" / "frame_out_of_fold_regstn_fixed_seed0.h5").is_file()


@pytest.mark.slow
def test_prospective_experiment_end_to_end(phantom, tmp_path, lus_ok):
    """Zero-shot from a model trained on the phantom's POCUS clips, and trained here."""
    study = write_study(tmp_path / "study")
    out = tmp_path / "exp"
    lus_ok("experiment", "prospective", "--data", str(study), "--spec", str(study / "spec.yaml"),
           "--source", str(phantom / "raw" / "pocus"), "--out", str(out), "--folds", "3",
           "size=32", "max_frames=4", "here.epochs=1", "source.frame.epochs=1",
           "source.max_frames=4", "source.folds=3", "source.size=32", "aggregator.epochs=5",
           "seeds=[0]")
    table = pd.read_csv(out / "report" / "patients.csv")
    assert table["Folds x seeds"].tolist() == [3, 3]
    text = (out / "report" / "report.md").read_text()
    assert "Wiedemann et al. 2025" in text and "0.79" in text
    assert (out / "predictions" / "zero_shot_seed0.h5").is_file()


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not (REAL_BLUES / "severity.csv").is_file(),
                    reason=f"{REAL_BLUES} absent: the real COVID-BLUES clips are not on this machine")
def test_severity_experiment_runs_on_the_real_clips(tmp_path, lus_ok):
    """The real clips and tables through the whole path at a token size (2 frames per clip,
    1 epoch of 3 steps): every clip packed, every fold graded, the GIFs from the real clips."""
    spec = Path(__file__).resolve().parents[2] / "configs" / "ingest" / "covid_blues.yaml"
    out = tmp_path / "exp"
    lus_ok("experiment", "severity", "--data", str(REAL_BLUES), "--spec", str(spec), "--out",
           str(out), "max_frames=2", "frame.epochs=1", "seeds=[0]", "aggregator.epochs=5",
           "frame.overrides=[train.max_steps_per_epoch=3, 'predict_splits=[holdout,test]']")
    text = (out / "report" / "report.md").read_text()
    assert "284 clips of 50 patients" in text
    assert pd.read_csv(out / "report" / "severity.csv")["Folds x seeds"].tolist() == [5] * 4
    assert len(list((out / "report").glob("localisation_score*.gif"))) == 4


def test_trained_here_from_the_source_model_needs_its_architecture(tmp_path):
    from lus.experiment_prospective import ProspectiveExperimentConfig, source_jobs
    from lus_dist.io.config import ConfigError

    with pytest.raises(ConfigError, match="set here_model=resnet18_ce"):
        ProspectiveExperimentConfig(here_init="source")
    cfg = ProspectiveExperimentConfig(here_init="source", here_model="resnet18_ce", seeds=[3])
    source = source_jobs(cfg, tmp_path)
    assert [j.name for j in source] == ["source/seed3/fold0"]   # test fold 0, epoch on fold 1
    assert "data.val_folds=[1]" in source[0].cmd
