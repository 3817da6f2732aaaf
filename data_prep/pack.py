"""Pack ingested videos into HDF5 shards: plan (pure), write (one shard per job), finalize.

The plan is a pure function of the sorted source list and the settings, so every Slurm
array task computes the same plan and writes only its own shards; `finalize` then checks
all shards and writes `manifest.json`. A shard is written to a temporary name, renamed,
and only then gets its sidecar (`shard-NNNNN.h5.json`: checksum, counts, skips); a re-run
skips every shard whose sidecar matches its bytes and the current plan, so an interrupted
pack resumes where it stopped. HDF5 timestamps are off and the file format is pinned, and
every shard is written by a fresh child of one forkserver (see `_shard_pool`), so the same
input gives byte-identical shards (and checksums) whichever shards a run starts from.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import pickle
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from data_prep.finalize import patient_table
from data_prep.records import PackError, VideoSource
from data_prep.shard_writer import shard_status, write_shard
from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest
from lus_dist.shards.partition import task_items
from lus_dist.shards.splits import extend_group_kfold, group_kfold, patient_split


@dataclass
class PackConfig:
    preprocessing: fmt.Preprocessing = field(default_factory=fmt.Preprocessing)
    compression: str = "lzf"          # lzf | gzip | none
    shard_frames: int = 1024          # target frames per shard (videos are never split)
    folds: int = 5                    # patient-level k-fold, stratified by video label
    split_seed: int = 0
    test_frac: float = 0.2            # for patients without a split given by the dataset
    val_frac: float = 0.0
    default_frames: int = 64          # planning estimate when a video's length is unknown
    incomplete: str = "skip"          # a clip that ends before its header's count: skip | keep
    patient_classes: tuple[str, ...] = ()   # names of a patient-level target; folds stratify by it

    def __post_init__(self):
        if self.incomplete not in ("skip", "keep"):
            raise PackError(f"--incomplete must be skip or keep, got {self.incomplete!r}")
        if self.compression not in ("lzf", "gzip", "none"):
            raise PackError(f"compression must be lzf, gzip or none, got {self.compression!r}")
        if self.shard_frames < 1:
            raise PackError(f"--shard-frames must be >= 1, got {self.shard_frames}")


def estimate_frames(src: VideoSource, default: int) -> int:
    """Planning estimate of a video's length, read without decoding it: the ingester's
    `extra["n_frames"]`, else the container header, else `default`. Only shard sizes
    depend on it, never correctness, and it is deterministic for the same files."""
    n = src.extra.get("n_frames")
    if isinstance(n, (int, np.integer)) and n > 0:
        return int(n)
    from lus_dist.io.video import MediaError, is_video_file, video_info
    path = Path(str(src.source))
    if is_video_file(path) and path.is_file():
        try:
            return int(video_info(path)["frame_count_header"] or default)
        except MediaError:
            return default   # the writer reports it as a skip, with the decoder's reason
    return default


def plan_shards(estimates: list[int], shard_frames: int) -> list[list[int]]:
    """Contiguous runs of videos whose estimated frames reach `shard_frames` (pure)."""
    shards: list[list[int]] = [[]]
    filled = 0
    for i, n in enumerate(estimates):
        if shards[-1] and filled + n > shard_frames:
            shards.append([])
            filled = 0
        shards[-1].append(i)
        filled += n
    return shards if shards[0] else []


def check_sources(sources: list[VideoSource], patient_classes=()) -> list[VideoSource]:
    """Sorted by video id (the plan must not depend on listing order); duplicates are errors."""
    seen: dict[str, str] = {}
    for s in sources:
        if s.video_id in seen:
            raise PackError(f"duplicate video id {s.video_id!r}: {seen[s.video_id]} and {s.source}")
        seen[s.video_id] = str(s.source)
        if not -1 <= s.label < len(fmt.VIDEO_CLASSES):
            raise PackError(f"{s.source}: video label {s.label} is outside -1..{len(fmt.VIDEO_CLASSES) - 1}")
        if s.patient_label != fmt.UNKNOWN and not 0 <= s.patient_label < len(patient_classes):
            raise PackError(f"{s.source}: patient class {s.patient_label} is not an index into the "
                            f"patient classes {list(patient_classes)}")
    return sorted(sources, key=lambda s: s.video_id)


def _assign(sources: list[VideoSource], cfg: PackConfig, base: Manifest | None) -> dict:
    """split, fold and patient index per source. With `base` (an append), patients already
    there keep theirs; new patients get a split by the same rule (given split, else seeded
    fractions) and a fold by the same stratified rule, continued from the existing folds."""
    pids, labels = [s.patient_id for s in sources], fold_strata(sources, cfg)
    old_pids = base.videos["patient_id"].tolist() if base else []
    known = dict(zip(old_pids, zip(base.videos["split"].tolist(), base.videos["fold"].tolist()))) if base else {}
    new_rows = [i for i, p in enumerate(pids) if p not in known]
    split = np.array([known[p][0] if p in known else None for p in pids], dtype=object)
    if new_rows:
        split[new_rows] = patient_split([pids[i] for i in new_rows],
                                        [sources[i].extra.get("split") for i in new_rows],
                                        cfg.test_frac, cfg.val_frac, cfg.split_seed)
    if cfg.folds < 2:
        folds = np.full(len(sources), -1)
    elif base is None:
        folds = group_kfold(pids, cfg.folds, cfg.split_seed, labels)
    else:
        old_folds = np.concatenate([base.videos["fold"], [known.get(p, (None, -1))[1] for p in pids]])
        folds = extend_group_kfold(old_folds, old_pids + pids, cfg.folds, cfg.split_seed,
                                   np.concatenate([base_strata(base, cfg), labels]))[len(old_pids):]
    order = (base.patients["patient_id"].tolist() if base else []) + sorted({pids[i] for i in new_rows})
    index = {p: i for i, p in enumerate(order)}
    return {"split": split, "fold": np.asarray(folds), "patient": [index[p] for p in pids]}


def _video_table(sources: list[VideoSource], shard_of: np.ndarray, cfg: PackConfig,
                 base: Manifest | None = None) -> dict:
    try:
        assigned = _assign(sources, cfg, base)
    except ValueError as exc:
        raise PackError(f"split/fold assignment: {exc} (see --folds, --test-frac, --val-frac)") from None
    cols = {k: [str(getattr(s, k)) for s in sources]
            for k in ("video_id", "patient_id", "hospital_id", "probe", "source")}
    cols.update(label=[s.label for s in sources], video_score=[s.video_score for s in sources],
                n_frames=[-1] * len(sources), shard=shard_of.tolist(), offset=[-1] * len(sources),
                split=assigned["split"].tolist(), fold=assigned["fold"].tolist(),
                patient=assigned["patient"])
    new = {k: np.asarray(v) for k, v in cols.items()}
    return new if base is None else {k: np.concatenate([base.videos[k], new[k]]) for k in new}


# --- a patient-level target (e.g. a PCR result per patient): stored once, in the patient table ---
def fold_strata(sources: list[VideoSource], cfg: PackConfig) -> list[int]:
    """What folds keep even per fold: the patient class when the pack has one (each fold then
    holds about the same share of, say, PCR-positive patients), else the video label."""
    return [s.patient_label if cfg.patient_classes else s.label for s in sources]


def base_strata(base: Manifest, cfg: PackConfig) -> np.ndarray:
    """`fold_strata` of the videos an append extends, read back from their manifest."""
    return base.video_patient_labels() if cfg.patient_classes else base.videos["label"]


def patient_labels(videos: dict, sources: list[VideoSource], base: Manifest | None) -> np.ndarray:
    """The patient class per patient row; `sources` are the plan's new rows, in row order.
    A patient whose videos disagree is an error (no class is picked silently)."""
    n_old = base.n_videos if base else 0
    out = np.full(int(videos["patient"].max()) + 1, fmt.UNKNOWN, np.int64)
    if base is not None:
        out[:len(base.patients["label"])] = base.patients["label"]
    for p, s in zip(videos["patient"][n_old:].tolist(), sources):
        if s.patient_label != fmt.UNKNOWN and out[p] not in (fmt.UNKNOWN, s.patient_label):
            raise PackError(f"{s.source}: patient {s.patient_id!r} has class {s.patient_label} here "
                            f"and {int(out[p])} on another video; a patient has one class")
        if s.patient_label != fmt.UNKNOWN:
            out[p] = s.patient_label
    return out


def with_patient_classes(classes: dict, cfg: PackConfig, base: Manifest | None) -> dict:
    """The manifest's class names plus the patient classes (an append must keep the names)."""
    if base is not None and base.patient_classes != list(cfg.patient_classes):
        raise PackError(f"--append must keep the patient classes: the pack has {base.patient_classes}, "
                        f"this ingest gives {list(cfg.patient_classes)}")
    return {**classes, "patient": list(cfg.patient_classes)} if cfg.patient_classes else classes


