"""`lus tune {aggregator,FAMILY}`: one sweep command for a laptop or a cluster.

Everything that can be checked without Ray is checked first, in this process (the base
config, the space's keys, the data and, for the aggregator, that the protocol's folds can
be made), so a sweep that cannot work fails in seconds with one line, not trial by trial.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lus_dist.io.config import ConfigError, load_config, to_dict

SPACES_DIR = Path(__file__).resolve().parent / "spaces"

EPILOG = """examples:
  # 64 ASHA trials of the uninorm aggregator, 5-fold by patient, on a laptop
  lus tune aggregator --predictions runs/regstn/predictions/test.h5 --trials 64
  lus aggregate --predictions runs/regstn/predictions/test.h5 --config runs/tune/aggregator/best.yaml

  # Barros et al.'s CNN-LSTM space with Optuna, resumable on shared storage
  lus tune cnnlstm --config configs/cnnlstm.yaml data.root=data/shards --search optuna \\
      --trials 32 --storage /shared/tune --name cnnlstm-a --resume

  # Reg-STN: each trial is a 2-worker Ray Train run; join the Ray cluster of slurm/tune.sh
  lus tune regstn --config configs/demo_regstn.yaml --workers 2 --address 10.0.0.1:6379

outputs in <storage>/<name>/: results.csv, best.yaml (feed to lus train/aggregate --config),
best.json, metric_vs_trial.png; exit status 1 if any trial failed.
"""


def _common(p: argparse.ArgumentParser, family: str) -> None:
    p.add_argument("--space", default=str(SPACES_DIR / f"{family}.yaml"),
                   help=f"search-space YAML (default: the shipped tune/spaces/{family}.yaml)")
    p.add_argument("--config", help="base config YAML of the family (else its defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides of the base config, e.g. data.root=data/shards")
    p.add_argument("--trials", type=int, default=None,
                   help="number of trials (default 16; --resume: as the sweep was started)")
    p.add_argument("--scheduler", choices=("asha", "pbt", "fifo"), default="asha")
    p.add_argument("--search", choices=("random", "grid", "optuna"), default="random")
    p.add_argument("--storage", default="runs/tune", help="shared directory for sweep state")
    p.add_argument("--name", default=None, help="sweep name (default: the family)")
    p.add_argument("--resume", action="store_true",
                   help="continue <storage>/<name> if it exists: finished trials are kept")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster (host:port); default: embedded local Ray")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on parallel trials")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray")
    p.add_argument("--num-gpus", type=int, default=None,
                   help="GPUs for the embedded Ray (default: Ray detects them)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each trial (Ray Train: each worker) asks Ray for; default 1 when "
                        "the Ray cluster has GPUs, else 0")
    p.add_argument("--seed", type=int, default=0, help="searcher seed (reproducible sweeps)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: reports before a stop")
    p.add_argument("--max-failures", type=int, default=None,
                   help="retries of a failed trial, e.g. when a Ray node dies (default: "
                        "$LUS_TUNE_MAX_FAILURES, else 0; slurm/tune.sh sets 2)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--verbose", action="store_true",
                     help="Ray's progress tables and every trial's own output (default: one "
                          "line per finished trial, a progress line a minute, a summary)")
    out.add_argument("--quiet", action="store_true", help="the final summary only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lus tune", description="Ray Tune sweeps: ASHA by default, PBT, random/grid or "
        "Optuna search; local embedded Ray, --address, or slurm/tune.sh.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="family", required=True)
    agg = sub.add_parser("aggregator", help="uninorm aggregator on a frame-predictions file",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(agg, "aggregator")
    agg.add_argument("--predictions", required=True, help="frame predictions (.h5/.parquet)")
    agg.add_argument("--protocol", default="kfold",
                     help="a `lus aggregate --protocol` (default kfold)")
    agg.add_argument("--folds", type=int, default=5, help="k of (stratified_)kfold, by patient")
    agg.add_argument("--protocol-seed", type=int, default=0, help="fold assignment seed")
    agg.add_argument("--test-predictions", default=None,
                     help="frame predictions of other patients (e.g. test.h5 when --predictions "
                          "is holdout.h5): the chosen config, fitted on --predictions, is graded "
                          "on them once after the sweep (best.json 'test'); no trial sees them")
    from lus_dist.engine import registry as families

    for fam in families.names():
        cls = families.get(fam)
        ray_train = cls.ray_train
        p = sub.add_parser(fam, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           help=(cls.title or fam) + (", each trial a Ray Train run" if ray_train
                                                      else ", each trial one process"))
        _common(p, fam)
        if ray_train:
            p.add_argument("--workers", type=int, default=2, help="Ray Train workers per trial")
    return parser


def _base_config(cls: type, args: argparse.Namespace, space) -> dict:
    """Family defaults <- --config <- overrides <- the space's base, with data paths made
    absolute: trials run in their own directories, possibly on other nodes."""
    from tune.spaces import merge

    data = merge(to_dict(load_config(cls, args.config, args.overrides)), space.base)
    section = data.get("data")
    if isinstance(section, dict) and isinstance(section.get("root"), str):
        section["root"] = str(Path(section["root"]).resolve())
    return data


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, FileNotFoundError, RuntimeError) as exc:
        print(f"lus tune: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tune.ray_env import RayOptions, node_ips, start_ray, stop_ray
    from tune.spaces import check_space, load_space
    from tune.sweep import SweepOptions, build_tuner, choose_output_engine, resumed_trials
    from tune.trainables import (TrialContext, families, gpus_per_trial, is_ray_train,
                                 make_trainable, resolve_path, tune_callbacks)

    space = load_space(args.space)
    if space.family != args.family:
        raise ConfigError(f"{args.space}: is a {space.family} space, not {args.family}")
    family = families()[args.family]
    cls = family.config_cls()
    base = _base_config(cls, args, space)
    check_space(space, cls, base)
    space = dataclasses.replace(space, max_t=space.horizon(base))
    predictions = resolve_path(getattr(args, "predictions", None))
    test_predictions = resolve_path(getattr(args, "test_predictions", None))
    precheck(args.family, cls, base, space, predictions, getattr(args, "protocol", "kfold"),
             getattr(args, "folds", 5), getattr(args, "protocol_seed", 0), test_predictions)
    opts = SweepOptions(trials=args.trials, scheduler=args.scheduler, search=args.search,
                        storage=args.storage, name=args.name or args.family,
                        resume=args.resume, max_concurrent=args.max_concurrent,
                        seed=args.seed, grace_period=args.grace_period,
                        **({} if args.max_failures is None else {"max_failures": args.max_failures}),
                        output=output_mode(args),
                        reuse_actors=not is_ray_train(args.family))
    ctx = TrialContext(family=args.family, base=base, metric=space.metric,
                       predictions=predictions, test_predictions=test_predictions,
                       protocol=getattr(args, "protocol", "kfold"),
                       k=getattr(args, "folds", 5), seed=getattr(args, "protocol_seed", 0),
                       num_workers=getattr(args, "workers", 2),
                       experiment_dir=str(opts.experiment_dir))
    if opts.resume:
        resumed_trials(opts.experiment_dir, opts.trials)   # a different --trials fails here
    choose_output_engine(opts)
    start_ray(RayOptions(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                         log_to_driver=args.verbose))
    try:
        import ray
        ctx = dataclasses.replace(ctx, gpus=gpus_per_trial(
            args.gpus_per_trial, ray.cluster_resources().get("GPU", 0.0)))
        print(f"lus tune: Ray nodes {node_ips()}; {ctx.gpus:g} GPU(s) per "
              f"{'worker' if is_ray_train(args.family) else 'trial'}; sweep {opts.experiment_dir}",
              flush=True)
        grid = build_tuner(make_trainable(family, ctx), space, opts, tune_callbacks(ctx)).fit()
    finally:
        stop_ray()
    return _report(grid, space, cls, base, opts, family.command, ctx)


def output_mode(args: argparse.Namespace) -> str:
    return "verbose" if args.verbose else "quiet" if args.quiet else "lines"


def precheck(family: str, cls: type, base: dict, space, predictions: str | None,
             protocol: str, k: int, seed: int, test_predictions: str | None = None) -> None:
    """Build a trial's config and open its data once, here, before Ray starts: an error a
    trial would hit raises ConfigError (one line, exit 2) instead of failing every trial."""
    from lus_dist.aggregator.protocols import ProtocolError
    from lus_dist.shards.manifest import ManifestError
    from tune.spaces import build_config

    cfg = build_config(cls, base, {k_: p.example() for k_, p in space.params.items()})
    try:
        if family == "aggregator":
            _precheck_aggregator(cfg, predictions, protocol, k, seed, test_predictions)
        else:
            from lus_dist.engine import registry as families
            families.make(family, cfg).build_data(None)
    except ConfigError:
        raise
    except (ProtocolError, ManifestError, ValueError, OSError) as exc:
        raise ConfigError(_naming(predictions or base.get("data", {}).get("root"), exc)) from None


def _naming(path, exc: Exception) -> str:
    """The error's text, led by the file it is about unless it already names it."""
    return str(exc) if path and str(path) in str(exc) else f"{path}: {exc}"


