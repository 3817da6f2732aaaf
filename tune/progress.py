"""What a sweep prints by default: one line per finished trial, and a progress line while
trials run long, instead of Ray's tables (`lus tune --verbose` shows those).

A Ray Tune callback in the sweep driver, so it sees every trial's reports as Ray does,
on any node, and a resumed sweep counts the trials it finished before.
"""
from __future__ import annotations

import math
import time
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

PROGRESS_EVERY_S = 60.0   # at most one progress line this often while trials run


class TrialLines(tune.Callback):
    """`lus tune: trial 3/8 <id> done, <metric>=0.8123 (1 report, 2.1 s); best 0.8501 (<id>)`."""

    def __init__(self, metric: str, mode: str, total: int, every_s: float = PROGRESS_EVERY_S):
        self.metric, self.mode, self.total, self.every_s = metric, mode, total, every_s
        self.best: tuple[float, str] | None = None
        self.stopped: set[str] = set()
        self.last_line = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get("done"):     # a report with `done` set: the scheduler stopped the trial
            self.stopped.add(trial.trial_id)
        if time.monotonic() - self.last_line < self.every_s:
            return
        running = sum(t.status == Trial.RUNNING for t in trials)
        self.say(f"{len(finished(trials))}/{self.total} trials finished, {running} running; "
                 f"trial {trial.trial_id} report {result.get('training_iteration', '?')}: "
                 f"{self.metric}={fmt(result.get(self.metric))}{self.best_text()}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and self.better(value):
            self.best = (float(value), trial.trial_id)
        how = "stopped early" if trial.trial_id in self.stopped else "done"
        reports = result.get("training_iteration", 0)
        self.say(f"{self.count(trials, trial)} {trial.trial_id} {how}, {self.metric}={fmt(value)} "
                 f"({reports} report{'s' * (reports != 1)}, {result.get('time_total_s', 0):.1f} s)"
                 f"{self.best_text()}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"{self.count(trials, trial)} {trial.trial_id} FAILED (listed at the end)")

    def count(self, trials: list, trial: Any) -> str:
        return f"trial {len(finished(trials) | {trial.trial_id})}/{self.total}"

    def better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def best_text(self) -> str:
        return f"; best {self.best[0]:.4g} ({self.best[1]})" if self.best else ""

    def say(self, text: str) -> None:
        self.last_line = time.monotonic()
        print(f"lus tune: {text}", flush=True)


def finished(trials: list) -> set[str]:
    return {t.trial_id for t in trials if t.status in (Trial.TERMINATED, Trial.ERROR)}


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "?"
