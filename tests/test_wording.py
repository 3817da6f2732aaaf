"""The product speaks of itself: no tracker words in code, docs, scripts or configs (what
the experiment report prints: tests/evaluation/test_experiment.py). A target is written as what it is, not as where it was asked for; a reference
to an upstream project's tracker is written owner/repo#N."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACKER = re.compile(r"\b(issues?|tickets?|acceptance)\b", re.IGNORECASE)
TREES = ("lus", "lus_dist", "data_prep", "tune", "hpc", "tests", "benchmarks", "slurm", "docs", "configs")
SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".json", ".txt"}


def _texts():
    for name in ("README.md", "Makefile", "pyproject.toml"):
        if (ROOT / name).is_file():
            yield ROOT / name
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and path != Path(__file__).resolve() \
                    and "__pycache__" not in path.parts:
                yield path


def test_no_tracker_words_in_the_repository():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
             for p in _texts() for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if TRACKER.search(line)]
    assert not found, "tracker words (write what the target is instead):\n" + "\n".join(found)

