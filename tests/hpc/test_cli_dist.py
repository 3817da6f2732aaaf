"""`lus cluster` argument handling and backend selection (no daemons, no process group)."""
from __future__ import annotations

import pytest

from hpc.cli import main, parser
from hpc.dist import init_distributed, resolve_backend
from hpc.world import World, WorldError


def test_cluster_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "lus cluster up --nodes 2 --dir" in out and "lus cluster down" in out


def test_status_of_a_dir_without_cluster(tmp_path, capsys):
    assert main(["status", "--dir", str(tmp_path)]) == 0
    assert "no local cluster running" in capsys.readouterr().out


def test_run_needs_a_command_and_a_cluster(tmp_path, capsys):
    assert main(["run", "--dir", str(tmp_path)]) == 2
    assert main(["run", "--dir", str(tmp_path), "--", "sinfo"]) == 1
    assert "no local cluster is running" in capsys.readouterr().err


def test_bad_node_count_is_rejected():
    with pytest.raises(SystemExit):
        parser().parse_args(["up", "--nodes", "9"])


WORLD2 = World(0, 0, 2, 2, 0, 1, "127.0.0.1", 29500, "torchrun")


def test_backend_resolution_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert resolve_backend(WORLD2) == "gloo" and resolve_backend(WORLD2, "gloo") == "gloo"
    with pytest.raises(WorldError, match="needs a CUDA device"):
        resolve_backend(WORLD2, "nccl")
    with pytest.raises(WorldError, match="expected auto"):
        resolve_backend(WORLD2, "mpi")


def test_timeout_must_be_positive():
    with pytest.raises(WorldError, match="timeout_s"):
        init_distributed(WORLD2, timeout_s=0)
