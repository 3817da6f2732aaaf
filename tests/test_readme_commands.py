"""README.md's command blocks, run as written.

Every ```bash block of the README runs, in the README's order, in one sandbox laid out like a
fresh clone (the project's files linked in, its outputs its own), so a block reads what the
blocks before it wrote, as a reader going top to bottom does. The only changes made to a line
are PATHS (the phantom stands in for the real clips) and SMALL (step, epoch and trial counts,
and the quick experiment settings the README states), both below; NOT_RUN names the one line
that is not run and why. Slurm lines run on the real local cluster that the README's own `lus cluster up` line
starts: a `lus cluster run ... sbatch` line must finish with every job COMPLETED and no error
in the job logs; a bare `sbatch` line is a GPU cluster's (resources the two 2-CPU nodes lack),
so it must be accepted and is then cancelled.
"""
from __future__ import annotations

import getpass
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpc.local_slurm import LocalSlurmCluster
from hpc.slurm_conf import parse_scontrol_record

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# ---------------------------------------------------------------- the only substitutions
# Where the data is: the phantom's POCUS-layout folder (written by the README's own
# `lus prep phantom` line) stands in for the real clips; outputs stay in the sandbox.
PATHS = {
    "../shared/data/pocus": "data/phantom_raw/pocus",
    "/shared/tune": "shared/tune",
    "/tmp/lus-slurm": "slurm-cluster",
    "/tmp/lus-gpu-smoke": "gpu-smoke",
}
# How long things run: step, epoch and trial counts, as (pattern, replacement) on the line
# with its comment removed.
STEPS = "train.epochs=1 train.max_steps_per_epoch=2"
EXPERIMENT = ("--folds 3 size=32 max_frames=6 'seeds=[0]' 'routes=[scratch]' frame.epochs=1 "
              "cnnlstm.epochs=1 aggregator.epochs=5")    # the README's quick experiment settings
ROY = ("--folds 3 size=32 'seeds=[0]' 'models=[regstn_fixed,cnn_sord]' frame.epochs=1 "
       "aggregator.epochs=5")                           # and its quick Roy et al. settings
SMALL = [
    (r"^make demo$", f'make demo DEMO_ARGS="{STEPS}"'),
    (r"^(.*(\blus train |slurm/train_\w+\.sh|slurm/pretrain\.sh|\blus tune (regstn|cnnlstm) ).*)$",
     rf"\1 {STEPS}"),
    (r"--trials \d+\b", "--trials 1"),
    (r"^(.*\blus experiment pocus\b.*)$", rf"\1 {EXPERIMENT}"),
    (r"^(.*\blus experiment roy\b.*)$", rf"\1 {ROY}"),
    (r"^(.*\blus gpu-smoke\b.*)$", r"\1 --steps 2"),
]
# Lines that are not run, and why.
NOT_RUN = {"make test": "the test suite this test is part of"}

COMMAND_TIMEOUT = 1200
SLURM_TIMEOUT = 900


# ---------------------------------------------------------------- the README, parsed

@dataclass(frozen=True)
class Block:
    name: str
    lines: tuple[str, ...]    # logical lines (continuations joined), comment-only lines dropped


def readme_blocks(text: str) -> list[Block]:
    """Each ```bash block with the heading above it."""
    blocks, heading, body = [], "top", None
    for raw in text.splitlines():
        if body is None and raw.startswith("#"):
            heading = raw.lstrip("#").strip()
        elif body is None and raw.strip() == "```bash":
            body = []
        elif body is not None and raw.strip() == "```":
            blocks.append(Block(f"{len(blocks) + 1:02d}-{slug(heading)}", tuple(logical_lines(body))))
            body = None
        elif body is not None:
            body.append(raw)
    return blocks


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")[:40]


def logical_lines(body: list[str]) -> list[str]:
    out, cur = [], ""
    for raw in body:
        if not cur and raw.strip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1].rstrip() + " "
            continue
        out.append(re.sub(r"\s+", " ", (cur + raw).strip()))
        cur = ""
    assert not cur, f"README block ends inside a continued line: {cur!r}"
    return out


