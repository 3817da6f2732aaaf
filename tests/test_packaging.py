"""`pip install .` gives a working `lus` with all five packages (built as a real wheel).

The wheel is installed with --no-deps into a scratch target so the test does not
re-install torch (2 min, 5 GB); dependencies resolve from the running venv.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_a_working_lus_command(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("lus_dist-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("lus", "lus_dist", "data_prep", "hpc", "tune"):
        assert f"{package}/__init__.py" in names, f"{package} missing from {wheel.name}"
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "lus = lus.cli:main" in entry_points
    for data in ("lus_dist/configs/demo_regstn.yaml", "lus_dist/configs/deepspeed/zero2.json",
                 "tune/spaces/regstn.yaml",   # lus demo, DeepSpeed and lus tune defaults
                 "lus_dist/configs/ingest/covid_blues.yaml"):   # a table-layout spec
        assert data in names, f"{data} missing from {wheel.name}"

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run([str(target / "bin" / "lus"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lus <command>" in proc.stdout
    # the installed copy, not the source tree, answered
    proc = subprocess.run([sys.executable, "-c", "import lus; print(lus.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().startswith(str(target))
