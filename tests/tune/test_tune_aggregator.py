"""Real Ray on loopback: aggregator sweeps end to end, resume after a killed driver, and
loud failure. Each test runs `lus tune` as a subprocess in a loopback-only namespace."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tune_helpers import explain, popen_lus, run_lus, synthetic_predictions

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _space(path: Path, epochs: list[int], **params) -> Path:
    space = {"family": "aggregator", "metric": "mean_weighted_f1", "mode": "max",
             "params": {"tnorm": {"choice": ["product", "lukasiewicz"]},
                        "off_diagonal": {"choice": ["min", "mean", "max"]},
                        "lr": {"loguniform": [1e-3, 1e-1]},
                        "epochs": {"choice": epochs}, **params}}
    path.write_text(yaml.safe_dump(space))
    return path


def _sweep_args(tmp_path: Path, space: Path, preds: Path, name: str, trials: int,
                *extra: str) -> list[str]:
    return ["tune", "aggregator", "--space", str(space), "--predictions", str(preds),
            "--trials", str(trials), "--storage", str(tmp_path / "sweeps"), "--name", name,
            "--num-cpus", "2", *extra]


def test_asha_optuna_sweep_writes_outputs_that_lus_aggregate_reproduces(tmp_path, netns):
    preds = synthetic_predictions(tmp_path / "preds.h5", n_videos=20)
    unseen = synthetic_predictions(tmp_path / "unseen.h5", n_videos=16, seed=5)
    space = _space(tmp_path / "space.yaml", [5, 10, 20])
    # ASHA with the Optuna searcher (the paper's tool), so both are exercised for real
    proc = run_lus(_sweep_args(tmp_path, space, preds, "agg", 8, "--scheduler", "asha",
                               "--search", "optuna", "--test-predictions", str(unseen)), tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "Ray nodes ['127.0.0.1']" in proc.stdout, explain(proc)
    # quiet by default: a line per trial and a summary, none of Ray's tables
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert len(lines) <= 30, explain(proc)
    assert sorted(re.findall(r"^lus tune: trial (\d)/8 ", proc.stdout, re.M)) == list("12345678")
    out = tmp_path / "sweeps" / "agg"
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 8 and table["trial_id"].is_unique
    assert table["mean_weighted_f1"].between(0, 1).all()
    assert {"tnorm", "lr", "argmax_mean/weighted_f1_mean"} <= set(table.columns)
    best = json.loads((out / "best.json").read_text())
    assert best["value"] == pytest.approx(table["mean_weighted_f1"].max(), abs=1e-12)
    # ranked on the folds it reports (said so); graded once on videos no trial saw
    assert "optimistic" in best["selected_on"] and "no trial saw" in best["test_note"]
    assert set(best["test"]) == {"uninorm", "argmax_mean", "max_argmax", "majority_argmax"}
    assert 0 <= best["test"]["uninorm"]["weighted_f1"] <= 1
    assert (out / "metric_vs_trial.png").stat().st_size > 1000

    agg = subprocess.run([sys.executable, "-m", "lus", "aggregate", "--predictions", str(preds),
                          "--config", str(out / "best.yaml"), "--protocol", "kfold",
                          "--out", str(tmp_path / "agg_out")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert agg.returncode == 0, explain(agg)
    assert aggregate_score(tmp_path / "agg_out") == pytest.approx(best["value"], abs=1e-9)


def aggregate_score(out_dir: Path) -> float:
    """Mean weighted F1 of the uninorm from `lus aggregate --out` (its results JSON)."""
    for path in sorted(out_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "mean_weighted_f1" in data:
            return float(data["mean_weighted_f1"])
        for row in data.get("summary", []) if isinstance(data, dict) else []:
            if row.get("method") == "uninorm":
                return float(row["weighted_f1_mean"])
    raise AssertionError(f"no uninorm mean weighted F1 in {sorted(out_dir.iterdir())}")


def _terminated(exp_dir: Path) -> set[str]:
    """Trial ids the saved experiment state records as finished."""
    done: set[str] = set()
    for path in glob.glob(str(exp_dir / "experiment_state-*.json")):
        try:
            state = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, OSError):
            continue   # mid-write; the next poll sees it whole
        for trial_json, _ in state.get("trial_data", []):
            trial = json.loads(trial_json)
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def _results(exp_dir: Path) -> dict[str, list[str]]:
    """trial_id -> the lines of its result.json (one line per report)."""
    out = {}
    for path in exp_dir.glob("*/result.json"):
        lines = path.read_text().splitlines()
        if lines:
            out[json.loads(lines[0])["trial_id"]] = lines
    return out


def test_killed_driver_resumes_keeping_finished_trials(tmp_path, netns):
    preds = synthetic_predictions(tmp_path / "preds.h5", n_videos=20)
    space = _space(tmp_path / "space.yaml", [1000])   # a few seconds per trial: the kill lands mid-sweep
    args = _sweep_args(tmp_path, space, preds, "resume", 6, "--max-concurrent", "1")
    exp_dir = tmp_path / "sweeps" / "resume"
    proc = popen_lus(args, tmp_path, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 120
        while len(_terminated(exp_dir)) < 2:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no 2 finished trials within 120 s"
            time.sleep(0.5)
        finished = _terminated(exp_dir)
        before = {t: lines for t, lines in _results(exp_dir).items() if t in finished}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the driver and the Ray it started
        proc.wait()
    assert len(finished) < 6, "the sweep finished before it could be killed"

    more = run_lus([*args, "--trials", "7", "--resume"], tmp_path)   # argparse: the last wins
    assert more.returncode == 2 and more.stderr.strip().splitlines() == [
        f"lus tune: error: {exp_dir} is a sweep of 6 trials and --resume continues it as it was "
        "started; for 7 trials start a new one with --name"], explain(more)
    resumed = run_lus([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, explain(resumed)
    assert "resuming" in resumed.stdout and "(6 trials;" in resumed.stdout, explain(resumed)
    # the trials finished before the kill are counted, the others said as they finish
    said = re.findall(r"^lus tune: trial (\d)/6 ", resumed.stdout, re.M)
    assert said and int(min(said)) > len(finished) and max(said) == "6", explain(resumed)
    after = _results(exp_dir)
    table = pd.read_csv(exp_dir / "results.csv")
    assert len(table) == 6 and table["trial_id"].is_unique
    assert set(after) == set(table["trial_id"])
    for trial_id, lines in before.items():
        assert after[trial_id] == lines, f"finished trial {trial_id} was re-run"
    assert all(len(lines) == 1 for lines in after.values()), "a trial reported twice"


def test_failing_trials_make_the_sweep_exit_nonzero(tmp_path, netns):
    preds = synthetic_predictions(tmp_path / "preds.h5", n_videos=12)
    # "bogus" passes the schema check (a string) and fails inside its trial
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "family": "aggregator", "metric": "mean_weighted_f1", "base": {"epochs": 5},
        "params": {"variant": {"choice": ["uninorm", "bogus"]}}}))
    proc = run_lus(_sweep_args(tmp_path, space, preds, "fail", 2, "--search", "grid"), tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert "1 trial(s) FAILED" in proc.stderr and "bogus" in proc.stderr, explain(proc)
    table = pd.read_csv(tmp_path / "sweeps" / "fail" / "results.csv")
    assert list(table["variant"]) == ["uninorm"]   # what finished is still written
