"""Ingest POCUS-style video folders (Born et al. 2020; Barros et al. 2021) into VideoSources.

Layout: `root/videos/<probe>/<Label>_<name>.{mp4,avi,mpeg,mov,gif}` and, optionally,
`root/images/<probe>/<Label>_<name>.{jpg,png}` stills (each a one-frame video). The
diagnosis comes from the file-name prefix, case-insensitive: Cov -> covid,
Pne/Pneu -> pneumonia, Reg -> healthy ("regular"); Vir (other viral pneumonia) is
skipped with a reason by default, or counted as pneumonia with viral="pneumonia"
(`lus prep pack --viral pneumonia`).
The probe is the folder under videos/ or images/ ("unknown" for files directly there);
anything under a `label_uncertain/` folder is reported as skipped.

The POCUS dataset publishes no patient ids, so patient_id = video_id (the file stem):
splits are then per clip, which is the dataset's usual protocol (split by video, never
by frame) but cannot keep two clips of one patient on the same side. Hospitals are
unknown too ("unknown"). There are no frame scores (all -1) and no video score.

Ingest decodes only the first frame of each clip (to report unreadable and 0-frame
files now, not mid-pack); `VideoSource.load()` decodes the whole clip later.
`extra["n_frames"]` is the container header's count, a planning estimate only (mpeg and
mov headers are off by a few frames); the decoded clip is the truth.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from data_prep.records import IngestError, IngestReport, LoadedVideo, VideoSource
from lus_dist.io.video import MediaError, image_shape, is_image_file, is_video_file, read_video, video_info
from lus_dist.shards.format import UNKNOWN, VIDEO_CLASSES

PREFIX_CLASS = {"cov": "covid", "covid": "covid", "pne": "pneumonia", "pneu": "pneumonia",
                "reg": "healthy", "vir": "viral"}
UNCERTAIN_DIR = "label_uncertain"
UNKNOWN_PROBE = "unknown"


def label_from_name(name: str, viral: str = "skip") -> tuple[int | None, str | None]:
    """File name -> (VIDEO_CLASSES index, None), or (None, reason to skip)."""
    if viral not in ("skip", "pneumonia"):
        raise ValueError(f"viral must be 'skip' or 'pneumonia', got {viral!r}")
    prefix = re.split(r"[_\-\s+.]", name, maxsplit=1)[0].lower()
    cls = PREFIX_CLASS.get(prefix)
    if cls is None:
        return None, (f"unknown label prefix {prefix!r} (expected one of Cov, Pne/Pneu, Reg, Vir "
                      f"before the first '_' or '-')")
    if cls == "viral":
        if viral == "skip":
            return None, ("viral pneumonia (Vir) is not one of the 3 classes; keep it as pneumonia with "
                          "`--viral pneumonia` (`viral=pneumonia` in `lus experiment pocus`)")
        cls = "pneumonia"
    return VIDEO_CLASSES.index(cls), None


@dataclass(frozen=True)
class POCUSLoader:
    """Picklable lazy loader: the whole clip, no frame scores, no masks."""
    path: str
    takes_fit = True   # decodes each frame straight into the packer's size (VideoSource.load)

    def __call__(self, fit=None) -> LoadedVideo:
        frames = read_video(self.path, fit=fit)
        return LoadedVideo(frames=frames, frame_scores=np.full(len(frames), UNKNOWN, np.int16))


def _probe_and_uncertain(rel: Path) -> tuple[str, bool]:
    folders = rel.parts[:-1]
    return (folders[0].lower() if folders else UNKNOWN_PROBE), UNCERTAIN_DIR in folders


def _inspect(path: Path, kind: str) -> tuple[dict | None, str | None]:
    """Cheap readability check: first decoded frame for clips, header for stills."""
    try:
        if is_video_file(path):
            return video_info(path), None
        h, w = image_shape(path)
        return {"height": h, "width": w, "fps": None}, None
    except MediaError as exc:
        return None, str(exc)


def _candidates(root: Path, include_images: bool) -> list[tuple[str, Path]]:
    kinds = ["videos"] + (["images"] if include_images else [])
    out = []
    for kind in kinds:
        base = root / kind
        if base.is_dir():
            out += [(kind, p) for p in sorted(base.rglob("*"), key=lambda p: str(p).lower()) if p.is_file()]
    return out


def ingest_pocus(root, include_images: bool = True, viral: str = "skip") -> IngestReport:
    """Scan a POCUS-style folder -> IngestReport (every file ingested or skipped with a reason)."""
    root = Path(root)
    if not (root / "videos").is_dir() and not (include_images and (root / "images").is_dir()):
        raise IngestError(f"{root}: no videos/ (or images/) folder: expected the POCUS layout "
                          f"videos/<probe>/<Label>_<name>.mp4")
    report = IngestReport()
    seen: dict[str, Path] = {}
    for kind, path in _candidates(root, include_images):
        probe, uncertain = _probe_and_uncertain(path.relative_to(root / kind))
        ok_type = is_video_file(path) or (kind == "images" and is_image_file(path))
        label, reason = label_from_name(path.name, viral)
        if uncertain:
            reason = f"diagnosis uncertain (file under {UNCERTAIN_DIR}/)"
        elif not ok_type:
            reason = f"not a {'video or image' if kind == 'images' else 'video'} file ({path.suffix or 'no suffix'})"
        elif reason is None and path.stem in seen:
            reason = f"duplicate video id {path.stem!r}: already ingested from {seen[path.stem]}"
        info = None
        if reason is None:
            info, reason = _inspect(path, kind)
        if reason is not None:
            report.skip(path, reason)
            continue
        seen[path.stem] = path
        report.sources.append(VideoSource(
            video_id=path.stem, patient_id=path.stem, hospital_id="unknown", probe=probe, label=label,
            video_score=UNKNOWN, source=str(path), loader=POCUSLoader(str(path)),
            extra={"split": None, "frame_rate": info.get("fps"), "kind": kind[:-1],
                   "container": path.suffix.lower().lstrip("."), "height": info["height"],
                   "width": info["width"], "n_frames": info.get("frame_count_header", 1)}))
    return report


# --- frame targets for POCUS (frames carry no severity score) --------------------------------
def subsample(n: int, max_frames: int) -> np.ndarray:
    """Evenly spaced frame indices (all of them when the clip is short enough)."""
    if max_frames <= 0 or n <= max_frames:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_frames).round().astype(int))


@dataclass(frozen=True)
class _FrameLabelled:
    """Loader of a clip thinned to `max_frames`, every frame's target = the clip's class.
    A class, not a closure, so the packer can hand it to a fresh process (deterministic
    shard bytes)."""
    inner: object
    max_frames: int
    label: int

    def __call__(self):
        v = self.inner()
        keep = subsample(len(v.frames), self.max_frames)
        masks = v.masks[keep] if v.masks is not None else None
        return LoadedVideo(frames=v.frames[keep], masks=masks,
                           frame_scores=np.full(len(keep), self.label, np.int16))


def with_frame_labels(src, max_frames: int, tag: str = "", split: str | None = None):
    """The same clip with every frame's target = the clip's class (and evenly thinned)."""
    extra = dict(src.extra, **({"split": split} if split else {}))
    extra.pop("n_frames", None)  # thinned: the header count no longer applies
    return replace(src, video_id=tag + src.video_id, patient_id=tag + src.patient_id,
                   loader=_FrameLabelled(src.loader, max_frames, src.label), extra=extra)
