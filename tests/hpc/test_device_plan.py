"""The device / backend / precision decision, every GPU situation on a CPU machine.

The facts a GPU node would report are injected as a CudaFacts; the world comes from the
real detector (hpc.world.world_from_env) fed the launcher variables torchrun / srun set.
apply_plan and probe_cuda are exercised for real on this (GPU-less) machine.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hpc.device_plan import (CudaFacts, PlanError, apply_plan, cpu_flags, cpu_has_native_bf16,
                             deepspeed_bf16, node_gpu_count, nvidia_driver, plan_run, probe_cuda,
                             set_tf32, tf32_state, with_deepspeed_precision)
from hpc.world import World, world_from_env

A100 = ("NVIDIA A100-SXM4-80GB",)


def gpus(n: int, bf16: bool = True, visible: str | None = None, per_task: int | None = None
         ) -> CudaFacts:
    return CudaFacts(available=True, device_count=n, bf16_supported=bf16, node_gpus=max(n, 1),
                     visible_devices=visible, gpus_per_task=per_task, names=A100 * n,
                     torch_version="2.14.1", torch_cuda="12.8", driver="570.86.15")


NO_GPU = CudaFacts(torch_version="2.14.1", torch_cuda=None)
TOO_OLD = CudaFacts(node_gpus=4, torch_version="2.14.1", torch_cuda="12.8", driver="470.57",
                    unusable_reason="The NVIDIA driver on your system is too old "
                                    "(found version 11040).")


def torchrun(rank: int, nproc: int) -> World:
    return world_from_env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"})


def srun(rank: int, ntasks: int, **extra: str) -> World:
    return world_from_env({"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
                           "SLURM_NTASKS": str(ntasks), "SLURM_TASKS_PER_NODE": str(ntasks),
                           "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "gpu01",
                           "SLURM_JOB_ID": "42", "SLURMD_NODENAME": "gpu01", **extra})


SINGLE = world_from_env({})


# ---------------------------------------------------------------- device and backend

def test_one_gpu_per_rank_takes_cuda_local_rank_with_nccl_bf16_tf32():
    plans = [plan_run(torchrun(r, 4), gpus(4)) for r in range(4)]
    assert [p.device for p in plans] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert {(p.backend, p.bf16, p.tf32, p.shared_gpu) for p in plans} == {("nccl", True, True, False)}
    assert plans[0].precision == "bf16" and plans[0].device_index == 0


def test_one_gpu_two_ranks_share_it_with_gloo_and_say_so():
    plans = [plan_run(torchrun(r, 2), gpus(1)) for r in range(2)]
    assert [p.device for p in plans] == ["cuda:0", "cuda:0"]
    assert all(p.shared_gpu and p.backend == "gloo" for p in plans)
    assert "2 ranks on this node but only 1 GPU(s) visible" in plans[1].warnings[0]


def test_one_gpu_two_ranks_is_an_error_when_one_gpu_per_rank_is_demanded():
    with pytest.raises(PlanError, match="train.device=cuda needs one GPU per rank: 2 ranks"):
        plan_run(torchrun(1, 2), gpus(1), device="cuda")
    with pytest.raises(PlanError, match="nccl cannot run two ranks on one GPU"):
        plan_run(torchrun(1, 2), gpus(1), process_group="nccl")
    with pytest.raises(PlanError, match="deepspeed needs one GPU per rank: 2 ranks on this node"):
        plan_run(torchrun(1, 2), gpus(1), dist_backend="deepspeed")


def test_srun_gpus_per_task_every_task_takes_its_own_cuda0_with_nccl():
    facts = gpus(1, visible="3", per_task=1)            # task 3 sees only physical GPU 3
    world = srun(3, 4, SLURM_GPUS_ON_NODE="4")
    plan = plan_run(world, facts, device="cuda")
    assert (world.local_rank, plan.device, plan.backend, plan.physical_gpu) == (3, "cuda:0", "nccl", "3")
    assert not plan.shared_gpu and not plan.warnings


def test_cuda_visible_devices_subset_maps_local_ranks_in_order():
    plans = [plan_run(torchrun(r, 2), gpus(2, visible="2,3")) for r in range(2)]
    assert [(p.device, p.physical_gpu) for p in plans] == [("cuda:0", "2"), ("cuda:1", "3")]
    assert {p.backend for p in plans} == {"nccl"}


def test_cuda_visible_devices_subset_smaller_than_ranks_shares():
    plan = plan_run(torchrun(2, 3), gpus(2, visible="GPU-aa,GPU-bb"))
    assert (plan.device, plan.physical_gpu, plan.backend) == ("cuda:0", "GPU-aa", "gloo")
    assert "(CUDA_VISIBLE_DEVICES=GPU-aa,GPU-bb)" in plan.warnings[0]


def test_no_gpu_is_cpu_gloo_fp32_without_tf32():
    plan = plan_run(torchrun(1, 2), NO_GPU)
    assert (plan.device, plan.backend, plan.bf16, plan.tf32) == ("cpu", "gloo", False, False)
    with pytest.raises(PlanError, match="no CUDA device is visible"):
        plan_run(torchrun(1, 2), NO_GPU, device="cuda")
    with pytest.raises(PlanError, match="nccl needs a CUDA device"):
        plan_run(torchrun(1, 2), NO_GPU, process_group="nccl")


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_gpus_present_but_unusable_is_an_error_naming_the_mismatch(device):
    with pytest.raises(PlanError) as err:
        plan_run(srun(0, 1), TOO_OLD, device=device)
    text = str(err.value)
    assert "4 NVIDIA GPU(s) on gpu01 but torch cannot use them" in text
    assert "driver on your system is too old" in text and "driver 470.57" in text
    assert "CUDA 12.8" in text and "train.device=cpu" in text


def test_unusable_gpus_with_device_cpu_train_on_cpu_on_purpose():
    plan = plan_run(srun(0, 1), TOO_OLD, device="cpu")
    assert (plan.device, plan.backend) == ("cpu", "gloo")


def test_gpus_hidden_on_purpose_are_not_an_error():
    hidden = CudaFacts(node_gpus=4, visible_devices="", unusable_reason="no CUDA GPUs")
    assert plan_run(SINGLE, hidden).device == "cpu"
    with pytest.raises(PlanError, match="CUDA_VISIBLE_DEVICES hides them"):
        plan_run(SINGLE, hidden, device="cuda")


def test_device_cpu_on_a_gpu_node_uses_gloo_and_refuses_nccl():
    plan = plan_run(torchrun(0, 2), gpus(2), device="cpu")
    assert (plan.device, plan.backend, plan.bf16, plan.tf32) == ("cpu", "gloo", False, False)
    with pytest.raises(PlanError, match="nccl needs a CUDA device"):
        plan_run(torchrun(0, 2), gpus(2), device="cpu", process_group="nccl")


def test_gloo_on_gpus_is_allowed_when_asked():
    assert plan_run(torchrun(1, 2), gpus(2), process_group="gloo").backend == "gloo"


@pytest.mark.parametrize("field, value", [("device", "tpu"), ("bf16", "maybe"),
                                          ("process_group", "mpi"), ("dist_backend", "fsdp")])
def test_bad_choices_name_the_key(field, value):
    with pytest.raises(PlanError, match=f"={value!r}: expected"):
        plan_run(SINGLE, NO_GPU, **{field: value})


@given(nproc=st.integers(1, 8), ngpu=st.integers(1, 8), data=st.data())
def test_every_rank_gets_a_visible_gpu_and_private_ones_only_when_enough(nproc, ngpu, data):
    rank = data.draw(st.integers(0, nproc - 1))
    plan = plan_run(torchrun(rank, nproc), gpus(ngpu))
    assert 0 <= plan.device_index < ngpu
    assert plan.shared_gpu == (nproc > ngpu)
    assert plan.backend == ("gloo" if nproc > ngpu else "nccl")
    if nproc <= ngpu:
        assert plan.device_index == rank


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize("mode, facts, expected", [
    ("auto", gpus(1), True), ("auto", gpus(1, bf16=False), False), ("auto", NO_GPU, False),
    ("true", NO_GPU, True), ("false", gpus(1), False), (True, gpus(1), True), (False, NO_GPU, False),
])
def test_bf16_auto_means_supported_gpu_only_and_explicit_wins(mode, facts, expected):
    assert plan_run(SINGLE, facts, bf16=mode).bf16 is expected


AMX_CPU = CudaFacts(torch_version="2.14.1", torch_cuda=None, cpu_bf16=True)


@pytest.mark.parametrize("facts, expected", [
    (gpus(1), True), (gpus(1, bf16=False), False),        # a V100: fp32, not an error
    (AMX_CPU, True), (NO_GPU, False),                     # CPU: only with native bf16 units
    (CudaFacts(torch_cuda=None, node_gpus=2, visible_devices="", cpu_bf16=True), True),
])
def test_bf16_native_means_wherever_the_hardware_has_it(facts, expected):
    assert plan_run(SINGLE, facts, bf16="native").bf16 is expected
    assert plan_run(SINGLE, facts, bf16="auto").bf16 is (expected and facts.available)


def test_native_cpu_bf16_is_read_from_the_cpu_flags(tmp_path):
    sapphire = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
    for flags, native in ((sapphire, True), ("fpu sse2 avx2 avx512f avx512_bf16", True),
                          ("fpu sse2 avx2 avx512f avx512_vnni", False), ("", False)):
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc/cpuinfo").write_text(
            f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        assert cpu_has_native_bf16(cpu_flags(str(tmp_path))) is native, flags
    assert cpu_flags(str(tmp_path / "nowhere")) == set()
    assert probe_cuda().cpu_bf16 is cpu_has_native_bf16(cpu_flags())


def test_bf16_true_on_a_gpu_without_bf16_is_an_error():
    with pytest.raises(PlanError, match="no native bf16"):
        plan_run(SINGLE, gpus(1, bf16=False), bf16="true")


def test_tf32_is_configurable_on_gpu():
    assert plan_run(SINGLE, gpus(1)).tf32 is True
    assert plan_run(SINGLE, gpus(1), tf32=False).tf32 is False


def test_deepspeed_accelerator_follows_the_device():
    assert plan_run(SINGLE, gpus(1), dist_backend="deepspeed").ds_accelerator == "cuda"
    assert plan_run(SINGLE, gpus(1), dist_backend="deepspeed", device="cpu").ds_accelerator == "cpu"
    assert plan_run(SINGLE, gpus(1)).ds_accelerator is None


@pytest.mark.parametrize("section, run_bf16, expected", [
    ({"enabled": "auto"}, True, True), ({"enabled": "auto"}, False, False),
    (None, True, True), ({}, False, False),
    ({"enabled": True}, False, True), ({"enabled": False}, True, False),
    ({"enabled": "true"}, False, True), ({"enabled": "False"}, True, False),
])
def test_deepspeed_follows_the_run_unless_its_json_is_explicit(section, run_bf16, expected):
    plan = plan_run(SINGLE, gpus(1), bf16=run_bf16)
    ds = {"zero_optimization": {"stage": 2}} | ({"bf16": section} if section is not None else {})
    assert deepspeed_bf16(ds, plan) is expected
    resolved = with_deepspeed_precision(ds, plan)
    assert resolved["bf16"]["enabled"] is expected and resolved["zero_optimization"] == {"stage": 2}
    assert ds.get("bf16") == section                    # the input is not modified


def test_deepspeed_precision_errors_name_the_file():
    no_bf16 = plan_run(SINGLE, gpus(1, bf16=False))
    with pytest.raises(PlanError, match="z.json: bf16.enabled=true but cuda:0 has no native bf16"):
        deepspeed_bf16({"bf16": {"enabled": True}}, no_bf16, "z.json")
    assert deepspeed_bf16({"bf16": {"enabled": "auto"}}, no_bf16, "z.json") is False
    with pytest.raises(PlanError, match="z.json: bf16 and fp16 are both enabled"):
        deepspeed_bf16({"bf16": {"enabled": True}, "fp16": {"enabled": True}},
                       plan_run(SINGLE, NO_GPU), "z.json")
    with pytest.raises(PlanError, match="expected true, false"):
        deepspeed_bf16({"bf16": {"enabled": "yes"}}, no_bf16, "z.json")
    # CPU bf16 (torch autocast, DeepSpeed's CPU accelerator) is allowed when the JSON says so
    assert deepspeed_bf16({"bf16": {"enabled": True}}, plan_run(SINGLE, NO_GPU)) is True


# ---------------------------------------------------------------- facts and side effects (real)

def test_probe_on_this_machine_is_consistent_with_torch(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    monkeypatch.setenv("SLURM_GPUS_PER_TASK", "gpu:1")
    facts = probe_cuda()
    assert facts.available == torch.cuda.is_available()
    assert facts.visible_devices == "1,2" and facts.gpus_per_task == 1
    assert facts.torch_version == torch.__version__ and facts.torch_cuda == torch.version.cuda
    if not facts.available:
        assert facts.device_count == 0 and facts.unusable_reason
        assert plan_run(SINGLE, facts, device="cpu").device == "cpu"


def test_node_gpu_count_and_driver_from_a_fake_root(tmp_path):
    (tmp_path / "dev").mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / "dev" / name).touch()
    assert node_gpu_count(str(tmp_path)) == 2
    assert nvidia_driver(str(tmp_path)) is None
    (tmp_path / "proc/driver/nvidia/gpus/0000:3b:00.0").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n")
    assert node_gpu_count(str(tmp_path)) == 1 and nvidia_driver(str(tmp_path)) == "535.104.05"


def test_apply_plan_sets_tf32_and_deepspeed_accelerator(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
              torch.backends.cudnn.rnn.fp32_precision)
    try:
        apply_plan(plan_run(SINGLE, NO_GPU, dist_backend="deepspeed"))
        assert tf32_state() == {"matmul": False, "cudnn": False}
        assert os.environ["DS_ACCELERATOR"] == "cpu"
        set_tf32(True)
        assert tf32_state() == {"matmul": True, "cudnn": True}
    finally:
        (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
         torch.backends.cudnn.rnn.fp32_precision) = before
