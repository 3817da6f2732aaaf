"""How the suite shares out over xdist workers: the pure grouping, and a real two-worker run
in which the tests of one costly fixture, spread over two files, stay on one worker."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from worker_groups import group_of, longest_first

TESTS = Path(__file__).resolve().parent


def test_a_costly_fixture_names_the_group_else_the_module():
    assert group_of("tests/a.py", ["tmp_path", "regstn_run"]) == "phantom-runs"
    assert group_of("tests/b.py", ["seg_run"]) == group_of("tests/c.py", ["phantom"])
    assert group_of("tests/d.py", ["slurm2", "phantom"]) == "phantom-runs"   # the first listed
    assert group_of("tests/e.py", ["tmp_path"]) == "tests/e.py"


def test_groups_with_a_slow_test_start_first_in_collection_order():
    assert longest_first(["a", "b", "a", "c", "d"], slow={"c", "a"}) == ["a", "c", "b", "d"]


SHARED = '''
import os, pytest
@pytest.fixture(scope="session")
def phantom():
    return os.environ["PYTEST_XDIST_WORKER"]
'''


def test_tests_of_one_costly_fixture_run_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from worker_groups import pytest_collection_modifyitems  # noqa: F401\n" + SHARED)
    for name in ("a", "b"):
        (tmp_path / f"test_{name}.py").write_text(
            "import time\n"
            + "".join(f"def test_{name}{k}(phantom):\n    time.sleep(0.2)\n" for k in range(3))
            + "".join(f"def test_{name}_free{k}():\n    time.sleep(0.2)\n" for k in range(3)))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "xdist", "-p", "no:cacheprovider",
                           "-n", "2", "--dist", "loadgroup", "-v", "--rootdir", str(tmp_path),
                           "-c", os.devnull, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ran = dict((test, worker) for worker, test in
               re.findall(r"\[(gw\d)\] .*?PASSED \S*::(test_\w+)", proc.stdout))
    assert len(ran) == 12, proc.stdout[-3000:]
    shared = {ran[f"test_{n}{k}"] for n in "ab" for k in range(3)}
    assert len(shared) == 1, ran             # one worker made the fixture, and ran its tests
    assert len(set(ran.values())) == 2, ran  # the other tests kept the second worker busy
