"""`lus`: thin argument parsing and dispatch only.

Each subcommand lives in the package that owns it and exposes `main(argv) -> int`;
this module imports it lazily so `lus --help` stays fast and a broken optional
dependency only breaks the subcommand that needs it.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv), one-line summary, example)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "prep": ("data_prep.cli", "ingest raw LUS data, make a phantom, pack/validate HDF5 shards",
             "lus prep phantom --out data/phantom_raw && lus prep pack --layout iclus "
             "--src data/phantom_raw/iclus --out data/shards"),
    "train": ("lus.train", "train a model family (regstn, seg, cnnlstm, pretrain): one "
              "process, torchrun or srun",
              "torchrun --standalone --nproc-per-node 2 -m lus train regstn "
              "--config configs/regstn.yaml data.root=data/shards"),
    "tune": ("tune.cli", "Ray Tune sweeps (aggregator, regstn, seg, cnnlstm, pretrain)",
             "lus tune aggregator --predictions runs/x/predictions/test.h5 --trials 64"),
    "aggregate": ("lus_dist.aggregator.cli", "train/evaluate the uninorm video aggregator on frame predictions",
                  "lus aggregate --predictions runs/x/predictions/test.h5 --protocol kfold"),
    "eval": ("lus_dist.evaluation.cli", "write paper-style reports (tables, confusion, ROC) for runs",
             "lus eval runs/regstn-demo --out runs/regstn-demo/report"),
    "predict": ("lus_dist.evaluation.predict", "score a new clip: per-frame CSV, video score, annotated GIF",
                "lus predict clip.mp4 --checkpoint runs/regstn-demo --out pred/"),
    "experiment": ("lus.experiment", "end-to-end experiments on real data (POCUS 5-fold CV; severity "
                   "and a prospective patient test on clips + score tables)",
                   "lus experiment pocus --data ../shared/data/pocus --out runs/pocus"),
    "doctor": ("lus.doctor", "print per rank the device, backend, precision and env a run will use",
               "torchrun --standalone --nproc-per-node 2 -m lus doctor regstn --config configs/regstn.yaml"),
    "gpu-smoke": ("lus.gpu_smoke", "every family on 1 GPU and 2 ranks (nccl, bf16, ZeRO-2): samples/s, memory",
                  "lus gpu-smoke --out /tmp/lus-gpu-smoke"),
    "cluster": ("hpc.cli", "start/stop a local real Slurm cluster for trying the sbatch scripts",
                "lus cluster up --nodes 2 --dir /tmp/lus-slurm"),
    "demo": ("lus.demo", "the embedded default: phantom -> shards -> 2-rank DDP Reg-STN -> video report",
             "lus demo --out demo_out"),
}


def _usage() -> str:
    lines = ["usage: lus <command> [options]   (lus <command> --help for details)", "",
             "Distributed training for lung-ultrasound deep learning.", "", "commands:"]
    for name, (_, summary, example) in SUBCOMMANDS.items():
        lines.append(f"  {name:<11} {summary}")
        lines.append(f"  {'':<11}   e.g. {example}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"lus: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
