"""`lus prep`: make a phantom, pack raw LUS data into HDF5 shards, finalize, validate."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Mapping

EPILOG = """examples:
  lus prep phantom --out data/phantom_raw
  lus prep pack --layout iclus --src data/phantom_raw/iclus --out data/shards --size 64
  lus prep pack --layout pocus --src ../shared/data/pocus --out data/pocus_shards --workers 2
  # clips + a per-video score table + a per-patient class table, named by a spec file
  lus prep pack --layout table --src ../shared/data/covid_blues --spec configs/ingest/covid_blues.yaml \
      --out data/blues_shards --size 64 --workers 2
  # Slurm job array: every task computes the same plan and writes only its shards
  sbatch --array=0-7 --wrap "lus prep pack --layout pocus --src RAW --out SHARDS"
  sbatch --dependency=afterok:<array job> --wrap "lus prep finalize SHARDS"
  lus prep validate data/shards        # exit 1 naming every bad shard
  # new clips arrived: new shards + manifest version 2; old shards, splits and folds kept
  lus prep pack --layout pocus --src ../shared/data/pocus --out data/pocus_shards --append
"""


class TaskError(ValueError):
    """Inconsistent --task-index/--num-tasks or SLURM_ARRAY_* values."""


def resolve_task(task_index: int | None, num_tasks: int | None, env: Mapping[str, str]) -> tuple[int, int]:
    """(task index, task count): flags first, else the Slurm array variables, else (0, 1).
    Pure, so it is tested without Slurm; arrays like 3-9:2 map to indices 0..3."""
    if (task_index is None) != (num_tasks is None):
        raise TaskError("--task-index and --num-tasks go together")
    if task_index is None and "SLURM_ARRAY_TASK_ID" in env:
        if "SLURM_ARRAY_TASK_COUNT" not in env:
            raise TaskError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
        step = int(env.get("SLURM_ARRAY_TASK_STEP", 1) or 1)
        task_index = (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))) // step
        num_tasks = int(env["SLURM_ARRAY_TASK_COUNT"])
    task_index, num_tasks = (0, 1) if task_index is None else (task_index, num_tasks)
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise TaskError(f"task index {task_index} is outside 0..{num_tasks - 1}")
    return task_index, num_tasks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lus prep", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ph = sub.add_parser("phantom", help="write the synthetic phantom in both raw layouts")
    ph.add_argument("--out", required=True, type=Path)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--patients", type=int, default=12)
    ph.add_argument("--videos-per-patient", type=int, default=3)
    ph.add_argument("--size", type=int, default=128)
    pk = sub.add_parser("pack", help="ingest a raw layout and write HDF5 shards (+ manifest)",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pk.add_argument("--layout", choices=("iclus", "pocus", "table"), required=True)
    pk.add_argument("--src", required=True, type=Path)
    pk.add_argument("--out", required=True, type=Path)
    pk.add_argument("--size", type=int, default=256, help="stored frames are size x size (default 256)")
    pk.add_argument("--channels", type=int, choices=(1, 3), default=1)
    pk.add_argument("--aspect", choices=("pad", "crop", "stretch"), default="pad",
                    help="non-square frames: zero-pad to square (default), centre-crop, or stretch")
    pk.add_argument("--compression", choices=("lzf", "gzip", "none"), default="lzf")
    pk.add_argument("--shard-frames", type=int, default=1024, help="target frames per shard")
    pk.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    pk.add_argument("--task-index", type=int, help="this task of a job array (default: SLURM_ARRAY_*)")
    pk.add_argument("--num-tasks", type=int)
    pk.add_argument("--folds", type=int, default=5, help="patient-level stratified k-fold (0: none)")
    pk.add_argument("--split-seed", type=int, default=0)
    pk.add_argument("--test-frac", type=float, default=0.2, help="for patients the dataset gives no split")
    pk.add_argument("--val-frac", type=float, default=0.0)
    pk.add_argument("--table", type=Path, help="iclus: the frame table (default: found in --src)")
    pk.add_argument("--allow-pickle", action="store_true", help="iclus: allow a pandas pickle table (runs code)")
    pk.add_argument("--viral", choices=("skip", "pneumonia"), default="skip", help="pocus: Vir_* clips")
    pk.add_argument("--no-images", action="store_true", help="pocus: skip still images")
    pk.add_argument("--spec", type=Path, help="table: YAML/JSON file naming the clip folder, the tables "
                    "and their columns (keys: data_prep/ingest_table.py TableSpec)")
    pk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="table: one spec value, over --spec (repeatable), e.g. --set max_frames=16")
    pk.add_argument("--incomplete", choices=("skip", "keep"), default="skip",
                    help="a clip that decodes fewer frames than its header announces (truncated or "
                         "corrupt part-way): skip it (default) or keep its decoded frames; both are "
                         "reported by name with decoded/expected counts")
    pk.add_argument("--append", action="store_true",
                    help="add the clips --out does not hold yet as new shards and a new manifest "
                         "version; existing shards, splits and folds are kept (same settings required)")
    pk.add_argument("--quiet", action="store_true", help="no progress bar")
    for name, text in (("finalize", "check all shards of an array pack and write manifest.json"),
                       ("validate", "re-verify checksums, counts and files; exit 1 naming bad shards")):
        sub.add_parser(name, help=text).add_argument("dir", type=Path)
    return p


def _ingest(args):
    """(IngestReport, layout options for the provenance beyond the common ones)."""
    if args.layout == "iclus":
        from data_prep.ingest_iclus import ingest_iclus
        return ingest_iclus(args.src, table=args.table, allow_pickle=args.allow_pickle), {}
    if args.layout == "table":
        from data_prep.ingest_table import ingest_table, load_spec
        from lus_dist.io.config import to_dict
        spec = load_spec(args.spec, args.set)
        return ingest_table(args.src, spec), {"spec": to_dict(spec)}
    from data_prep.ingest_pocus import ingest_pocus
    return ingest_pocus(args.src, include_images=not args.no_images, viral=args.viral), {}


def _pack(args) -> int:
    from data_prep.pack import PackConfig, pack, provenance
    from lus_dist.shards.format import MANIFEST_NAME, Preprocessing
    from lus_dist.shards.manifest import Manifest
    task, n_tasks = resolve_task(args.task_index, args.num_tasks, os.environ)
    report, layout_options = _ingest(args)
    print(report.summary())
    cfg = PackConfig(preprocessing=Preprocessing(size=args.size, channels=args.channels, aspect=args.aspect),
                     compression=args.compression, shard_frames=args.shard_frames, folds=args.folds,
                     split_seed=args.split_seed, test_frac=args.test_frac, val_frac=args.val_frac,
                     incomplete=args.incomplete, patient_classes=report.patient_classes)
    options = {"viral": args.viral, "include_images": not args.no_images,
               "table": str(args.table) if args.table else None, **layout_options}
    manifest = args.out / MANIFEST_NAME
    before = Manifest.load(args.out).version if args.append and manifest.is_file() else None
    m = pack(report.sources, args.out, cfg, provenance(args.layout, args.src, report.skipped, options),
             workers=args.workers, task_index=task, num_tasks=n_tasks, progress=not args.quiet,
             append=args.append)
    if m is not None and m.version == before:
        print(f"{args.out}: nothing new to append: version {m.version} is current")
    elif m is None:
        print(f"task {task} of {n_tasks} done; {_after_tasks(args.out, os.environ)}")
    else:
        _print_done(args.out, m)
    return 0


def _after_tasks(out: Path, env: Mapping[str, str]) -> str:
    """What writes the manifest: slurm/prep_array.sh queues the finalize job with its array
    (and marks its tasks LUS_PREP_STAGE=pack); an array submitted by hand needs the user's."""
    if env.get("LUS_PREP_STAGE") == "pack":
        return "the queued finalize job writes the manifest once every task has succeeded"
    return f"run `lus prep finalize {out}` after all tasks"


