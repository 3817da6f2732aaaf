"""`lus doctor FAMILY --config X.yaml key=value`: what a run will use, per rank, before it runs.

Prints one rank-prefixed block per process: world, the device plan (device, process-group
backend, precision, TF32, DeepSpeed stage, accelerator and precision, the memory format the
convolutions will compute in), loader workers against the CPUs this rank has,
NCCL/GLOO/torch distributed environment, torch / CUDA / driver / DeepSpeed versions. Exits
2 with the reason when the plan is broken (more ranks than GPUs with train.device=cuda,
unusable GPUs, nccl on CPU, a bad config, or any combination the engine refuses at
start-up: the doctor asks lus_dist.engine.fit.runnable, as `lus train` does). Under
torchrun or srun each rank also joins the process group and runs one all-reduce, so a job
log shows that the backend really connects before hours of training are queued behind it.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time

ENV_PREFIXES = ("NCCL_", "GLOO_", "TORCH_NCCL_", "TORCH_DIST", "TORCH_DISABLE_SHARE_RDZV",
                "MASTER_", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR",
                "SLURM_GPUS", "SLURM_CPUS_PER_TASK")

EPILOG = """examples:
  lus doctor regstn --config configs/regstn.yaml data.root=data/shards
  torchrun --standalone --nproc-per-node 2 -m lus doctor seg --config configs/seg.yaml \\
      dist.backend=deepspeed
  srun --ntasks-per-node 4 --gpus-per-task 1 python -m lus doctor cnnlstm --config configs/cnnlstm.yaml

