"""POCUS-style ingest: labels from prefixes, probes from folders, every file accounted for."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep.records import IngestError
from data_prep.ingest_pocus import ingest_pocus, label_from_name
from lus_dist.io.video import VIDEO_SUFFIXES, IMAGE_SUFFIXES, write_video
from lus_dist.shards.format import VIDEO_CLASSES

REAL_POCUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pocus"
COVID, PNEUMONIA, HEALTHY = (VIDEO_CLASSES.index(n) for n in ("covid", "pneumonia", "healthy"))


@pytest.mark.parametrize("name, label", [("Cov-Atlas+(44).gif", COVID), ("Cov_combatting_Image2.mp4", COVID),
                                         ("Pneu-Atlas-pneumonia.gif", PNEUMONIA), ("pneu_x.avi", PNEUMONIA),
                                         ("Pne_case.mp4", PNEUMONIA), ("Reg_pat1Image_133043.mpeg", HEALTHY),
                                         ("reg-NormalLungs.mp4", HEALTHY)])
def test_label_from_prefix(name, label):
    assert label_from_name(name) == (label, None)


def test_viral_and_unknown_prefixes():
    label, reason = label_from_name("Vir_whitelung_h1n1.mp4")
    assert label is None and "viral" in reason and "`--viral pneumonia`" in reason
    assert label_from_name("Vir_whitelung_h1n1.mp4", viral="pneumonia") == (PNEUMONIA, None)
    label, reason = label_from_name("Tb_case.mp4")
    assert label is None and "unknown label prefix 'tb'" in reason
    with pytest.raises(ValueError):
        label_from_name("Cov_x.mp4", viral="covid")


def test_phantom_pocus_round_trips(phantom_dir, phantom_truth):
    report = ingest_pocus(phantom_dir / "pocus")
    assert not report.skipped
    videos = [s for s in report.sources if s.extra["kind"] == "video"]
    assert len(videos) == len(phantom_truth)
    for src in videos:
        truth = phantom_truth[src.video_id.split("_", 1)[1]]
        assert src.label == VIDEO_CLASSES.index(truth["label"]) and src.probe == truth["probe"]
        assert src.patient_id == src.video_id and src.video_score == -1
    for container in ("mp4", "avi", "gif"):
        src = pickle.loads(pickle.dumps(next(s for s in videos if s.extra["container"] == container)))
        clip = src.load()
        truth = phantom_truth[src.video_id.split("_", 1)[1]]
        assert clip.frames.shape == (truth["n_frames"], 64, 64), "RGB-coded gray decoded as 1 channel"
        assert (clip.frame_scores == -1).all() and clip.masks is None
    stills = [s for s in report.sources if s.extra["kind"] == "image"]
    assert stills and all(s.load().frames.shape == (1, 64, 64) for s in stills)
    assert len(ingest_pocus(phantom_dir / "pocus", include_images=False).sources) == len(videos)


def test_bad_files_are_skipped_with_reasons(tmp_path):
    clip = np.zeros((3, 16, 16), np.uint8)
    vids = tmp_path / "videos"
    write_video(vids / "convex" / "Cov_good.mp4", clip)
    write_video(vids / "linear" / "Cov_good.avi", clip)                  # duplicate id (stem)
    write_video(vids / "convex" / "Xyz_unknown.mp4", clip)
    write_video(vids / "convex" / "Vir_flu.mp4", clip)
    write_video(vids / "linear" / "label_uncertain" / "Pneu_maybe.mp4", clip)
    (vids / "convex" / "Reg_broken.mov").write_bytes(b"garbage" * 100)
    (vids / "convex" / "Reg_empty.mp4").write_bytes(b"")
    zero = cv2.VideoWriter(str(vids / "convex" / "Pneu_zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16))
    zero.release()
    (vids / "convex" / "notes.txt").write_text("hello")
    write_video(vids / "Reg_noprobe.mp4", clip)
    report = ingest_pocus(tmp_path)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert [(s.video_id, s.probe) for s in report.sources] == [("Cov_good", "convex"), ("Reg_noprobe", "unknown")]
    assert "duplicate video id 'Cov_good'" in reasons["Cov_good.avi"]
    assert "unknown label prefix" in reasons["Xyz_unknown.mp4"]
    assert "viral" in reasons["Vir_flu.mp4"]
    assert "uncertain" in reasons["Pneu_maybe.mp4"]
    assert "Reg_broken.mov" in reasons["Reg_broken.mov"] and "cannot open" in reasons["Reg_broken.mov"]
    assert "Reg_empty.mp4" in reasons["Reg_empty.mp4"]
    assert "0 decodable frames" in reasons["Pneu_zero.avi"]
    assert "not a video" in reasons["notes.txt"]
    assert len(report.sources) + len(report.skipped) == 10
    kept = ingest_pocus(tmp_path, viral="pneumonia")
    assert ("Vir_flu", PNEUMONIA) in [(s.video_id, s.label) for s in kept.sources]
    with pytest.raises(IngestError, match="no videos/"):
        ingest_pocus(tmp_path / "videos")


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_POCUS.is_dir(), reason=f"real POCUS data not found at {REAL_POCUS}")
def test_real_pocus_every_file_ingested_or_skipped_with_reason():
    report = ingest_pocus(REAL_POCUS)
    files = sorted(str(p) for kind in ("videos", "images") for p in (REAL_POCUS / kind).rglob("*") if p.is_file())
    accounted = sorted([s.source for s in report.sources] + [s.path for s in report.skipped])
    assert accounted == files, "each file ingested or skipped, exactly once"
    assert all(s.reason for s in report.skipped)
    assert all(("viral" in s.reason or "uncertain" in s.reason) for s in report.skipped), report.summary()
    assert {s.label for s in report.sources} == {COVID, PNEUMONIA, HEALTHY}
    assert {s.probe for s in report.sources} == {"convex", "linear"}
    # decode the smallest clip of each container (keeps the test fast)
    by_type: dict[str, list] = {}
    for s in report.sources:
        by_type.setdefault(s.extra["container"], []).append(s)
    assert {"mp4", "avi", "mpeg", "mov", "gif"} <= set(by_type)
    for container, sources in sorted(by_type.items()):
        for src in sorted(sources, key=lambda s: Path(s.source).stat().st_size)[:2]:
            clip = src.load()
            assert len(clip.frames) > 0 and clip.frames.dtype == np.uint8 and clip.frames.ndim in (3, 4)
            assert clip.frames.shape[1:3] == (src.extra["height"], src.extra["width"]), src.source
            assert len(clip.frame_scores) == len(clip.frames)
    assert all(Path(s.source).suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES for s in report.sources)