class NothingToAppend(PackError):
    """`--append` found no video that the shard directory does not already hold."""


def _settings(cfg: PackConfig) -> tuple[dict, dict]:
    """(preprocessing block, splits block) of a pack: what an append must match."""
    return ({**cfg.preprocessing.to_dict(), "compression": cfg.compression, "incomplete": cfg.incomplete},
            {"split": "patient-level; dataset-given split wins, else seeded fractions",
             "test_frac": cfg.test_frac, "val_frac": cfg.val_frac, "seed": cfg.split_seed,
             "folds": cfg.folds, "fold_method": "patient-level StratifiedGroupKFold by "
             + ("patient class" if cfg.patient_classes else "video label")})


_FIXED = ("interpolation", "mask_interpolation", "dtype")   # set by the lus-dist version, no flag


def _setting_text(key: str, have, want) -> str:
    """One differing append setting: both values and the flag that sets it."""
    if key in _FIXED:
        return f"{key} (existing {have!r}, this lus-dist writes {want!r})"
    flag = "--split-seed" if key == "seed" else f"--{key.replace('_', '-')}"
    return f"{key} (existing {have!r}, given {want!r}: pass {flag} {have})"


def _check_base(base: Manifest, cfg: PackConfig) -> None:
    """An append packs by the existing pack's settings. A setting that only one side knows
    (a pack made by another lus-dist version) cannot be matched by any flag, so such a
    pack takes no append; the clips then go into a new pack."""
    pre, splits = _settings(cfg)
    given = {**pre, **{k: splits[k] for k in ("test_frac", "val_frac", "seed", "folds")}}
    have = {**{k: base.splits[k] for k in given if k in base.splits}, **base.preprocessing}
    older, newer = sorted(set(given) - set(have)), sorted(set(have) - set(given))
    if older or newer:
        why = (f"does not record {', '.join(older)} (an older lus-dist made it)" if older else
               f"records {', '.join(newer)}, unknown to this lus-dist (a newer one made it)")
        raise PackError(f"--append: the existing pack {why}, so no flag can match its settings; pack "
                        "all clips into a new --out (the existing pack stays readable as it is)")
    diff = sorted(k for k in given if given[k] != have[k])
    if diff:
        raise PackError("--append must use the settings of the existing pack; these differ: "
                        + "; ".join(_setting_text(k, have[k], given[k]) for k in diff)
                        + " (or pack into a new --out)")


