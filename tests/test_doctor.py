"""`lus doctor`: the per-rank plan printout, for real as a process and under torchrun (gloo),
plus the broken plans it must refuse with exit 2 and the reason."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpc.device_plan import CudaFacts, PlanError
from hpc.world import world_from_env
from lus.doctor import report
from lus_dist.engine.registry import load_run_config

DEMO = Path(__file__).resolve().parents[1] / "lus_dist" / "configs" / "demo_regstn.yaml"
NO_GPU = not __import__("torch").cuda.is_available()


def doctor(*args: str, nproc: int = 0, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", NCCL_DEBUG="WARN", GLOO_SOCKET_IFNAME="lo",
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc-per-node={nproc}"] if nproc else [sys.executable]
    return subprocess.run([*launch, "-m", "lus", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_plain_process_prints_the_plan():
    proc = doctor("regstn", "--config", str(DEMO), "train.device=cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[rank 0/1] world: rank 0/1, local 0/1, node 0/1" in out and "launcher single" in out
    assert ("[rank 0/1] plan: device cpu, process group none (single process; would be gloo), "
            "precision fp32, TF32 off, dist.backend ddp") in out
    assert "[rank 0/1] loader: 0 worker(s) per loader, batch 16/rank" in out
    assert "[rank 0/1] torch " in out and "[rank 0/1] env: " in out and "GLOO_SOCKET_IFNAME=lo" in out
    assert all(line.startswith("[rank 0/1] ") for line in out.splitlines())


@pytest.mark.slow
def test_under_torchrun_every_rank_prints_its_block_and_the_group_connects():
    proc = doctor("seg", "--config", str(DEMO.parent / "seg.yaml"), "dist.backend=deepspeed",
                  f"dist.deepspeed_config={DEMO.parent / 'deepspeed' / 'zero2_bf16.json'}",
                  "data.num_workers=0", nproc=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        mine = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"[rank {rank}/2] ")]
        text = "\n".join(mine)
        assert f"world: rank {rank}/2, local {rank}/2, node 0/1" in text and "launcher torchrun" in text
        assert "process group gloo" in text
        assert "deepspeed: zero2_bf16.json, ZeRO-2, bf16, accelerator cpu" in text
        assert "comm: all_reduce over 2 ranks with gloo ok" in text
        assert "MASTER_ADDR=" in text


@pytest.mark.skipif(not NO_GPU, reason="CPU-machine expectation")
@pytest.mark.parametrize("override, reason", [
    ("train.device=cuda", "train.device=cuda but no CUDA device is visible"),
    ("dist.process_group=nccl", "dist.process_group=nccl needs a CUDA device"),
    ("train.bf16=sometimes", "train.bf16 must be auto|native|true|false"),
])
def test_a_broken_plan_exits_2_with_the_reason(override, reason):
    proc = doctor("regstn", "--config", str(DEMO), override)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert reason in proc.stderr and "plan broken" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not NO_GPU, reason="CPU-machine expectation")
def test_a_broken_plan_under_torchrun_fails_the_launch():
    proc = doctor("regstn", "--config", str(DEMO), "train.device=cuda", nproc=2)
    assert proc.returncode != 0
    assert "[rank 0/2] plan broken: train.device=cuda but no CUDA device" in proc.stderr


def _torchrun_world(rank: int, nproc: int):
    return world_from_env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                           "TORCHELASTIC_RUN_ID": "t"})


def _gpus(n: int) -> CudaFacts:
    return CudaFacts(True, n, True, n, names=("NVIDIA H100",) * n, torch_version="2.14.1",
                     torch_cuda="12.8", driver="570.1")


def test_report_on_injected_gpu_nodes():
    cfg = load_run_config("regstn", DEMO, [])
    lines, warnings, plan = report(cfg, _torchrun_world(1, 2), _gpus(2))
    assert (plan.device, plan.backend, plan.precision) == ("cuda:1", "nccl", "bf16")
    assert "plan: device cuda:1, process group nccl, precision bf16, TF32 on" in lines[1]
    assert "gpus: node has 2, torch sees 2 [NVIDIA H100, NVIDIA H100]" in "\n".join(lines)
    assert warnings == []
    _, warnings, plan = report(cfg, _torchrun_world(1, 2), _gpus(1))
    assert plan.shared_gpu and "ranks share GPUs" in warnings[0]
    with pytest.raises(PlanError, match="needs one GPU per rank: 2 ranks on this node but only 1"):
        report(load_run_config("regstn", DEMO, ["train.device=cuda"]), _torchrun_world(1, 2), _gpus(1))


def test_report_warns_when_loader_workers_outnumber_the_cpus():
    cfg = load_run_config("regstn", DEMO, ["data.num_workers=64"])
    _, warnings, _ = report(cfg, _torchrun_world(0, 2), CudaFacts())
    assert any("64 loader workers + the trainer need 65 CPUs" in w for w in warnings), warnings


def test_report_warns_when_an_inherited_deepspeed_accelerator_disagrees(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    cfg = load_run_config("regstn", DEMO, ["dist.backend=deepspeed"])
    _, warnings, plan = report(cfg, _torchrun_world(0, 2), _gpus(2))
    assert plan.ds_accelerator == "cuda"
    assert "DS_ACCELERATOR=cpu in the environment; the run sets cuda" in warnings[-1]


def test_report_says_how_channels_last_runs_on_each_backend():
    regstn = DEMO.parent / "regstn.yaml"
    for backend, says in (("ddp", "memory format: channels_last: weights and inputs"),
                          ("deepspeed", "memory format: channels_last: DeepSpeed holds the "
                                        "weights contiguous, every convolution takes its input "
                                        "channels_last")):
        lines, _, _ = report(load_run_config("regstn", regstn, [f"dist.backend={backend}"]),
                             _torchrun_world(0, 2), _gpus(2))
        assert says in lines
    lines, _, _ = report(load_run_config("regstn", DEMO, []), _torchrun_world(0, 2), CudaFacts())
    assert "memory format: contiguous (model.channels_last=false)" in lines


@pytest.mark.parametrize("json_text, overrides, reason", [
    ('{"zero_optimization": {"stage": 3}}', [],
     "zero_optimization.stage 3: the engine runs ZeRO 0, 1 or 2"),
    ('{"fp16": {"enabled": true}}', [], "fp16.enabled: the engine trains in fp32 or bf16"),
    ('{"zero_optimization": {"stage": 2}}', ["optim.name=sgd"], "optim.name=sgd under ZeRO-2"),
    ('{"bf16": {"enabled": true}}', ["train.ema_decay=0.9"], "train.ema_decay with DeepSpeed bf16"),
    ('{"optimizer": {"type": "AdamW"}}', [], "remove 'optimizer'/'scheduler'"),
])
def test_a_combination_the_engine_refuses_is_a_broken_plan(tmp_path, json_text, overrides, reason):
    """The doctor asks the engine's own start-up check (lus_dist.engine.fit.runnable), so it
    reports exactly what `lus train` would refuse before a job queues."""
    from lus_dist.io.config import ConfigError

    ds = tmp_path / "ds.json"
    ds.write_text(json_text)
    args = ["dist.backend=deepspeed", f"dist.deepspeed_config={ds}", *overrides]
    with pytest.raises(ConfigError, match=reason.replace("(", r"\(")):
        report(load_run_config("regstn", DEMO, args), _torchrun_world(0, 2), CudaFacts())


def test_the_cli_exits_2_on_a_combination_the_engine_refuses(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    proc = doctor("regstn", "--config", str(DEMO), "dist.backend=deepspeed",
                  f"dist.deepspeed_config={ds}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"plan broken: {ds}: zero_optimization.stage 3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_process_deepspeed_gets_a_group_of_its_own():
    world = world_from_env({})
    lines, _, _ = report(load_run_config("regstn", DEMO, ["dist.backend=deepspeed"]), world,
                         CudaFacts())
    assert "process group gloo over this process alone" in lines[1]
    lines, _, _ = report(load_run_config("regstn", DEMO, []), world, CudaFacts())
    assert "process group none (single process; would be gloo)" in lines[1]
