"""`lus tune` checks what it can in-process before Ray starts: a sweep that cannot work
exits 2 with one line naming the file and the problem, in seconds, with no trial run."""
from __future__ import annotations

import subprocess
import sys

from tune_helpers import ROOT, explain, synthetic_predictions, tune_env


def _tune(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "lus", "tune", *args], cwd=tmp_path,
                          env=tune_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_too_few_patients_for_the_folds_is_one_line_before_ray(tmp_path):
    preds = synthetic_predictions(tmp_path / "p.h5", n_videos=6)     # 3 patients
    proc = _tune(["aggregator", "--predictions", str(preds), "--trials", "8",
                  "--storage", str(tmp_path / "sweeps")], tmp_path)
    assert proc.returncode == 2, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(preds) in lines[0] and "5 folds from 3 patients" in lines[0]
    assert "Ray" not in proc.stdout and not (tmp_path / "sweeps").exists()
    # the same data with a protocol that fits it passes the check
    from tune.cli import precheck
    from tune.spaces import load_space
    from tune.trainables import aggregator_config_cls
    space = load_space(str(ROOT / "tune" / "spaces" / "aggregator.yaml"))
    precheck("aggregator", aggregator_config_cls(), dict(space.base), space, str(preds),
             "lopo", 5, 0)


def test_missing_shards_and_unknown_keys_fail_before_ray(tmp_path):
    proc = _tune(["cnnlstm", "--config", str(ROOT / "configs" / "cnnlstm.yaml"),
                  f"data.root={tmp_path / 'nowhere'}", "--storage", str(tmp_path / "s")], tmp_path)
    assert proc.returncode == 2, explain(proc)
    assert str(tmp_path / "nowhere") in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _tune(["cnnlstm", "optim.learning_rate=1", "--storage", str(tmp_path / "s")], tmp_path)
    assert proc.returncode == 2 and "learning_rate" in proc.stderr, explain(proc)


def test_a_bad_test_predictions_file_fails_before_the_sweep(tmp_path):
    """--test-predictions is graded after every trial: a file that cannot be read must stop
    the sweep before it starts, named, not after an hour of trials."""
    preds = synthetic_predictions(tmp_path / "p.h5", n_videos=12)
    broken = tmp_path / "test.h5"
    broken.write_bytes(b"not an HDF5 file")
    for bad in (broken, tmp_path / "missing.h5"):
        proc = _tune(["aggregator", "--predictions", str(preds), "--protocol", "lopo",
                      "--test-predictions", str(bad), "--trials", "2",
                      "--storage", str(tmp_path / "sweeps")], tmp_path)
        assert proc.returncode == 2, explain(proc)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].count(str(bad)) == 1, explain(proc)
        assert not (tmp_path / "sweeps").exists()