def _print_done(out: Path, m) -> None:
    """The pack report: every skipped clip with its reason, every incomplete clip kept."""
    skipped = m.provenance.get("pack_skipped", [])
    kept = m.provenance.get("pack_incomplete_kept", [])
    new = int((m.shards["version"] == m.version).sum())
    stored = int((m.videos["n_frames"] > 0).sum())   # a skipped clip keeps its row, with no frames
    print(f"{out}: version {m.version}: {len(m.shards['name'])} shards ({new} new), {stored} video(s), "
          f"{m.n_frames} frames; {len(skipped)} more video(s) skipped while packing, "
          f"{len(kept)} incomplete clip(s) kept")
    for s in skipped:
        print(f"  skipped {s['path']}: {s['reason']}")
    for s in kept:
        for c in s["incomplete"]:
            print(f"  kept incomplete {c['path']}: decoded {c['decoded']} of {c['expected']} frames")


def main(argv: list[str] | None = None) -> int:
    from data_prep.records import PackError
    from lus_dist.shards.manifest import ManifestError
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "phantom":
            from data_prep.phantom import make_phantom
            out = make_phantom(args.out, seed=args.seed, n_patients=args.patients,
                               videos_per_patient=args.videos_per_patient, size=args.size)
            print(f"phantom written to {out}/iclus and {out}/pocus")
            return 0
        if args.cmd == "pack":
            return _pack(args)
        if args.cmd == "finalize":
            from data_prep.pack import finalize
            _print_done(args.dir, finalize(args.dir))
            return 0
        from data_prep.validate import report
        code, text = report(args.dir)
        print(text, file=sys.stdout if code == 0 else sys.stderr)
        return code
    except (PackError, ManifestError, TaskError, ValueError) as exc:
        print(f"lus prep {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # unwritable/full output, missing input: the message names the file
        print(f"lus prep {args.cmd}: error: {exc} (check the path, free space and permissions; "
              "re-running resumes a pack)", file=sys.stderr)
        return 2
