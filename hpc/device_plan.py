"""Which device, process-group backend and precision a rank uses: one pure decision.

:func:`plan_run` takes everything that matters as plain facts (the :class:`World`, a
:class:`CudaFacts` snapshot of this process's CUDA situation and the user's requests) and
returns a :class:`RunPlan` or raises :class:`PlanError` with the reason and a hint. It
imports no torch, so every GPU situation is tested on a CPU machine by injecting facts.
:func:`probe_cuda` gathers the facts from torch and the node; :func:`apply_plan` makes the
plan true in the process (CUDA device, TF32 flags, ``DS_ACCELERATOR``). The three are kept
apart so the decision can be printed (``lus doctor``) before anything is touched.

The rules (README "GPUs: device plan"):

* ``device=cpu``: CPU + gloo, even on a GPU node (``nccl`` then is an error).
* ``device=auto``: GPUs when torch can use them, CPU when the node has none (or
  ``CUDA_VISIBLE_DEVICES`` hides them on purpose). GPUs present but unusable (driver too
  old for the torch build, CPU-only torch wheel) is an **error** naming the reason, never a
  silent CPU run; ``train.device=cpu`` is the deliberate way to train on CPU there.
* One GPU per rank: ``cuda:<local_rank>`` when the node shows at least as many GPUs as it
  runs ranks. ``srun --gpus-per-task=N`` (``SLURM_GPUS_PER_TASK``): each task sees only its
  own GPUs, so every task takes ``cuda:0``.
* Fewer visible GPUs than ranks on a node (``lus demo``'s 2 ranks on a 1-GPU laptop):
  ``device=auto`` shares them round-robin (``cuda:<local_rank % n>``) with **gloo**, because
  NCCL refuses two ranks on one GPU; ``device=cuda`` (one GPU per rank demanded),
  ``process_group=nccl`` and DeepSpeed (collectives gloo has no CUDA path for) are errors.
  ``lus doctor`` prints the sharing as a warning.
* Backend ``auto``: nccl on a GPU of its own, gloo otherwise.
* ``bf16=auto``: bf16 on a GPU that supports it natively (compute capability >= 8.0),
  fp32 on CPU. CPU bf16 autocast works in torch but is slower than fp32 on CPUs without
  AMX and would change the numbers the CPU bitwise guarantees are stated for, so it is
  opt-in (``train.bf16=true``). ``bf16=true`` on a GPU without bf16 is an error.
* ``bf16=native``: bf16 wherever the hardware computes it natively: the GPUs of ``auto``,
  and CPUs with AMX-BF16 or AVX512-BF16 (``CudaFacts.cpu_bf16``, from the CPU flags),
  where a small CNN's training step runs 2-3x faster than fp32; fp32 elsewhere, never an
  error. For throughput-bound CPU jobs (``lus experiment``), not for bitwise comparisons.
* TF32 for matmul and cuDNN convolutions: on for GPU runs unless ``tf32=False``; it has no
  meaning on CPU and is reported off there.
* DeepSpeed: see :func:`deepspeed_bf16`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpc.world import World, WorldError

DEVICES = ("auto", "cpu", "cuda")
BF16_MODES = ("auto", "native", "true", "false")
PROCESS_GROUPS = ("auto", "gloo", "nccl")
DIST_BACKENDS = ("ddp", "deepspeed")
_HIDDEN = ("", "-1", "NoDevFiles")      # CUDA_VISIBLE_DEVICES values that hide every GPU


class PlanError(WorldError):
    """The requested device/precision/backend cannot work here; the message says why."""


@dataclass(frozen=True)
class CudaFacts:
    """What this process can know about its GPUs, as plain values (see :func:`probe_cuda`).

    ``device_count`` is what torch sees (already filtered by ``CUDA_VISIBLE_DEVICES``);
    ``node_gpus`` what the node has (``/proc/driver/nvidia/gpus``, ``/dev/nvidiaN``), so
    "GPUs present but torch cannot use them" is detectable; ``unusable_reason`` is torch's
    own explanation (driver/torch mismatch) when ``available`` is False.
    """
    available: bool = False
    device_count: int = 0
    bf16_supported: bool = False
    node_gpus: int = 0
    unusable_reason: str = ""
    visible_devices: str | None = None     # CUDA_VISIBLE_DEVICES, None when unset
    gpus_per_task: int | None = None       # SLURM_GPUS_PER_TASK (srun --gpus-per-task)
    torch_version: str = ""
    torch_cuda: str | None = None          # torch.version.cuda; None: CPU-only build
    driver: str | None = None              # NVIDIA kernel driver version
    names: tuple[str, ...] = ()            # torch.cuda.get_device_name per visible device
    cpu_bf16: bool = False                 # the CPU computes bf16 natively (AMX / AVX512-BF16)

    @property
    def hidden_on_purpose(self) -> bool:
        return self.visible_devices is not None and self.visible_devices.strip() in _HIDDEN


@dataclass(frozen=True)
class RunPlan:
    """Everything a rank needs to set itself up; ``str(plan.device)`` is a torch device string."""
    world: World
    device: str                  # "cpu" or "cuda:<index>"
    backend: str                 # process group backend (used only when world_size > 1)
    bf16: bool
    tf32: bool
    dist_backend: str            # ddp | deepspeed
    ds_accelerator: str | None   # DS_ACCELERATOR for DeepSpeed runs, else None
    physical_gpu: str | None = None   # the CUDA_VISIBLE_DEVICES entry behind `device`
    shared_gpu: bool = False     # several ranks of this node share one GPU
    bf16_supported: bool = True  # the device can run bf16 (CPU autocast: yes; GPU: cc >= 8.0)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def device_index(self) -> int | None:
        return int(self.device.split(":")[1]) if self.on_gpu else None

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def torch_device(self):
        import torch
        return torch.device(self.device)


# ---------------------------------------------------------------- the pure decision

def plan_run(world: World, facts: CudaFacts, *, device: str = "auto", bf16: str | bool = "auto",
             process_group: str = "auto", dist_backend: str = "ddp", tf32: bool = True) -> RunPlan:
    """The device/backend/precision of one rank, or PlanError with the reason and a hint."""
    device, bf16_mode = str(device).lower(), str(bf16).lower()
    _check_choice("train.device", device, DEVICES)
    _check_choice("train.bf16", bf16_mode, BF16_MODES)
    _check_choice("dist.process_group", process_group, PROCESS_GROUPS)
    _check_choice("dist.backend", dist_backend, DIST_BACKENDS)
    index, shortage = _gpu_index(world, facts, device, process_group)
    on_gpu, shared = index is not None, bool(shortage)
    if shared and dist_backend == "deepspeed":
        raise PlanError(f"dist.backend=deepspeed needs one GPU per rank: {shortage}; hint: "
                        "fewer ranks per node, or dist.backend=ddp to share GPUs")
    warnings = (f"{shortage}: ranks share GPUs round-robin with gloo (slow; for trying things "
                "out, not for measuring)",) if shared else ()
    backend = _backend(process_group, on_gpu, shared)
    use_bf16 = _bf16(bf16_mode, on_gpu, facts)
    physical = None
    if on_gpu and facts.visible_devices and not facts.hidden_on_purpose:
        ids = [s.strip() for s in facts.visible_devices.split(",")]
        physical = ids[index] if index < len(ids) else None
    return RunPlan(world, f"cuda:{index}" if on_gpu else "cpu", backend, use_bf16,
                   tf32 and on_gpu, dist_backend,
                   ("cuda" if on_gpu else "cpu") if dist_backend == "deepspeed" else None,
                   physical, shared, facts.bf16_supported if on_gpu else True, warnings)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PlanError(f"{name}={value!r}: expected {'|'.join(allowed)}")


def _gpu_index(world: World, facts: CudaFacts, device: str, process_group: str
               ) -> tuple[int | None, str]:
    """(CUDA index or None for CPU, "" or the GPU shortage that makes ranks share GPUs)."""
    where = world.hostname or "this node"
    if device == "cpu":
        return None, ""
    if not facts.available or facts.device_count == 0:
        if facts.node_gpus and not facts.hidden_on_purpose:
            raise PlanError(
                f"{facts.node_gpus} NVIDIA GPU(s) on {where} but torch cannot use them: "
                f"{facts.unusable_reason or 'unknown reason'} (torch {facts.torch_version or '?'}, "
                f"built for CUDA {facts.torch_cuda or 'none (CPU-only build)'}, driver "
                f"{facts.driver or 'unknown'}); hint: install a torch build that matches the "
                "driver, or set train.device=cpu to train on CPU on purpose")
        if device == "cuda":
            hidden = " (CUDA_VISIBLE_DEVICES hides them)" if facts.hidden_on_purpose else ""
            raise PlanError(f"train.device=cuda but no CUDA device is visible on {where}{hidden}")
        return None, ""
    n = facts.device_count
    if facts.gpus_per_task and world.launcher == "srun":
        return 0, ""                      # srun --gpus-per-task: this task's own GPU(s)
    if world.local_rank < n and world.local_world_size <= n:
        return world.local_rank, ""
    demand = (f"{world.local_world_size} ranks on {where} but only {n} GPU(s) visible"
              f"{f' (CUDA_VISIBLE_DEVICES={facts.visible_devices})' if facts.visible_devices else ''}")
    if device == "cuda":
        raise PlanError(f"train.device=cuda needs one GPU per rank: {demand}; hint: "
                        "--nproc-per-node / --ntasks-per-node must not exceed --gpus-per-node "
                        "(or use srun --gpus-per-task=1, or train.device=auto to share)")
    if process_group == "nccl":
        raise PlanError(f"dist.process_group=nccl cannot run two ranks on one GPU: {demand}; "
                        "hint: use dist.process_group=auto (gloo) or fewer ranks per node")
    return world.local_rank % n, demand


def _backend(requested: str, on_gpu: bool, shared: bool) -> str:
    if requested == "nccl" and not on_gpu:
        raise PlanError("dist.process_group=nccl needs a CUDA device on every rank; this rank "
                        "runs on CPU (use gloo or auto)")
    if requested != "auto":
        return requested
    return "nccl" if on_gpu and not shared else "gloo"


def _bf16(mode: str, on_gpu: bool, facts: CudaFacts) -> bool:
    if mode == "false":
        return False
    if mode == "auto":
        return on_gpu and facts.bf16_supported
    if mode == "native":
        return facts.bf16_supported if on_gpu else facts.cpu_bf16
    if on_gpu and not facts.bf16_supported:
        name = facts.names[0] if facts.names else "this GPU"
        raise PlanError(f"train.bf16=true but {name} has no native bf16 (needs compute "
                        "capability >= 8.0); hint: train.bf16=auto or false")
    return True


def deepspeed_bf16(ds_config: Mapping, plan: RunPlan, source: str = "DeepSpeed config") -> bool:
    """Whether DeepSpeed trains in bf16: the run's precision (``plan.bf16``) unless the JSON
    sets ``bf16.enabled`` explicitly to true/false; ``"auto"`` or no key follows the run.

    An explicit ``true`` on a GPU without bf16, or bf16 together with ``fp16.enabled`` true,
    is a PlanError naming ``source``.
    """
    section = ds_config.get("bf16") or {}
    raw = section.get("enabled", "auto") if isinstance(section, Mapping) else section
    if isinstance(raw, str):
        if raw.lower() not in ("auto", "true", "false"):
            raise PlanError(f"{source}: bf16.enabled={raw!r}, expected true, false or \"auto\"")
        raw = plan.bf16 if raw.lower() == "auto" else raw.lower() == "true"
    enabled = bool(raw)
    if enabled and not plan.bf16_supported:
        raise PlanError(f"{source}: bf16.enabled=true but {plan.device} has no native bf16 "
                        "(needs compute capability >= 8.0); hint: set it to \"auto\"")
    fp16 = ds_config.get("fp16") or {}
    if enabled and isinstance(fp16, Mapping) and fp16.get("enabled") is True:
        raise PlanError(f"{source}: bf16 and fp16 are both enabled; choose one")
    return enabled


def with_deepspeed_precision(ds_config: Mapping, plan: RunPlan, source: str = "DeepSpeed config"
                             ) -> dict:
    """A copy of the JSON with ``bf16.enabled`` resolved to a bool by :func:`deepspeed_bf16`."""
    out = dict(ds_config)
    section = out.get("bf16")
    out["bf16"] = {**(section if isinstance(section, Mapping) else {}),
                   "enabled": deepspeed_bf16(ds_config, plan, source)}
    return out


# ---------------------------------------------------------------- facts and side effects

def probe_cuda(env: Mapping[str, str] | None = None) -> CudaFacts:
    """This process's CUDA facts from torch and the node (imports torch; no CUDA context is
    created when CUDA is unusable, and the reason is torch's own message)."""
    import warnings

    import torch

    env = os.environ if env is None else env
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    reason = ""
    if not available:
        reason = "; ".join(str(w.message).strip() for w in caught)
        if not reason:
            reason = _cuda_init_error(torch)
    bf16 = bool(available and torch.cuda.is_bf16_supported(including_emulation=False))
    names = tuple(torch.cuda.get_device_name(i) for i in range(count)) if available else ()
    gpt = env.get("SLURM_GPUS_PER_TASK", "")
    m = re.fullmatch(r"(?:[\w-]+:)?(\d+)", gpt.strip())
    return CudaFacts(available, count, bf16, node_gpu_count(), " ".join(reason.split()),
                     env.get("CUDA_VISIBLE_DEVICES"), int(m.group(1)) if m else None,
                     torch.__version__, torch.version.cuda, nvidia_driver(), names,
                     cpu_has_native_bf16(cpu_flags()))


