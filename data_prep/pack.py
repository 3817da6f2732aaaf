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

from data_prep.records import VideoSource
from data_prep.shard_writer import shard_status, write_shard
from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest
from lus_dist.shards.partition import task_items
from lus_dist.shards.splits import group_kfold, patient_split


class PackError(RuntimeError):
    """Input or output problem the user must fix; the message names files and reasons."""


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

    def __post_init__(self):
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
    from data_prep.video_io import MediaError, is_video_file, video_info
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


def check_sources(sources: list[VideoSource]) -> list[VideoSource]:
    """Sorted by video id (the plan must not depend on listing order); duplicates are errors."""
    seen: dict[str, str] = {}
    for s in sources:
        if s.video_id in seen:
            raise PackError(f"duplicate video id {s.video_id!r}: {seen[s.video_id]} and {s.source}")
        seen[s.video_id] = str(s.source)
        if not -1 <= s.label < len(fmt.VIDEO_CLASSES):
            raise PackError(f"{s.source}: video label {s.label} is outside -1..{len(fmt.VIDEO_CLASSES) - 1}")
    return sorted(sources, key=lambda s: s.video_id)


def _video_table(sources: list[VideoSource], shard_of: np.ndarray, cfg: PackConfig) -> dict:
    pids = [s.patient_id for s in sources]
    patient_index = {p: i for i, p in enumerate(sorted(set(pids)))}
    try:
        folds = (group_kfold(pids, cfg.folds, cfg.split_seed, [s.label for s in sources])
                 if cfg.folds >= 2 else np.full(len(sources), -1))
        split = patient_split(pids, [s.extra.get("split") for s in sources],
                              cfg.test_frac, cfg.val_frac, cfg.split_seed)
    except ValueError as exc:
        raise PackError(f"split/fold assignment: {exc} (see --folds, --test-frac, --val-frac)") from None
    cols = {k: [str(getattr(s, k)) for s in sources]
            for k in ("video_id", "patient_id", "hospital_id", "probe", "source")}
    cols.update(label=[s.label for s in sources], video_score=[s.video_score for s in sources],
                n_frames=[-1] * len(sources), shard=shard_of.tolist(), offset=[-1] * len(sources),
                split=split.tolist(), fold=np.asarray(folds).tolist(),
                patient=[patient_index[p] for p in pids])
    return {k: np.asarray(v) for k, v in cols.items()}


def make_plan(sources: list[VideoSource], cfg: PackConfig, provenance: dict) -> Manifest:
    """The manifest minus what only writing reveals (frame counts, offsets, checksums)."""
    sources = check_sources(sources)
    if not sources:
        raise PackError("no videos to pack (every input was skipped; see the skip report)")
    groups = plan_shards([estimate_frames(s, cfg.default_frames) for s in sources], cfg.shard_frames)
    shard_of = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    videos = _video_table(sources, shard_of, cfg)
    videos["source"] = np.array([_relative(x, provenance.get("src")) for x in videos["source"]])
    n = len(groups)
    shards = {"name": np.array([fmt.shard_name(i) for i in range(n)]), "n_frames": np.full(n, -1),
              "n_videos": np.array([len(g) for g in groups]), "bytes": np.zeros(n, int),
              "sha256": np.array([""] * n)}
    splits = {"split": "patient-level; dataset-given split wins, else seeded fractions",
              "test_frac": cfg.test_frac, "val_frac": cfg.val_frac, "seed": cfg.split_seed,
              "folds": cfg.folds, "fold_method": "patient-level k-fold stratified by video label"}
    plan = Manifest(videos=videos, patients={}, shards=shards,
                    preprocessing={**cfg.preprocessing.to_dict(), "compression": cfg.compression},
                    splits=splits, provenance=provenance)
    plan.patients = _patient_table(plan.videos)
    plan.plan_hash = _plan_hash(plan)
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


def _patient_table(videos: dict) -> dict:
    n = int(videos["patient"].max()) + 1 if len(videos["patient"]) else 0
    first = [int(np.flatnonzero(videos["patient"] == p)[0]) for p in range(n)]
    return {"patient_id": videos["patient_id"][first], "hospital_id": videos["hospital_id"][first],
            "n_videos": np.bincount(videos["patient"], minlength=n),
            "n_frames": np.bincount(videos["patient"], weights=np.maximum(videos["n_frames"], 0),
                                    minlength=n).astype(np.int64),
            "split": videos["split"][first]}


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
    return write_shard(out, index, plan, sources, cfg.preprocessing, cfg.compression)


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
    loaders = {getattr(getattr(s.loader, "func", s.loader), "__module__", None) for s in sources}
    # imported once in the server, not once per shard (cv2, pandas: ~0.3 s each)
    ctx.set_forkserver_preload(["data_prep.pack", "cv2", *sorted(m for m in loaders if m)])
    return ctx.Pool(workers, initializer=_set_job, initargs=(job,), maxtasksperchild=1)


