"""What the frame scorer looks at, on real clips it never trained on: the STN's two crops
on frames of a score-1 and a score-3 video, and one localisation GIF per score (the
video's own frames with the crop boxes and each frame's score), as `lus predict` draws
them. Every example comes from a test fold, scored by the model of that fold."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lus_dist.shards.format import SCORE_CLASSES

CROP_SCORES = (1, 3)       # the crop picture's videos
CROP_FRAMES = 4            # evenly spaced frames per video in it


def example_videos(manifest, runs: list) -> dict[int, tuple]:
    """score -> (run dir, video id, clip path): per score the first run (in plan order)
    whose test fold holds a video of that score, its first such video by id."""
    from lus_dist.engine.registry import load_run_config

    v = manifest.videos
    src = Path(manifest.provenance.get("src", "."))   # sources are relative to the pack's --src
    found: dict[int, tuple] = {}
    for run_dir in runs:
        folds = load_run_config("regstn", run_dir / "config.yaml", []).data.test_folds or []
        for score in range(len(SCORE_CLASSES)):
            rows = np.flatnonzero(np.isin(v["fold"], folds) & (v["video_score"] == score))
            if score not in found and len(rows):
                row = rows[np.argsort(v["video_id"][rows])[0]]
                found[score] = (run_dir, str(v["video_id"][row]), str(src / v["source"][row]))
    return dict(sorted(found.items()))


def packed_clip(shards: str | Path, manifest, video_id: str):
    """A video's frames as they were packed (display uint8 (T,H,W,C), model input float
    (T,C,H,W)): for layouts whose videos are rows of a table, not clip files (ICLUS)."""
    import torch

    from lus_dist.shards.reader import ShardDataset

    v = manifest.videos
    row = int(np.flatnonzero(v["video_id"] == video_id)[0])
    ds = ShardDataset(shards, mode="clip", clip_len=int(v["n_frames"][row]),
                      patients=[v["patient_id"][row]], manifest=manifest)
    x = ds[int(np.flatnonzero(ds.video_rows == row)[0])]["frames"]
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), x


def localisation_examples(rep, res: dict, manifest) -> None:
    """The first frame model with a spatial transformer gets the pictures; a model without
    one, or a clip that cannot be read, is said in the report instead."""
    from lus_dist.evaluation.predict import PredictError, frame_probs, load_run, read_clip

    for model, r in res["models"].items():
        if not r["runs"]:
            continue
        try:
            first = load_run(r["runs"][0], "regstn")
        except PredictError as exc:
            rep.text(f"_Note: no localisation examples for {model} ({exc})_")
            continue
        if not (hasattr(first.model, "transforms") or hasattr(first.model, "thetas")):
            continue
        shown = {}
        for score, (run_dir, video_id, clip) in example_videos(manifest, r["runs"]).items():
            try:
                run = load_run(run_dir, "regstn")
                frames, x = (read_clip(clip, run.preprocessing) if Path(clip).is_file()
                             else packed_clip(run.config.data.root, manifest, video_id))
            except PredictError as exc:
                rep.text(f"_Note: no example for score {score} ({exc})_")
                continue
            probs, boxes = frame_probs(run, x)
            shown[score] = (video_id, run_dir, frames, probs, boxes)
        _crop_picture(rep, model, shown)
        _gifs(rep, model, shown, list(run.config.frame_classes) if shown else [])
        return
    rep.text("_Note: no frame model with a spatial transformer: no crop pictures_")


def _crop_picture(rep, model: str, shown: dict) -> None:
    from lus_dist.evaluation import plots

    picks = [s for s in CROP_SCORES if s in shown]
    if not picks:
        return
    frames, boxes, titles = [], [], []
    for s in picks:
        video_id, _, f, probs, b = shown[s]
        for t in np.linspace(0, len(f) - 1, CROP_FRAMES).round().astype(int):
            frames.append(f[t, ..., 0] / 255.0)
            boxes.append(b[t])
            titles.append(f"{video_id} (experts {s}) f{t}: {int(probs[t].argmax())}")
    path = plots.stn_examples_png(np.stack(frames), np.stack(boxes),
                                  rep.out / f"stn_crops_{model}.png", titles, cols=CROP_FRAMES)
    rep.image(path, f"{model}: the two STN crops on a score-{' and a score-'.join(map(str, picks))} "
                    "test video (title: video, experts' score, frame, predicted frame score)")


def _gifs(rep, model: str, shown: dict, classes: list[str]) -> None:
    from lus_dist.evaluation.predict import write_annotated

    lines = []
    for score, (video_id, run_dir, frames, probs, boxes) in shown.items():
        path = write_annotated(rep.out / f"localisation_score{score}.gif", frames, probs, boxes,
                               None, classes)
        lines.append(f"- score {score} (experts): `{video_id}`, model `{run_dir.parent.name}/"
                     f"{run_dir.name}` (its test fold): ![score {score}]({path.name})")
    if lines:
        rep.text(f"Localisation GIFs ({model}; red: crop 1, used at inference; green: crop 2; "
                 "each frame's predicted score and probability):\n\n" + "\n".join(lines))
