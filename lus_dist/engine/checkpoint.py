"""Atomic, resumable checkpoints for DDP and DeepSpeed runs.

Layout: `checkpoints/step-000000123/` holds `main.pt` (rank 0: model, optimizer, scheduler,
scaler, progress, config, code version) or DeepSpeed's own files, plus `rank-R.pt` per rank
(every RNG and the sampler position), and `COMMIT` written last. A checkpoint is written
into `.tmp-step-...` and renamed only after every rank finished, so a job killed mid-save
leaves a torn temp dir that `--resume auto` ignores; the previous K-1 stay valid.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STEP_RE = re.compile(r"^step-(\d{9})$")
COMMIT = "COMMIT"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the path and the reason."""


@dataclass
class Progress:
    """Where training stands: resume starts at (epoch, step_in_epoch)."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = -1


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:09d}"


def prune_plan(names: list[str], keep: int) -> list[str]:
    """Committed checkpoint names to delete so that the newest `keep` remain."""
    steps = sorted((n for n in names if STEP_RE.match(n)), key=lambda n: int(STEP_RE.match(n)[1]))
    return steps[:-keep] if keep > 0 else steps


def is_committed(path: Path) -> bool:
    """A checkpoint counts only if its COMMIT marker parses and names files that exist."""
    marker = path / COMMIT
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all((path / f).exists() for f in info.get("files", []))


def committed(ckpt_dir: Path) -> list[Path]:
    """Valid checkpoints, oldest first (torn or temp dirs are skipped)."""
    if not ckpt_dir.is_dir():
        return []
    out = [p for p in ckpt_dir.iterdir() if STEP_RE.match(p.name) and is_committed(p)]
    return sorted(out, key=lambda p: int(STEP_RE.match(p.name)[1]))


def find_resume(ckpt_dir: Path, resume: str | None) -> Path | None:
    """`auto`: newest valid checkpoint or None; a path: that checkpoint, which must be valid."""
    if not resume:
        return None
    if resume == "auto":
        found = committed(ckpt_dir)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_dir() and not (path / COMMIT).exists() and committed(path):
        path = committed(path)[-1]          # a checkpoints/ dir was given
    if not is_committed(path):
        raise CheckpointError(f"{path}: not a committed checkpoint (missing or torn {COMMIT} marker)")
    return path


def code_version() -> str:
    """git describe of the source tree if it is a checkout, else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return "lus-dist " + version("lus-dist")
    except PackageNotFoundError:
        return "unknown"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


class Checkpointer:
    """Saves and restores one run's state; every rank calls save/load collectively."""

    def __init__(self, ckpt_dir: Path, rank: int, world_size: int, keep: int = 2):
        self.dir, self.rank, self.world_size, self.keep = Path(ckpt_dir), rank, world_size, keep
        self.version = code_version() if rank == 0 else ""

    def save(self, progress: Progress, *, model, optimizer, scheduler, scaler=None,
             sampler_state: dict | None = None, config: dict | None = None,
             ds_engine=None) -> Path:
        name = checkpoint_name(progress.global_step)
        tmp, final = self.dir / f".tmp-{name}", self.dir / name
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        main = {"progress": asdict(progress), "config": config, "code_version": self.version,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None}
        files = [f"rank-{r}.pt" for r in range(self.world_size)]
        if ds_engine is not None:
            ds_engine.save_checkpoint(str(tmp), tag="ds", client_state={"lus": main})
            files.append("ds")
        elif self.rank == 0:
            main.update(model=unwrap(model).state_dict(), optimizer=optimizer.state_dict())
            torch.save(main, tmp / "main.pt")
        if ds_engine is None:
            files.append("main.pt")
        torch.save({"rng": rng_state(), "sampler": sampler_state}, tmp / f"rank-{self.rank}.pt")
        _barrier()
        if self.rank == 0:
            _fsync_write(tmp / COMMIT, json.dumps({"global_step": progress.global_step,
                                                   "world_size": self.world_size,
                                                   "code_version": self.version, "files": files}))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in prune_plan([p.name for p in committed(self.dir)], self.keep):
                shutil.rmtree(self.dir / old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: Path, *, model, optimizer, scheduler, scaler=None,
             ds_engine=None) -> tuple[Progress, dict | None, dict]:
        """Restore in place; returns (progress, this rank's sampler state, main payload)."""
        path = Path(path)
        info = json.loads((path / COMMIT).read_text())
        if info["world_size"] != self.world_size:
            raise CheckpointError(
                f"{path}: saved with world size {info['world_size']}, now {self.world_size}; "
                "exact resume needs the same number of ranks (start a new run from its weights)")
        if ds_engine is not None:
            _, client = ds_engine.load_checkpoint(str(path), tag="ds")
            if client is None:
                raise CheckpointError(f"{path}: DeepSpeed could not load its checkpoint")
            main = client["lus"]
        else:
            main = torch.load(path / "main.pt", map_location="cpu", weights_only=False)
            unwrap(model).load_state_dict(main["model"])
            optimizer.load_state_dict(main["optimizer"])
        if scheduler is not None and main.get("scheduler") is not None:
            scheduler.load_state_dict(main["scheduler"])
        if scaler is not None and main.get("scaler") is not None:
            scaler.load_state_dict(main["scaler"])
        mine = torch.load(path / f"rank-{self.rank}.pt", map_location="cpu", weights_only=False)
        set_rng_state(mine["rng"])
        return Progress(**main["progress"]), mine["sampler"], main


def save_best(model, run_dir: Path, rank: int) -> None:
    """The best-so-far weights (rank 0; ZeRO <= 2 keeps full weights on every rank)."""
    if rank == 0:
        tmp = Path(run_dir) / "best.pt.tmp"
        torch.save(unwrap(model).state_dict(), tmp)
        os.replace(tmp, Path(run_dir) / "best.pt")
    _barrier()


def load_best(model, run_dir: Path) -> bool:
    """Load best.pt into the (wrapped) model on every rank; False if there is none."""
    path = Path(run_dir) / "best.pt"
    _barrier()
    if not path.is_file():
        return False
    unwrap(model).load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return True
