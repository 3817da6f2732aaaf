"""`lus experiment roy` on the phantom's ICLUS layout, with both launchers: Roy et al.'s
Table 1 (frame scorers, Settings 1 and 2) and video table with the published rows beside
ours; on the real 2-node Slurm cluster every run is a job, one of them preempted by USR1
part-way, requeued and resumed, and the report's numbers are the local launcher's."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lus.experiment_roy_report import read_published
from lus_dist.io.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("regstn_fixed", "cnn_sord")
PREEMPTED = "regstn_fixed/seed0/fold0"
PUBLISHED = """source: "test figures, not Roy et al.'s"
frame:
  regstn_fixed: {setting1: 0.111, setting2_k1: 0.222}
video:
  uninorm: {weighted_f1: 0.333, weighted_precision: 0.444, weighted_recall: 0.555}
"""
ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
       "LUS_USR1_RESEND_S": "0.2"}


SETTINGS_COLUMNS = ("F1 Setting 1", "F1 Setting 2 (K=1)", "F1 Setting 2 (K=3)", "F1 Setting 2 (K=5)",
                    "F1 Setting 2 (K=7)")


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as fh:
        return {row[next(iter(row))]: row for row in csv.DictReader(fh)}


def settings(published: Path) -> list[str]:
    # 3 folds x 1 seed x 2 frame scorers, 32 px; long enough (4 x 10 steps) for a USR1 to
    # land mid-training
    return ["--folds", "3", "size=32", "seeds=[0]", f"models=[{', '.join(MODELS)}]",
            "frame.epochs=4", "aggregator.epochs=5", f"published={published}",
            'frame.overrides=["data.batch_size=16", "viz_frames=0", "train.max_steps_per_epoch=10",'
            ' "train.deterministic=true", "predict_splits=[holdout,test]"]']


@pytest.fixture(scope="module")
def roy_local(tmp_path_factory) -> Path:
    """The phantom's ICLUS layout and the experiment run by the local launcher."""
    root = tmp_path_factory.mktemp("roy")
    env = {**os.environ, **ENV}
    run = [sys.executable, "-m", "lus"]
    subprocess.run([*run, "prep", "phantom", "--out", str(root / "raw"), "--seed", "0"],
                   env=env, check=True, capture_output=True, timeout=300)
    (root / "published.yaml").write_text(PUBLISHED)
    proc = subprocess.run([*run, "experiment", "roy", "--data", str(root / "raw" / "iclus"),
                           "--out", str(root / "local"), *settings(root / "published.yaml")],
                          env=env, cwd=root, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_the_local_launcher_writes_roys_tables_with_the_published_rows(roy_local):
    report = roy_local / "local" / "report"
    text = (report / "report.md").read_text()
    assert "Missing results" not in text and "did not finish" not in text, text
    assert "No number here was chosen on a test fold" in text
    table1 = rows_of(report / "table1_frames.csv")
    for model in MODELS:     # one seed: a mean; every Setting filled
        ours = table1[f"{model} (ours)"]
        assert all(0 <= float(ours[f"{c} mean"]) <= 1 for c in SETTINGS_COLUMNS), ours
    published = table1["regstn_fixed (published)"]
    assert [published[f"{c} mean"] for c in SETTINGS_COLUMNS[:3]] == ["0.111", "0.222",
                                                                       "not published"]
    assert table1["cnn_sord (published)"]["F1 Setting 1 mean"] == "not published"
    table2 = rows_of(report / "table2_videos.csv")
    for model in MODELS:
        for method in ("max_argmax", "argmax_mean", "majority_argmax",
                       "uninorm (product, off-diag min)"):
            ours = table2[f"{model} + {method} (ours)"]
            assert 0 <= float(ours["F1 mean"]) <= 1 and ours["Folds x seeds"] == "3", ours
    assert [table2["uninorm (published)"][f"{c} mean"] for c in ("F1", "Precision", "Recall")] \
        == ["0.333", "0.444", "0.555"]
    assert (report / "stn_crops_regstn_fixed.png").stat().st_size > 1000   # from packed frames
    assert "test figures, not Roy et al.'s" in text


def test_published_figures_are_checked_before_training(tmp_path):
    path = tmp_path / "published.yaml"
    for body, said in [("frame: {}\n", "needs a `source:`"),
                       ('source: x\nframe: {regstn_fixed: {setting1: 65.1}}\n', "65.1% is 0.651"),
                       ('source: x\nframe: {regstn_fixed: {setting9: 0.5}}\n', "setting9` unknown"),
                       ('source: x\nvideo: {median: {weighted_f1: 0.5}}\n', "['median'] unknown"),
                       ('source: x\ntables: {}\n', "unknown section")]:
        path.write_text(body)
        with pytest.raises(ConfigError, match=re.escape(said)) as err:
            read_published(path)
        assert str(path) in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "lus", "experiment", "roy", "--data",
                           str(tmp_path), "--out", str(tmp_path / "out"), f"published={path}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "unknown section" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_frame_table_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lus", "experiment", "roy", "--data",
                           str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path}: not an ICLUS-layout folder (no frame table" in proc.stderr


def wait_for_log(cluster, job: int, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in cluster.logs(job):
        assert time.monotonic() < deadline, cluster.logs(job)[-3000:]
        assert cluster.job_state(job) not in ("COMPLETED", "FAILED", "CANCELLED"), \
            f"job {job} ended before {needle!r}:\n{cluster.logs(job)[-3000:]}"
        time.sleep(0.3)


@pytest.mark.slurm
@pytest.mark.slow
def test_the_slurm_launcher_survives_a_preemption_and_reports_the_local_numbers(roy_local, slurm2):
    cluster, out = slurm2, roy_local / "slurm"
    r = cluster.run([sys.executable, "-m", "lus", "experiment", "roy", "--data",
                     str(roy_local / "raw" / "iclus"), "--out", str(out), "--launcher", "slurm",
                     *settings(roy_local / "published.yaml")],
                    env={"PYTHONPATH": str(ROOT), **ENV}, cwd=roy_local, check=False, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ids = {m[1]: int(m[2]) for m in re.finditer(r"submitted (\S+): job (\d+)", r.stdout)}
    assert len(ids) == 7 and "report" in ids, ids     # 2 models x 3 folds + the report
    wait_for_log(cluster, ids[PREEMPTED], "steps/epoch", timeout=600)
    cluster.run(["scancel", "--signal=USR1", "--batch", str(ids[PREEMPTED])])

    cluster.wait(ids["report"], timeout=900)
    recs = {n: cluster.job_records(j)[0] for n, j in ids.items()}
    assert {rec["JobState"] for rec in recs.values()} == {"COMPLETED"}, \
        {n: rec["JobState"] for n, rec in recs.items()}
    log = cluster.logs(ids[PREEMPTED])
    assert int(recs[PREEMPTED]["Restarts"]) >= 1 and "resumed from step-" in log, log[-3000:]
    assert {recs[n]["NodeList"] for n in ids if n != "report"} == {"node1", "node2"}
    for table in ("table1_frames.csv", "table2_videos.csv"):   # same plan, same seeds
        assert (out / "report" / table).read_text() == \
            (roy_local / "local" / "report" / table).read_text(), table
