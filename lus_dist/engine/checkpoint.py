"""Atomic, resumable checkpoints for DDP and DeepSpeed runs.

Layout: `checkpoints/step-000000123/` holds `main.pt` (rank 0: every named state - model,
optimizer, scheduler, ... - progress, config, code version) or DeepSpeed's own files, plus
`rank-R.pt` per rank (every RNG and the sampler position), and `COMMIT` written last. A checkpoint is written
into `.tmp-step-...` and renamed only after every rank finished, so a job killed mid-save
leaves a torn temp dir that `--resume auto` ignores; the previous K-1 stay valid. A write
that fails (disk full) is an error naming the path on every rank, never a torn commit.
Loading accepts tensors and plain data only (`weights_only=True`).
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hpc.dist import barrier, collective_device, is_distributed

CHECKPOINT_DIR = "checkpoints"   # RUN_DIR/checkpoints/step-N: what `--resume` reads

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


class RNGState:
    """Every RNG of this process as a stateful object, in plain types (weights_only loads)."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                           "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _all_ok(ok: bool) -> bool:
    """True on every rank iff every rank succeeded (a failed write must not leave the
    others waiting at a barrier until the process-group timeout)."""
    if not is_distributed():
        return ok
    t = torch.tensor([1 if ok else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _load(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers: a checkpoint in a shared
    directory must not be able to run code. Our own payloads need nothing else, except
    MultiStepLR's milestones, a collections.Counter."""
    try:
        with torch.serialization.safe_globals([Counter]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused, it needs arbitrary code to load (only tensors "
                              f"and plain data are accepted): {str(exc).splitlines()[0]}") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint file ({exc})") from None


class Checkpointer:
    """Saves and restores one run's state; every rank calls save/load collectively.

    `states` are named objects with `state_dict()`/`load_state_dict()` (model, optimizer,
    scheduler, EMA, ...) saved by rank 0 into main.pt; `rank_states` (RNGs, the sampler
    position) are saved by every rank into rank-R.pt. New state is one more dict entry.
    Under DeepSpeed the engine saves the model and optimizer itself (`ds_engine`) and the
    named states travel in its client state.
    """

    def __init__(self, ckpt_dir: Path, rank: int, world_size: int, keep: int = 2):
        self.dir, self.rank, self.world_size, self.keep = Path(ckpt_dir), rank, world_size, keep
        self.version = code_version() if rank == 0 else ""
        self.error: BaseException | None = None

    def save(self, progress: Progress, states: dict[str, Any], rank_states: dict[str, Any],
             config: dict | None = None, ds_engine=None) -> Path:
        name = checkpoint_name(progress.global_step)
        tmp, final = self.dir / f".tmp-{name}", self.dir / name
        main = {"progress": asdict(progress), "config": config, "code_version": self.version,
                "states": {k: v.state_dict() for k, v in states.items()}}
        mine = {k: v.state_dict() for k, v in rank_states.items()}
        files = [f"rank-{r}.pt" for r in range(self.world_size)] + (
            ["ds"] if ds_engine is not None else ["main.pt"])
        if not self._write(tmp, main, mine, ds_engine):
            self._failed(tmp)
        if self.rank == 0:
            self._attempt(lambda: self._commit(tmp, final, progress.global_step, files))
        if not _all_ok(self.error is None):
            self._failed(tmp)
        return final

    def _commit(self, tmp: Path, final: Path, global_step: int, files: list[str]) -> None:
        """COMMIT last, then the rename: only a complete checkpoint ever carries the name."""
        _fsync_write(tmp / COMMIT, json.dumps({"global_step": global_step,
                                               "world_size": self.world_size,
                                               "code_version": self.version, "files": files}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in prune_plan([p.name for p in committed(self.dir)], self.keep):
            shutil.rmtree(self.dir / old, ignore_errors=True)

    def _write(self, tmp: Path, main: dict, mine: dict, ds_engine) -> bool:
        """Every rank's part into `tmp`; True on every rank iff all parts were written.
        The agreement after each phase doubles as its barrier, so a rank whose write failed
        runs the same collectives as the others."""
        self.error = None
        if self.rank == 0:
            self._attempt(lambda: (shutil.rmtree(tmp, ignore_errors=True), tmp.mkdir(parents=True)))
        if not _all_ok(self.error is None):
            return False
        if ds_engine is not None:      # collective inside; DeepSpeed writes its own files
            self._attempt(lambda: ds_engine.save_checkpoint(str(tmp), tag="ds",
                                                            client_state={"lus": main}))
        elif self.rank == 0:
            self._attempt(lambda: torch.save(main, tmp / "main.pt"))
        if self.error is None:
            self._attempt(lambda: torch.save(mine, tmp / f"rank-{self.rank}.pt"))
        return _all_ok(self.error is None)

    def _attempt(self, write) -> None:
        try:
            write()
        except (OSError, RuntimeError) as exc:   # torch.save reports ENOSPC as RuntimeError
            self.error = exc

    def _failed(self, tmp: Path) -> None:
        """A failed write (disk full, quota, permissions): every rank raises, the temp dir
        goes, and the committed checkpoints before it stay valid for --resume auto."""
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = committed(self.dir)
        exc = self.error
        why = (getattr(exc, "strerror", None) or str(exc).splitlines()[0]) if exc is not None \
            else "another rank failed to write its part"
        raise CheckpointError(f"{tmp}: checkpoint not written ({why}); "
                              + (f"{prev[-1]} is intact for --resume auto" if prev
                                 else "no earlier checkpoint exists"))

    def load(self, path: Path, states: dict[str, Any], rank_states: dict[str, Any],
             ds_engine=None) -> tuple[Progress, dict]:
        """Restore every named state in place; returns (progress, main payload)."""
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
            main = _load(path / "main.pt")
        if "states" not in main:
            raise CheckpointError(f"{path}: written by an older lus-dist (before named states); "
                                  "start a new run from its weights (best.pt)")
        _restore(main["states"], states, path / "main.pt")
        _restore(_load(path / f"rank-{self.rank}.pt"), rank_states, path / f"rank-{self.rank}.pt")
        return Progress(**main["progress"]), main


def _restore(saved: dict[str, Any], states: dict[str, Any], where: Path) -> None:
    missing = sorted(set(states) - set(saved))
    if missing:
        raise CheckpointError(f"{where}: has no state for {missing} (saved: {sorted(saved)}); "
                              "was it written by a different run configuration?")
    for name, obj in states.items():
        obj.load_state_dict(saved[name])


def save_best(model, run_dir: Path, rank: int) -> None:
    """The best-so-far weights (rank 0; ZeRO <= 2 keeps full weights on every rank)."""
    if rank == 0:
        tmp = Path(run_dir) / "best.pt.tmp"
        torch.save(unwrap(model).state_dict(), tmp)
        os.replace(tmp, Path(run_dir) / "best.pt")
    barrier()


def load_best(model, run_dir: Path) -> bool:
    """Load best.pt into the (wrapped) model on every rank; False if there is none."""
    path = Path(run_dir) / "best.pt"
    barrier()
    if not path.is_file():
        return False
    unwrap(model).load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return True
