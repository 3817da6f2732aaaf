"""`lus experiment pocus --launcher slurm` on the real local 2-node Slurm cluster: every run
its own job, readers after what they read (afterok), a report job at the end; a run made to
fail takes its dependants down (cancelled by Slurm, named in the report and in `status`);
submitting again after the fix runs only what was missing. One cluster, one tiny plan:
3 folds x 1 seed of the scratch route (a frame CNN and the CNN-LSTM on its features)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAIL = "scratch/frame/seed0/fold0"         # its run dir is made a file: `lus train` cannot start
DEPENDANT = "scratch/cnnlstm/seed0/fold0"
SETTINGS = ["--folds", "3", "size=32", "max_frames=6", "frame.epochs=1", "cnnlstm.epochs=1",
            "aggregator.epochs=5", "seeds=[0]", "routes=[scratch]",
            'frame.overrides=["model.name=cnn_ce", "data.batch_size=16", "viz_frames=0",'
            ' "train.max_steps_per_epoch=4", "frame_classes=[covid, pneumonia, healthy]"]']


def lus(cluster, tmp_path: Path, *args: str):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "LUS_USR1_RESEND_S": "0.2"}
    return cluster.run([sys.executable, "-m", "lus", *args], env=env, cwd=tmp_path, check=False,
                       timeout=300)


def submit(cluster, tmp_path: Path, data: Path, out: Path) -> dict[str, int]:
    r = lus(cluster, tmp_path, "experiment", "pocus", "--data", str(data), "--out", str(out),
            "--launcher", "slurm", *SETTINGS)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {m[1]: int(m[2]) for m in re.finditer(r"submitted (\S+): job (\d+)", r.stdout)}


def record(cluster, job: int) -> dict[str, str]:
    return cluster.job_records(job)[0]


@pytest.mark.slurm
@pytest.mark.slow
def test_a_slurm_experiment_runs_as_dependent_jobs_and_resubmits_what_failed(phantom, tmp_path, slurm2):
    cluster, data, out = slurm2, phantom / "raw" / "pocus", tmp_path / "exp"
    broken = out / "runs" / FAIL
    broken.parent.mkdir(parents=True)
    broken.write_text("not a run directory")
    ids = submit(cluster, tmp_path, data, out)
    runs = [n for n in ids if n != "report"]
    assert len(runs) == 6 and "report" in ids, ids
    # a reader waits on the job of what it reads (asked right away: the frame runs take longer)
    lstm = record(cluster, ids["scratch/cnnlstm/seed0/fold1"])
    assert f"afterok:{ids['scratch/frame/seed0/fold1']}" in lstm.get("Dependency", ""), lstm

    cluster.wait(ids["report"], timeout=600)
    recs = {n: record(cluster, ids[n]) for n in runs}
    assert recs[FAIL]["JobState"] == "FAILED"
    assert recs[DEPENDANT]["JobState"] == "CANCELLED", recs[DEPENDANT]
    ok = [n for n in runs if n not in (FAIL, DEPENDANT)]
    assert {recs[n]["JobState"] for n in ok} == {"COMPLETED"}, {n: recs[n]["JobState"] for n in ok}
    assert {recs[n]["NodeList"] for n in ok} == {"node1", "node2"}     # spread over both nodes
    for fold in (1, 2):    # each CNN-LSTM started after its frame CNN ended
        frame, rnn = recs[f"scratch/frame/seed0/fold{fold}"], recs[f"scratch/cnnlstm/seed0/fold{fold}"]
        assert rnn["StartTime"] >= frame["EndTime"], (frame, rnn)
    report = (out / "report" / "report.md").read_text()
    assert f"`{FAIL}`: failed" in report
    assert f"`{DEPENDANT}`: cancelled (reads {FAIL}, which failed)" in report
    status = lus(cluster, tmp_path, "experiment", "status", str(out))
    assert status.returncode == 1, status.stdout + status.stderr
    assert re.search(rf"{DEPENDANT}\s+cancelled\s+{ids[DEPENDANT]}\s+reads {FAIL}", status.stdout)
    assert re.search(rf"{FAIL}\s+failed", status.stdout) and "4 done" in status.stdout, status.stdout

    # fixed: only the failed run and the one it took down are submitted again
    broken.unlink()
    kept = {n: (out / "runs" / n / "summary.json").stat().st_mtime for n in ok}
    again = submit(cluster, tmp_path, data, out)
    assert sorted(again) == sorted([FAIL, DEPENDANT, "report"]), again
    assert f"afterok:{again[FAIL]}" in record(cluster, again[DEPENDANT]).get("Dependency", "")
    cluster.wait(again["report"], timeout=600)
    assert record(cluster, again["report"])["JobState"] == "COMPLETED", cluster.logs(again["report"])
    assert {n: (out / "runs" / n / "summary.json").stat().st_mtime for n in ok} == kept
    report = (out / "report" / "report.md").read_text()
    assert "Runs that did not finish" not in report and "Missing results" not in report
    status = lus(cluster, tmp_path, "experiment", "status", str(out))
    assert status.returncode == 0 and "6 done" in status.stdout, status.stdout
    assert json.loads((out / "report" / "slurm_jobs.json").read_text())[FAIL] == str(again[FAIL])
