"""Fixtures shared across test folders."""
from __future__ import annotations

import os

import pytest
from suite_budget import (pytest_addoption, pytest_runtest_logreport,  # noqa: F401 (hooks)
                          pytest_sessionfinish, pytest_sessionstart)
from worker_groups import pytest_collection_modifyitems  # noqa: F401 (hook)


@pytest.fixture(scope="module")
def slurm2(tmp_path_factory):
    """A running two-node local Slurm cluster (node1, node2) for the module, always stopped
    afterwards; skipped with the reason where one cannot run (not root, no packages)."""
    from hpc.local_slurm import LocalSlurmCluster, SlurmUnavailable

    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (namespaces, munge, slurmd)")
    try:
        cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2).__enter__()
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.down()
