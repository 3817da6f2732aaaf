"""`lus demo`: the embedded default job, end to end, with real distributed training.

It runs the same commands a researcher would type (shown as it goes), so the demo
doubles as a copy-paste tutorial: phantom -> shards -> 2-rank DDP Reg-STN under
torchrun (gloo on CPU, nccl on GPU) -> uninorm video aggregation -> report.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hpc.dist import child_env

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "lus_dist" / "configs"   # also ./configs in a checkout


class DemoError(RuntimeError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus demo",
        description="Run the embedded default job: generate a synthetic LUS phantom, pack it into "
                    "HDF5 shards, train Reg-STN with 2 DDP processes under torchrun, aggregate frame "
                    "scores to video level with the uninorm aggregator, and write a report.",
        epilog="example: lus demo --out demo_out   (then open demo_out/report/report.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--nproc", type=int, default=2, help="DDP processes (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="phantom and training seed")
    p.add_argument("--config", default=None,
                   help="Reg-STN config (default: configs/demo_regstn.yaml shipped with the repo)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for the training config")
    return p


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    """Run one step, echoing the command; on failure show the tail of its output."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    with log.open("a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise DemoError(f"step failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                        f"--- last lines of {log} ---\n{tail}")
    print(f"  ok ({time.time() - t0:.0f} s)", flush=True)


def run_dir_of(out: Path) -> Path:
    return out / "runs" / "regstn"


def steps(out: Path, nproc: int, seed: int, config: Path, overrides: list[str]) -> list[list[str]]:
    py = sys.executable
    run_dir = run_dir_of(out)
    return [
        [py, "-m", "lus", "prep", "phantom", "--out", str(out / "raw"), "--seed", str(seed)],
        [py, "-m", "lus", "prep", "pack", "--layout", "iclus", "--src", str(out / "raw" / "iclus"),
         "--out", str(out / "shards"), "--size", "64", "--workers", "2"],
        [py, "-m", "lus", "prep", "validate", str(out / "shards")],
        [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         "-m", "lus", "train", "regstn", "--config", str(config), "--run-dir", str(run_dir),
         f"data.root={out / 'shards'}", f"seed={seed}", *overrides],
        # leave-one-patient-out on the test split's frame predictions (Roy et al. trained the
        # aggregator by cross-validation on held-out frame predictions), the paper's settings
        [py, "-m", "lus", "aggregate", "--predictions", str(run_dir / "predictions" / "test.h5"),
         "--protocol", "lopo", "--out", str(out / "aggregate")],
        [py, "-m", "lus", "eval", str(run_dir), "--aggregate", str(out / "aggregate"),
         "--out", str(out / "report")],
    ]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out).resolve()
    config = Path(args.config) if args.config else REPO_CONFIGS / "demo_regstn.yaml"
    if args.nproc < 1:
        print(f"lus demo: --nproc {args.nproc}: training needs at least 1 process", file=sys.stderr)
        return 2
    if not config.is_file():
        print(f"lus demo: config {config} not found (pass --config FILE)", file=sys.stderr)
        return 2
    from lus_dist.io.config import ConfigError
    from lus_dist.engine.registry import load_run_config
    try:   # before minutes of data preparation, not after
        load_run_config("regstn", config, args.overrides)
    except ConfigError as exc:
        print(f"lus demo: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    # every output under --out is made anew (phantom, shards, report), the run too: a run
    # dir never holds two runs
    shutil.rmtree(run_dir_of(out), ignore_errors=True)
    log = out / "demo.log"
    log.write_text("")
    t0 = time.time()
    try:
        for cmd in steps(out, args.nproc, args.seed, config, args.overrides):
            _run(cmd, child_env(), log)
    except DemoError as exc:
        print(f"lus demo: {exc}", file=sys.stderr)
        return 1
    report = out / "report" / "report.md"
    if not report.is_file():
        print(f"lus demo: finished but {report} was not written (see {log})", file=sys.stderr)
        return 1
    print(f"\nDemo finished in {time.time() - t0:.0f} s.\nReport: {report}\nLog: {log}")
    return 0
