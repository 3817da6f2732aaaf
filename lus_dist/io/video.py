"""Reading and writing LUS clips: one place that knows containers, codecs and colour quirks.

Real LUS clips come as mp4/avi/mpeg/mov/gif, folders of frames, or .npy arrays, and most
are grayscale stored as RGB (some with a sepia tint). Every reader here returns uint8
(T,H,W) when the channels carry one intensity (up to codec noise and small coloured
overlays) and RGB (T,H,W,3) otherwise, and raises `MediaError` naming the file for anything it cannot
decode, so ingest and pack report the file instead of a deep OpenCV traceback.
Container frame counts are not trusted (mpeg/mov headers are off by a few frames):
the only count is the number of frames actually decoded.
"""
from __future__ import annotations

import contextlib
import contextvars
import re
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mpeg", ".mpg", ".mov", ".gif", ".m4v", ".wmv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Writers that work in the opencv-python-headless build (no H.264 encoder there).
_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mpeg": "PIM1",
           ".mpg": "PIM1"}
# Monochrome test (see is_monochrome): residual tolerance in levels and allowed share of
# off pixels. Measured on the POCUS clips: JPEG/codec chroma noise reaches ~16 levels on <1%
# of pixels; coloured overlays cover well under 2%.
GRAY_TOL = 20
GRAY_MAX_FRACTION = 0.02
# Incomplete-clip test (see is_incomplete): how far below the header's frame count an intact
# clip may end.
HEADER_SLACK = 4
HEADER_SLACK_FRACTION = 0.02


class MediaError(ValueError):
    """A clip or image that cannot be decoded; the message names the file and the problem."""


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def is_video_file(path: str | Path) -> bool:
    return _suffix(Path(path)) in VIDEO_SUFFIXES


