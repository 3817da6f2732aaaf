"""`lus gpu-smoke`: the command lines it runs (checked against the real config loader and
CLI), its skip path on a CPU machine, its per-rank memory recorder under a real torchrun,
and, marked gpu, the whole smoke run where a GPU exists."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lus.gpu_smoke import FAMILIES, cell_result, cells, format_table, prep_commands
from lus.train import parser as train_parser
from lus_dist.engine.registry import load_run_config

HAS_GPU = torch.cuda.is_available() and torch.cuda.device_count() > 0
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "lus_dist" / "configs"


def lus(*args: str, launch: tuple[str, ...] = (), timeout: float = 300):
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    return subprocess.run([sys.executable, *launch, "-m", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_cells_cover_every_family_on_one_and_two_gpus(tmp_path):
    one, two = cells(tmp_path, gpus=1), cells(tmp_path, gpus=2)
    assert [(c.family, c.name) for c in one] == [(f, "1gpu") for f in FAMILIES]
    assert {(c.family, c.name, c.nproc) for c in two} == {
        (f, n, p) for f in FAMILIES for n, p in (("1gpu", 1), ("ddp2", 2), ("zero2", 2))}
    for cell in two:
        argv = list(cell.argv)
        assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={cell.nproc}"]
        record = argv[argv.index("--record") + 1]
        assert record == str(cell.run_dir(tmp_path) / "gpu_memory")
        train = argv[argv.index("--") + 1:]
        args = train_parser().parse_intermixed_args(train[1:])      # the real `lus train` CLI
        assert train[0] == "train" and args.family == cell.family
        cfg = load_run_config(args.family, args.config, args.overrides)   # real config loader
        assert (cfg.train.device, str(cfg.train.bf16).lower(), cfg.train.epochs) == ("cuda", "true", 1)
        assert cfg.train.max_steps_per_epoch == 20 and cfg.data.root == str(tmp_path / "shards")
        assert cfg.data.num_workers > 0                  # the production configs, as shipped
        if cell.name == "zero2":
            assert cfg.dist.backend == "deepspeed" and cfg.dist.zero_stage == 2
            assert cfg.dist.deepspeed_json().name == "zero2_bf16.json"
        if cell.nproc == 2:
            assert cfg.dist.process_group == "nccl"


def test_prep_commands_make_phantom_shards_at_the_size(tmp_path):
    phantom, pack = prep_commands(tmp_path, 96)
    assert phantom[2:5] == ["lus", "prep", "phantom"]
    assert pack[pack.index("--size") + 1] == "96" and pack[pack.index("--out") + 1] == str(
        tmp_path / "shards")


@pytest.mark.skipif(HAS_GPU, reason="the skip path is for machines without a GPU")
def test_on_cpu_it_says_it_needs_a_gpu_and_exits_0(tmp_path):
    proc = lus("lus", "gpu-smoke", "--out", str(tmp_path / "smoke"))
    assert proc.returncode == 0, proc.stderr
    assert "lus gpu-smoke: skipped, needs a GPU (no CUDA GPU on this machine)" in proc.stdout
    assert not (tmp_path / "smoke").exists()


def test_dry_run_prints_every_command(tmp_path):
    proc = lus("lus", "gpu-smoke", "--out", str(tmp_path), "--dry-run", "--steps", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 + 3 * len(FAMILIES) and all("train.max_steps_per_epoch=5" in ln for ln in lines[2:])


@pytest.mark.slow
def test_recorder_wraps_a_lus_command_on_every_torchrun_rank(tmp_path):
    """The per-rank wrapper around a real 2-rank torchrun job (here `lus doctor`, which joins
    the gloo group): every rank records its peak memory and exit code, and the job exits 0."""
    demo = Path(__file__).resolve().parents[1] / "lus_dist" / "configs" / "demo_regstn.yaml"
    proc = lus("lus.gpu_smoke", "--record", str(tmp_path / "mem"), "--", "doctor", "regstn",
               "--config", str(demo), "train.device=cpu",
               launch=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = sorted(json.loads(p.read_text())["rank"] for p in (tmp_path / "mem").glob("*.json"))
    assert records == [0, 1]
    assert "comm: all_reduce over 2 ranks with gloo ok" in proc.stdout


def test_results_table_reads_summary_and_the_busiest_rank(tmp_path):
    cell = cells(tmp_path, gpus=2)[1]
    run = cell.run_dir(tmp_path)
    (run / "gpu_memory").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"train_samples_per_s": 812.5,
                                                  "memory_format": "channels_last"}))
    for rank, mib in ((0, 300), (1, 512)):
        (run / "gpu_memory" / f"rank{rank}.json").write_text(
            json.dumps({"rank": rank, "peak_bytes": mib * 2**20, "exit": 0}))
    row = cell_result(cell, tmp_path, 0, 12.34)
    assert (row["samples_per_s"], row["peak_gpu_mib"], row["seconds"]) == (812.5, 512.0, 12.3)
    assert row["memory_format"] == "channels_last"
    failed = cell_result(cells(tmp_path, gpus=2)[2], tmp_path, 1, 3.0)
    table = format_table([row, failed])
    assert "812.5" in table and "512" in table and "FAILED (exit 1)" in table
    assert "channels_last" in table.splitlines()[1] and failed["memory_format"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a usable CUDA GPU (this machine has none)")
def test_gpu_smoke_every_family_trains_on_gpus(tmp_path):
    proc = lus("lus", "gpu-smoke", "--out", str(tmp_path), "--steps", "5", "--size", "64",
               timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["family"] for r in rows} == set(FAMILIES)
    assert all(r["samples_per_s"] > 0 and r["peak_gpu_mib"] > 0 for r in rows), rows
    for r in rows:                  # what the shipped configs ask for, on every backend
        cfg = load_run_config(r["family"], CONFIGS_DIR / f"{r['family']}.yaml", [])
        wanted = "channels_last" if cfg.model.channels_last else "contiguous"
        assert r["memory_format"] == wanted, r


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a usable CUDA GPU (this machine has none)")
def test_device_plan_probe_on_a_gpu_machine_matches_torch():
    from hpc.device_plan import apply_plan, plan_run, probe_cuda, tf32_state
    from hpc.world import world_from_env
    facts = probe_cuda()
    plan = plan_run(world_from_env({}), facts)
    assert plan.device == "cuda:0" and plan.bf16 == torch.cuda.is_bf16_supported(False)
    apply_plan(plan)
    assert torch.cuda.current_device() == 0 and tf32_state() == {"matmul": True, "cudnn": True}
