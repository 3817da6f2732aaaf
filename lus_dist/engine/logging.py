"""Rank-0 run logging: metrics.csv, TensorBoard, and progress a person (or a Slurm log) can read.

metrics.csv is tidy (`kind,epoch,global_step,name,value,time`) so a family can log any
metric without a header migration. A resumed run continues its own files: the rows (and
TensorBoard events) after the step it resumed from are dropped, since it logs those steps
again, so the files read as one uninterrupted run.
Ranks other than 0 get a logger whose methods do nothing, so loops never branch on rank.
"""
from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from .config import LoggingConfig

CSV_FIELDS = ("kind", "epoch", "global_step", "name", "value", "time")


def use_tqdm(mode: str, stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    if mode == "auto":
        return bool(getattr(stream, "isatty", lambda: False)())
    return mode == "tqdm"


def format_metrics(metrics: dict[str, float]) -> str:
    """`loss=0.4123 f1=0.8000`: short, fixed precision, stable key order."""
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


class RunLogger:
    def __init__(self, run_dir: Path, rank: int, cfg: LoggingConfig, resumed_at: int | None = None):
        self.active = rank == 0
        self.cfg = cfg
        self.t0 = time.time()
        self._tb = None
        if not self.active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.csv"
        if resumed_at is not None and path.exists():
            keep_rows_through(path, resumed_at)
        new = not path.exists() or path.stat().st_size == 0
        self._fh = open(path, "a", newline="")
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(CSV_FIELDS)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=None if resumed_at is None
                                     else resumed_at + 1)

    def _write(self, kind: str, epoch: int, step: int, metrics: dict[str, float]) -> None:
        now = round(time.time() - self.t0, 3)
        for name, value in metrics.items():
            value = float(value)
            self._csv.writerow((kind, epoch, step, name, value, now))
            if self._tb is not None and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{name}", value, step)
        self._fh.flush()

    def wants_step(self, global_step: int) -> bool:
        """Whether `step` would write: the loop reads its losses off the device only then."""
        return self.active and global_step % max(1, self.cfg.every_steps) == 0

    def step(self, epoch: int, global_step: int, metrics: dict[str, float]) -> None:
        """Per optimizer step; written every `logging.every_steps` steps."""
        if self.wants_step(global_step):
            self._write("step", epoch, global_step, metrics)

    def epoch(self, epoch: int, global_step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self._write("epoch", epoch, global_step, metrics)
        self.info(f"epoch {epoch} step {global_step}: {format_metrics(metrics)}")

    def info(self, msg: str) -> None:
        if self.active:
            print(f"[{time.time() - self.t0:7.1f}s] {msg}", flush=True)

    def progress(self, it: Iterable, total: int, desc: str) -> Iterator:
        """tqdm on a terminal; otherwise a plain line every `every_steps` items (Slurm logs)."""
        if not self.active:
            yield from it
            return
        if use_tqdm(self.cfg.progress):
            yield from _tqdm(it, total, desc)
            return
        every = max(1, self.cfg.every_steps)
        for i, item in enumerate(it, 1):
            yield item
            if i % every == 0 or i == total:
                self.info(f"{desc}: {i}/{total}")

    def close(self) -> None:
        if self.active:
            self._fh.close()
            if self._tb is not None:
                self._tb.close()


def _tqdm(it: Iterable, total: int, desc: str) -> Iterator:
    from tqdm import tqdm
    yield from tqdm(it, total=total, desc=desc, dynamic_ncols=True, leave=False)


def timed_progress(it: Iterable, total: int, desc: str, mode: str = "auto",
                   every_s: float = 30.0) -> Iterator:
    """Progress of a long step outside the epochs (e.g. caching features): tqdm on a
    terminal; otherwise `desc: i/total` at most every `every_s` seconds and at the end."""
    if use_tqdm(mode):
        yield from _tqdm(it, total, desc)
        return
    last = time.monotonic()
    for i, item in enumerate(it, 1):
        yield item
        if i == total or time.monotonic() - last >= every_s:
            last = time.monotonic()
            print(f"{desc}: {i}/{total}", flush=True)


def keep_rows_through(path: Path, global_step: int) -> None:
    """Drop the rows of metrics.csv logged after `global_step` (atomically: a rank killed
    mid-rewrite leaves the old file)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    kept = rows[:1] + [r for r in rows[1:] if len(r) == len(CSV_FIELDS) and r[2].isdigit()
                       and int(r[2]) <= global_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a metrics.csv, last row winning per (kind, global_step, name) after resumes."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    latest = {(r["kind"], r["global_step"], r["name"]): r for r in rows}
    return list(latest.values())
