"""What an ingester hands the packer (lazily-decoded videos plus a skip report), and the errors
of both steps that name the file and the problem.

Decoding happens in `VideoSource.load()`, called inside pack workers, so ingest
itself is a cheap directory/table scan and packing parallelises over videos.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class LoadedVideo:
    frames: np.ndarray                 # uint8 (T,H,W) or (T,H,W,3)
    frame_scores: np.ndarray           # int16 (T,), -1 where not annotated
    masks: np.ndarray | None = None    # uint8 (T,H,W) marker class ids, 0 = background


@dataclass
class VideoSource:
    video_id: str
    patient_id: str
    hospital_id: str
    probe: str
    label: int                         # index into VIDEO_CLASSES, -1 unknown
    video_score: int                   # 0-3, -1 unknown
    source: str                        # file path(s): provenance for the manifest
    loader: Callable[[], LoadedVideo] = field(repr=False, default=None)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. split, frame_rate
    patient_label: int = -1            # index into IngestReport.patient_classes, -1 unknown

    def load(self, fit: Callable[[np.ndarray], np.ndarray] | None = None) -> LoadedVideo:
        """Decode. `fit` (the packer's per-frame resize) goes to loaders that take it, so
        they can resize each frame as it is decoded instead of holding the full-size clip;
        the packer's preprocessing gives the same result either way."""
        if fit is not None and getattr(self.loader, "takes_fit", False):
            return self.loader(fit=fit)
        return self.loader()


@dataclass
class Skip:
    path: str
    reason: str


@dataclass
class IngestReport:
    sources: list[VideoSource] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    patient_classes: tuple[str, ...] = ()   # names of VideoSource.patient_label (a patient-level target)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append(Skip(str(path), reason))

    def summary(self) -> str:
        lines = [f"{len(self.sources)} videos ingested, {len(self.skipped)} skipped"]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


class IngestError(ValueError):
    """Input that cannot be ingested at all; the message names the file and the problem."""


class PackError(RuntimeError):
    """Input or output problem the user must fix; the message names files and reasons."""
