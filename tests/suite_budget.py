"""The suite's time budget: a whole-suite run in CI fails, naming its slowest tests, once its
own wall time passes the budget set in pyproject.toml (`suite_budget_s`), so the suite cannot
creep back up unnoticed. Pure parts first; the hooks (imported by tests/conftest.py, or
loaded with `-p suite_budget`) feed them."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping

import pytest


def slowest(durations: Mapping[str, float], top: int) -> list[tuple[str, float]]:
    """The `top` longest tests, setup, call and teardown together, longest first."""
    return sorted(durations.items(), key=lambda item: (-item[1], item[0]))[:top]


def budget_verdict(wall_s: float, budget_s: float, durations: Mapping[str, float],
                   top: int = 15) -> str | None:
    """None within budget; else the lines to print: the overrun and the slowest tests."""
    if wall_s <= budget_s:
        return None
    lines = [f"the suite took {wall_s:.0f} s, over its budget of {budget_s:.0f} s "
             "(suite_budget_s in pyproject.toml); make these cheaper before raising it:"]
    lines += [f"  {seconds:7.1f} s  {test}" for test, seconds in slowest(durations, top)]
    return "\n".join(lines)


def is_whole_suite(args: Iterable[str], keyword: str, markers: str) -> bool:
    """Only a run of everything is held to the budget: a file, -k or -m picks a part."""
    return not list(args) and not keyword and not markers


# -- hooks ---------------------------------------------------------------------------------------
_durations: dict[str, float] = {}


def pytest_addoption(parser):
    parser.addini("suite_budget_s", "wall seconds a whole-suite run in CI may take", default="0")


def pytest_sessionstart(session):
    session.config.stash[_STARTED] = time.monotonic()


def pytest_runtest_logreport(report):
    """On the controller under xdist too: the workers' reports are replayed there."""
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    budget = float(config.getini("suite_budget_s"))
    if not os.environ.get("CI") or not budget or hasattr(config, "workerinput"):
        return
    opt = config.option
    if not is_whole_suite(opt.file_or_dir, opt.keyword, opt.markexpr):
        return
    verdict = budget_verdict(time.monotonic() - config.stash[_STARTED], budget, _durations)
    if verdict:
        config.get_terminal_writer().line("\n" + verdict, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STARTED = pytest.StashKey[float]()
