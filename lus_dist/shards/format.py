"""The shard format: the one place the packer writes by and the reader reads by.

Extend here (schema version, dataset and attribute names, checksum rule); never
re-declare these names elsewhere.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

SCORE_CLASSES: tuple[str, ...] = ("score0", "score1", "score2", "score3")
VIDEO_CLASSES: tuple[str, ...] = ("covid", "pneumonia", "healthy")
MASK_CLASSES: tuple[str, ...] = ("background", "pleural_line", "b_line", "consolidation")
UNKNOWN = -1  # label / score not annotated

# --- files -----------------------------------------------------------------------------
SCHEMA_VERSION = 3                # 2: tables in a binary sidecar, versions; 3: their strings
                                  # as UTF-8 bytes (manifest.py)
MANIFEST_NAME = "manifest.json"   # written last, atomically: its presence means "complete"
PLAN_NAME = "plan.json"           # the manifest minus checksums; every pack task writes it
SHARD_GLOB = "shard-*.h5"
SHARD_DIGITS = 5
SIDECAR_SUFFIX = ".json"          # shard-NNNNN.h5.json: checksum + counts, written after the rename
TMP_SUFFIX = ".tmp"


def shard_name(index: int) -> str:
    return f"shard-{index:0{SHARD_DIGITS}d}.h5"


def shard_index(name: str) -> int | None:
    """Inverse of `shard_name`; None for anything that is not a shard file name."""
    stem = name.removeprefix("shard-").removesuffix(".h5")
    if name == stem or len(stem) != SHARD_DIGITS or not stem.isdigit():
        return None
    return int(stem)


# --- datasets inside a shard (row i of every dataset describes frame i) --------------------
DS_FRAMES = "frames"    # uint8 (N, H, W, C), one frame per chunk
DS_SCORES = "scores"    # int16 (N,) frame score index into SCORE_CLASSES, -1 unknown
DS_LABELS = "labels"    # int16 (N,) video class index into VIDEO_CLASSES, -1 unknown
DS_VIDEO = "video"      # int32 (N,) global video index (row of the manifest video table)
DS_FRAME = "frame"      # int32 (N,) frame index within its video
DS_PATIENT = "patient"  # int32 (N,) global patient index (row of the manifest patient table)
DS_MASKS = "masks"      # uint8 (N, H, W) marker class ids, only when the source had masks
DS_HAS_MASK = "has_mask"  # uint8 (N,) 1 where the frame's mask is an annotation, 0 = none
FRAME_LAYOUT = "NHWC"

# --- shard attributes (self-describing for plain h5py / h5ls users) --------------------------
ATTR_SCHEMA = "schema_version"
ATTR_INDEX = "shard_index"
ATTR_N_FRAMES = "n_frames"
ATTR_VIDEO_IDS = "video_ids"       # the video ids stored here, in order
ATTR_PLAN_HASH = "plan_hash"       # which plan (sources + settings) this shard belongs to
ATTR_LAYOUT = "frame_layout"
ATTR_SCORE_CLASSES = "score_classes"
ATTR_VIDEO_CLASSES = "video_classes"
ATTR_MASK_CLASSES = "mask_classes"
ATTR_PREPROCESSING = "preprocessing"  # JSON text of the preprocessing block
ATTR_SKIPPED = "skipped"           # JSON list of {path, reason} for videos that failed to load
ATTR_DESCRIPTION = "description"
SHARD_DESCRIPTION = (
    "lus-dist LUS frame shard. Row i of every dataset is one frame: frames uint8 NHWC, "
    "scores (index into score_classes, -1 unknown), labels (video class, index into "
    "video_classes), video/patient (row in manifest.json tables), frame (index in its video), "
    "masks + has_mask when annotated. A video's frames are contiguous.")

# HDF5 writes object timestamps by default and picks the newest file-format features of the
# running library; both would make identical input produce different bytes (and checksums).
H5_LIBVER = ("v110", "v110")
H5_TRACK_TIMES = False

# --- checksum rule ---------------------------------------------------------------------------
CHECKSUM_ALGO = "sha256"
_BLOCK = 1 << 20


def file_checksum(path) -> str:
    """SHA-256 of the file's bytes, the one rule packer, finalize and validate share."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --- preprocessing (the packer applies it; `lus predict` must apply the very same) ------------