def without_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def as_run(line: str) -> str:
    """The line with PATHS and SMALL applied."""
    cmd = without_comment(line)
    for real, phantom in PATHS.items():
        cmd = cmd.replace(real, phantom)
    for pattern, repl in SMALL:
        cmd = re.sub(pattern, repl, cmd)
    return cmd


def kind(cmd: str) -> str:
    """'sbatch' (a GPU cluster's line), 'cluster' (on `lus cluster`) or 'shell'."""
    words = shlex.split(cmd)
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    if words[:1] == ["sbatch"]:
        return "sbatch"
    if words[:2] == ["lus", "cluster"]:
        return "cluster"
    return "shell"


BLOCKS = readme_blocks(README.read_text())


def test_readme_parses_into_the_blocks_it_shows():
    """The parser sees what a reader sees: continuations joined, comments dropped, and every
    substitution applies to some line (a stale entry would hide a line that changed)."""
    lines = [line for b in BLOCKS for line in b.lines]
    assert len(BLOCKS) >= 10 and "make demo" in [without_comment(x) for x in lines]
    ds = [x for x in lines if "dist.backend=deepspeed" in x]
    assert ds and ds[0].startswith("torchrun --standalone --nproc-per-node 2 -m lus train regstn")
    for real in PATHS:
        assert any(real in x for x in lines), f"PATHS entry {real!r} matches no README line"
    for pattern, _ in SMALL:
        assert any(re.search(pattern, without_comment(x)) for x in lines), pattern
    assert EXPERIMENT in re.sub(r"\s+", " ", README.read_text())
    assert ROY in re.sub(r"\s+", " ", README.read_text())
    assert as_run("lus train regstn --config c.yaml x=1  # note") == f"lus train regstn --config c.yaml x=1 {STEPS}"
    assert kind("DATA=d sbatch --nodes 2 slurm/train_regstn.sh") == "sbatch"
    assert kind("SRC=a lus cluster run --dir d -- sbatch s.sh") == "cluster"


# ---------------------------------------------------------------- the sandbox

@dataclass
class Sandbox:
    path: Path
    env: dict[str, str]
    failed: str = ""          # the first block that failed: later ones read its outputs

    @property
    def cluster_dir(self) -> Path:
        return self.path / PATHS["/tmp/lus-slurm"]


