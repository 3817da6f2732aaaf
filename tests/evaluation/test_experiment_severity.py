"""`lus experiment severity` and `lus experiment prospective` on a small synthetic study in
the `table` layout (clips + a per-video score table + a per-patient class table): the
plan's honest selection, the aggregator baselines on the same frame scores, the reports.
The real COVID-BLUES run is a realdata test (skipped without ../shared/data/covid_blues)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lus_dist.video import write_video

SPEC = """videos: clips
video_table: scores.csv
video_id: file
score: score
patient_pattern: '^p(\\d+)_'
patient_table: patients.csv
patient_id: pid
patient_class: pcr
classes: {0: negative, 1: positive}
"""
REAL_BLUES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "covid_blues"


def write_study(root: Path, patients: int = 15, videos: int = 2, frames: int = 5,
                size: int = 32) -> Path:
    """Score s = s bright vertical lines (B-line-like) on a dark speckled frame; a patient's
    class is its parity."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(patients):
        for v in range(videos):
            score = (p + v) % 4
            clip = rng.integers(0, 40, (frames, size, size)).astype(np.uint8)
            for k in range(score):
                clip[:, size // 4:, 4 + k * (size // 5)] = 230
            write_video(root / "clips" / f"p{p}_v{v}.mp4", clip)
            rows.append((f"p{p}_v{v}", score))
    pd.DataFrame(rows, columns=["file", "score"]).to_csv(root / "scores.csv", index=False)
    pd.DataFrame({"pid": range(patients), "pcr": [p % 2 for p in range(patients)]}).to_csv(
        root / "patients.csv", index=False)
    (root / "spec.yaml").write_text(SPEC)
    return root
