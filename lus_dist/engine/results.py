"""Files a run writes besides checkpoints and logs: summary.json and prediction exports."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


def write_frame_predictions(path: Path, pred: dict[str, np.ndarray], ds, split: str,
                            class_names: list[str]) -> Path:
    """Per-frame class probabilities with the manifest's ids, in the aggregator's format."""
    from lus_dist.aggregator.data import write_predictions

    videos = ds.manifest.videos
    v = pred["video"]
    return write_predictions(
        path, pred["probs"], video_id=videos["video_id"][v], patient_id=videos["patient_id"][v],
        hospital_id=videos["hospital_id"][v], frame_index=pred["frame"],
        frame_score=pred["score"], video_score=videos["video_score"][v],
        video_label=videos["label"][v], split=np.full(len(v), split), class_names=class_names)
