"""`lus predict CLIP --checkpoint RUN`: a new clip -> per-frame scores, video score, annotated GIF.

The clip goes through the very preprocessing the shards were packed with (read from the
run's shard manifest, `lus_dist.shards.format.preprocess_frame`), so a model sees at
inference what it saw in training. Runs on CPU or GPU (`--device`).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class PredictError(ValueError):
    """Bad clip, checkpoint or option; the message names the file and the problem."""


@dataclass
class LoadedRun:
    family: str
    run_dir: Path
    config: object                 # the run's typed config (lus_dist.engine.config)
    model: torch.nn.Module
    preprocessing: object          # lus_dist.shards.format.Preprocessing


def find_run_dir(path: str | Path) -> Path:
    """A run dir, or a weights file inside one (best.pt, checkpoints/<step>/...)."""
    p = Path(path)
    if not p.exists():
        raise PredictError(f"{p}: checkpoint not found")
    for cand in [p] + list(p.parents)[:3]:
        if cand.is_dir() and (cand / "config.yaml").is_file():
            return cand
    raise PredictError(f"{p}: not a run directory or a file inside one (no config.yaml beside "
                       "it); pass the run dir that `lus train` wrote")


def run_family(run_dir: Path) -> str:
    """From summary.json when finished, else by which family's schema the config fits."""
    from lus_dist.engine import registry as families
    from lus_dist.io.config import ConfigError

    summary = run_dir / "summary.json"
    if summary.is_file():
        fam = json.loads(summary.read_text()).get("family")
        if fam in families.names():
            return fam
    fits = []
    for fam in families.names():
        try:
            families.load_run_config(fam, run_dir / "config.yaml", [])
            fits.append(fam)
        except ConfigError:
            pass
    if len(fits) != 1:
        raise PredictError(f"{run_dir}/config.yaml: cannot tell the model family (fits {fits})")
    return fits[0]


def weights_file(run_dir: Path, given: Path) -> Path:
    if given.is_file() and given.suffix == ".pt":
        return given
    best = run_dir / "best.pt"
    if best.is_file():
        return best
    raise PredictError(f"{run_dir}: no best.pt (has the run finished an epoch?)")


def run_preprocessing(cfg, run_dir: Path, size: int | None, channels: int | None):
    """The manifest's preprocessing block; `size`/`channels` only when the shards are gone."""
    from lus_dist.shards.format import Preprocessing
    from lus_dist.shards.manifest import Manifest

    try:
        pre = dict(Manifest.load(cfg.data.root).preprocessing)
        fields = Preprocessing.__dataclass_fields__
        base = Preprocessing(**{k: v for k, v in pre.items() if k in fields})
    except Exception as exc:  # missing/unreadable manifest: fall back only if told how
        if size is None:
            raise PredictError(f"{run_dir}: cannot read the training preprocessing from "
                               f"{cfg.data.root} ({exc}); pass --size (and --channels)") from None
        base = Preprocessing(size=size, channels=channels or 1)
    if cfg.data.channels:
        base = Preprocessing(**{**base.to_dict(), "channels": int(cfg.data.channels)})
    return base


# init-time weight files of a training run: the run's own checkpoint replaces them, and
# they may be gone by the time its model is used for prediction
INIT_WEIGHTS = ("weights_path", "encoder_weights")


def build_model(family: str, cfg, pre) -> torch.nn.Module:
    kw = {k: v for k, v in cfg.model.kwargs.items() if k not in INIT_WEIGHTS}
    if family == "regstn":
        from lus_dist.models import build_frame_model
        return build_frame_model(cfg.model.name, in_channels=pre.channels,
                                 num_classes=len(cfg.frame_classes), image_size=pre.size, **kw)
    if family == "seg":
        from lus_dist.models import build_seg_model
        from lus_dist.shards.format import MASK_CLASSES
        return build_seg_model(cfg.model.name, in_channels=pre.channels,
                               num_classes=len(MASK_CLASSES), **kw)
    raise PredictError(f"family {family!r} is not supported by lus predict")


