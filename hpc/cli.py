"""`lus cluster up|down|status`: a real Slurm cluster on this machine to try the sbatch scripts."""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  lus cluster up --nodes 2 --dir /tmp/lus-slurm      # needs root; installs slurm-wlm + munge if missing
  lus cluster status --dir /tmp/lus-slurm
  lus cluster run --dir /tmp/lus-slurm -- sbatch --nodes=2 slurm/train_regstn.sh
  lus cluster down --dir /tmp/lus-slurm

The daemons live in a loopback-only network namespace; run clients (sbatch, squeue, scontrol)
through `lus cluster run`, which enters that namespace with SLURM_CONF set.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lus cluster", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("up", "down", "status", "run"),
                   help="run: a client command given after --, inside the cluster's namespace")
    p.add_argument("--dir", default="/tmp/lus-slurm", help="work dir: config, state, logs, pid files")
    p.add_argument("--nodes", type=int, default=1, choices=(1, 2, 3, 4), help="slurmd nodes (node1..N)")
    p.add_argument("--cpus-per-node", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, cmd = parser().parse_args(argv[:cut]), argv[cut + 1:]
    from hpc.local_slurm import LocalSlurmCluster, SlurmUnavailable

    cluster = LocalSlurmCluster(args.dir, nodes=args.nodes, cpus_per_node=args.cpus_per_node)
    try:
        if args.action == "up":
            cluster.up()
            print(cluster.status(), end="")
            print(f"up: SLURM_CONF={cluster.layout.conf_path}; stop with `lus cluster down --dir {args.dir}`")
        elif args.action == "down":
            cluster.down()
            print(f"down: stopped the cluster of {args.dir}")
        elif args.action == "status":
            print(cluster.status(), end="")
        else:
            if not cmd:
                print("lus cluster run: give a command after --", file=sys.stderr)
                return 2
            r = cluster.run(cmd, check=False, timeout=3600)
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
            return r.returncode
    except (SlurmUnavailable, RuntimeError) as exc:
        print(f"lus cluster {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
