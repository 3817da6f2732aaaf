"""A clip cut in the middle (`head -c`) is never packed silently: `lus prep pack` names it
in its report and the manifest with decoded/expected frame counts, and skips it by
default or keeps its decoded frames with --incomplete keep."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_prep.cli import main
from data_prep.phantom import make_videos
from lus_dist.shards.manifest import Manifest
from lus_dist.io.video import (HEADER_SLACK, IncompleteClip, decode_video, is_incomplete, keep_incomplete,
                            read_video, write_video)

N_FRAMES = 40


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A POCUS-layout folder with one intact phantom clip and one cut to half its bytes."""
    root = tmp_path_factory.mktemp("cut") / "pocus"
    video = next(make_videos(seed=3, n_patients=1, videos_per_patient=1,
                             frames_per_video=(N_FRAMES, N_FRAMES), size=64))
    intact = write_video(root / "videos" / "convex" / "Cov_intact.avi", video.frames, fps=10)
    cut = intact.with_name("Reg_cut.avi")
    with open(cut, "wb") as fh:
        subprocess.run(["head", "-c", str(intact.stat().st_size // 2), str(intact)], stdout=fh, check=True)
    return root, intact, cut


@given(st.integers(0, 10_000), st.integers(1, 10_000))
def test_incomplete_only_beyond_the_header_slack(decoded, expected):
    assert is_incomplete(decoded, expected) == (expected - decoded > max(HEADER_SLACK, 0.02 * expected))
    assert not is_incomplete(decoded, None)          # no header count: nothing to compare


def test_decoder_raises_names_counts_or_records_inside_keep(clips):
    _, intact, cut = clips
    assert len(read_video(intact)) == N_FRAMES
    with pytest.raises(IncompleteClip, match=rf"Reg_cut.avi: incomplete clip: decoded \d+ of the {N_FRAMES} frames"):
        decode_video(cut)
    with keep_incomplete() as found:
        frames = decode_video(cut, fit=lambda f: f[::2, ::2])
    assert len(found) == 1 and found[0].expected == N_FRAMES and 0 < found[0].decoded < N_FRAMES
    assert len(frames) == found[0].decoded and frames.shape[1:3] == (32, 32)


def _pack(root, out, *extra):
    return main(["pack", "--layout", "pocus", "--src", str(root), "--out", str(out), "--size", "32",
                 "--folds", "0", "--test-frac", "0", "--quiet", *extra])


def test_pack_skips_and_reports_a_truncated_clip_by_default(clips, tmp_path, capsys):
    root, _, cut = clips
    assert _pack(root, tmp_path / "skip") == 0
    out = capsys.readouterr().out
    # the skipped clip keeps a frameless row in the manifest: not counted among the packed ones
    assert f"1 video(s), {N_FRAMES} frames; 1 more video(s) skipped while packing" in out
    line = next(x for x in out.splitlines() if "skipped" in x and "Reg_cut.avi" in x)
    decoded = int(line.split("decoded ")[1].split()[0])
    assert 0 < decoded < N_FRAMES and f"of the {N_FRAMES} frames" in line and "--incomplete keep" in line
    m = Manifest.load(tmp_path / "skip")
    entry, = m.provenance["pack_skipped"]
    assert entry["path"].endswith("Reg_cut.avi") and entry["incomplete"][0]["decoded"] == decoded
    assert dict(zip(m.videos["video_id"], m.videos["n_frames"])) == {"Cov_intact": N_FRAMES, "Reg_cut": 0}


def test_pack_keeps_the_decoded_frames_when_asked_and_still_reports(clips, tmp_path, capsys):
    root, _, _ = clips
    assert _pack(root, tmp_path / "keep", "--incomplete", "keep") == 0
    out = capsys.readouterr().out
    assert "1 incomplete clip(s) kept" in out
    line = next(x for x in out.splitlines() if "kept incomplete" in x)
    decoded = int(line.split("decoded ")[1].split()[0])
    assert "Reg_cut.avi" in line and f"of {N_FRAMES} frames" in line
    m = Manifest.load(tmp_path / "keep")
    assert dict(zip(m.videos["video_id"], m.videos["n_frames"])) == {"Cov_intact": N_FRAMES, "Reg_cut": decoded}
    assert m.provenance["pack_incomplete_kept"][0]["incomplete"][0]["expected"] == N_FRAMES
    assert np.asarray(m.provenance["pack_skipped"]).size == 0
