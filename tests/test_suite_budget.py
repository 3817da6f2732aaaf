"""The suite's time budget: the pure verdict, and the hooks in a real pytest run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from suite_budget import budget_verdict, is_whole_suite, slowest

TESTS = Path(__file__).resolve().parent


def test_verdict_names_the_slowest_tests_only_when_over_budget():
    durations = {"a::fast": 1.0, "b::slow": 30.0, "c::middle": 5.0}
    assert budget_verdict(100.0, 100.0, durations) is None
    verdict = budget_verdict(101.0, 100.0, durations, top=2)
    assert "101 s, over its budget of 100 s" in verdict
    assert verdict.index("b::slow") < verdict.index("c::middle") and "a::fast" not in verdict
    assert slowest(durations, 5)[0] == ("b::slow", 30.0)


def test_only_the_whole_suite_is_held_to_the_budget():
    assert is_whole_suite([], "", "")
    assert not is_whole_suite(["tests/test_cli.py"], "", "")
    assert not is_whole_suite([], "uninorm", "")
    assert not is_whole_suite([], "", "slow")


def _pytest(tmp_path: Path, budget: str, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sleepy.py").write_text(
        "import time\n\ndef test_sleepy():\n    time.sleep(1.5)\n\ndef test_quick():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "CI": ci, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "suite_budget", "-p",
                           "no:cacheprovider", "-o", f"suite_budget_s={budget}", "--rootdir",
                           str(tmp_path), "-c", os.devnull],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_run_over_budget_fails_naming_its_slowest_test(tmp_path):
    over = _pytest(tmp_path, "1", ci="true")
    assert over.returncode == 1, over.stdout
    assert "over its budget of 1 s" in over.stdout and "test_sleepy.py::test_sleepy" in over.stdout
    assert _pytest(tmp_path, "60", ci="true").returncode == 0
    assert _pytest(tmp_path, "1", ci="").returncode == 0, "outside CI the budget only informs"
