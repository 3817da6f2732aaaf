"""How the suite shares out across pytest-xdist workers (`make test` runs `-n N --dist
loadgroup`): a test runs on the worker that already holds what it reads, so nothing costly is
made twice, and the longest groups start first so that no worker is left with a long tail.

A test's group is the costly session fixture it uses (a trained phantom run, packed shards, a
Slurm cluster), else its module (a module's tests may share module fixtures and run in order).
Pure parts first; `pytest_collection_modifyitems` (imported by tests/conftest.py) applies them.
"""
from __future__ import annotations

from collections.abc import Iterable

import pytest

# Session fixtures that take minutes to make -> the group of every test that uses them.
SHARED_FIXTURES = {
    "phantom": "phantom-runs", "regstn_run": "phantom-runs", "seg_run": "phantom-runs",
    "cnnlstm_run": "phantom-runs",
    "engine_shards": "engine-shards",
    "hpc_phantom": "slurm-cluster", "slurm2": "slurm-cluster", "roy_local": "slurm-cluster",
    "pretrain_shards": "pretrain-shards",
}


def group_of(module: str, fixtures: Iterable[str]) -> str:
    """The first costly fixture's group (in SHARED_FIXTURES' order), else the module."""
    used = set(fixtures)
    for name, group in SHARED_FIXTURES.items():
        if name in used:
            return group
    return module


def longest_first(groups: list[str], slow: set[str]) -> list[str]:
    """Groups holding a slow test first (collection order kept within each half)."""
    unique = list(dict.fromkeys(groups))
    return [g for g in unique if g in slow] + [g for g in unique if g not in slow]


@pytest.hookimpl(tryfirst=True)      # before xdist reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        groups[item] = group_of(item.nodeid.split("::")[0], item.fixturenames)
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    slow = {groups[i] for i in items if i.get_closest_marker("slow")}
    rank = {g: k for k, g in enumerate(longest_first([groups[i] for i in items], slow))}
    items.sort(key=lambda i: rank[groups[i]])     # stable: order within a group is kept
