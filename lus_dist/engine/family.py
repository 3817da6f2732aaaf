"""The plug-in contract of a model family: what the shared loop (loop.py) cannot know.

A family says how to build its data and model, what one micro-batch's loss is, how to
evaluate and score a split, and what to export. The loop owns everything else: epochs,
accumulation, the schedule, logging, preemption, checkpoints, resume and summary.json.
Register a family in `lus_dist/engine/registry.py` (or, outside this package, with the
`lus_dist.families` entry-point group or `LUS_FAMILIES=name=module:Class`); the CLI,
`lus tune`, `lus eval` and the reports read that registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np
import torch

from .config import RunConfig
from .data import eval_loader
from .fit import Fit
from .session import Session


@dataclass
class Splits:
    """The datasets a run trains and selects on (ShardDataset-like: `shard_ids`, `manifest`)."""
    train: Any
    val: Any
    val_split: str                        # the name summary.json reports selection on
    balance_labels: np.ndarray | None     # class-balanced draw over these (None: uniform)
    describe: str = ""                    # one line for the log: what the run sees


class Family:
    """Subclass per model family; one instance per run, holding the run's config."""
    name: ClassVar[str]
    config_cls: ClassVar[type[RunConfig]]
    best_metric: ClassVar[str]                     # a key of scores(); higher is better
    logged_metrics: ClassVar[tuple[str, ...]] = ()  # validation scores logged each epoch
    title: ClassVar[str] = ""                      # for --help and the log
    ray_train: ClassVar[bool] = False              # tune: a trial is a Ray Train group
    input_key: ClassVar[str] = "image"             # the batch entry the model reads
    # `lus eval`: a classmethod (rep, runs, options) writing the family's paper-shaped
    # tables; None: the report's one table of each run's test scores
    report_section: ClassVar[Callable[..., None] | None] = None

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    # -- required
    def build_data(self, session: Session) -> Splits:
        raise NotImplementedError

    def build_model(self, splits: Splits) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """One micro-batch (already on the device, input in the engine's dtype)."""
        raise NotImplementedError

    def evaluate(self, fit: Fit, ds, session: Session) -> Any:
        """Predictions for a whole split, identical on every rank (a collective)."""
        raise NotImplementedError

    def scores(self, pred: Any) -> dict[str, float]:
        raise NotImplementedError

    # -- optional
    def open_split(self, split: str):
        """A split evaluated after training (test, predict_splits)."""
        raise NotImplementedError

    def final_splits(self) -> list[str]:
        return [self.cfg.data.test_split]

    def export(self, split: str, ds, pred: Any, run_dir: Path, net: torch.nn.Module) -> None:
        """Rank 0 writes a split's predictions after training (nothing by default); `net`
        is the model that scored them (best weights, EMA when on)."""

    def after_epoch(self, net: torch.nn.Module, splits: Splits, run_dir: Path, epoch: int) -> None:
        """Rank 0, after validation (pictures)."""

    def epoch_metrics(self, scores: Mapping[str, float]) -> dict[str, float]:
        keys = self.logged_metrics or (self.best_metric,)
        return {f"val_{k}": scores[k] for k in keys}

    def states(self) -> dict[str, Any]:
        """Extra named state the family keeps across a resume (an EMA of the weights, a
        teacher network): objects with state_dict/load_state_dict, checkpointed by rank 0."""
        return {}

    def summary(self) -> dict[str, Any]:
        return {"model": self.cfg.model.name}

    # -- helpers for evaluate()
    def eval_batches(self, ds, fit: Fit, session: Session, key: str | None = None
                     ) -> Iterator[tuple[torch.Tensor, dict]]:
        """This rank's block of `ds`: (model input `key` (default input_key) on the device
        in the engine's dtype, the batch as read)."""
        for batch in eval_loader(ds, self.cfg, session.world, session.device):
            x = batch[key or self.input_key].to(session.device, fit.input_dtype(), non_blocking=True)
            if self.cfg.model.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, batch
