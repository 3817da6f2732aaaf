"""`lus experiment pocus` pieces: frame thinning/labels, the training commands, result plumbing."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from data_prep.records import LoadedVideo, VideoSource
from data_prep.ingest_pocus import subsample, with_frame_labels
from lus.experiment import (PocusExperimentConfig, frame_predictions_as_video_classes, main,
                            merge_predictions, plan_jobs)
from lus.experiment_graph import SKIPPED
from lus.experiment_jobs import Job, run_jobs
from lus_dist.io.config import ConfigError
from lus_dist.evaluation.report import decisions_metrics
from lus_dist.aggregator.data import FramePredictions


@given(st.integers(1, 600), st.integers(0, 64))
def test_subsample_is_sorted_unique_in_range_and_bounded(n, m):
    idx = subsample(n, m)
    assert (np.diff(idx) > 0).all() and idx[0] == 0 and idx[-1] < n
    assert len(idx) == (n if m == 0 or n <= m else m)
    if m != 1:
        assert idx[-1] == n - 1  # evenly spaced over the whole clip


def test_frame_targets_are_the_clip_label_and_ids_are_tagged():
    src = VideoSource("v1", "p1", "h", "convex", 1, -1, "x.mp4",
                      loader=lambda: LoadedVideo(np.zeros((100, 8, 8), np.uint8),
                                                 np.full(100, -1, np.int16)),
                      extra={"n_frames": 100})
    out = with_frame_labels(src, 10, "test:", "test")
    v = out.load()
    assert len(v.frames) == 10 and (v.frame_scores == 1).all()
    assert out.video_id == "test:v1" and out.patient_id == "test:p1"
    assert out.extra == {"split": "test"} and src.extra == {"n_frames": 100}


def test_plan_runs_both_routes_per_fold_with_pretraining_first(tmp_path):
    cfg = PocusExperimentConfig(folds=3)
    jobs = plan_jobs(cfg, tmp_path, tmp_path / "shards", cv=True)
    assert [j.name for j in jobs[:5]] == [
        "scratch/frame/seed0/fold0", "scratch/cnnlstm/seed0/fold0", "pretrain/seed0/fold0",
        "pretrained/frame/seed0/fold0", "pretrained/cnnlstm/seed0/fold0"]
    assert len(jobs) == 3 * 15 and cfg.seeds == [0, 1, 2]   # the default ablation: 3 seeds
    assert {j.seed for j in jobs[-5:]} == {2} and "seed=2" in jobs[-1].cmd
    pre, frame, lstm = jobs[-3:]
    assert "data.test_folds=[2]" in frame.cmd and "model.name=resnet18_ce" in frame.cmd
    assert "data.val_folds=[0]" in frame.cmd    # best epoch picked on the next fold
    # pretraining reads the same training folds: never the test fold
    assert pre.family == "pretrain" and "data.test_folds=[2]" in pre.cmd
    assert "data.val_folds=[0]" in pre.cmd
    assert f"model.kwargs.encoder_weights={pre.run_dir / 'encoder.pt'}" in frame.cmd
    assert frame.after == [pre.name] and not jobs[0].after
    # the CNN-LSTM runs on its route's frame CNN, frozen (trained on the same folds)
    for cnn, rnn in ((jobs[0], jobs[1]), (frame, lstm)):
        assert f"model.kwargs.encoder_weights={cnn.run_dir / 'encoder.pt'}" in rnn.cmd
        assert "features=cached" in rnn.cmd and rnn.after == [cnn.name]
    own = plan_jobs(PocusExperimentConfig(folds=3, cnnlstm_features="own"), tmp_path,
                    tmp_path / "shards", cv=True)
    scratch_lstm, pre_lstm = own[1], own[4]
    assert not any(c.startswith("model.kwargs.encoder_weights") for c in scratch_lstm.cmd)
    assert f"model.kwargs.encoder_weights={own[2].run_dir / 'encoder.pt'}" in pre_lstm.cmd
    assert pre_lstm.after == [own[2].name] and "features=cached" in pre_lstm.cmd
    picked_on_test = plan_jobs(PocusExperimentConfig(folds=3, select_on_next_fold=False,
                                                     routes=["scratch"], seeds=[0]),
                               tmp_path, tmp_path / "shards", cv=True)
    assert len(picked_on_test) == 6
    assert not any(c.startswith("data.val_folds") for c in picked_on_test[-1].cmd)
    held = plan_jobs(PocusExperimentConfig(routes=["scratch"], seeds=[1, 2]), tmp_path,
                     tmp_path / "shards", cv=False)
    assert len(held) == 4 and "predict_splits=[train,test]" in held[0].cmd and "seed=2" in held[3].cmd
    assert not any(c.startswith(("data.test_folds", "data.val_folds")) for c in held[0].cmd)


def test_the_weights_route_starts_the_frame_cnn_from_the_named_file(tmp_path, monkeypatch):
    """A cluster's ImageNet file (or any local encoder file) as a third route: the frame CNN
    starts from it, no pretraining runs, and the CNN-LSTM reads that frame CNN as usual."""
    (tmp_path / "rn18.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)                       # a relative path becomes absolute
    cfg = PocusExperimentConfig(folds=3, routes=["weights"], seeds=[0], init_weights="rn18.pth")
    frame, lstm = plan_jobs(cfg, tmp_path, tmp_path / "shards", cv=True)[:2]
    assert f"model.kwargs.encoder_weights={tmp_path / 'rn18.pth'}" in frame.cmd
    assert frame.route == "weights" and not frame.after and frame.family == "regstn"
    assert f"model.kwargs.encoder_weights={frame.run_dir / 'encoder.pt'}" in lstm.cmd
    assert PocusExperimentConfig().routes == ["scratch", "pretrained"]   # needs a file
    for bad, says in (({"routes": ["weights"]}, "go together"),
                      ({"init_weights": "rn18.pth"}, "go together"),
                      ({"routes": ["weights"], "init_weights": "nope.pth"}, "nope.pth: no such file")):
        with pytest.raises(ConfigError, match=says):
            PocusExperimentConfig(**bad)


@pytest.mark.parametrize("frame_model,encoder", [("cnn_ce", "small_cnn"), ("resnet18_ce", "resnet18")])
def test_pretraining_and_the_cnnlstm_use_the_frame_cnns_encoder(tmp_path, frame_model, encoder):
    """Changing the frame model (e.g. `model.name=resnet18_ce`) must not leave pretraining
    and the CNN-LSTM on the default small CNN's encoder: the frame CNN could not load the
    first's file, and the CNN-LSTM could not load the frame CNN's or the pretrained one."""
    from lus_dist.io.config import load_config
    from lus_dist.families.cnnlstm import CNNLSTMConfig
    from lus_dist.families.pretrain import PretrainConfig

    def resolved(job, cls):
        return load_config(cls, None, job.cmd[job.cmd.index("--run-dir") + 2:]).model.kwargs

    for features in ("frame_cnn", "own"):     # the frame CNN's file, or pretraining's
        cfg = PocusExperimentConfig(folds=3, routes=["pretrained"], seeds=[0],
                                    cnnlstm_features=features)
        cfg.frame.overrides.append(f"model.name={frame_model}")
        pre, frame, lstm = plan_jobs(cfg, tmp_path, tmp_path / "shards", cv=True)[:3]
        assert f"model.name={frame_model}" in frame.cmd
        assert resolved(pre, PretrainConfig)["encoder"] == encoder    # what the frame CNN loads
        assert resolved(lstm, CNNLSTMConfig)["encoder"] == encoder    # the file it reads
        assert resolved(lstm, CNNLSTMConfig)["lstm_units"] == 64      # the rest of the model kept
        assert resolved(pre, PretrainConfig)["proj_dim"] == 128


def test_a_failed_run_skips_the_runs_that_read_it(tmp_path, capsys):
    py = sys.executable
    write = f"import pathlib; pathlib.Path({str(tmp_path / 'ok')!r}).mkdir(); " \
            f"pathlib.Path({str(tmp_path / 'ok' / 'summary.json')!r}).write_text('{{}}')"
    jobs = [Job("bad", "pretrain", tmp_path / "bad", [py, "-c", "raise SystemExit(3)"]),
            Job("child", "regstn", tmp_path / "child", [py, "-c", "pass"], after=["bad"]),
            Job("grandchild", "cnnlstm", tmp_path / "gc", [py, "-c", "pass"], after=["child"]),
            Job("ok", "pretrain", tmp_path / "ok", [py, "-c", write]),
            Job("after-ok", "regstn", tmp_path / "a", [py, "-c", "pass"], after=["ok"])]
    codes = run_jobs(jobs, 2, tmp_path / "logs")
    assert codes == {"bad": 3, "child": SKIPPED, "grandchild": SKIPPED, "ok": 0, "after-ok": 0}
    out = capsys.readouterr().out
    assert "[skipped] child: bad failed" in out and "[skipped] grandchild: bad failed" in out


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_run_drops_its_resumable_checkpoints_unless_kept(tmp_path, keep):
    """A default POCUS experiment on ResNet-18 wrote 18 GB, 12 of them step checkpoints
    that nothing reads once the run has its summary; a failed run keeps them to resume."""
    def run(name: str, code: int) -> Job:
        d = tmp_path / name
        body = (f"import pathlib; d = pathlib.Path({str(d)!r}); "
                "(d / 'checkpoints' / 'step-000000010').mkdir(parents=True); "
                "(d / 'best.pt').write_text('w'); (d / 'summary.json').write_text('{}'); "
                f"raise SystemExit({code})")
        return Job(name, "regstn", d, [sys.executable, "-c", body])

    codes = run_jobs([run("ok", 0), run("failed", 2)], 2, tmp_path / "logs", keep_checkpoints=keep)
    assert codes == {"ok": 0, "failed": 2}
    assert (tmp_path / "ok" / "checkpoints").exists() == keep
    assert (tmp_path / "ok" / "best.pt").is_file() and (tmp_path / "failed" / "checkpoints").is_dir()


def test_frame_predictions_become_video_class_probabilities():
    p = np.array([[0.2, 0.2, 0.1, 0.5], [0.6, 0.2, 0.2, 0.0]])
    preds = FramePredictions.from_arrays(p, np.array(["a", "a"]), np.array(["p", "p"]),
                                         video_label=np.array([0, 0]),
                                         class_names=("score0", "score1", "score2", "score3"))
    out = frame_predictions_as_video_classes(preds)
    assert out.class_names == ("covid", "pneumonia", "healthy")
    np.testing.assert_allclose(out.probs, [[0.4, 0.4, 0.2], [0.6, 0.2, 0.2]])
    both = merge_predictions([out, FramePredictions.from_arrays(
        out.probs, np.array(["b", "b"]), np.array(["q", "q"]), class_names=out.class_names)])
    assert len(both.probs) == 4 and set(both.video_id) == {"a", "b"}
    assert frame_predictions_as_video_classes(out) is out   # trained on the video classes


def test_decisions_metrics_match_the_confusion():
    m = decisions_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]),
                          ("covid", "pneumonia", "healthy"))
    assert m["accuracy"] == 0.75 and m["covid_recall"] == 0.5 and m["covid_precision"] == 1.0
    assert m["pneumonia_specificity"] == pytest.approx(2 / 3)


def _video_csv(run_dir, rows):
    (run_dir / "predictions").mkdir(parents=True)
    lines = ["video_id,label,prob_covid,prob_pneumonia,prob_healthy"]
    lines += [f"{v},{y},{a},{b},{c}" for v, y, (a, b, c) in rows]
    (run_dir / "predictions" / "test_videos.csv").write_text("\n".join(lines) + "\n")


def test_seed_ensemble_averages_each_clips_probabilities_over_seeds(tmp_path):
    from lus.experiment_report import seed_ensemble
    # two seeds each get clip b wrong, but less surely than the other gets it right; the
    # rows come in another order in the second file (aligned by video id)
    _video_csv(tmp_path / "s0", [("a", 0, (0.8, 0.1, 0.1)), ("b", 2, (0.1, 0.5, 0.4)),
                                 ("c", 1, (0.2, 0.7, 0.1))])
    _video_csv(tmp_path / "s1", [("c", 1, (0.1, 0.8, 0.1)), ("a", 0, (0.4, 0.5, 0.1)),
                                 ("b", 2, (0.1, 0.1, 0.8))])
    (folds,) = [seed_ensemble({"fold0": [tmp_path / "s0", tmp_path / "s1"]})]
    assert len(folds) == 1 and folds[0]["accuracy"] == 1.0      # alone: 2/3 each
    assert seed_ensemble({"fold0": [tmp_path / "s0"]}) == []
    _video_csv(tmp_path / "s2", [("z", 0, (0.8, 0.1, 0.1))])
    with pytest.raises(ValueError, match="different test clips"):
        seed_ensemble({"fold0": [tmp_path / "s0", tmp_path / "s2"]})


def test_bad_folder_and_bad_override_are_usage_errors(tmp_path, capsys):
    assert main(["pocus", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a POCUS-layout folder" in capsys.readouterr().err
    (tmp_path / "videos").mkdir()
    assert main(["pocus", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "sise=3"]) == 2
    assert "unknown key(s) ['sise']" in capsys.readouterr().err


@pytest.mark.slow
def test_pocus_experiment_end_to_end_on_the_phantom_clips(phantom, tmp_path, lus_ok):
    """The whole `lus experiment pocus` path on the phantom's POCUS-layout clips (the real
    clips run it in tests only where ../shared/data/pocus exists, and at full size by hand)."""
    from lus_dist.aggregator.data import read_predictions
    from lus_dist.shards.format import VIDEO_CLASSES

    out = tmp_path / "exp"
    proc = lus_ok("experiment", "pocus", "--data", str(phantom / "raw" / "pocus"), "--out",
                  str(out), "--folds", "3", "size=32", "max_frames=6", "cnnlstm.epochs=1",
                  "frame.epochs=2", "aggregator.epochs=5", "pretrain.epochs=2", "seeds=[0, 1]",
                  "pretrain.overrides=[data.batch_size=8, pretrain.knn_bank_frames=64]")
    assert "report:" in proc.stdout
    report = (out / "report" / "report.md").read_text()
    assert "Missing results" not in report and "_No data" not in report
    assert "best epoch is picked on the next fold" in report
    assert "Pretraining ablation" in report and (out / "report" / "validation_curves.png").is_file()
    for name in ("published_vs_ours", "targets", "ablation", *[f"{t}_{route}" for route in
                 ("scratch", "pretrained") for t in ("cnnlstm_evaluation", "uninorm_evaluation",
                                                     "video_table")]):
        assert (out / "report" / f"{name}.csv").stat().st_size > 100, name
    # a missed target brings the log of what was tried (docs/POCUS_TRIED.md) into the report
    assert ("missed by" in report) == ("What was tried so far" in report)
    ablation = (out / "report" / "ablation.csv").read_text()
    assert "pretrained" in ablation and "scratch" in ablation
    run = out / "runs" / "pretrained" / "frame" / "seed0" / "fold0"
    assert (run / "best.pt").is_file() and not (run / "checkpoints").exists()   # pruned when done
    preds = read_predictions(run / "predictions" / "test.h5")
    assert preds.class_names == tuple(VIDEO_CLASSES) and preds.probs.shape[1] == 3


@pytest.mark.slow
def test_the_weights_route_on_the_phantom_clips_reads_an_imagenet_file(phantom, tmp_path, lus_ok):
    """`routes=[weights]` end to end with a file in torchvision's ImageNet layout (random
    weights: nothing is downloaded): every fold's frame CNN loads it, adapted to gray."""
    import torch
    import torchvision

    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out = tmp_path / "exp"
    lus_ok("experiment", "pocus", "--data", str(phantom / "raw" / "pocus"), "--out", str(out),
           "--folds", "3", "size=32", "max_frames=6", "cnnlstm.epochs=1", "frame.epochs=1",
           "aggregator.epochs=5", "seeds=[0]", "routes=[weights]", f"init_weights={weights}")
    report = (out / "report" / "report.md").read_text()
    assert "Missing results" not in report
    assert f"Route `weights` starts the frame CNN from the local file `{weights}`" in report
    assert "weights" in (out / "report" / "ablation.csv").read_text()
    for fold in range(3):
        log = (out / "logs" / f"weights_frame_seed0_fold{fold}.log").read_text()
        assert "conv1.weight: RGB filters adapted to 1 input channel(s)" in log, log[-2000:]
    assert not (out / "runs" / "pretrain").exists()


def test_the_report_quotes_what_was_tried_from_the_docs():
    from lus.experiment_report import TRIED_LOG, tried_text

    text = tried_text()
    log = (Path(__file__).resolve().parents[2] / "docs" / TRIED_LOG).read_text()
    assert text.startswith("**A target is missed. What was tried so far**")
    assert "| recipe" in text and log.splitlines()[0] not in text   # its table, not its title


def test_the_targets_table_says_what_the_targets_are():
    """The report names its targets as this experiment's, with their values, and quotes no
    tracker (neither in the table nor in the log of what was tried)."""
    from lus.experiment_report import TARGETS, targets_table, tried_text
    from lus_dist.evaluation.tables import mean_std
    from test_wording import TRACKER

    ours = {"frame CNN + uninorm (scratch)": {"accuracy": mean_std([0.9, 0.8]), "covid_recall": mean_std([0.9])},
            "CNN-LSTM (scratch)": {"accuracy": mean_std([0.7]), "covid_recall": mean_std([0.6])}}
    table = targets_table(ours)
    assert table.title == "Targets of this experiment (mean over folds)"
    assert [row[3] for row in table.rows] == [v for bar in TARGETS.values() for v in bar.values()]
    assert not TRACKER.search(table.to_markdown() + tried_text())