def device_for(world: World, prefer: str = "auto"):
    """The torch device of :func:`plan_run` for this process (``prefer`` is
    ``train.device``). A thin wrapper kept for callers that need only the device; new code
    takes the whole plan (backend, precision, TF32 come from the same decision)."""
    return plan_run(world, probe_cuda(), device=prefer).torch_device()


def cpu_flags(root: str = "/") -> set[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = (Path(root) / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    m = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(m.group(1).split()) if m else set()


def cpu_has_native_bf16(flags: set[str]) -> bool:
    """AMX-BF16 tiles or AVX512-BF16 dot products: CPU bf16 matmuls/convs then beat fp32
    (without them oneDNN emulates bf16 and it is slower than fp32)."""
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def _cuda_init_error(torch) -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as exc:  # torch's own words: driver too old, no devices, ...
        return str(exc)
    return ""


def node_gpu_count(root: str = "/") -> int:
    """NVIDIA GPUs the kernel driver knows on this node, independent of torch."""
    base = Path(root)
    proc = base / "proc/driver/nvidia/gpus"
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    dev = base / "dev"
    return sum(1 for p in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)) \
        if dev.is_dir() else 0


def nvidia_driver(root: str = "/") -> str | None:
    """The NVIDIA kernel driver version, or None without one."""
    for rel in ("sys/module/nvidia/version", "proc/driver/nvidia/version"):
        try:
            text = (Path(root) / rel).read_text()
        except OSError:
            continue
        m = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
        if m:
            return m.group(1)
    return None


def apply_plan(plan: RunPlan) -> None:
    """Make the plan true in this process: current CUDA device, TF32 flags, DS_ACCELERATOR.
    Call before creating models or the process group."""
    import torch

    if plan.ds_accelerator:   # the plan wins over an inherited value (make test exports cpu)
        os.environ["DS_ACCELERATOR"] = plan.ds_accelerator
    if plan.on_gpu:
        torch.cuda.set_device(plan.device_index)
    set_tf32(plan.tf32)


def set_tf32(on: bool) -> None:
    """TF32 for float32 matmuls and cuDNN convolutions/RNNs (no effect on CPU). Uses the
    ``fp32_precision`` settings (torch >= 2.9; ``allow_tf32`` is their deprecated form)."""
    import torch

    mode = "tf32" if on else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cudnn.rnn.fp32_precision = mode


def tf32_state() -> dict[str, bool]:
    """Whether TF32 is on for matmul and cuDNN convolutions in this process."""
    import torch
    return {"matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
            "cudnn": torch.backends.cudnn.conv.fp32_precision == "tf32"}


__all__ = ["CudaFacts", "RunPlan", "PlanError", "plan_run", "deepspeed_bf16",
           "with_deepspeed_precision", "probe_cuda", "apply_plan", "set_tf32"]