def load_run(path: str | Path, expect: str, size: int | None = None,
             channels: int | None = None, device: str = "cpu") -> LoadedRun:
    """A trained model from its run dir; `expect` is the family the caller needs."""
    from lus_dist.engine.registry import load_run_config
    from lus_dist.models import restore_input_norms

    run_dir = find_run_dir(path)
    family = run_family(run_dir)
    if family != expect:
        want = {"regstn": "a frame model (lus train regstn)",
                "seg": "a segmentation model (lus train seg)"}[expect]
        raise PredictError(f"{path}: a {family} run, but this option needs {want}")
    cfg = load_run_config(family, run_dir / "config.yaml", [])
    pre = run_preprocessing(cfg, run_dir, size, channels)
    model = build_model(family, cfg, pre)
    wfile = weights_file(run_dir, Path(path))
    try:
        state = torch.load(wfile, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        restore_input_norms(model, state)     # e.g. ImageNet weights' normalisation
        model.load_state_dict(state)
    except Exception as exc:
        raise PredictError(f"{wfile}: weights do not fit the {family} model "
                           f"{cfg.model.name!r} of {run_dir}/config.yaml ({exc})") from None
    return LoadedRun(family, run_dir, cfg, model.to(device).eval(), pre)


# ---------------------------------------------------------------- clip -> tensors
def read_clip(path: str | Path, pre) -> tuple[np.ndarray, torch.Tensor]:
    """(display frames uint8 (T,H,W,C), model input float (T,C,H,W) in [0,1])."""
    from lus_dist.io.video import MediaError, read_video
    from lus_dist.shards.format import preprocess_frame

    try:
        clip = read_video(path)
    except (MediaError, OSError) as exc:
        raise PredictError(f"cannot read clip: {exc}") from None
    frames = np.stack([preprocess_frame(f, pre) for f in clip])
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    return frames, x


@torch.no_grad()
def frame_probs(run: LoadedRun, x: torch.Tensor,
                batch: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax scores per frame and, for spatial-transformer models, crop boxes."""
    from lus_dist.models.localization import stn_boxes
    dev = next(run.model.parameters()).device
    probs, boxes = [], []
    has_boxes = hasattr(run.model, "transforms") or hasattr(run.model, "thetas")
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(dev)
        probs.append(torch.softmax(run.model(xb).logits.float(), 1).cpu().numpy())
        if has_boxes:
            boxes.append(stn_boxes(run.model, xb).cpu().numpy())
    return np.concatenate(probs), (np.concatenate(boxes) if boxes else None)


@torch.no_grad()
def seg_masks(run: LoadedRun, x: torch.Tensor, batch: int = 32) -> np.ndarray:
    dev = next(run.model.parameters()).device
    out = [run.model(x[i:i + batch].to(dev)).argmax(1).cpu().numpy().astype(np.uint8)
           for i in range(0, len(x), batch)]
    return np.concatenate(out)


def overlay_masks(seg: LoadedRun, clip: str | Path, frame_pre, x_frame: torch.Tensor) -> np.ndarray:
    """Segmentation masks on the frame model's display grid.

    The segmentation model gets the clip prepared by its own run's preprocessing (size,
    channels), never the frame model's input; its masks are then mapped to the frame run's
    size with nearest neighbour (class ids stay ids). Both preprocessings place the source
    frame the same way when their `aspect` is equal, so the mapping is a pure rescale; with
    different aspects it would misplace the overlay and is refused.
    """
    import cv2
    pre = seg.preprocessing
    if pre == frame_pre:
        return seg_masks(seg, x_frame)
    if pre.aspect != frame_pre.aspect:
        raise PredictError(f"{seg.run_dir}: segmentation shards packed with aspect={pre.aspect!r} "
                           f"but the frame model's with {frame_pre.aspect!r}; the overlay would be "
                           "misplaced (pack both with the same --aspect)")
    _, x_seg = read_clip(clip, pre)
    masks = seg_masks(seg, x_seg)
    size = frame_pre.size
    if masks.shape[1:] == (size, size):
        return masks
    return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in masks])


# ---------------------------------------------------------------- outputs
MASK_RGB = np.array([[0, 0, 0], [255, 220, 0], [0, 200, 255], [255, 60, 200]], np.uint8)


def annotate(frames: np.ndarray, boxes: np.ndarray | None, masks: np.ndarray | None,
             labels: list[str], upscale: int) -> np.ndarray:
    """RGB (T, H*u, W*u, 3): mask tint, crop boxes in their CROP_COLOURS, per-frame label."""
    import cv2

    from lus_dist.models.localization import CROP_COLOURS
    rgb = np.repeat(frames, 3, -1) if frames.shape[-1] == 1 else frames.copy()
    if masks is not None:
        tint = MASK_RGB[np.clip(masks, 0, len(MASK_RGB) - 1)]
        on = (masks > 0)[..., None]
        rgb = np.where(on, (0.55 * rgb + 0.45 * tint).astype(np.uint8), rgb)
    out = []
    for t, img in enumerate(rgb):
        img = cv2.resize(img, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)
        if boxes is not None:
            for k, (x0, y0, x1, y1) in enumerate(boxes[t] * upscale):
                cv2.rectangle(img, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1),
                              CROP_COLOURS[k % len(CROP_COLOURS)], 1)
        cv2.putText(img, labels[t], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        out.append(img)
    return np.stack(out)


def write_frame_csv(path: Path, probs: np.ndarray, classes) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame"] + [f"prob_{c}" for c in classes] + ["predicted"])
        for t, p in enumerate(probs):
            w.writerow([t] + [f"{v:.6f}" for v in p] + [classes[int(p.argmax())]])
    return path


def video_decision(probs: np.ndarray, classes, aggregator: str | None) -> dict:
    """argmax_mean by default; a trained uninorm when `lus aggregate` saved one."""
    from lus_dist.aggregator.uninorm import argmax_mean
    from lus_dist.io.config import to_dict

    from .report import uninorm_label
    x = torch.from_numpy(probs).double()[None]
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mean = probs.mean(0)
    out = {"method": "argmax_mean", "mean_probs": dict(zip(classes, map(float, mean)))}
    idx = int(argmax_mean(x, mask)[0])
    if aggregator:
        model, cfg = load_aggregator(aggregator, list(classes))
        with torch.no_grad():
            scores = model(x, mask)[0]
        idx = int(scores.argmax())
        out["method"] = uninorm_label(to_dict(cfg))
        out["aggregator_output"] = [float(v) for v in scores]
        if len(scores) != len(classes):  # binary variant: class 0 vs the rest
            names = [classes[0], f"not_{classes[0]}"]
            out.update(video_class_index=idx, video_class=names[idx])
            return out
    out.update(video_class_index=idx, video_class=classes[idx])
    return out


def load_aggregator(path: str | Path, classes: list[str]):
    """A trained uninorm saved by `lus aggregate --save-model` (config + state_dict + the
    class names it was trained on, which must be the frame model's)."""
    from lus_dist.aggregator.train import AggregatorConfig, build_model
    from lus_dist.io.config import ConfigError, from_dict
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: aggregator file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = from_dict(AggregatorConfig, blob["config"], str(path))
        trained_on = list(blob.get("class_names", classes))
        model = build_model(cfg, len(classes))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ConfigError, RuntimeError, OSError, ValueError) as exc:
        raise PredictError(f"{path}: not a saved uninorm aggregator ({exc})") from None
    if trained_on != list(classes):
        raise PredictError(f"{path}: aggregator trained on classes {trained_on}, but the frame "
                           f"model outputs {list(classes)}")
    return model.double().eval(), cfg


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus predict",
        description="Score a new clip with a trained frame model: per-frame class probabilities "
                    "(CSV), the video-level score (uninorm if --aggregator, else argmax_mean), and "
                    "an annotated GIF/MP4 with the STN crop boxes (and segmentation overlay).",
        epilog="example:\n  lus predict clip.mp4 --checkpoint runs/regstn-demo --out pred/\n"
               "  lus predict frames_dir/ --checkpoint runs/regstn/best.pt "
               "--seg-checkpoint runs/seg --aggregator agg/aggregator.pt --format mp4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip", help="video (mp4/avi/mpeg/mov/gif), .npy, image or folder of frames")
    p.add_argument("--checkpoint", required=True, help="frame-model run dir (or its best.pt)")
    p.add_argument("--seg-checkpoint", default=None, help="segmentation run dir for an overlay")
    p.add_argument("--aggregator", default=None, help="trained uninorm from `lus aggregate`")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--format", choices=["gif", "mp4"], default="gif")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--size", type=int, default=None, help="only if the run's shards are gone")
    p.add_argument("--channels", type=int, default=None, help="only with --size")
    return p


