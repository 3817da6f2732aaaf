"""`lus prep pack --append` on the phantom: pack, train, append new clips, then the old
shards are byte-identical (checksum and mtime), old patients keep split and fold, the
whole set validates, each manifest version reads what it held, and a real `lus train`
on the new version reads old and new frames."""
from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from data_prep.cli import main
from data_prep.validate import report
from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest, ManifestError
from lus_dist.shards.reader import ShardDataset
from test_prep_cli import ROOT

PACK = ["pack", "--layout", "iclus", "--size", "64", "--shard-frames", "40", "--folds", "3", "--quiet"]
FIRST = 6   # patients in the first pack; the phantom has 9


def _shard_state(out) -> dict:
    return {p.name: (fmt.file_checksum(p), p.stat().st_mtime_ns) for p in sorted(out.glob(fmt.SHARD_GLOB))}


def _train(shards, run_dir, extra=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lus", "train", "regstn", "--config", str(ROOT / "configs" / "demo_regstn.yaml"),
           "--run-dir", str(run_dir), f"data.root={shards}", "train.epochs=1", "train.max_steps_per_epoch=2",
           "data.batch_size=8", "data.test_folds=[0]", "logging.tensorboard=false", "viz_frames=2",
           "predict_splits=[train,holdout]", *extra]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """(shard dir, version-1 manifest, shard state before the append, version-1 training run)."""
    base = tmp_path_factory.mktemp("append")
    raw = base / "raw"
    assert main(["phantom", "--out", str(raw), "--patients", "9", "--videos-per-patient", "1",
                 "--size", "64"]) == 0
    table = pd.read_csv(raw / "iclus" / "dataset.csv")
    first = sorted(table["patient_hash"].unique())[:FIRST]
    table[table["patient_hash"].isin(first)].to_csv(raw / "iclus" / "first.csv", index=False)
    out = base / "shards"
    assert main(PACK + ["--src", str(raw / "iclus"), "--table", str(raw / "iclus" / "first.csv"),
                        "--out", str(out)]) == 0
    v1, before = Manifest.load(out), _shard_state(out)
    trained = _train(out, base / "run_v1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert main(PACK + ["--src", str(raw / "iclus"), "--out", str(out), "--append"]) == 0
    return out, v1, before, base


def test_old_shards_are_untouched_and_new_clips_are_new_shards(grown):
    out, v1, before, _ = grown
    after, v2 = _shard_state(out), Manifest.load(out)
    assert {k: after[k] for k in before} == before                  # same bytes, same mtimes
    assert len(after) > len(before) and v2.version == 2 and v1.version == 1
    new_rows = v2.videos["shard"] >= len(v1.shards["name"])
    assert set(v2.videos["patient_id"][new_rows]) == set(v2.videos["patient_id"]) - set(v1.videos["patient_id"])
    for c in ("name", "sha256", "bytes", "n_frames"):
        assert np.array_equal(v2.shards[c][:len(v1.shards["name"])], v1.shards[c])


def test_old_patients_keep_split_and_fold_and_new_ones_get_stratified_folds(grown):
    out, v1, _, _ = grown
    v2 = Manifest.load(out)
    n = v1.n_videos
    for c in ("video_id", "patient_id", "split", "fold", "patient", "offset", "n_frames"):
        assert np.array_equal(v2.videos[c][:n], v1.videos[c]), c
    assert set(v2.videos["fold"][n:]) <= {0, 1, 2} and len(v2.videos["fold"][n:]) == 3
    assert set(v2.videos["split"][n:]) <= {"train", "test"}
    # the new patients' global patient rows follow the old ones (old shards store the old ones)
    assert v2.videos["patient"][n:].min() == v1.videos["patient"].max() + 1


def test_whole_set_validates_and_versions_read_what_they_held(grown):
    out, v1, _, _ = grown
    code, text = report(out)
    assert code == 0 and "version 2" in text and "2 manifest version(s)" in text, text
    old, new = ShardDataset(out, manifest_version=1), ShardDataset(out)
    assert len(old) == v1.n_frames and len(new) == Manifest.load(out).n_frames > len(old)
    assert set(np.unique(new.video_index)) > set(np.unique(old.video_index))
    assert old[0]["image"].shape == new[0]["image"].shape
    with pytest.raises(ManifestError, match=r"no manifest version 3; this directory has version\(s\) \[1, 2\]"):
        ShardDataset(out, manifest_version=3)


def test_training_on_the_new_version_reads_old_and_new_frames(grown):
    out, v1, _, base = grown
    run = _train(out, base / "run_v2")
    assert run.returncode == 0, run.stderr[-3000:]
    videos = set()
    for part in ("train", "holdout"):   # the training folds' patients: trained on or held out
        with h5py.File(base / "run_v2" / "predictions" / f"{part}.h5", "r") as f:
            videos |= {v.decode() if isinstance(v, bytes) else str(v) for v in f["video_id"][:]}
    old_ids = set(v1.videos["video_id"][v1.videos["fold"] != 0])          # training reads folds 1, 2
    v2 = Manifest.load(out)
    new_ids = set(v2.videos["video_id"][v1.n_videos:][v2.videos["fold"][v1.n_videos:] != 0])
    assert new_ids and videos == old_ids | new_ids


def test_a_run_resumed_after_the_append_keeps_its_manifest_version(grown):
    """run_v1 trained on version 1; resuming it (same command, more epochs) after the append
    must not switch it to version 2's data."""
    import yaml
    out, _, _, base = grown
    run = base / "run_v1"
    cmd = _train(out, run, ["train.epochs=2", "--resume", "auto"])
    assert cmd.returncode == 0, cmd.stderr[-3000:]
    assert "resumed from" in cmd.stdout + cmd.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["manifest_version"] == 1


def test_append_with_nothing_new_or_other_settings(grown, capsys):
    out, _, _, base = grown
    state = _shard_state(out)
    assert main(PACK + ["--src", str(base / "raw" / "iclus"), "--out", str(out), "--append"]) == 0
    assert "nothing new to append: version 2 is current" in capsys.readouterr().out
    assert _shard_state(out) == state and Manifest.load(out).version == 2
    code = main([*PACK[:4], "32", *PACK[5:], "--src", str(base / "raw" / "iclus"), "--out", str(out), "--append"])
    assert code == 2 and ("--append must use the settings of the existing pack; these differ: size "
                          "(existing 64, given 32: pass --size 64) (or pack into a new --out)") \
        in capsys.readouterr().err


def test_append_names_what_differs_and_what_to_do():
    """Each differing setting with both values and its flag; a pack that does not record a
    setting (an older lus-dist made it) is told apart, since no flag can match it."""
    from data_prep.pack import PackError, make_plan, provenance
    from shard_helpers import make_sources, small_config
    sources, prov = make_sources(), provenance("synthetic", "/synthetic", [], {})
    base = make_plan(sources[:15], small_config(), prov)
    with pytest.raises(PackError) as err:
        make_plan(sources, small_config(folds=3, split_seed=2, incomplete="keep"), prov, base)
    assert str(err.value) == ("--append must use the settings of the existing pack; these differ: folds "
                              "(existing 4, given 3: pass --folds 4); incomplete (existing 'skip', given "
                              "'keep': pass --incomplete skip); seed (existing 0, given 2: pass "
                              "--split-seed 0) (or pack into a new --out)")
    del base.preprocessing["incomplete"]
    with pytest.raises(PackError, match=r"^--append: the existing pack does not record incomplete \(an "
                       r"older lus-dist made it\), so no flag can match its settings; pack all clips "
                       r"into a new --out") as err:
        make_plan(sources, small_config(), prov, base)
    assert "existing: {" not in str(err.value)


def test_a_refused_append_leaves_an_old_pack_as_it_was(tmp_path):
    """A schema-1 pack that does not record `incomplete` (packs before that setting): the
    append is refused before anything is written (no schema-1 manifest saved anew)."""
    import json

    from data_prep.pack import PackError, pack, provenance
    from shard_helpers import make_sources, pack_synthetic, small_config
    sources = make_sources()
    old = json.loads(pack_synthetic(tmp_path, sources[:15]).to_json())
    del old["preprocessing"]["incomplete"]
    old["schema_version"] = 1
    for f in tmp_path.glob("manifest*"):
        f.unlink()
    (tmp_path / fmt.MANIFEST_NAME).write_text(json.dumps(old))
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    with pytest.raises(PackError, match="does not record incomplete"):
        pack(sources, tmp_path, small_config(), provenance("synthetic", "/synthetic", [], {}),
             progress=False, append=True)
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_schema_1_sets_still_load_and_take_an_append(tmp_path):
    """A set packed before schema 2 (tables inline in manifest.json, no frame columns) reads
    as version 1, and an append keeps that version loadable."""
    from data_prep.pack import pack, provenance
    from shard_helpers import make_sources, pack_synthetic, small_config
    sources = make_sources()
    old = pack_synthetic(tmp_path, sources[:15])
    legacy = old.to_json().replace(f'"schema_version": {fmt.SCHEMA_VERSION}', '"schema_version": 1')
    for f in tmp_path.glob("manifest*"):
        f.unlink()
    (tmp_path / fmt.MANIFEST_NAME).write_text(legacy)
    ds = ShardDataset(tmp_path)
    assert Manifest.load(tmp_path).frames is None and len(ds) == old.n_frames
    new = pack(sources, tmp_path, small_config(), provenance("synthetic", "/synthetic", [], {}),
               progress=False, append=True)
    assert new.version == 2 and new.n_videos == len(sources)
    assert len(ShardDataset(tmp_path, manifest_version=1)) == old.n_frames
    assert np.array_equal(ShardDataset(tmp_path, manifest_version=1).frame_scores, ds.frame_scores)
    assert report(tmp_path)[0] == 0


def _as_schema_2(root):
    """Rewrite the newest version as schema 2 wrote it: the tables' strings as numpy str."""
    import json
    meta = json.loads((root / fmt.MANIFEST_NAME).read_text())
    tables = root / meta["tables"]["file"]
    with np.load(tables) as z:
        arrays = {k: z[k].astype(str) if z[k].dtype.kind == "S" else z[k] for k in z.files}
    np.savez(tables, **arrays)
    meta.update(schema_version=2, tables={**meta["tables"], "sha256": fmt.file_checksum(tables),
                                          "bytes": tables.stat().st_size},
                plan_hash="hash of the plan's schema-2 text")   # the schema is part of what is hashed
    for name in (fmt.MANIFEST_NAME, f"manifest-v{meta['version']:04d}.json"):
        (root / name).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def test_schema_2_sets_read_as_before_and_take_an_append(tmp_path):
    """A set whose tables hold numpy str (schema 2) reads exactly as one packed now, is held
    as compactly, validates, and an append adds a version of the current schema."""
    import shutil

    from data_prep.pack import PackError, pack, provenance
    from lus_dist.shards.manifest import VIDEO_COLUMNS
    from shard_helpers import make_sources, pack_synthetic, small_config
    sources = make_sources()
    pack_synthetic(tmp_path / "now", sources[:15])
    shutil.copytree(tmp_path / "now", tmp_path / "old")
    _as_schema_2(tmp_path / "old")
    old, now = Manifest.load(tmp_path / "old"), Manifest.load(tmp_path / "now")
    assert (old.schema_version, now.schema_version) == (2, fmt.SCHEMA_VERSION)
    for c in VIDEO_COLUMNS:
        assert old.videos[c].tolist() == now.videos[c].tolist(), c
    assert old.videos.stored()["video_id"].dtype == now.videos.stored()["video_id"].dtype == "S6"
    a, b = ShardDataset(tmp_path / "old", split="train"), ShardDataset(tmp_path / "now", split="train")
    assert len(a) == len(b) and np.array_equal(a.frame_scores, b.frame_scores)
    assert np.array_equal(a[len(a) - 1]["image"].numpy(), b[len(b) - 1]["image"].numpy())
    assert report(tmp_path / "old")[0] == 0
    with pytest.raises(PackError, match=r"\(packed by an older lus-dist, manifest schema 2, which reads as it is\)"):
        pack_synthetic(tmp_path / "old", sources[:15])        # the same pack again, without --append
    new = pack(sources, tmp_path / "old", small_config(), provenance("synthetic", "/synthetic", [], {}),
               progress=False, append=True)
    assert new.version == 2 and Manifest.load(tmp_path / "old").schema_version == fmt.SCHEMA_VERSION
    assert Manifest.load(tmp_path / "old", version=1).schema_version == 2
    assert report(tmp_path / "old")[0] == 0
