"""`--layout table`: clips + a per-video score table + a per-patient class table, packed
through `lus prep pack`; every bad row named; patient classes stored and stratifying folds."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.cli import main
from data_prep.ingest_table import TableSpec, check_spec, id_key, ingest_table, load_spec, video_key
from data_prep.records import IngestError
from lus_dist.shards.manifest import Manifest
from lus_dist.shards.reader import ShardDataset
from lus_dist.io.video import write_video

REAL_BLUES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "covid_blues"
BLUES_SPEC = Path(__file__).resolve().parents[2] / "configs" / "ingest" / "covid_blues.yaml"
SPEC = """videos: clips
glob: "*.mp4"
video_table: scores.csv
video_id: file
score: Severity
patient_pattern: '^patient_(?P<patient>\\d+)_'
patient_table: patients.xlsx
patient_id: pid
patient_class: pcr
classes: {neg: negative, pos: positive}
probe: convex
"""
# (patient, point) -> score, 4 frames each; patient p is positive when p is odd
GOOD = {(p, pt): (p + i) % 4 for p in range(1, 11) for i, pt in enumerate(("L1", "R1"))
        if (p, pt) not in ((5, "R1"), (6, "R1"), (7, "R1"))}   # their rows are bad (BAD_FILES)
GOOD[(3, "L1_2")] = 2
BAD_FILES = {  # file written, and how the report must name it
    "patient_4_R3.mp4": "no row in",
    "patient_5_R1.mp4": "score 5 in",
    "patient_6_R1.mp4": "is not an integer",
    "patient_7_R1.mp4": "2 rows for this video",
    "patient_11_L1.mp4": "patient '11' has no row in patients.xlsx",
    "scan_x.mp4": "does not match patient_pattern",
    "patient_13_L1.mp4": "score 4 in",
}


def write_study(root: Path) -> Path:
    """A small study in the layout, with one bad row of every kind."""
    names = [f"patient_{p}_{pt}.mp4" for p, pt in GOOD] + list(BAD_FILES)
    for i, name in enumerate(names):
        n = 2 if name == "patient_1_L1.mp4" else 4
        write_video(root / "clips" / name, np.full((n, 32, 32), 20 + 8 * i, np.uint8))
    (root / "clips" / "patient_1_notes.mp4").write_text("not a clip")
    rows = [(f"patient_{p}_{pt}" + (".mp4" if p == 2 else ""), s) for (p, pt), s in GOOD.items()]
    rows += [("patient_5_R1", 5), ("patient_6_R1", "2.5"), ("patient_7_R1", 1), ("patient_7_R1", 2),
             ("patient_11_L1", 1), ("scan_x", 0), ("patient_2_L3", 1), ("", 3), ("patient_1_notes", 1),
             ("patient_13_L1", 4)]
    pd.DataFrame(rows, columns=["file", "Severity"]).assign(comment="x").to_csv(root / "scores.csv", index=False)
    pcr = ["pos" if p % 2 else "neg" for p in range(1, 11)]
    pd.DataFrame({"pid": list(range(1, 11)) + [12, 13], "pcr": pcr + ["neg", "pos"]}) \
        .to_excel(root / "patients.xlsx", index=False)
    (root / "spec.yaml").write_text(SPEC)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def packed(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "shards"
    code = main(["pack", "--layout", "table", "--src", str(study), "--spec", str(study / "spec.yaml"),
                 "--set", "frame_scores=video", "--set", "max_frames=3", "--out", str(out), "--size", "16",
                 "--folds", "2", "--shard-frames", "20", "--workers", "2", "--quiet"])
    return code, out


def test_pack_stores_scores_patient_classes_and_stratified_patient_folds(packed):
    code, out = packed
    assert code == 0
    m = Manifest.load(out)
    v = m.videos
    expected = {f"patient_{p}_{pt}": s for (p, pt), s in GOOD.items()}
    assert dict(zip(v["video_id"].tolist(), v["video_score"].tolist())) == expected
    assert m.patient_classes == ["negative", "positive"]
    pcr = dict(zip(m.patients["patient_id"].tolist(), m.patients["label"].tolist()))
    assert pcr == {str(p): p % 2 for p in range(1, 11)}
    assert (m.video_patient_labels() == [int(p) % 2 for p in v["patient_id"]]).all()
    assert set(v["probe"]) == {"convex"} and (v["label"] == -1).all()
    assert m.splits["fold_method"].endswith("by patient class")
    folds = {p: set(v["fold"][v["patient_id"] == p].tolist()) for p in pcr}
    assert all(len(f) == 1 for f in folds.values()), "a patient sits in one fold"
    for k in (0, 1):
        classes = [pcr[p] for p, f in folds.items() if f == {k}]
        assert classes.count(0) >= 2 and classes.count(1) >= 2, f"fold {k} is not stratified: {classes}"
    assert main(["validate", str(out)]) == 0


def test_weak_frame_scores_and_frame_cap(packed):
    _, out = packed
    ds = ShardDataset(out)
    m = ds.manifest
    assert dict(zip(m.videos["video_id"], m.videos["n_frames"].tolist()))["patient_1_L1"] == 2
    assert set(m.videos["n_frames"].tolist()) == {2, 3}, "4-frame clips thinned to max_frames=3"
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == m.n_frames == m.videos["n_frames"].sum()
    assert all(int(x["score"]) == m.videos["video_score"][int(x["video"])] for x in items), "weak labels"


def test_every_bad_row_is_named_in_report_and_manifest(packed, study, capfd):
    _, out = packed
    m = Manifest.load(out)
    skipped = {Path(s["path"]).name: s["reason"] for s in m.provenance["ingest_skipped"]}
    for name, why in BAD_FILES.items():
        assert why in skipped[name], (name, skipped.get(name))
    assert "no video file for this row" in skipped["scores.csv#video=patient_2_L3"]
    assert "no video id" in skipped["scores.csv#row=26"]
    assert "no video of this patient" in skipped["patients.xlsx#patient=12"]
    assert "none of this patient's 1 video(s) could be ingested" in skipped["patients.xlsx#patient=13"]
    assert "cannot open" in skipped["patient_1_notes.mp4"]
    assert len(skipped) == len(BAD_FILES) + 5
    assert m.provenance["options"]["spec"]["patient_table"] == "patients.xlsx"
    # the printed pack report names the same rows (re-run: the pack is complete, nothing rewritten)
    code = main(["pack", "--layout", "table", "--src", str(study), "--spec", str(study / "spec.yaml"),
                 "--set", "frame_scores=video", "--set", "max_frames=3", "--out", str(out), "--size", "16",
                 "--folds", "2", "--shard-frames", "20", "--quiet"])
    printed = capfd.readouterr().out
    assert code == 0 and f"{m.n_videos} videos ingested, {len(skipped)} skipped" in printed
    assert all(s["path"] in printed and s["reason"] in printed for s in m.provenance["ingest_skipped"])


def test_append_keeps_patient_classes_and_folds(study, tmp_path, capsys):
    """New patients arrive: old patients keep class and fold, new ones are placed by class."""
    out = tmp_path / "shards"
    args = ["pack", "--layout", "table", "--src", str(study), "--spec", str(study / "spec.yaml"),
            "--out", str(out), "--size", "16", "--folds", "2", "--quiet"]
    assert main([*args, "--set", "glob=patient_[1-6]_*.mp4"]) == 0
    first = Manifest.load(out)
    assert main([*args, "--append", "--set", "classes={neg: no, pos: yes}"]) == 2
    assert "--append must keep the patient classes" in capsys.readouterr().err
    assert main([*args, "--append"]) == 0
    m = Manifest.load(out)
    assert m.version == 2 and m.patient_classes == ["negative", "positive"]
    assert m.patients["patient_id"].tolist()[:6] == first.patients["patient_id"].tolist()
    assert (m.patients["label"][:6] == first.patients["label"]).all()
    assert dict(zip(m.patients["patient_id"].tolist(), m.patients["label"].tolist())) == \
        {str(p): p % 2 for p in range(1, 11)}
    assert (m.videos["fold"][:first.n_videos] == first.videos["fold"]).all()
    for k in (0, 1):
        pats = np.unique(m.videos["patient"][m.videos["fold"] == k])
        assert set(m.patients["label"][pats].tolist()) == {0, 1}, f"fold {k} holds one class only"


def test_patient_from_a_column_without_patient_table(tmp_path):
    """The other route: patient ids in a column, a Parquet table, file names with suffix; no
    patient classes (folds then stratify by video label, as the other layouts do)."""
    for i, name in enumerate(("a.mp4", "b.mp4", "c.mp4")):
        write_video(tmp_path / "v" / "sub" / name, np.full((3, 32, 32), 40 * i, np.uint8))
    pd.DataFrame({"clip": ["a.mp4", "b.MP4", "c"], "s": [0.0, 3.0, np.nan], "who": ["7", "07", "8"]}) \
        .to_parquet(tmp_path / "t.parquet")
    spec = check_spec(TableSpec(videos="v", glob="**/*.mp4", video_table="t.parquet", video_id="clip",
                                score="s", patient_column="who"), "test")
    report = ingest_table(tmp_path, spec)
    assert [(s.video_id, s.patient_id, s.video_score, s.patient_label) for s in report.sources] == \
        [("a", "7", 0, -1), ("b", "7", 3, -1)]
    assert report.patient_classes == () and "no score" in report.skipped[0].reason
    clip = report.sources[1].load()
    assert clip.frames.shape == (3, 32, 32) and (clip.frame_scores == -1).all(), "frames unscored by default"


def test_frames_can_carry_their_patients_class(study):
    """frame_scores=patient: a frame classifier of the patient-level target (a PCR result)
    learns from frames that each carry their patient's class."""
    report = ingest_table(study, load_spec(study / "spec.yaml", ["frame_scores=patient", "max_frames=2"]))
    assert report.patient_classes == ("negative", "positive")
    for src in report.sources[:6]:
        frames = src.load().frame_scores
        assert len(frames) == 2 and (frames == src.patient_label).all() and src.patient_label >= 0
    with pytest.raises(IngestError, match="frame_scores=patient gives frames their patient's class"):
        check_spec(TableSpec(video_table="t.csv", patient_column="p", frame_scores="patient"), "spec")