ASPECTS = ("pad", "crop", "stretch")


@dataclass(frozen=True)
class Preprocessing:
    """How source frames become stored frames; saved in the manifest and every shard.

    aspect: "pad" (default) scales the longer side to `size` and zero-pads the shorter one
    (centred), so the ultrasound fan keeps its geometry; "crop" takes the centred square (loses the
    sides of wide clips); "stretch" resizes non-uniformly. Downscaling uses area averaging
    (no aliasing of speckle), upscaling bilinear; masks always nearest-neighbour so class
    ids stay valid. channels=1 keeps grayscale as one channel (RGB-coded grayscale with equal
    channels is taken as is, true colour is converted with ITU-R 601 luma weights).
    """
    size: int = 256
    channels: int = 1
    aspect: str = "pad"
    interpolation: str = "area-down/linear-up"
    mask_interpolation: str = "nearest"
    dtype: str = "uint8"

    def __post_init__(self):
        if self.size < 8 or self.channels not in (1, 3) or self.aspect not in ASPECTS:
            raise ValueError(f"bad preprocessing {self}: size >= 8, channels 1 or 3, aspect in {ASPECTS}")

    def to_dict(self) -> dict:
        return asdict(self)


def _fit(img: np.ndarray, pre: Preprocessing, interpolation: int | None) -> np.ndarray:
    """Crop (a view) or resize-then-place (no full-size padded copy) to size x size."""
    import cv2
    h, w = img.shape[:2]
    if pre.aspect == "crop" and h != w:
        side = min(h, w)
        img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        h = w = side
    if interpolation is None:
        interpolation = cv2.INTER_AREA if min(h, w) >= pre.size else cv2.INTER_LINEAR
    if pre.aspect != "pad" or h == w:
        return cv2.resize(np.ascontiguousarray(img), (pre.size, pre.size), interpolation=interpolation)
    scale = pre.size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interpolation)
    out = np.zeros((pre.size, pre.size) + img.shape[2:], dtype=img.dtype)
    top, left = (pre.size - nh) // 2, (pre.size - nw) // 2
    out[top:top + nh, left:left + nw] = small.reshape((nh, nw) + img.shape[2:])
    return out


def _to_channels(clip: np.ndarray, channels: int) -> np.ndarray:
    """(T,S,S[,3]) -> (T,S,S,channels), decided once per clip so a clip is consistent."""
    import cv2
    if clip.ndim == 3:
        clip = clip[..., None]
    if clip.shape[-1] == channels:
        return clip
    if channels == 3:
        return np.repeat(clip, 3, axis=-1)
    if (clip[..., :1] == clip).all():   # RGB-coded grayscale: exact, no rounding
        return np.ascontiguousarray(clip[..., :1])
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip])[..., None]


def fit_frame(img: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """One uint8 (H,W[,3]) frame -> (size, size[,3]): the resize/placement step alone, which a
    decoder can apply to each frame as it arrives (channels are decided per clip later)."""
    return _fit(np.asarray(img, dtype=np.uint8), pre, None)


def preprocess_clip(frames: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 (T,H,W) or (T,H,W,3) -> uint8 (T, size, size, channels). Resizing comes before
    the channel conversion: same result for grayscale, far less memory traffic for big RGB.
    Frames already fitted (size x size, e.g. resized while decoding) are not resized again."""
    if frames.shape[1:3] == (pre.size, pre.size):
        small = np.asarray(frames, dtype=np.uint8)
    else:
        small = np.empty((len(frames), pre.size, pre.size) + frames.shape[3:], np.uint8)
        for i, f in enumerate(frames):
            small[i] = fit_frame(f, pre)
    return _to_channels(small, pre.channels)


def preprocess_frame(img: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 (H,W) or (H,W,3) -> uint8 (size, size, channels)."""
    return preprocess_clip(np.asarray(img)[None], pre)[0]


def preprocess_mask(mask: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 class-id mask (H,W) -> (size, size), nearest-neighbour so ids stay ids."""
    import cv2
    return _fit(np.asarray(mask, dtype=np.uint8), pre, cv2.INTER_NEAREST)