def predict(args) -> dict:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    run = load_run(args.checkpoint, "regstn", args.size, args.channels, device)
    frames, x = read_clip(args.clip, run.preprocessing)
    probs, boxes = frame_probs(run, x)
    masks = None
    if args.seg_checkpoint:
        seg = load_run(args.seg_checkpoint, "seg", args.size, args.channels, device)
        masks = overlay_masks(seg, args.clip, run.preprocessing, x)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(run.config.frame_classes)
    write_frame_csv(out / "frames.csv", probs, classes)
    video = {"clip": str(args.clip), "checkpoint": str(run.run_dir), "frames": len(probs),
             **video_decision(probs, classes, args.aggregator)}
    (out / "video.json").write_text(json.dumps(video, indent=2))
    video["annotated"] = str(write_annotated(out / f"annotated.{args.format}", frames, probs,
                                             boxes, masks, classes, args.fps))
    return video


def write_annotated(path: Path, frames: np.ndarray, probs: np.ndarray, boxes: np.ndarray | None,
                    masks: np.ndarray | None, classes, fps: float = 10.0) -> Path:
    """The clip's own frames, enlarged to ~256 px, each with its crop boxes and its most
    likely class and probability, as a GIF/MP4 (by the suffix)."""
    from lus_dist.io.video import write_video

    labels = [f"{t} {classes[int(p.argmax())]} {p.max():.2f}" for t, p in enumerate(probs)]
    upscale = max(1, 256 // frames.shape[1])
    return write_video(path, annotate(frames, boxes, masks, labels, upscale), fps=fps)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        video = predict(args)
    except PredictError as exc:
        print(f"lus predict: {exc}", file=sys.stderr)
        return 2
    print(f"{video['frames']} frames; video: {video['video_class']} ({video['method']})\n"
          f"wrote {Path(args.out) / 'frames.csv'}, {Path(args.out) / 'video.json'}, "
          f"{video['annotated']}")
    return 0