def test_ids_compare_as_the_tables_spell_them():
    assert [id_key(x) for x in (7, 7.0, "07", " 7 ", np.int64(7))] == ["7"] * 5
    assert [id_key(x) for x in (None, float("nan"), "", "NaN")] == [None] * 4
    assert id_key("P-07") == "P-07" and id_key(2.5) == "2.5"
    with pytest.raises(IngestError, match="spec: video_table is required"):
        check_spec(TableSpec(patient_pattern="x"), "spec")
    assert video_key("dir/patient_3_L1.mp4") == "patient_3_L1" and video_key("patient_3_L1") == "patient_3_L1"


@pytest.mark.parametrize("setting, message", [
    (["patient_column=pid"], "give exactly one of patient_column"),
    (["patient_pattern=(unclosed"], "is not a regular expression"),
    (["score_range=[0,5]"], "within the stored score classes 0..3"),
    (["frame_scores=all"], "frame_scores must be one of"),
    (["patient_class="], "patient_table and patient_class go together"),
    (["colour=red"], "unknown key(s) ['colour']"),
    (["score=Grade"], "scores.csv: missing column(s) ['Grade']"),
    (["patient_table=nope.csv"], "nope.csv: no such table file"),
    (["videos=none"], "none: no such video folder"),
    (["glob=*.avi"], "no video file matches '*.avi'"),
])
def test_bad_spec_is_one_line_naming_the_file(study, tmp_path, capsys, setting, message):
    sets = [x for s in setting for x in ("--set", s)]
    code = main(["pack", "--layout", "table", "--src", str(study), "--spec", str(study / "spec.yaml"), *sets,
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert "spec.yaml" in err or str(study) in err


def test_manifests_without_patient_classes_still_load(packed):
    """Packs written before the patient-level target existed: the column reads as unknown."""
    _, out = packed
    data = json.loads(Manifest.load(out).to_json())
    del data["patients"]["label"], data["classes"]["patient"]
    old = Manifest.from_json(json.dumps(data))
    assert (old.patients["label"] == -1).all() and old.patient_classes == []
    assert (old.video_patient_labels() == -1).all()


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_BLUES / "lus_videos").is_dir(), reason=f"real COVID-BLUES data not found at {REAL_BLUES}")
def test_real_covid_blues_packs_with_its_counts(tmp_path, capsys):
    out = tmp_path / "blues"
    start = time.monotonic()
    code = main(["pack", "--layout", "table", "--src", str(REAL_BLUES), "--spec", str(BLUES_SPEC),
                 "--set", "max_frames=4", "--out", str(out), "--size", "32", "--workers", "2",
                 "--shard-frames", "400", "--quiet"])
    assert code == 0, capsys.readouterr().err
    m = Manifest.load(out)
    print(f"packed COVID-BLUES in {time.monotonic() - start:.0f} s")
    assert m.n_videos == 284 and len(m.patients["patient_id"]) == 50
    assert np.bincount(m.videos["video_score"]).tolist() == [89, 85, 69, 41]
    assert np.bincount(m.patients["label"]).tolist() == [24, 26] and m.patient_classes[1] == "pcr_positive"
    assert not m.provenance["ingest_skipped"] and not m.provenance["pack_skipped"]
    assert (m.videos["n_frames"] == 4).all() and (ShardDataset(out).frame_scores == -1).all()
    for k in range(5):   # 10 patients per fold, PCR-positive share near the set's 26/50
        pats = np.unique(m.videos["patient"][m.videos["fold"] == k])
        assert len(pats) == 10 and 3 <= m.patients["label"][pats].sum() <= 7
