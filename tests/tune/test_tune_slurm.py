"""slurm/tune.sh on the real local 2-node Slurm cluster: a Ray head on node1, a Ray worker
on node2 (each `ray start --block` under srun), and an aggregator sweep whose trials run
on both nodes. The cluster lives in a loopback-only network namespace (hpc.local_slurm)."""
from __future__ import annotations

import sys

import pandas as pd
import pytest

from tune_helpers import ROOT, synthetic_predictions

pytestmark = [pytest.mark.slurm, pytest.mark.ray, pytest.mark.slow]


def test_tune_sh_sweeps_on_both_nodes(tmp_path, slurm2):
    cluster = slurm2
    preds = synthetic_predictions(tmp_path / "preds.h5", n_videos=16)
    job = cluster.sbatch(
        ROOT / "slurm" / "tune.sh", "--nodes=2", f"--output={tmp_path}/tune-%j.out",
        script_args=["aggregator", "--predictions", str(preds), "--trials", "8",
                     "--storage", str(tmp_path / "sweeps"), "--name", "s", "--quiet"],
        env={"LUS_ROOT": str(ROOT), "LUS_PYTHON": sys.executable}, cwd=tmp_path)
    records = cluster.wait(job, timeout=600)
    log = cluster.logs(job)
    assert records[0]["JobState"] == "COMPLETED", log[-5000:]
    assert "2 Ray node(s) alive" in log, log[-5000:]
    table = pd.read_csv(tmp_path / "sweeps" / "s" / "results.csv")
    assert len(table) == 8 and table["mean_weighted_f1"].between(0, 1).all()
    # every slurmd has its own UTS namespace, so a trial's hostname names its Slurm node
    assert set(table["hostname"]) == {"node1", "node2"}, table[["trial_id", "hostname"]]
    assert (tmp_path / "sweeps" / "s" / "best.yaml").is_file()
