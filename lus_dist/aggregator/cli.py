"""`lus aggregate`: train and evaluate the uninorm video aggregator on frame predictions."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from lus_dist.aggregator.data import PredictionsError, import_authors, read_predictions
from lus_dist.aggregator.protocols import PROTOCOLS, ProtocolError
from lus_dist.aggregator.train import (METRICS, AggregatorConfig, ProtocolResult, fit_all,
                                       run_protocol, save_aggregator)
from lus_dist.io.config import ConfigError, load_config

EPILOG = """examples:
  lus aggregate --predictions runs/regstn/predictions/test.h5 --protocol kfold --out agg/
  lus aggregate --predictions preds.parquet --config runs/tune/aggregator/best.yaml
  lus aggregate --predictions preds.h5 tnorm=lukasiewicz off_diagonal=max linear=true \\
      --protocol lopo --save-model agg/aggregator.pt
  lus aggregate --predictions data/frame_predictions.pkl --allow-pickle \\
      --annotations data/video_annotations.xlsx \\
      --video-map data/video_annotations_to_video_names.xlsx --protocol stratified_kfold

Baselines argmax_mean and max_argmax are always reported beside the uninorm. The score is a
deterministic function of the predictions, the config, --protocol, --folds and --seed.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus aggregate", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train/evaluate Roy et al.'s uninorm video aggregator on per-frame "
                    "predictions (HDF5/Parquet, or the authors' pickle + xlsx files).")
    p.add_argument("--predictions", required=True, help="frame predictions (.h5/.parquet/.pkl)")
    p.add_argument("--config", default=None, help="AggregatorConfig YAML (e.g. a sweep's best)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--protocol", default="kfold", choices=PROTOCOLS)
    p.add_argument("--folds", type=int, default=5, help="k for (stratified_)kfold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write results.json, results.csv, videos.csv")
    p.add_argument("--save-model", default=None,
                   help="also train on all labelled videos and save it (for lus predict)")
    p.add_argument("--annotations", default=None, help="authors' video_annotations.xlsx")
    p.add_argument("--video-map", default=None,
                   help="authors' video_annotations_to_video_names.xlsx")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading the authors' .pkl (pickles can run code: trusted only)")
    p.add_argument("--export", default=None,
                   help="write the (imported) predictions to this .h5/.parquet file")
    return p


def load_predictions(args: argparse.Namespace):
    if Path(args.predictions).suffix == ".pkl":
        if not (args.annotations and args.video_map):
            raise PredictionsError(f"{args.predictions}: the authors' format also needs "
                                   "--annotations and --video-map")
        return import_authors(args.predictions, args.annotations, args.video_map,
                              allow_pickle=args.allow_pickle)
    return read_predictions(args.predictions)


def write_results(out: Path, result: ProtocolResult) -> None:
    out.mkdir(parents=True, exist_ok=True)
    blob = {k: getattr(result, k) for k in ("protocol", "k", "seed", "config", "per_fold",
                                             "pooled", "neutral", "n_excluded")}
    blob |= {"class_names": list(result.class_names), "summary": result.summary(),
             "mean_weighted_f1": result.mean_weighted_f1}
    (out / "results.json").write_text(json.dumps(blob, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "fold", *METRICS, "n"])
        for method, folds in result.per_fold.items():
            for i, m in enumerate(folds):
                w.writerow([method, i, *(m[k] for k in METRICS), m["n"]])
    with open(out / "videos.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(result.videos))
        w.writerows(zip(*result.videos.values()))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(AggregatorConfig, args.config, args.overrides)
        cfg.validate()
        preds = load_predictions(args)
        if args.export:
            from lus_dist.aggregator.data import write_predictions
            write_predictions(args.export, preds)
        result = run_protocol(preds, cfg, args.protocol, k=args.folds, seed=args.seed)
        if args.save_model:
            save_aggregator(args.save_model, fit_all(preds, cfg, args.seed), cfg,
                            preds.class_names)
    except (ConfigError, PredictionsError, ProtocolError, ValueError) as exc:
        print(f"lus aggregate: error: {exc}", file=sys.stderr)
        return 2
    print(result.format_table())
    if args.out:
        write_results(Path(args.out), result)
        print(f"wrote {Path(args.out) / 'results.json'}, results.csv, videos.csv")
    return 0