def _clean_tmp(out: Path, indices) -> None:
    """Remove leftovers of killed writers of *our* shards (other tasks may be writing theirs)."""
    for i in indices:
        for leftover in out.glob(f"{fmt.shard_name(i)}*{fmt.TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def pack(sources: list[VideoSource], out: str | Path, cfg: PackConfig, provenance: dict,
         workers: int = 1, task_index: int = 0, num_tasks: int = 1,
         progress: bool = True) -> Manifest | None:
    """Write this task's shards (skipping those that verify) and, when it is the only
    task, finalize. Returns the manifest, or None for one task of an array."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(sources, cfg, provenance)
    old = out / fmt.MANIFEST_NAME
    if old.exists() and Manifest.load(old).plan_hash != plan.plan_hash:
        raise PackError(f"{out} already holds a different pack (other sources or settings); "
                        "choose a new --out or delete it")
    plan.save(out / fmt.PLAN_NAME)
    mine = task_items(len(plan.shards["name"]), num_tasks, task_index).tolist()
    todo = [i for i in mine if shard_status(out, i, plan.plan_hash)[0] is None]
    _clean_tmp(out, todo)
    from tqdm import tqdm
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="shard", desc=f"pack {out.name}",
               disable=not progress, file=sys.stderr)
    try:
        if todo:
            job = (out, plan, check_sources(sources), cfg)
            with _shard_pool(max(1, min(workers, len(todo))), job) as pool:
                for _ in pool.imap_unordered(_job_write, todo):
                    bar.update()
    finally:
        bar.close()
    return finalize(out) if num_tasks == 1 else None


def finalize(out: str | Path) -> Manifest:
    """Check every planned shard and write manifest.json; list *all* missing/bad shards."""
    out = Path(out)
    plan_path = out / fmt.PLAN_NAME
    if not plan_path.is_file():
        raise PackError(f"{plan_path} not found: run `lus prep pack ... --out {out}` first")
    plan = Manifest.from_json(plan_path.read_text(), str(plan_path))
    infos, bad = [], []
    for i, name in enumerate(plan.shards["name"]):
        info, why = shard_status(out, i, plan.plan_hash)
        infos.append(info)
        if info is None:
            bad.append(f"  {name}: {why}")
    if bad:
        raise PackError(f"finalize {out}: {len(bad)} of {len(infos)} shards not ready:\n" + "\n".join(bad)
                        + "\nre-run the pack tasks that own them (re-running skips finished shards)")
    manifest = _complete(plan, infos)
    manifest.save(out / fmt.MANIFEST_NAME)
    return manifest


def _complete(plan: Manifest, infos: list[dict]) -> Manifest:
    v = plan.videos
    for i, info in enumerate(infos):
        rows = np.flatnonzero(v["shard"] == i)
        counts = np.asarray(info["video_frames"], dtype=np.int64)
        v["n_frames"][rows] = counts
        v["offset"][rows] = np.concatenate([[0], np.cumsum(counts)[:-1]])
    plan.shards.update(n_frames=np.array([x["n_frames"] for x in infos]),
                       bytes=np.array([x["bytes"] for x in infos]),
                       sha256=np.array([x["sha256"] for x in infos]))
    plan.patients = _patient_table(v)
    skipped = [s for x in infos for s in x["skipped"]]
    plan.provenance = {**plan.provenance, "pack_skipped": skipped}
    return plan


def provenance(layout: str, src: str | Path, report_skipped: list, options: dict) -> dict:
    """Where the data came from: deterministic (no clock, no host) so plans agree across tasks."""
    return {"layout": layout, "src": str(Path(src).resolve()), "options": options,
            "ingest_skipped": [asdict(s) if hasattr(s, "__dataclass_fields__") else dict(s)
                               for s in report_skipped],
            "versions": {"schema": fmt.SCHEMA_VERSION, "h5py": h5py.version.version,
                         "hdf5": h5py.version.hdf5_version, "numpy": np.__version__}}
