"""`lus gpu-smoke`: every family for a few steps on real GPUs, the way a user launches them.

Cells per family (regstn, seg, cnnlstm; the production configs, loader workers included):
1 GPU (bf16), 2 ranks DDP with nccl + bf16, 2 ranks DeepSpeed ZeRO-2 bf16. Each cell is
the real `lus train` command line under torchrun on phantom shards made by `lus prep
phantom` + `lus prep pack`; the table shows samples/s and the memory format the
convolutions computed in (the run's summary.json: channels_last where the config asks for
it, DeepSpeed included) and the peak GPU memory of the busiest rank
(torch.cuda.max_memory_allocated, recorded by a thin per-rank wrapper around `lus train`).
Without a usable GPU it prints why and exits 0 (a skip); with one GPU the 2-rank cells are
skipped (NCCL needs a GPU per rank).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lus_dist.engine.registry import BUILTIN

FAMILIES = tuple(BUILTIN)   # the shipped families (plug-ins have no smoke data of their own)
CONFIGS = Path(__file__).resolve().parent.parent / "lus_dist" / "configs"


@dataclass(frozen=True)
class Cell:
    family: str
    name: str          # 1gpu | ddp2 | zero2
    nproc: int
    argv: tuple[str, ...]

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / f"{self.family}-{self.name}"


def prep_commands(out: Path, size: int, python: str = sys.executable) -> list[list[str]]:
    """Phantom raw data, then shards at `size` px."""
    return [[python, "-m", "lus", "prep", "phantom", "--out", str(out / "raw"), "--seed", "0"],
            [python, "-m", "lus", "prep", "pack", "--layout", "iclus", "--src",
             str(out / "raw" / "iclus"), "--out", str(out / "shards"), "--size", str(size),
             "--workers", "2", "--quiet"]]


def cells(out: Path, gpus: int, steps: int = 20, python: str = sys.executable) -> list[Cell]:
    """The torchrun command lines of every cell that fits on `gpus` GPUs (pure)."""
    variants = [("1gpu", 1, ()), ("ddp2", 2, ("dist.process_group=nccl",)),
                ("zero2", 2, ("dist.backend=deepspeed", "dist.zero_stage=2",
                              f"dist.deepspeed_config={CONFIGS / 'deepspeed' / 'zero2_bf16.json'}",
                              "dist.process_group=nccl"))]
    out_cells = []
    for family in FAMILIES:
        extra = ("data.clip_len=4",) if family == "cnnlstm" else ()
        for name, nproc, dist_args in variants:
            if nproc > gpus:
                continue
            cell = Cell(family, name, nproc, ())
            argv = (python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={nproc}", "-m", "lus.gpu_smoke", "--record",
                    str(cell.run_dir(out) / "gpu_memory"), "--",
                    "train", family, "--config", str(CONFIGS / f"{family}.yaml"),
                    "--run-dir", str(cell.run_dir(out)), f"data.root={out / 'shards'}",
                    "train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.device=cuda",
                    "train.bf16=true", "logging.tensorboard=false", "logging.progress=plain",
                    *extra, *dist_args)
            out_cells.append(Cell(family, name, nproc, argv))
    return out_cells


def needs_gpu_reason() -> str | None:
    """Why this machine cannot run the smoke test, or None when it can."""
    from hpc.device_plan import probe_cuda

    facts = probe_cuda()
    if facts.available and facts.device_count:
        return None
    if facts.node_gpus:
        return f"{facts.node_gpus} GPU(s) present but unusable: {facts.unusable_reason}"
    return "no CUDA GPU on this machine"


# ---------------------------------------------------------------- per-rank wrapper

def record_worker(record_dir: Path, lus_argv: list[str]) -> int:
    """Run `lus ARGS` in this torchrun worker, then write its peak GPU memory to
    record_dir/rank<R>.json. TORCHELASTIC_RUN_ID is dropped for the call so the engine's
    exit_worker returns instead of leaving with os._exit before the record is written
    (the world is still read from RANK/WORLD_SIZE/LOCAL_RANK); we exit the same way after."""
    import torch

    from hpc.dist import exit_worker
    from lus.cli import main as lus_main
    run_id = os.environ.pop("TORCHELASTIC_RUN_ID", None)
    code = lus_main(lus_argv)
    if run_id is not None:
        os.environ["TORCHELASTIC_RUN_ID"] = run_id
    rank = int(os.environ.get("RANK", "0"))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_bytes": peak,
                                                             "exit": code}))
    return exit_worker(code)


# ---------------------------------------------------------------- driver

def cell_result(cell: Cell, out: Path, code: int, seconds: float) -> dict:
    run = cell.run_dir(out)
    summary = run / "summary.json"
    s = json.loads(summary.read_text()) if summary.is_file() else {}
    peaks = [json.loads(p.read_text())["peak_bytes"] for p in (run / "gpu_memory").glob("rank*.json")]
    return {"family": cell.family, "cell": cell.name, "ranks": cell.nproc, "exit": code,
            "samples_per_s": s.get("train_samples_per_s"),
            "peak_gpu_mib": max(peaks) / 2**20 if peaks else None,
            "memory_format": s.get("memory_format"), "seconds": round(seconds, 1)}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'family':<8} {'cell':<6} {'ranks':>5} {'samples/s':>10} {'peak GPU MiB':>13} "
             f"{'layout':<13} {'s':>6}  status"]
    for r in rows:
        sps = f"{r['samples_per_s']:.1f}" if r["samples_per_s"] is not None else "-"
        mem = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        status = "ok" if r["exit"] == 0 else f"FAILED (exit {r['exit']})"
        lines.append(f"{r['family']:<8} {r['cell']:<6} {r['ranks']:>5} {sps:>10} {mem:>13} "
                     f"{r.get('memory_format') or '-':<13} {r['seconds']:>6}  {status}")
    return "\n".join(lines)


def run_all(out: Path, gpus: int, steps: int, size: int) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("DS_ACCELERATOR", None)
    log = out / "gpu_smoke.log"
    if not (out / "shards" / "manifest.json").is_file():
        for cmd in prep_commands(out, size):
            _run(cmd, env, log)
    rows = []
    for cell in cells(out, gpus, steps):
        shutil.rmtree(cell.run_dir(out), ignore_errors=True)   # a new measurement, a new run
        t0 = time.perf_counter()
        code = _run(list(cell.argv), env, log, check=False)
        rows.append(cell_result(cell, out, code, time.perf_counter() - t0))
        print(format_table(rows[-1:]).splitlines()[1], flush=True)
    return rows


def _run(cmd: list[str], env: dict, log: Path, check: bool = True) -> int:
    print(f"$ {shlex.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if check and code:
        raise SystemExit(f"lus gpu-smoke: step failed (exit {code}), see {log}")
    return code


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus gpu-smoke", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="On a GPU machine: train every family a few steps on 1 GPU and on 2 ranks "
                    "(nccl, bf16, DDP and DeepSpeed ZeRO-2) with the real `lus train` command "
                    "lines; print samples/s and peak GPU memory per family. On a machine without "
                    "a usable GPU it says so and exits 0 (skipped).",
        epilog="example:\n  lus gpu-smoke --out /tmp/lus-gpu-smoke --steps 20\n"
               "  lus gpu-smoke --dry-run     # print the command lines only\n"
               "Exit 0: every cell passed (or skipped: no GPU); 1: a cell failed (see "
               "OUT/gpu_smoke.log).")
    p.add_argument("--out", default="gpu_smoke_out", help="work dir (shards, runs, log, results.json)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per cell (default 20)")
    p.add_argument("--size", type=int, default=128, help="phantom frame size in px (default 128)")
    p.add_argument("--dry-run", action="store_true", help="print the commands for 2 GPUs and exit")
    p.add_argument("--record", default=None, help=argparse.SUPPRESS)   # per-rank wrapper mode
    p.add_argument("lus_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.record:
        rest = args.lus_args[1:] if args.lus_args[:1] == ["--"] else args.lus_args
        return record_worker(Path(args.record), rest)
    out = Path(args.out).resolve()
    if args.dry_run:
        for cmd in prep_commands(out, args.size) + [list(c.argv) for c in cells(out, 2, args.steps)]:
            print(shlex.join(cmd))
        return 0
    reason = needs_gpu_reason()
    if reason:
        print(f"lus gpu-smoke: skipped, needs a GPU ({reason})")
        return 0
    import torch
    rows = run_all(out, torch.cuda.device_count(), args.steps, args.size)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    if torch.cuda.device_count() < 2:
        print("(2-rank cells skipped: NCCL needs one GPU per rank and only 1 is visible)")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