def make_plan(sources: list[VideoSource], cfg: PackConfig, provenance: dict,
              base: Manifest | None = None) -> Manifest:
    """The manifest minus what only writing reveals (frame counts, offsets, checksums).
    With `base` (an append), only videos `base` does not hold are planned, into new shards
    after its own; its rows, shards and assignments are carried over unchanged."""
    sources = check_sources(sources, cfg.patient_classes)
    if base is not None:
        _check_base(base, cfg)
        held = set(base.videos["video_id"].tolist())
        sources = [s for s in sources if s.video_id not in held]
        if not sources:
            raise NothingToAppend(f"nothing to append: every ingested video is already in version {base.version}")
    if not sources:
        raise PackError("no videos to pack (every input was skipped; see the skip report)")
    first = len(base.shards["name"]) if base else 0
    groups = plan_shards([estimate_frames(s, cfg.default_frames) for s in sources], cfg.shard_frames)
    shard_of = np.concatenate([np.full(len(g), first + i) for i, g in enumerate(groups)])
    videos = _video_table(sources, shard_of, cfg, base)
    n_old = base.n_videos if base else 0
    videos["source"][n_old:] = [_relative(x, provenance.get("src")) for x in videos["source"][n_old:]]
    version = base.version + 1 if base else 1
    n = len(groups)
    shards = {"name": np.array([fmt.shard_name(first + i) for i in range(n)]), "n_frames": np.full(n, -1),
              "n_videos": np.array([len(g) for g in groups]), "bytes": np.zeros(n, int),
              "sha256": np.full(n, "", "<U64"), "plan_hash": np.full(n, "", "<U64"),
              "version": np.full(n, version)}
    if base:
        shards = {k: np.concatenate([base.shards[k], v]) for k, v in shards.items()}
    pre, splits = _settings(cfg)
    plan = Manifest(videos=videos, patients={}, shards=shards, preprocessing=pre, splits=splits,
                    provenance=provenance, version=version)
    plan.patients = patient_table(plan.videos, patient_labels(plan.videos, sources, base))
    plan.classes = with_patient_classes(plan.classes, cfg, base)
    plan.plan_hash = _plan_hash(plan)
    plan.shards["plan_hash"][first:] = plan.plan_hash
    return plan