Exit 0: the plan works (warnings, e.g. ranks sharing a GPU, are printed); 2: the plan is
broken or the config is bad, with the reason. Run it with the same launcher and arguments
as `lus train`; the sbatch scripts run it first so the job log shows the plan."""


def parser() -> argparse.ArgumentParser:
    from lus_dist.engine import registry as families

    p = argparse.ArgumentParser(
        prog="lus doctor", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print, per rank, the device, backend, precision, TF32, world, loader "
                    "workers, distributed environment and library versions a `lus train` run "
                    "with these arguments would use; exit 2 if that plan cannot work.")
    p.add_argument("family", choices=families.names(), help="model family, as for lus train")
    p.add_argument("--config", default=None, help="YAML config (family defaults if omitted)")
    p.add_argument("--no-comm", action="store_true",
                   help="do not join the process group for the all-reduce check")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.device=cpu")
    return p


def versions(facts) -> str:
    try:
        ds = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        ds = "not installed"
    return (f"torch {facts.torch_version} (CUDA build {facts.torch_cuda or 'none'}), "
            f"NVIDIA driver {facts.driver or 'none'}, deepspeed {ds}")


def gpu_line(facts) -> str:
    names = ", ".join(facts.names) if facts.names else "none usable"
    reason = f"; unusable: {facts.unusable_reason}" if facts.node_gpus and not facts.available \
        else ""
    visible = "unset" if facts.visible_devices is None else repr(facts.visible_devices)
    return (f"gpus: node has {facts.node_gpus}, torch sees {facts.device_count} [{names}], "
            f"CUDA_VISIBLE_DEVICES={visible}, bf16 {'yes' if facts.bf16_supported else 'no'}"
            f"{reason}; cpu bf16 {'native' if facts.cpu_bf16 else 'emulated'}")


def cpus_for_rank(world) -> int:
    """CPUs this process may run on, shared by the ranks of its node."""
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:
        mine = os.cpu_count() or 1
    per_task = os.environ.get("SLURM_CPUS_PER_TASK")
    if world.launcher == "srun" and per_task and per_task.isdigit():
        return int(per_task)                      # srun binds each task to its own CPUs
    return max(1, mine // world.local_world_size)


def loader_line(cfg, world) -> tuple[str, str | None]:
    workers = cfg.data.num_workers
    cpus = cpus_for_rank(world)
    line = (f"loader: {workers} worker(s) per loader, batch {cfg.data.batch_size}/rank, "
            f"{cpus} CPU(s) per rank, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    warn = None
    if workers + 1 > cpus:
        warn = (f"{workers} loader workers + the trainer need {workers + 1} CPUs but this rank "
                f"has {cpus}; hint: --cpus-per-task >= ranks per node x (workers + 1)")
    return line, warn


def engine_lines(cfg, world, plan) -> list[str]:
    """What the engine will hand DDP or DeepSpeed, after the refusals `lus train` makes at
    start-up (the same function: a combination the engine cannot run is a ConfigError)."""
    from pathlib import Path

    from lus_dist.engine.fit import runnable
    from lus_dist.engine.layout import planned_format
    from lus_dist.engine.session import Session

    session = Session(world, plan.torch_device(), Path("."), plan.bf16, plan)
    ds = runnable(cfg, session)
    lines = []
    if ds is not None:
        lines.append(f"deepspeed: {cfg.dist.deepspeed_json().name}, "
                     f"ZeRO-{ds['zero_optimization']['stage']}, "
                     f"{'bf16' if session.bf16 else 'fp32'}, accelerator {plan.ds_accelerator}")
    return [*lines, f"memory format: {planned_format(cfg.model.channels_last, ds is not None)}"]


def env_line() -> str:
    keys = sorted(k for k in os.environ if k.startswith(ENV_PREFIXES))
    return "env: " + (" ".join(f"{k}={os.environ[k]}" for k in keys) or "(no NCCL/GLOO/dist vars)")


def report(cfg, world, facts) -> tuple[list[str], list[str], object]:
    """(lines describing the plan, warnings, the RunPlan); PlanError/ConfigError when broken."""
    from lus_dist.engine.session import run_plan

    plan = run_plan(cfg, world, facts)
    pg = plan.backend
    if world.world_size == 1:
        pg = (f"{plan.backend} over this process alone (DeepSpeed's collectives need a group)"
              if plan.dist_backend == "deepspeed" else
              f"none (single process; would be {plan.backend})")
    lines = [
        f"world: rank {world.rank}/{world.world_size}, local {world.local_rank}/"
        f"{world.local_world_size}, node {world.node_rank}/{world.num_nodes} "
        f"({world.hostname or 'this host'}), launcher {world.launcher}, master "
        f"{world.master_addr}:{world.master_port}",
        f"plan: device {plan.device}"
        f"{f' (physical GPU {plan.physical_gpu})' if plan.physical_gpu else ''}, process group "
        f"{pg}, precision {plan.precision}, TF32 {'on' if plan.tf32 else 'off'}, "
        f"dist.backend {plan.dist_backend}",
    ]
    lines += engine_lines(cfg, world, plan)
    loader, warn = loader_line(cfg, world)
    lines += [loader, gpu_line(facts), versions(facts), env_line()]
    warnings = list(plan.warnings) + ([warn] if warn else [])
    inherited = os.environ.get("DS_ACCELERATOR")
    if plan.ds_accelerator and inherited and inherited != plan.ds_accelerator:
        warnings.append(f"DS_ACCELERATOR={inherited} in the environment; the run sets "
                        f"{plan.ds_accelerator} to match device {plan.device}")
    return lines, warnings, plan


def comm_check(world, plan, emit) -> str:
    """Join the group with the plan's backend and all-reduce this rank's number; `emit(line)`
    then runs rank by rank with barriers, so the ranks' blocks never interleave on a shared
    stdout (a long block is written in several chunks)."""
    import torch
    import torch.distributed as dist

    from hpc.dist import destroy_distributed, init_distributed
    t0 = time.perf_counter()
    init_distributed(world, timeout_s=120, plan=plan)
    x = torch.tensor([float(world.rank)], device=plan.torch_device())
    dist.all_reduce(x)
    expected = world.world_size * (world.world_size - 1) / 2
    ok = float(x.item()) == expected
    line = (f"comm: all_reduce over {world.world_size} ranks with {plan.backend} "
            f"{'ok' if ok else f'WRONG ({x.item()} != {expected})'} "
            f"({(time.perf_counter() - t0) * 1e3:.0f} ms incl. rendezvous)")
    for turn in range(world.world_size):
        if turn == world.rank:
            emit(line)
        dist.barrier()
    destroy_distributed()
    return line


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    from hpc import WorldError, current_world
    from hpc.device_plan import probe_cuda
    from lus_dist.io.config import ConfigError
    from lus_dist.engine.registry import load_run_config

    tag = "lus doctor"
    try:
        world = current_world()
        tag = f"[rank {world.rank}/{world.world_size}]"
        cfg = load_run_config(args.family, args.config, args.overrides)
        lines, warnings, plan = report(cfg, world, probe_cuda())
    except (ConfigError, WorldError, FileNotFoundError) as exc:
        print(f"{tag} plan broken: {exc}", file=sys.stderr, flush=True)
        return 2
    lines += [f"WARNING: {w}" for w in warnings]

    def emit(*last: str) -> None:
        print("\n".join(f"{tag} {line}" for line in [*lines, *last]), flush=True)

    if world.world_size > 1 and not args.no_comm:
        comm = comm_check(world, plan, emit)
        return 1 if "WRONG" in comm else 0
    emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
