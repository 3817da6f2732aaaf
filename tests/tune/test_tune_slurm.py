"""slurm/tune.sh on the real local 2-node Slurm cluster: a Ray head on node1, a Ray worker
on node2 (each `ray start --block` under srun), token authentication with a per-job token,
and an aggregator sweep that survives the death of the worker node (Ray's FailureConfig
retries the trials that were running there). The cluster lives in a loopback-only network
namespace (hpc.local_slurm)."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tune.ray_env import write_token_file
from tune.sweep import MAX_FAILURES_ENV, SweepError, SweepOptions
from tune_helpers import ROOT, synthetic_predictions

sys.path.insert(0, str(ROOT / "tests" / "hpc"))
from slurm_helpers import kill_all, node_pids, wait_for_log, wait_until  # noqa: E402

PROBE = """
import sys, ray
try:
    ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, configure_logging=False)
    print("joined", sum(1 for n in ray.nodes() if n.get("Alive")), "nodes")
except Exception as exc:
    print("refused:", type(exc).__name__, (str(exc).splitlines() or [""])[0][:200])
    sys.exit(3)
"""


def probe(cluster, address: str, home: Path, env: dict[str, str]):
    """A Ray client in the cluster's network namespace, HOME without ~/.ray/auth_token; started
    in the background. A refused client retries its GCS connection (Ray 2.60: 20 attempts,
    each waiting on RPC timeouts, about 3 min); 5 attempts keep the test short, and a client
    with the right token connects at the first."""
    holder = cluster._holder_pid()
    full = cluster.env({"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT),
                        "RAY_gcs_server_port_wait_time_s": "5", **env})
    return subprocess.Popen(cluster._ns(holder) + [sys.executable, "-c", PROBE, address], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out + err[-1500:]


def start_sweep(cluster, tmp_path: Path, trials: int) -> tuple[int, Path]:
    preds = synthetic_predictions(tmp_path / "preds.h5", n_videos=40, lengths=(40, 120))
    tokens = tmp_path / "tokens"
    job = cluster.sbatch(
        ROOT / "slurm" / "tune.sh", "--nodes=2", f"--output={tmp_path}/tune-%j.out",
        script_args=["aggregator", "--predictions", str(preds), "--trials", str(trials),
                     "--scheduler", "fifo", "--storage", str(tmp_path / "sweeps"), "--name", "s",
                     "--quiet"],
        env={"LUS_ROOT": str(ROOT), "LUS_PYTHON": sys.executable, "LUS_RAY_TOKEN_DIR": str(tokens)},
        cwd=tmp_path)
    return job, tokens / f"job-{job}"


def test_token_file_is_private_and_replaced(tmp_path, monkeypatch):
    path = write_token_file(tmp_path / "tokens" / "job-1")
    first = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", first)           # the format `ray get-auth-token` makes
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    path.chmod(0o644)                                     # an old, too-open file is not reused
    assert write_token_file(path).read_text() != first and path.stat().st_mode & 0o777 == 0o600


def test_trial_retries_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(MAX_FAILURES_ENV, raising=False)
    assert SweepOptions().max_failures == 0               # one machine: a failure is a bug
    monkeypatch.setenv(MAX_FAILURES_ENV, "2")
    assert SweepOptions().max_failures == 2
    monkeypatch.setenv(MAX_FAILURES_ENV, "two")
    with pytest.raises(SweepError, match="LUS_TUNE_MAX_FAILURES='two'"):
        SweepOptions()


@pytest.mark.slurm
@pytest.mark.ray
@pytest.mark.slow
def test_tune_sh_token_auth_and_a_dead_worker_node(tmp_path, slurm2):
    cluster, trials = slurm2, 6
    job, token = start_sweep(cluster, tmp_path, trials)
    wait_for_log(cluster, job, "2 Ray node(s) alive", timeout=300)
    address = re.search(r"Ray head (\S+)", cluster.logs(job))[1]

    # the per-job token: a file only the job's user can read, in a directory only it can enter
    assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o777 == 0o700
    home = tmp_path / "client-home"
    home.mkdir()
    refused = [probe(cluster, address, home, env) for env in (
        {"RAY_AUTH_MODE": "disabled"},                                   # sends no token
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},          # a wrong one
        {"RAY_AUTH_MODE": "token"})]                                     # has none to send
    joined = probe(cluster, address, home, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})

    # meanwhile node2 dies while one of its trials runs: every Ray process there is SIGKILLed
    wait_until(lambda: node_pids(cluster, "node2", "ray::ImplicitFunc.train"), 300, "a trial on node2")
    time.sleep(0.5)
    kill_all(node_pids(cluster, "node2", "ray", without=("slurm",)))

    for proc in refused:
        code, out = finish(proc)
        assert code == 3 and "refused:" in out and "joined" not in out, (proc.args, out)
    code, out = finish(joined)                    # 2 nodes, or 1 if node2 was already gone
    assert code == 0 and re.search(r"joined [12] nodes", out), out

    records = cluster.wait(job, timeout=600)
    log = cluster.logs(job)
    assert records[0]["JobState"] == "COMPLETED", log[-5000:]
    table = pd.read_csv(tmp_path / "sweeps" / "s" / "results.csv")
    assert len(table) == trials and table["trial_id"].is_unique, table
    assert table["mean_weighted_f1"].between(0, 1).all()
    assert table["training_iteration"].eq(1).all()      # a retried trial reports once, too
    # Tune appends "Failure # N" to a trial's error.txt each time it fails, retried or not
    failures = [p for p in (tmp_path / "sweeps" / "s").rglob("error.txt") if "Failure # 1" in p.read_text()]
    assert failures, f"no trial failed when node2 died\n{log[-5000:]}"
    assert not token.exists()              # removed when the job ends