def tracked_top_level() -> list[str]:
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    if r.returncode != 0:     # not a git checkout: everything but outputs and hidden files
        return [p.name for p in ROOT.iterdir() if not p.name.startswith(".")
                and p.name not in ("data", "runs", "demo_out")]
    return sorted({line.split("/")[0] for line in r.stdout.splitlines()})


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A fresh clone's layout whose venv is the running one (`make test` installed it):
    the project's files linked, `logs/` its own (an output folder), `.venv` the running
    interpreter's with make's install stamp, so `make demo` goes straight to the demo."""
    path = tmp_path_factory.mktemp("readme")
    for name in tracked_top_level():
        if name == "logs":
            (path / name).mkdir()
        elif not name.startswith("."):
            (path / name).symlink_to(ROOT / name)
    bindir = Path(sys.executable).parent
    (path / ".venv").mkdir()
    (path / ".venv" / "bin").symlink_to(bindir)
    (path / ".venv" / ".lus-installed").touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PYTEST_"))}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(bindir.parent),
               LUS_RAY_TOKEN_DIR=str(path / "ray-tokens"))
    box = Sandbox(path, env)
    try:
        yield box
    finally:
        if (box.cluster_dir / "run").is_dir():     # `lus cluster down`, as the README says
            subprocess.run(["lus", "cluster", "down", "--dir", str(box.cluster_dir)], env=env,
                           cwd=path, capture_output=True, timeout=120)


# ---------------------------------------------------------------- running a line

def run_shell(box: Sandbox, cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=box.path, env=box.env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT)


def cluster(box: Sandbox) -> LocalSlurmCluster:
    return LocalSlurmCluster(box.cluster_dir, nodes=2)


def job_ids(c: LocalSlurmCluster) -> list[int]:
    r = c.run(["squeue", "-h", "-o", "%A"], check=False)
    return sorted({int(x) for x in r.stdout.split() if x.isdigit()})


def wait_for_empty_queue(c: LocalSlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while job_ids(c):
        assert time.monotonic() < deadline, f"jobs still queued after {timeout:.0f}s: {job_ids(c)}"
        time.sleep(2)


def submitted_job(out: str) -> int:
    m = re.search(r"Submitted batch job (\d+)", out)
    assert m, f"sbatch did not submit a job:\n{out}"
    return int(m.group(1))


def submit_only(box: Sandbox, cmd: str) -> None:
    """A GPU cluster's line: sbatch (in the cluster's namespace, as on a login node) must
    accept it; what it queued is cancelled."""
    c = cluster(box)
    r = c.run(["bash", "-c", cmd], env=box.env, cwd=box.path, check=False, timeout=120)
    assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    submitted_job(r.stdout)
    c.run(["scancel", "--user", getpass.getuser()], check=False)
    wait_for_empty_queue(c, 120)


def check_jobs_from(box: Sandbox, first: int) -> None:
    """Once the queue is empty: every job since `first` (array tasks and the jobs it submitted
    too) COMPLETED, and no job log holds an error line (srun's or a Python traceback)."""
    c = cluster(box)
    wait_for_empty_queue(c, SLURM_TIMEOUT)
    r = c.run(["scontrol", "show", "job", "-o"], check=False)
    records = [parse_scontrol_record(x) for x in r.stdout.splitlines() if x.startswith("JobId=")]
    records = [rec for rec in records if int(rec["JobId"]) >= first]
    assert records, f"no job records from job {first} on"
    for rec in records:
        log_path = Path(rec.get("StdOut", ""))
        log = log_path.read_text(errors="replace") if log_path.is_file() else f"(no log at {log_path})"
        where = f"job {rec['JobId']} ({rec.get('JobName')}) {rec.get('JobState')}, log {log_path}:\n{log[-3000:]}"
        assert rec.get("JobState") == "COMPLETED", where
        bad = [x for x in log.splitlines() if x.startswith(("srun: error", "Traceback"))]
        assert not bad, f"{bad[0]!r} in {where}"


def run_line(box: Sandbox, line: str) -> str:
    """Run one README line (substituted); returns a one-line note of what ran, for the report.
    Every line starts with the local cluster's queue empty."""
    cmd, t0 = as_run(line), time.monotonic()
    if kind(cmd) == "sbatch":
        submit_only(box, cmd)
    else:
        r = run_shell(box, cmd)
        assert r.returncode == 0, \
            f"{cmd}\nexit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        if kind(cmd) == "cluster" and " sbatch " in cmd:
            check_jobs_from(box, submitted_job(r.stdout))
    return f"{time.monotonic() - t0:6.1f}s  {cmd}"


def slurm_reason() -> str:
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (namespaces, munge, slurmd)"
    return ""


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.ray
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, sandbox: Sandbox):
    if sandbox.failed:
        pytest.skip(f"block {sandbox.failed} failed; this one reads what it writes")
    skipped, notes = [], []
    try:
        for line in block.lines:
            plain = without_comment(line)
            if plain in NOT_RUN:
                notes.append(f"   not run  {plain}: {NOT_RUN[plain]}")
                continue
            if kind(as_run(line)) != "shell" and slurm_reason():
                skipped.append(plain)
                continue
            notes.append(run_line(sandbox, line))
    except BaseException:
        sandbox.failed = block.name
        raise
    finally:
        print(f"\n[{block.name}]\n" + "\n".join(notes))
    if skipped:
        pytest.skip(f"{slurm_reason()}: not run: {skipped}")


def test_readme_cluster_ends_empty_and_stops(sandbox: Sandbox):
    """Runs last: the README's cluster has nothing queued (every job ended or was cancelled)."""
    if slurm_reason() or not (sandbox.cluster_dir / "run").is_dir():
        pytest.skip(slurm_reason() or "no local cluster was started")
    assert job_ids(cluster(sandbox)) == []
    r = run_shell(sandbox, f"lus cluster down --dir {shlex.quote(str(sandbox.cluster_dir))}")
    assert r.returncode == 0 and "down:" in r.stdout, r.stderr