def _plan_hash(plan: Manifest) -> str:
    """Identity of a pack: what is stored and how, not where the raw data sat (provenance is
    left out, and source paths are relative to --src), so shard bytes are location-free."""
    bare = Manifest(videos=plan.videos, patients=plan.patients, shards=plan.shards,
                    preprocessing=plan.preprocessing, splits=plan.splits, provenance={})
    return hashlib.sha256(bare.to_json().encode()).hexdigest()


def _relative(source: str, root: str | None) -> str:
    prefix = (root or "").rstrip("/") + "/"
    for candidate in (source, str(Path(source).resolve()) if "://" not in source else source):
        if root and candidate.startswith(prefix):
            return candidate[len(prefix):]
    return source


# --- running a pack (one task of an array, or all of it) ------------------------------------
_JOB: tuple | None = None  # (out, plan, sources, cfg), set in each shard-writing child


def _set_job(job: tuple) -> None:
    """Pool initializer: hold the job, and die with the pack (a killed pack leaves no writer
    behind to race its re-run; the forkserver exits when the pack process does)."""
    global _JOB
    _JOB = job
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG


def _job_write(index: int) -> dict:
    out, plan, sources, cfg = _JOB
    return write_shard(out, index, plan, sources, cfg.preprocessing, cfg.compression, cfg.incomplete)


def _shard_pool(workers: int, job: tuple):
    """A pool whose every shard is written by a fresh child process.

    h5py's LZF compressor leaves its hash table uninitialised (liblzf INIT_HTAB=0), so the
    compressed bytes depend on the writing process's stack and heap history. When the
    sources pickle, each shard's writer is forked from one clean forkserver: every shard
    then starts from the same history, and a resumed pack (which starts mid-way) or a pack
    run inside a long-lived process (a notebook, pytest) gives the same bytes as a fresh
    uninterrupted one. Loaders that cannot pickle (closures) still work, forked from this
    process: valid shards, but byte-identical only between runs from the same state.
    """
    sources = job[2]
    try:
        pickle.dumps(sources)
    except (pickle.PicklingError, AttributeError, TypeError):
        return mp.get_context("fork").Pool(workers, initializer=_set_job, initargs=(job,),
                                           maxtasksperchild=1)
    ctx = mp.get_context("forkserver")
    loaders = {getattr(getattr(s.loader, "func", s.loader), "__module__", None) for s in sources if s}
    # imported once in the server, not once per shard (cv2, pandas: ~0.3 s each)
    ctx.set_forkserver_preload(["data_prep.pack", "cv2", *sorted(m for m in loaders if m)])
    return ctx.Pool(workers, initializer=_set_job, initargs=(job,), maxtasksperchild=1)


