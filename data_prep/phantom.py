"""Synthetic LUS phantom: a small dataset with the ground truth a real one would carry.

`make_phantom(out_dir, seed)` writes the same clips in both raw layouts the real
ingesters read, so the phantom exercises the real ingest path end to end:

  out_dir/iclus/   frames/<video>_<t>.npy, masks/<video>_<t>.npy|.png, dataset.csv (the
                   frame table with Roy et al.'s column names: filename, label, sensor,
                   patient_hash, hospital, plus video, frame_index, mask, diagnosis),
                   train_test_split.csv (patient_hash, split), video_annotations.xlsx
                   (Video, Score), video_annotations_to_video_names.xlsx (Video,
                   hospital, patient, filename)
  out_dir/pocus/   videos/{convex,linear}/<Cov|Pneu|Reg>_<video>.mp4 (+ some .gif/.avi),
                   images/{convex,linear}/<Cov|Pneu|Reg>_<video>_still.png
  out_dir/phantom.json   generation settings and the per-video truth

Why it is learnable but not trivial: frame scores are balanced-ish overall (about
1/3, 1/4, 1/5, 1/4 for scores 0-3) so a constant guess scores poorly; gain, gamma,
depth, probe, rib count and overlays vary independently of score and diagnosis, so global
brightness or geometry alone does not give the answer; the diagnoses overlap in score
(covid and pneumonia both reach every score) and differ in style (see phantom_render).
Patients hold one diagnosis across their videos and sit in one hospital, which is what
patient-level splits need.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd

from data_prep.phantom_render import (COVID, HEALTHY, PNEUMONIA, PROBES, geometry, render, render_clip,
                                      render_frame, sample_scene, sample_video_params)
from lus_dist.io.video import write_video
from lus_dist.shards.format import VIDEO_CLASSES

__all__ = ["make_phantom", "make_videos", "PhantomVideo", "sample_frame_scores", "video_score_of",
           "patient_table", "LABEL_SCORE_PROBS",
           # rendering, re-exported so callers need one import: data_prep.phantom.render_frame(...)
           "render_frame", "render_clip", "render", "sample_scene", "sample_video_params", "geometry",
           "PROBES"]

# P(frame score | diagnosis): healthy lungs are mostly A-line frames, covid mostly
# B-line frames, pneumonia mostly consolidation frames, with deliberate overlap.
LABEL_SCORE_PROBS = {HEALTHY: (0.80, 0.20, 0.0, 0.0), COVID: (0.05, 0.35, 0.40, 0.20),
                     PNEUMONIA: (0.15, 0.15, 0.20, 0.50)}
POCUS_PREFIX = {COVID: "Cov", PNEUMONIA: "Pneu", HEALTHY: "Reg"}
TRANSITION_PROB = 0.5        # share of clips whose score changes once
MIN_COUNTED_FRACTION = 0.3   # a clinician does not score a video by a brief flash


@dataclass
class PhantomVideo:
    name: str
    patient: str
    hospital: str
    probe: str
    label: int
    fps: float
    frame_scores: np.ndarray     # int16 (T,)
    video_score: int
    frames: np.ndarray           # uint8 (T,H,W)
    masks: np.ndarray            # uint8 (T,H,W)


def sample_frame_scores(rng: np.random.Generator, label: int, n_frames: int) -> np.ndarray:
    """One or two score segments; the transition lands in the middle half of the clip."""
    probs = LABEL_SCORE_PROBS[label]
    first = rng.choice(4, p=probs)
    scores = np.full(n_frames, first, np.int16)
    if n_frames >= 4 and rng.random() < TRANSITION_PROB:
        others = np.array([p if s != first else 0.0 for s, p in enumerate(probs)])
        if others.sum() > 0:
            cut = int(rng.integers(n_frames // 4, n_frames - n_frames // 4 + 1))
            scores[cut:] = rng.choice(4, p=others / others.sum())
    return scores


def video_score_of(frame_scores: np.ndarray) -> int:
    """Max-ish, as clinicians score a video: the highest score held by >= 30% of frames."""
    counts = np.bincount(np.asarray(frame_scores, np.int64), minlength=4)
    held = np.flatnonzero(counts >= MIN_COUNTED_FRACTION * len(frame_scores))
    return int(held.max() if len(held) else np.max(frame_scores))


def _hospital_style(seed: int, h: int) -> dict:
    rng = np.random.default_rng([seed, 1_000_003, h])
    return {"gain_offset": float(rng.uniform(-0.15, 0.15)), "p_convex": float(rng.uniform(0.45, 0.85)),
            "ticks": bool(h % 2 == 1)}


def patient_table(seed: int, n_patients: int, n_hospitals: int) -> list[tuple[str, str, int]]:
    """(patient, hospital, diagnosis) with diagnoses balanced and shuffled across hospitals."""
    rng = np.random.default_rng([seed, 7])
    labels = np.resize(np.arange(len(VIDEO_CLASSES)), n_patients)
    rng.shuffle(labels)
    return [(f"P{i:03d}", f"H{i % n_hospitals}", int(labels[i])) for i in range(n_patients)]


def make_videos(seed: int = 0, n_patients: int = 12, videos_per_patient: int = 3,
                frames_per_video: tuple[int, int] = (16, 32), size: int = 128,
                n_hospitals: int = 3) -> Iterator[PhantomVideo]:
    """The phantom's clips, one at a time (deterministic by seed, independent of order)."""
    lo, hi = frames_per_video
    if not (1 <= lo <= hi) or size < 16 or n_patients < 1 or videos_per_patient < 1 or n_hospitals < 1:
        raise ValueError(f"bad phantom settings: frames_per_video={frames_per_video}, size={size}, "
                         f"n_patients={n_patients}, videos_per_patient={videos_per_patient}, "
                         f"n_hospitals={n_hospitals}")
    for i, (patient, hospital, label) in enumerate(patient_table(seed, n_patients, n_hospitals)):
        style = _hospital_style(seed, i % n_hospitals)
        for k in range(videos_per_patient):
            rng = np.random.default_rng([seed, i, k])
            probe = "convex" if rng.random() < style["p_convex"] else "linear"
            params = sample_video_params(rng, probe, size, gain_offset=style["gain_offset"],
                                         ticks=style["ticks"])
            scores = sample_frame_scores(rng, label, int(rng.integers(lo, hi + 1)))
            frames, masks = render_clip(rng, scores, label, params)
            yield PhantomVideo(name=f"{hospital}_{patient}_V{k}", patient=patient, hospital=hospital,
                               probe=probe, label=label, fps=float(rng.integers(10, 21)),
                               frame_scores=scores, video_score=video_score_of(scores),
                               frames=frames, masks=masks)


