"""The sbatch scripts: rendered commands in dry-run mode, shellcheck, and the shared constants."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpc.signals import REQUEUE_EXIT_CODE
from hpc.slurm_conf import ClusterLayout, render_slurm_conf
from hpc.world import port_from_job_id

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
OURS = ["common.sh", "train_regstn.sh", "train_seg.sh", "train_cnnlstm.sh", "pretrain.sh",
        "prep_array.sh", "eval.sh", "experiment_run.sh"]


@pytest.fixture
def base_env(tmp_path) -> dict[str, str]:
    """No Slurm variables from outside; a valid SLURM_CONF so no Slurm client ever falls back to
    a DNS lookup of a controller (the dry run should not call one at all)."""
    conf = tmp_path / "slurm.conf"
    conf.write_text(render_slurm_conf(ClusterLayout(tmp_path)))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "LUS_", "VIRTUAL_ENV", "DRY_RUN", "NPROC", "CPU_PROCS"))}
    return {**env, "SLURM_CONF": str(conf), "LUS_PYTHON": PY}


def dry_run(script: str, env: dict[str, str], *args: str, cwd: Path = ROOT) -> list[list[str]]:
    r = subprocess.run(["bash", str(ROOT / "slurm" / script), "--dry-run", *args], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]


def test_train_two_gpu_nodes(base_env):
    env = {**base_env, "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
           "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_PER_NODE": "a100:4", "CONFIG": "configs/x.yaml",
           "DATA": "/scratch/shards", "RUN_DIR": "runs/r1"}
    doctor, cmd = dry_run("train_regstn.sh", env, "optim.lr=3e-4")
    port = port_from_job_id(123456)
    # lus doctor first, on the same layout, with the run's config and overrides
    assert doctor[:doctor.index("lus") + 1] == cmd[:cmd.index("lus") + 1]
    assert doctor[doctor.index("lus"):] == ["lus", "doctor", "regstn", "--config", "configs/x.yaml",
                                            "data.root=/scratch/shards", "optim.lr=3e-4"]
    assert cmd == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=16",
                   "--kill-on-bad-exit=1", PY, "-m", "hpc.launch", "--nnodes=2",
                   "--nproc-per-node=4", "--rdzv-backend=c10d", f"--rdzv-endpoint=gpu07:{port}",
                   "--rdzv-id=123456", "--max-restarts=0", "-m", "lus", "train", "regstn",
                   "--config", "configs/x.yaml", "--run-dir", "runs/r1", "--resume", "auto",
                   "data.root=/scratch/shards", "optim.lr=3e-4"]


@pytest.mark.parametrize("script, family", [("train_seg.sh", "seg"), ("train_cnnlstm.sh", "cnnlstm"),
                                            ("pretrain.sh", "pretrain")])
def test_train_cpu_node_defaults(base_env, script, family):
    """CPU-only node: CPU_PROCS_PER_NODE processes (gloo); defaults for config and run dir."""
    env = {**base_env, "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "cn1", "SLURM_NNODES": "1",
           "CPU_PROCS_PER_NODE": "2", "DRY_RUN": "1"}
    doctor, cmd = dry_run(script, env)
    assert doctor[doctor.index("lus"):] == ["lus", "doctor", family, "--config", f"configs/{family}.yaml"]
    assert "--nproc-per-node=2" in cmd and "--rdzv-endpoint=cn1:20077" in cmd
    i = cmd.index("lus")
    assert cmd[i:] == ["lus", "train", family, "--config", f"configs/{family}.yaml",
                       "--run-dir", f"runs/{family}-77", "--resume", "auto"]


def test_python_from_virtual_env(base_env, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(PY)
    env = {k: v for k, v in base_env.items() if k != "LUS_PYTHON"}
    _, cmd = dry_run("train_regstn.sh", {**env, "VIRTUAL_ENV": str(venv)})
    assert cmd[cmd.index("-m") - 1] == str(venv / "bin" / "python")


def test_prep_array_submits_array_then_afterok_finalize(base_env):
    env = {**base_env, "SRC": "raw/iclus", "OUT": "shards", "TASKS": "3",
           "SBATCH_ARGS": "--output=logs/p-%j.out --partition=cpu"}
    array, fin = dry_run("prep_array.sh", env, "--size", "64")
    script = str(ROOT / "slurm" / "prep_array.sh")
    # the task logs go to logs/ (made by the script: Slurm does not) unless SBATCH_ARGS says
    assert array == ["sbatch", "--parsable", "--array=0-2", "--output=logs/%x-%A_%a.out",
                     "--output=logs/p-%j.out", "--partition=cpu",
                     f"--export=ALL,LUS_PREP_STAGE=pack,LUS_ROOT={ROOT}", script, "--size", "64"]
    assert fin == ["sbatch", "--parsable", "--dependency=afterok:ARRAY_JOB_ID", "--kill-on-invalid-dep=yes",
                   "--output=logs/p-%j.out", "--partition=cpu",
                   f"--export=ALL,LUS_PREP_STAGE=finalize,LUS_ROOT={ROOT}", script]


@pytest.mark.parametrize("stage, expected", [
    ("pack", ["-m", "lus", "prep", "pack", "--layout", "pocus", "--src", "raw", "--out", "sh", "--quiet", "--workers", "2"]),
    ("finalize", ["-m", "lus", "prep", "finalize", "sh"]),
])
def test_prep_array_task_commands(base_env, stage, expected):
    env = {**base_env, "SRC": "raw", "OUT": "sh", "LAYOUT": "pocus", "LUS_PREP_STAGE": stage,
           "SLURM_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}
    (cmd,) = dry_run("prep_array.sh", env, "--workers", "2")
    assert cmd[1:] == expected


def test_missing_required_variable_is_a_clear_error(base_env):
    r = subprocess.run(["bash", str(ROOT / "slurm" / "prep_array.sh"), "--dry-run"], env=base_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "set SRC" in r.stderr


def test_tune_sh_without_arguments_prints_its_usage_in_one_line(base_env):
    env = {**base_env, "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "node[1-2]"}
    r = subprocess.run(["bash", str(ROOT / "slurm" / "tune.sh")], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("usage: sbatch --nodes N slurm/tune.sh FAMILY")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_banner_outside_a_job_says_so(base_env):
    r = subprocess.run(["bash", str(ROOT / "slurm" / "train_regstn.sh")], cwd=ROOT,
                       env={**base_env, "DRY_RUN": "1"}, capture_output=True, text=True, timeout=60)
    first = r.stdout.splitlines()[0]
    assert r.returncode == 0 and first.startswith("lus: not in a Slurm job (dry run, host "), first
    assert f"python {PY}" in first


def test_eval(base_env):
    (cmd,) = dry_run("eval.sh", {**base_env, "RUNS": "runs/a runs/b"}, "--out", "rep")
    assert cmd == ["srun", "--ntasks=1", PY, "-m", "lus", "eval", "runs/a", "runs/b",
                   "--out", "rep"]


def test_requeue_decision_and_port_rule_agree_with_python():
    """The shell keeps no copy of the requeue rule (hpc.requeue decides) or of exit code 75."""
    text = (ROOT / "slurm" / "common.sh").read_text()
    assert "-m hpc.requeue decide" in text and "hpc.launch" in text
    assert not re.search(rf"\b{REQUEUE_EXIT_CODE}\b", text.replace("(75, hpc.signals", ""))
    assert "LUS_MASTER_PORT=$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))" in text
    assert port_from_job_id(0) == 20000


@pytest.mark.parametrize("script", OURS[1:])
def test_sbatch_header(script):
    """Every job script carries the defaults a user edits, and sources the one helper."""
    text = (ROOT / "slurm" / script).read_text()
    for opt in ("--nodes", "--time", "--output", "--open-mode=append"):
        assert f"#SBATCH {opt}" in text, (script, opt)
    if script.startswith("train_"):
        for opt in ("--ntasks-per-node=1", "--signal=B:USR1@", "--requeue", "--cpus-per-task"):
            assert f"#SBATCH {opt}" in text, (script, opt)
    assert 'source "$LUS_ROOT/slurm/common.sh"' in text and os.access(ROOT / "slurm" / script, os.X_OK)


def _shellcheck() -> str:
    """shellcheck, installed with apt when missing (as the Slurm fixture installs slurm-wlm):
    CI runs as root and must run this test, not skip it."""
    exe = shutil.which("shellcheck")
    if exe is None and os.geteuid() != 0:
        pytest.skip("shellcheck is not installed and installing it needs root")
    if exe is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "shellcheck"]
        r = subprocess.run(install, capture_output=True, text=True, env=env)
        if r.returncode != 0:    # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
            r = subprocess.run(install, capture_output=True, text=True, env=env)
        exe = shutil.which("shellcheck")
        assert exe, f"apt-get install shellcheck failed: {r.stderr.strip()[-500:]}"
    return exe


@pytest.mark.parametrize("script", OURS + ["tune.sh"])
def test_shellcheck(script):
    """Clean at every severity for the sourced helper's callers (-x follows `source`); the
    project's floor, `shellcheck -S warning slurm/*.sh` (next test), is the weaker of the two."""
    r = subprocess.run([_shellcheck(), "-x", f"slurm/{script}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_shellcheck_warning_level_over_all_scripts():
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "slurm").glob("*.sh"))
    r = subprocess.run([_shellcheck(), "-S", "warning", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