def _precheck_aggregator(cfg, predictions: str | None, protocol: str, k: int, seed: int,
                         test_predictions: str | None) -> None:
    """Both files are read here, so a bad --test-predictions fails before the sweep, not
    after it has run every trial."""
    from lus_dist.aggregator.protocols import make_folds
    from lus_dist.aggregator.train import labelled_videos
    from tune.trainables import _videos

    if not predictions or not Path(predictions).is_file():
        raise ConfigError(f"{predictions}: --predictions file not found")
    if test_predictions and not Path(test_predictions).is_file():
        raise ConfigError(f"{test_predictions}: --test-predictions file not found")
    batch, y, _ = labelled_videos(_videos(predictions), cfg)
    make_folds(batch.patient_id, y, protocol, k=k, seed=seed, split=batch.split)
    if test_predictions:
        try:
            labelled_videos(_videos(test_predictions), cfg)
        except (ValueError, OSError) as exc:
            raise ConfigError(_naming(test_predictions, exc)) from None


def aggregator_grader(ctx):
    """best config -> its metrics on --test-predictions, fitted on all of --predictions."""
    if ctx.family != "aggregator" or not ctx.test_predictions:
        return None
    from lus_dist.aggregator.train import fit_all, grade
    from tune.trainables import _videos

    def graded(cfg) -> dict:
        model = fit_all(_videos(ctx.predictions), cfg, seed=ctx.seed)
        return grade(model, _videos(ctx.test_predictions), cfg)
    return graded


def _report(grid, space, cls, base, opts, command, ctx) -> int:
    """Write what finished, then fail loudly if any trial crashed."""
    from tune.sweep import trial_errors, write_outputs

    errors = trial_errors(grid)
    for key in ("predictions", "protocol", "k", "seed"):
        command = command.replace("{%s}" % key, str(getattr(ctx, key)))
    if len(errors) < len(grid):
        paths = write_outputs(grid, space, cls, base, opts.experiment_dir, command,
                              grade=aggregator_grader(ctx))
        print(f"lus tune: {len(grid)} trials, {len(grid) - len(errors)} finished; "
              f"results {paths['csv']}; best config {paths['best']}; plot {paths['plot']}")
    if errors:
        print(f"lus tune: {len(errors)} trial(s) FAILED:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
