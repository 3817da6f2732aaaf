"""Packer on real HDF5: layout, determinism, skips, resume, array tasks + finalize, validate."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from data_prep.pack import finalize, plan_shards
from data_prep.records import PackError
from data_prep.records import LoadedVideo, VideoSource
from data_prep.validate import report, validate
from lus_dist.shards import format as fmt
from lus_dist.shards.format import Preprocessing, preprocess_frame, preprocess_mask
from lus_dist.shards.manifest import Manifest, Table
from shard_helpers import make_sources, pack_synthetic, small_config, synth_frames


def test_plan_is_contiguous_and_never_splits_a_video():
    assert plan_shards([10, 10, 25, 5, 5, 40], 20) == [[0, 1], [2], [3, 4], [5]]
    assert plan_shards([], 20) == []


def test_shards_hold_every_video_contiguously_with_self_describing_attrs(packed):
    m = Manifest.load(packed)
    sources = {s.video_id: s for s in make_sources()}
    assert m.n_videos == len(sources) and m.complete
    for i, name in enumerate(m.shards["name"]):
        with h5py.File(packed / name, "r") as f:
            assert f[fmt.DS_FRAMES].chunks == (1, 16, 16, 1) and f[fmt.DS_FRAMES].compression == "lzf"
            assert list(f.attrs[fmt.ATTR_VIDEO_CLASSES]) == list(fmt.VIDEO_CLASSES)
            assert json.loads(f.attrs[fmt.ATTR_PREPROCESSING])["size"] == 16
            video, frame = f[fmt.DS_VIDEO][:], f[fmt.DS_FRAME][:]
            for v in np.flatnonzero(m.videos["shard"] == i):
                o, n = m.videos["offset"][v], m.videos["n_frames"][v]
                assert (video[o:o + n] == v).all() and (frame[o:o + n] == np.arange(n)).all()
                src = sources[m.videos["video_id"][v]]
                loaded = src.load()
                assert n == len(loaded.frames)
                expect = synth_frames(int(src.video_id[3:]), n, 1, 1, False)[:, 0, 0]
                assert (f[fmt.DS_FRAMES][o:o + n, 8, 8, 0] == expect).all()   # RGB-coded gray kept exact
                assert (f[fmt.DS_SCORES][o:o + n] == loaded.frame_scores).all()
            assert (np.bincount(video - video.min()) > 0).all()  # no video appears twice out of order


def test_same_input_gives_identical_bytes(tmp_path, packed):
    pack_synthetic(tmp_path / "again", workers=2)
    a, b = Manifest.load(packed), Manifest.load(tmp_path / "again")
    assert list(a.shards["sha256"]) == list(b.shards["sha256"])
    assert (packed / fmt.MANIFEST_NAME).read_text() == (tmp_path / "again" / fmt.MANIFEST_NAME).read_text()


def test_manifest_tables_splits_and_folds(packed):
    m = Manifest.load(packed)
    v = m.videos
    for pid in set(v["patient_id"]):
        rows = v["patient_id"] == pid
        assert len(set(v["split"][rows])) == 1 and len(set(v["fold"][rows])) == 1
    assert set(v["fold"]) == {0, 1, 2, 3}
    assert m.patients["n_frames"].sum() == m.n_frames == v["n_frames"].sum()
    assert list(m.patients["n_videos"]) == [3] * 8


def test_bad_videos_are_skipped_with_reasons_and_duplicates_rejected(tmp_path):
    sources = make_sources(6)
    def broken():
        raise OSError("moov atom not found")
    sources[1].loader = broken
    sources[2].loader = lambda: LoadedVideo(np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.int16))
    sources[3].loader = lambda: LoadedVideo(np.zeros((2, 8, 8), np.uint8), np.array([0, 7], np.int16))
    sources[4].loader = lambda: LoadedVideo(np.zeros((2, 8, 8), np.uint8), np.zeros(2, np.int16),
                                            np.zeros((2, 4, 4), np.uint8))
    m = pack_synthetic(tmp_path / "s", sources, small_config(folds=2))
    reasons = {s["path"]: s["reason"] for s in m.provenance["pack_skipped"]}
    assert "moov atom not found" in reasons["synthetic://vid001"]
    assert reasons["synthetic://vid002"] == "0 frames"
    assert "frame score 7" in reasons["synthetic://vid003"]
    assert "mask size mismatch" in reasons["synthetic://vid004"]
    assert list(m.videos["n_frames"][1:5]) == [0, 0, 0, 0]
    dup = make_sources(3) + make_sources(1)
    with pytest.raises(PackError, match="duplicate video id 'vid000'"):
        pack_synthetic(tmp_path / "d", dup)


def test_rerun_skips_verified_shards_and_rewrites_damaged_ones(tmp_path, packed):
    out = tmp_path / "s"
    shutil.copytree(packed, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob(fmt.SHARD_GLOB)}
    with open(out / "shard-00001.h5", "r+b") as fh:
        fh.seek(500)
        fh.write(b"\xff")
    pack_synthetic(out)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob(fmt.SHARD_GLOB)}
    assert [n for n in before if before[n] != after[n]] == ["shard-00001.h5"]
    assert validate(out) == []


def test_array_tasks_then_finalize_lists_every_missing_shard(tmp_path, packed):
    out = tmp_path / "arr"
    n = len(Manifest.load(packed).shards["name"])
    assert pack_synthetic(out, task_index=0, num_tasks=3) is None
    assert not (out / fmt.MANIFEST_NAME).exists()
    with pytest.raises(PackError) as err:
        finalize(out)
    missing = [fmt.shard_name(i) for i in range(n) if i % 3]
    assert all(name in str(err.value) for name in missing) and fmt.shard_name(0) not in str(err.value)
    pack_synthetic(out, task_index=1, num_tasks=3)
    pack_synthetic(out, task_index=2, num_tasks=3)
    m = finalize(out)
    assert list(m.shards["sha256"]) == list(Manifest.load(packed).shards["sha256"])


def test_validate_names_truncated_flipped_missing_and_extra_shards(tmp_path, packed):
    out = tmp_path / "v"
    shutil.copytree(packed, out)
    assert report(out)[0] == 0
    path0, path1 = out / "shard-00000.h5", out / "shard-00001.h5"
    path0.write_bytes(path0.read_bytes()[:-100])
    data = bytearray(path1.read_bytes())
    data[len(data) // 2] ^= 0x01
    path1.write_bytes(bytes(data))
    (out / "shard-00002.h5").unlink()
    shutil.copy(out / "shard-00003.h5", out / "shard-00099.h5")
    code, text = report(out)
    assert code == 1
    got = {p.name: p.what for p in validate(out)}
    assert got["shard-00000.h5"].startswith("truncated")
    assert "SHA-256 mismatch" in got["shard-00001.h5"]
    assert got["shard-00002.h5"] == "missing"
    assert "extra shard" in got["shard-00099.h5"]
    assert len(got) == 4 and all(name in text for name in got)


def test_preprocessing_aspect_channels_and_nearest_masks():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :, 0] = 200                                  # true colour -> luma
    pad = preprocess_frame(wide, Preprocessing(size=10))
    assert pad.shape == (10, 10, 1) and pad[0, 5, 0] == 0 and pad[5, 5, 0] == round(0.299 * 200)
    assert preprocess_frame(wide, Preprocessing(size=10, aspect="crop"))[0, 5, 0] == round(0.299 * 200)
    assert preprocess_frame(wide[:, :, 0], Preprocessing(size=10, channels=3)).shape == (10, 10, 3)
    mask = np.random.default_rng(0).integers(0, 4, (30, 30)).astype(np.uint8)
    assert set(np.unique(preprocess_mask(mask, Preprocessing(size=17)))) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="aspect"):
        Preprocessing(aspect="squash")


def test_a_different_pack_into_the_same_dir_is_refused(tmp_path, packed):
    out = tmp_path / "x"
    shutil.copytree(packed, out)
    with pytest.raises(PackError, match="already holds a different pack"):
        pack_synthetic(out, cfg=small_config(preprocessing=Preprocessing(size=24)))


def test_validate_without_manifest_says_the_pack_is_unfinished(tmp_path, packed):
    out = tmp_path / "u"
    shutil.copytree(packed, out)
    (out / fmt.MANIFEST_NAME).unlink()
    (out / "shard-00000.h5.123.tmp").write_bytes(b"partial")
    problems = validate(out)
    assert [p.name for p in problems] == [fmt.MANIFEST_NAME]
    assert "lus prep finalize" in problems[0].what
    assert "no such shard directory" in validate(tmp_path / "absent")[0].what


def test_validate_checks_the_readers_frame_columns_and_the_tables_checksum(tmp_path, packed):
    out = tmp_path / "s"
    shutil.copytree(packed, out)
    m = Manifest.load(out)
    m.frames["score"][:] = (m.frames["score"] + 1) % 4          # a manifest that lies about scores
    m.save_version(out)
    assert any("frame scores disagree" in p.what for p in validate(out))
    tables = out / f"manifest-v{m.version:04d}.npz"
    data = bytearray(tables.read_bytes())
    data[-100] ^= 0xFF
    tables.write_bytes(bytes(data))
    assert any(tables.name in str(p) for p in validate(out))      # named, whichever check trips


def test_tables_hold_strings_as_utf8_bytes_and_give_str():
    """A byte an ASCII character (numpy's str dtype spends four), any text round-trips, and
    readers see str: comparisons and filters work as on str columns."""
    ids = np.array(["h00-p0000001-v00000001", "Cov-Atlas+(44)", "Reg_Lunge_Ödem"])
    n = np.array([10, 20, 30])
    t = Table({"video_id": ids, "n_frames": n})
    assert t.stored()["video_id"].dtype == "S22" and t.stored()["video_id"].nbytes == 66
    assert t["video_id"].dtype.kind == "U" and t["video_id"].tolist() == ids.tolist()
    assert np.isin(t["video_id"], ["Reg_Lunge_Ödem"]).tolist() == [False, False, True]
    assert (t["video_id"] == "Cov-Atlas+(44)").sum() == 1
    assert t["n_frames"] is n and sorted(t) == ["n_frames", "video_id"]
    with pytest.raises(ValueError, match="read-only"):
        t["video_id"][0] = "renamed"   # a write into a decoded copy would be lost: refused