def _clean_tmp(out: Path, indices) -> None:
    """Remove leftovers of killed writers of *our* shards (other tasks may be writing theirs)."""
    for i in indices:
        for leftover in out.glob(f"{fmt.shard_name(i)}*{fmt.TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def _base(out: Path, append: bool, cfg: PackConfig) -> Manifest | None:
    """The version an --append extends (its manifest must be complete, its settings those
    of `cfg`: checked before a schema-1 manifest is saved anew, so a refused append leaves
    the directory as it was)."""
    if not append:
        return None
    if not (out / fmt.MANIFEST_NAME).is_file():
        raise PackError(f"--append: {out} holds no finished pack ({fmt.MANIFEST_NAME} missing); "
                        "pack it first (or finalize it)")
    base = Manifest.load(out)
    _check_base(base, cfg)
    if base.frames is None:   # schema 1: saved as version 1 of schema 2 so it stays loadable
        from data_prep.finalize import frame_columns
        base.frames = frame_columns(out, base)
        base.save_version(out)
    return base


def pack(sources: list[VideoSource], out: str | Path, cfg: PackConfig, provenance: dict,
         workers: int = 1, task_index: int = 0, num_tasks: int = 1,
         progress: bool = True, append: bool = False) -> Manifest | None:
    """Write this task's shards (skipping those that verify) and, when it is the only
    task, finalize. Returns the manifest, or None for one task of an array.

    append=True adds the videos the directory does not hold yet as new shards and a new
    manifest version; existing shards are not touched (nothing reopens them for writing).
    With nothing new it returns the current manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = _base(out, append, cfg)
    try:
        plan = make_plan(sources, cfg, provenance, base)
    except NothingToAppend:
        return base
    old = Manifest.load(out) if not append and (out / fmt.MANIFEST_NAME).exists() else None
    if old is not None and old.plan_hash != plan.plan_hash:
        why = ("other sources or settings" if old.schema_version == fmt.SCHEMA_VERSION else
               f"packed by an older lus-dist, manifest schema {old.schema_version}, which reads as it is")
        raise PackError(f"{out} already holds a different pack ({why}); "
                        "choose a new --out or delete it, or add new clips with --append")
    plan.save_plan(out / fmt.PLAN_NAME)
    first = len(base.shards["name"]) if base else 0
    mine = (first + task_items(len(plan.shards["name"]) - first, num_tasks, task_index)).tolist()
    todo = [i for i in mine if shard_status(out, i, plan.plan_hash)[0] is None]
    _clean_tmp(out, todo)
    from tqdm import tqdm
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="shard", desc=f"pack {out.name}",
               disable=not progress, file=sys.stderr)
    try:
        if todo:
            n_old = base.n_videos if base else 0
            by_id = {s.video_id: s for s in sources}
            rows = [None] * n_old + [by_id[v] for v in plan.videos["video_id"][n_old:].tolist()]
            job = (out, plan, rows, cfg)
            with _shard_pool(max(1, min(workers, len(todo))), job) as pool:
                for _ in pool.imap_unordered(_job_write, todo):
                    bar.update()
    finally:
        bar.close()
    return finalize(out) if num_tasks == 1 else None


def finalize(out: str | Path) -> Manifest:
    """Check the plan's new shards and write the manifest version (see data_prep.finalize)."""
    from data_prep.finalize import finalize_pack
    return finalize_pack(Path(out))


def provenance(layout: str, src: str | Path, report_skipped: list, options: dict) -> dict:
    """Where the data came from: deterministic (no clock, no host) so plans agree across tasks."""
    return {"layout": layout, "src": str(Path(src).resolve()), "options": options,
            "ingest_skipped": [asdict(s) if hasattr(s, "__dataclass_fields__") else dict(s)
                               for s in report_skipped],
            "versions": {"schema": fmt.SCHEMA_VERSION, "h5py": h5py.version.version,
                         "hdf5": h5py.version.hdf5_version, "numpy": np.__version__}}