def is_image_file(path: str | Path) -> bool:
    return _suffix(Path(path)) in IMAGE_SUFFIXES


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def is_monochrome(frames: np.ndarray, tol: float = GRAY_TOL, max_fraction: float = GRAY_MAX_FRACTION,
                  max_frames: int = 16, max_pixels: int = 200_000) -> bool:
    """True when an RGB clip carries one intensity channel: G and B are smooth (quadratic)
    functions of R (equal channels, or a monochrome tint such as sepia or the pinkish
    palettes of some scanners) up to `tol` levels, except on
    at most `max_fraction` of the pixels (JPEG/codec chroma noise, small coloured overlays).
    Colour Doppler or large coloured annotations fail the test and stay RGB."""
    if frames.ndim < 3 or frames.shape[-1] != 3:
        return False
    sample = frames if frames.ndim == 3 else frames[:: max(1, len(frames) // max_frames)]
    px = sample.reshape(-1, 3)
    px = px[:: max(1, len(px) // max_pixels)].astype(np.float32)
    r = px[:, 0] / 255
    design = np.stack([r * r, r, np.ones_like(r)], 1)
    coef, *_ = np.linalg.lstsq(design, px[:, 1:], rcond=None)
    resid = np.abs(px[:, 1:] - design @ coef).max(axis=1)
    return float((resid > tol).mean()) <= max_fraction


def to_gray_if_monochrome(frames: np.ndarray) -> np.ndarray:
    """(…,3) RGB-coded grayscale -> (…) one channel (luma); true colour is returned unchanged.

    Luma rather than one channel: it averages away codec chroma noise, and for a tint it
    is the intensity the scanner displayed."""
    return luma(frames) if is_monochrome(frames) else frames


def luma(frames: np.ndarray) -> np.ndarray:
    """RGB (…,H,W,3) -> uint8 (…,H,W), frame by frame (no float copy of a whole clip)."""
    if frames.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(frames), cv2.COLOR_RGB2GRAY)
    out = np.empty(frames.shape[:-1], np.uint8)
    for i, f in enumerate(frames):
        out[i] = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
    return out


def _as_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """uint8 as is; bool -> {0,255}; floats in [0,1] are scaled, in [0,255] rounded."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0:
            return arr.astype(np.uint8)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if np.issubdtype(arr.dtype, np.floating) and lo >= 0 and hi <= 1:
            return np.round(arr * 255).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.round(arr).astype(np.uint8)
        raise MediaError(f"{path}: pixel values span [{lo:g}, {hi:g}], expected uint8 or [0,1]/[0,255]")
    raise MediaError(f"{path}: unsupported pixel dtype {arr.dtype}")


def _bgr_to_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 3:
        return img[..., ::-1]
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0]
    return img


def read_image(path: str | Path) -> np.ndarray:
    """One image file (png/jpg/..., or a 2-D/3-D .npy) as uint8 (H,W) or (H,W,3) RGB."""
    path = Path(path)
    if _suffix(path) == ".npy":
        arr = _load_npy(path)
        if arr.ndim == 3 and arr.shape[-1] not in (1, 3) or arr.ndim not in (2, 3):
            raise MediaError(f"{path}: expected an (H,W) or (H,W,3) image array, got shape {arr.shape}")
        return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    if not path.is_file():
        raise MediaError(f"{path}: no such image file")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MediaError(f"{path}: OpenCV cannot decode this image (corrupt or unsupported format)")
    return _as_uint8(_bgr_to_rgb(img), path)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MediaError(f"{path}: no such .npy file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MediaError(f"{path}: not a readable .npy array ({exc})") from None
    return _as_uint8(arr, path)


def _open_capture(path: Path):
    if not path.is_file():
        raise MediaError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise MediaError(f"{path}: OpenCV cannot open this video (corrupt or unsupported container)")
    return cap


def _header_count(cap) -> int | None:
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if count and count > 0 and np.isfinite(count) else None


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decode a container frame by frame (RGB or (H,W)); memory stays one frame."""
    path = Path(path)
    cap = _open_capture(path)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield _bgr_to_rgb(frame)
    finally:
        cap.release()


class IncompleteClip(MediaError):
    """Decoding stopped well before the frame count the container's header announces: the
    file is truncated or corrupt part-way. `frames` holds what was decoded."""

    def __init__(self, path: Path, decoded: int, expected: int, frames: np.ndarray | None = None):
        super().__init__(f"{path}: incomplete clip: decoded {decoded} of the {expected} frames its "
                         "header announces (truncated or corrupt part-way)")
        self.path, self.decoded, self.expected, self.frames = str(path), decoded, expected, frames


def is_incomplete(decoded: int, expected: int | None) -> bool:
    """Header counts of mpeg/mov are estimates from duration x fps, off by a few frames
    either way on intact clips (measured on the POCUS set: at most HEADER_SLACK); more
    missing frames than that means the decoder stopped early."""
    return expected is not None and expected - decoded > max(HEADER_SLACK, HEADER_SLACK_FRACTION * expected)


_INCOMPLETE: contextvars.ContextVar[list | None] = contextvars.ContextVar("incomplete_clips", default=None)


@contextlib.contextmanager
def keep_incomplete() -> Iterator[list[IncompleteClip]]:
    """Within this block an incomplete clip is returned (its decoded frames) and recorded in
    the yielded list instead of raising IncompleteClip; the caller reports each one."""
    found: list[IncompleteClip] = []
    token = _INCOMPLETE.set(found)
    try:
        yield found
    finally:
        _INCOMPLETE.reset(token)


def decode_video(path: str | Path, fit: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """All frames of a container as one uint8 array, each frame passed through `fit` (e.g.
    the packer's resize; it gets the decoder's BGR(A) order, so it must treat the channels
    alike) as it arrives, into an array allocated once from the header's
    count (grown by doubling if the header undercounts): no list of full-resolution frames
    and no np.stack copy. A clip that ends well before its header's count raises
    IncompleteClip, unless inside `keep_incomplete()`."""
    path = Path(path)
    cap = _open_capture(path)
    expected = _header_count(cap)
    out, n = None, 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            # fit first, on the decoder's own contiguous BGR(A) frame: the channel flip is then
            # a view of the small frame, not a full-resolution copy (a third of pack time)
            frame = _bgr_to_rgb(fit(frame) if fit is not None else frame)
            if out is None:
                out = np.empty((max(expected or 0, 1),) + frame.shape, np.uint8)
            elif frame.shape != out.shape[1:]:
                raise MediaError(f"{path}: frames have different shapes {out.shape[1:]} and {frame.shape}")
            if n == len(out):
                out = np.concatenate([out, np.empty_like(out)])
            out[n] = frame
            n += 1
    finally:
        cap.release()
    if out is None:
        raise MediaError(f"{path}: the clip has 0 decodable frames")
    out = out[:n] if n == len(out) else out[:n].copy()
    if is_incomplete(n, expected):
        problem = IncompleteClip(path, n, expected, out)
        found = _INCOMPLETE.get()
        if found is None:
            raise problem
        found.append(problem)
    return out


def video_info(path: str | Path) -> dict:
    """Cheap check at ingest time: open the clip and decode its first frame only.

    Returns {"height", "width", "fps", "frame_count_header"}; raises MediaError for an
    unreadable or 0-frame clip. The header frame count is informational only.
    """
    path = Path(path)
    cap = _open_capture(path)
    try:
        ok, first = cap.read()
        fps, count = cap.get(cv2.CAP_PROP_FPS), _header_count(cap)
    finally:
        cap.release()
    if not ok:
        raise MediaError(f"{path}: the clip has 0 decodable frames")
    return {"height": int(first.shape[0]), "width": int(first.shape[1]),
            "fps": float(fps) if fps and np.isfinite(fps) else None, "frame_count_header": count}


def _stack(frames: list[np.ndarray], path: Path) -> np.ndarray:
    if not frames:
        raise MediaError(f"{path}: the clip has 0 decodable frames")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise MediaError(f"{path}: frames have different shapes {sorted(shapes)}")
    return np.stack(frames)


def _read_frame_folder(path: Path) -> np.ndarray:
    files = sorted((p for p in path.iterdir() if is_image_file(p) or _suffix(p) == ".npy"),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise MediaError(f"{path}: folder holds no image or .npy frames")
    frames = [read_image(f) for f in files]
    if len({f.ndim for f in frames}) > 1:  # mixed gray/RGB files: promote to RGB
        frames = [np.repeat(f[..., None], 3, -1) if f.ndim == 2 else f for f in frames]
    return _stack(frames, path)


def read_video(path: str | Path, gray: str = "auto",
               fit: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Any clip -> uint8 (T,H,W) or (T,H,W,3) RGB.

    Accepts a video container, a folder of frames (natural sort order), a .npy of
    (T,H,W[,3]), or a single image (T=1). gray="auto" collapses RGB-coded grayscale to
    one channel (including monochrome tints), "never" keeps what the file holds, "always"
    converts colour to luma. `fit` (e.g. the packer's resize) is applied to each frame of
    a container as it is decoded; the grayscale decision is then made on the fitted frames.
    A container that ends well before its header's frame count raises IncompleteClip
    (see `keep_incomplete`).
    """
    path = Path(path)
    if path.is_dir():
        clip = _read_frame_folder(path)
    elif _suffix(path) == ".npy":
        clip = _load_npy(path)
        if clip.ndim == 2:
            clip = clip[None]
        if clip.ndim == 4 and clip.shape[-1] == 1:
            clip = clip[..., 0]
        if clip.ndim not in (3, 4) or (clip.ndim == 4 and clip.shape[-1] != 3):
            raise MediaError(f"{path}: expected a (T,H,W) or (T,H,W,3) array, got shape {clip.shape}")
        if len(clip) == 0:
            raise MediaError(f"{path}: the clip has 0 frames")
    elif is_image_file(path):
        clip = read_image(path)[None]
    elif is_video_file(path):
        clip = decode_video(path, fit)
    else:
        raise MediaError(f"{path}: unknown clip type {path.suffix!r} (expected one of "
                         f"{', '.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)}, .npy or a folder of frames)")
    return _apply_gray(clip, gray)


def _apply_gray(clip: np.ndarray, gray: str) -> np.ndarray:
    if gray not in ("auto", "never", "always"):
        raise ValueError(f"gray must be auto|never|always, got {gray!r}")
    if gray == "never" or clip.ndim == 3:
        return clip
    if gray == "always":
        return luma(clip)
    return to_gray_if_monochrome(clip)


def image_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image or .npy frame from its header only (cheap ingest-time checks)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if _suffix(path) == ".npy":
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape = read_header(fh)[0]
        except (ValueError, OSError, EOFError) as exc:
            raise MediaError(f"{path}: not a readable .npy array ({exc})") from None
        if len(shape) < 2:
            raise MediaError(f"{path}: array of shape {shape} is not an image")
        return (int(shape[-3]), int(shape[-2])) if len(shape) >= 3 and shape[-1] in (1, 3) \
            else (int(shape[-2]), int(shape[-1]))
    if is_video_file(path):
        info = video_info(path)
        return info["height"], info["width"]
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError(f"{path}: cannot read the image header ({exc})") from None


def write_video(path: str | Path, frames: np.ndarray, fps: float = 15.0) -> Path:
    """Write uint8 (T,H,W) or (T,H,W,3 RGB) as mp4/mov/avi/mpeg (OpenCV) or gif (Pillow).

    Grayscale is written RGB-coded, as scanners export it. MPEG-1 only takes standard
    frame rates, so .mpeg is always written at 25 fps.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0:
        raise ValueError(f"{path}: expected non-empty uint8 (T,H,W[,3]) frames, got "
                         f"{frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path)
    if suffix == ".gif":
        from PIL import Image
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=int(round(1000 / fps)), loop=0)
        return path
    if suffix not in _FOURCC:
        raise ValueError(f"{path}: cannot write {suffix!r} (use one of .gif, {', '.join(_FOURCC)})")
    if suffix in (".mpeg", ".mpg"):
        fps = 25.0
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*_FOURCC[suffix]), fps, (w, h), True)
    if not writer.isOpened():
        raise MediaError(f"{path}: OpenCV has no writer for {suffix} in this build")
    try:
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f[..., ::-1].copy())
    finally:
        writer.release()
    return path