def _split_of(patients: list[tuple[str, str, int]]) -> dict[str, str]:
    """About a quarter of each diagnosis' patients go to test (patient-level, as the authors)."""
    split = {}
    for label in range(len(VIDEO_CLASSES)):
        members = [p for p, _, lab in patients if lab == label]
        for j, p in enumerate(members):
            split[p] = "test" if j % 4 == 3 else "train"
    return split


def _write_iclus_video(root: Path, v: PhantomVideo, j: int) -> list[dict]:
    rows = []
    mask_ext = ".png" if j % 3 == 2 else ".npy"
    for t in range(len(v.frames)):
        stem = f"{v.name}_{t:04d}"
        np.save(root / "frames" / f"{stem}.npy", v.frames[t])
        if mask_ext == ".png":
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), v.masks[t])
        else:
            np.save(root / "masks" / f"{stem}.npy", v.masks[t])
        rows.append({"filename": f"{stem}.npy", "label": int(v.frame_scores[t]), "sensor": v.probe,
                     "patient_hash": v.patient, "hospital": v.hospital, "video": v.name,
                     "frame_index": t, "mask": f"{stem}{mask_ext}",
                     "diagnosis": VIDEO_CLASSES[v.label]})
    return rows


def _write_pocus_video(root: Path, v: PhantomVideo, j: int) -> str:
    ext = ".gif" if j % 7 == 3 else ".avi" if j % 11 == 5 else ".mp4"
    stem = f"{POCUS_PREFIX[v.label]}_{v.name}"
    path = write_video(root / "videos" / v.probe / f"{stem}{ext}", v.frames, fps=v.fps)
    if j % 4 == 0:
        still = root / "images" / v.probe / f"{stem}_still.png"
        still.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(still), v.frames[len(v.frames) // 2])
    return str(path.relative_to(root))


def _write_tables(iclus: Path, rows: list[dict], truth: list[dict], split: dict[str, str]) -> None:
    pd.DataFrame(rows).to_csv(iclus / "dataset.csv", index=False)
    pd.DataFrame(sorted(split.items()), columns=["patient_hash", "split"]).to_csv(
        iclus / "train_test_split.csv", index=False)
    ids = [f"V{n:04d}" for n in range(len(truth))]
    pd.DataFrame({"Video": ids, "Score": [t["video_score"] for t in truth]}).to_excel(
        iclus / "video_annotations.xlsx", index=False)
    pd.DataFrame({"Video": ids, "hospital": [t["hospital"] for t in truth],
                  "patient": [t["patient"] for t in truth], "filename": [t["video"] for t in truth]}
                 ).to_excel(iclus / "video_annotations_to_video_names.xlsx", index=False)


def make_phantom(out_dir, seed=0, n_patients=12, videos_per_patient=3, frames_per_video=(16, 32),
                 size=128, n_hospitals=3) -> Path:
    """Write the phantom in both raw layouts under out_dir; returns out_dir.

    The same seed and settings give identical arrays (frames, masks, tables); the lossy
    POCUS containers are identical bytes on the same OpenCV build.
    """
    out = Path(out_dir)
    iclus, pocus = out / "iclus", out / "pocus"
    for d in (iclus / "frames", iclus / "masks", pocus / "videos", pocus / "images"):
        d.mkdir(parents=True, exist_ok=True)
    patients = patient_table(seed, n_patients, n_hospitals)
    rows, truth = [], []
    videos = make_videos(seed, n_patients, videos_per_patient, tuple(frames_per_video), size, n_hospitals)
    for j, v in enumerate(videos):
        rows += _write_iclus_video(iclus, v, j)
        truth.append({"video": v.name, "patient": v.patient, "hospital": v.hospital, "probe": v.probe,
                      "label": VIDEO_CLASSES[v.label], "video_score": v.video_score,
                      "n_frames": len(v.frames), "fps": v.fps,
                      "frame_scores": v.frame_scores.tolist(), "pocus_file": _write_pocus_video(pocus, v, j)})
    _write_tables(iclus, rows, truth, _split_of(patients))
    settings = {"seed": seed, "n_patients": n_patients, "videos_per_patient": videos_per_patient,
                "frames_per_video": list(frames_per_video), "size": size, "n_hospitals": n_hospitals}
    (out / "phantom.json").write_text(json.dumps({"settings": settings, "videos": truth}, indent=1))
    return out
