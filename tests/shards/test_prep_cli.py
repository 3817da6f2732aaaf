"""`lus prep` end to end: phantom -> pack -> validate, damage, SIGKILL + resume, real POCUS."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.cli import TaskError, main, resolve_task
from lus_dist.shards import format as fmt
from lus_dist.shards.manifest import Manifest
from shard_helpers import POCUS

ROOT = Path(__file__).resolve().parents[2]
PACK = ["pack", "--layout", "iclus", "--size", "32", "--shard-frames", "25", "--quiet"]


def lus_prep(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "lus", "prep", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("phantom") / "raw"
    assert main(["phantom", "--out", str(raw), "--patients", "12", "--videos-per-patient", "1",
                 "--size", "64"]) == 0
    return raw


@pytest.fixture(scope="module")
def iclus_shards(phantom, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("iclus") / "shards"
    assert main(PACK + ["--src", str(phantom / "iclus"), "--out", str(out)]) == 0
    return out


def test_resolve_task_from_flags_and_slurm_array_variables():
    assert resolve_task(None, None, {}) == (0, 1)
    assert resolve_task(2, 3, {"SLURM_ARRAY_TASK_ID": "0"}) == (2, 3)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "4",
           "SLURM_ARRAY_TASK_STEP": "2"}
    assert resolve_task(None, None, env) == (2, 4)
    for bad in ((1, None, {}), (3, 3, {}), (None, None, {"SLURM_ARRAY_TASK_ID": "1"})):
        with pytest.raises(TaskError):
            resolve_task(*bad)


def test_array_task_names_what_writes_the_manifest(phantom, tmp_path, capsys, monkeypatch):
    """A task of slurm/prep_array.sh's array (LUS_PREP_STAGE=pack) points at the finalize job
    the script queued; a task of an array submitted by hand says to run finalize."""
    task = PACK + ["--src", str(phantom / "iclus"), "--task-index", "0", "--num-tasks", "2"]
    monkeypatch.delenv("LUS_PREP_STAGE", raising=False)
    assert main(task + ["--out", str(tmp_path / "by_hand")]) == 0
    assert f"run `lus prep finalize {tmp_path / 'by_hand'}` after all tasks" in capsys.readouterr().out
    monkeypatch.setenv("LUS_PREP_STAGE", "pack")
    assert main(task + ["--out", str(tmp_path / "scripted")]) == 0
    out = capsys.readouterr().out
    assert "the queued finalize job writes the manifest" in out and "lus prep finalize" not in out


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        main(["pack", "--help"])
    out = capsys.readouterr().out
    assert "lus prep pack --layout pocus" in out and "--shard-frames" in out and "finalize" in out


def test_phantom_packs_and_validates_in_both_layouts(phantom, iclus_shards, tmp_path, capsys):
    m = Manifest.load(iclus_shards)
    assert len(m.shards["name"]) >= 3 and m.preprocessing["size"] == 32
    given = dict(line.split(",") for line in (phantom / "iclus" / "train_test_split.csv").read_text().split()[1:])
    assert dict(zip(m.patients["patient_id"], m.patients["split"])) == given   # the authors' split wins
    assert set(given.values()) == {"train", "test"} and (m.videos["n_frames"] > 0).all()
    assert main(["validate", str(iclus_shards)]) == 0
    pocus = tmp_path / "pocus"
    assert main(["pack", "--layout", "pocus", "--src", str(phantom / "pocus"), "--out", str(pocus),
                 "--size", "32", "--quiet", "--workers", "2"]) == 0
    assert main(["validate", str(pocus)]) == 0
    assert "OK" in capsys.readouterr().out


def test_validate_fails_naming_the_truncated_and_the_flipped_shard(iclus_shards, tmp_path, capsys):
    out = tmp_path / "bad"
    shutil.copytree(iclus_shards, out)
    a, b = out / fmt.shard_name(0), out / fmt.shard_name(2)
    with open(a, "r+b") as fh:
        fh.truncate(a.stat().st_size // 2)
    data = bytearray(b.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    b.write_bytes(bytes(data))
    assert main(["validate", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{a.name}: truncated" in err and f"{b.name}: SHA-256 mismatch" in err
    assert fmt.shard_name(1) not in err


def test_unwritable_output_is_a_clear_error_naming_it(phantom, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(PACK + ["--src", str(phantom / "iclus"), "--out", str(blocker / "shards")]) == 2
    err = capsys.readouterr().err
    assert "lus prep pack: error:" in err and str(blocker) in err and "Traceback" not in err


def test_finalize_without_plan_is_a_clear_error(tmp_path, capsys):
    assert main(["finalize", str(tmp_path)]) == 2
    assert "plan.json not found" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkilled_pack_resumes_to_the_same_checksums(phantom, iclus_shards, tmp_path):
    out = tmp_path / "killed"
    proc = lus_prep(*PACK, "--src", str(phantom / "iclus"), "--out", str(out))
    deadline = time.monotonic() + 60
    while not list(out.glob(fmt.SHARD_GLOB + fmt.SIDECAR_SUFFIX)) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    total = len(Manifest.load(iclus_shards).shards["name"])
    done = len(list(out.glob(fmt.SHARD_GLOB + fmt.SIDECAR_SUFFIX)))
    assert 1 <= done < total and not (out / fmt.MANIFEST_NAME).exists()
    finished = {p.name[:-len(fmt.SIDECAR_SUFFIX)] for p in out.glob(fmt.SHARD_GLOB + fmt.SIDECAR_SUFFIX)}
    stamps = {n: (out / n).stat().st_mtime_ns for n in finished}
    rerun = lus_prep(*PACK, "--src", str(phantom / "iclus"), "--out", str(out))
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    resumed, clean = Manifest.load(out), Manifest.load(iclus_shards)
    assert list(resumed.shards["sha256"]) == list(clean.shards["sha256"])
    assert (out / fmt.MANIFEST_NAME).read_text() == (iclus_shards / fmt.MANIFEST_NAME).read_text()
    assert all((out / n).stat().st_mtime_ns == t for n, t in stamps.items())   # kept, not rewritten
    assert not list(out.glob("*" + fmt.TMP_SUFFIX))


def _pocus_subset(dst: Path) -> Path:
    """Symlinks to a few real clips of every container type, plus the clips ingest must skip
    (Vir_*, label_uncertain/): real decoding of every format, within the test budget. The
    full directory is packed by benchmarks/bench_pack.py."""
    picked = []
    for ext in (".mp4", ".avi", ".mpeg", ".mov", ".gif", ".MP4"):
        picked += sorted(p for p in (POCUS / "videos").rglob(f"*{ext}") if p.suffix == ext)[:2]
    picked += sorted((POCUS / "videos").rglob("Vir_*"))[:1] + sorted((POCUS / "videos").rglob("label_uncertain/*"))
    for p in picked:
        link = dst / p.relative_to(POCUS)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(p)
    return dst


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not (POCUS / "videos").is_dir(), reason=f"real POCUS data not found at {POCUS}")
def test_real_pocus_clips_pack_and_validate(tmp_path, capsys):
    src, out = _pocus_subset(tmp_path / "raw"), tmp_path / "pocus"
    code = main(["pack", "--layout", "pocus", "--src", str(src), "--out", str(out), "--size", "32",
                 "--no-images", "--workers", "2", "--shard-frames", "300", "--folds", "2", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    m = Manifest.load(out)
    clips = [p for p in (src / "videos").rglob("*") if p.is_file()]
    skipped = m.provenance["ingest_skipped"] + m.provenance["pack_skipped"]
    assert len(m.provenance["ingest_skipped"]) >= 2 and m.n_videos + len(m.provenance["ingest_skipped"]) == len(clips)
    assert all(s["reason"] and s["path"] in printed for s in skipped)   # every skip reported
    assert (m.videos["n_frames"] > 0).sum() == m.n_videos - len(m.provenance["pack_skipped"])
    assert {Path(s).suffix for s in m.videos["source"]} >= {".mp4", ".avi", ".mpeg", ".mov", ".gif"}
    assert len(m.shards["name"]) >= 2 and main(["validate", str(out)]) == 0
