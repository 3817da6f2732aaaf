"""Synthetic frame predictions for aggregator tests and the benchmark.

A video of score s shows its pathology in a minority of frames (fraction `frac`), the
rest look healthy (score 0); the frame classifier is confident but noisy. This is the
regime Roy et al. built the uninorm for: the mean is dominated by healthy frames and the
max by noise spikes."""
from __future__ import annotations

import numpy as np

from lus_dist.aggregator.data import FramePredictions


def synthetic_predictions(n_videos=60, num_classes=4, lengths=(40, 160), frac=(0.1, 0.3),
                          signal=4.0, noise=1.0, seed=0) -> FramePredictions:
    rng = np.random.default_rng(seed)
    probs, vid, pat, score = [], [], [], []
    for v in range(n_videos):
        s = int(rng.integers(0, num_classes))
        t = int(rng.integers(lengths[0], lengths[1] + 1))
        frame_class = np.where(rng.random(t) < rng.uniform(*frac), s, 0)
        logits = rng.normal(0.0, noise, (t, num_classes))
        logits[np.arange(t), frame_class] += signal
        p = np.exp(logits)
        probs.append(p / p.sum(1, keepdims=True))
        vid += [f"v{v:03d}"] * t
        pat += [f"p{v // 2:03d}"] * t
        score += [s] * t
    return FramePredictions.from_arrays(
        np.concatenate(probs), np.array(vid), np.array(pat), video_score=np.array(score),
        class_names=[f"score{i}" for i in range(num_classes)])
