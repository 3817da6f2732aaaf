"""The one training loop: every model family runs `Trainer.train()`.

start -> the family's data and model -> DDP/DeepSpeed -> resume -> for each epoch: micro-
batches (accumulation, the schedule, logging, the preemption agreement and periodic
checkpoints at step boundaries) -> validate, keep the best -> checkpoint; finally the best
model's scores and exports per split, and summary.json. The family plug-in (family.py)
supplies only what differs; extension points arrive as `RunHooks`, never patched globals.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from hpc import REQUEUE_EXIT_CODE, PreemptionFlag, destroy_distributed
from lus_dist.io.config import to_dict

from .cadence import StopCadence
from .checkpoint import (CHECKPOINT_DIR, Checkpointer, Progress, RNGState, find_resume, load_best,
                         save_best)
from .data import (describe, epoch_batches, loader_workers_note, selection, steps_per_epoch,
                   to_device, train_loader, usable_cpus)
from .family import Family
from .fit import all_digests, build_fit, sync_buffers
from .logging import RunLogger
from .results import write_json
from .session import seed_rank, start


@dataclass
class RunHooks:
    """What a caller (lus tune, a notebook) plugs into a run.

    on_epoch_end(epoch, metrics) runs on every rank after validation with the logged
    validation metrics; it may raise to end the run (Ray stops a trial that way).
    stop_flag() makes the context manager whose should_stop() the ranks agree on; the
    default installs SIGUSR1/SIGTERM handlers (Slurm preemption)."""
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None
    stop_flag: Callable[[], Any] = PreemptionFlag


class SamplerPosition:
    """The sampler as checkpoint state, at what the loop consumed (the loader's workers may
    have prefetched further)."""

    def __init__(self, sampler, consumed: int = 0) -> None:
        self.sampler, self.consumed = sampler, consumed

    def state_dict(self) -> dict:
        return self.sampler.state_dict(consumed=self.consumed)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def run(family: Family, run_dir: Path, resume: str | None = None,
        hooks: RunHooks | None = None) -> int:
    """Train `family` (holding its config) in `run_dir`; 0 done, REQUEUE_EXIT_CODE preempted."""
    return Trainer(family, Path(run_dir), resume, hooks or RunHooks()).train()


class Trainer:
    def __init__(self, family: Family, run_dir: Path, resume: str | None, hooks: RunHooks):
        self.t_start = time.time()
        self.fam, self.cfg, self.run_dir, self.hooks = family, family.cfg, run_dir, hooks
        cfg = self.cfg
        self.session = start(cfg, run_dir, resume)
        world = self.session.world
        self.splits = family.build_data(self.session)
        model = family.build_model(self.splits)
        seed_rank(cfg.seed, world.rank)
        self.loader, self.sampler = train_loader(self.splits.train, self.splits.balance_labels,
                                                 cfg, world, self.session.device)
        self.steps = steps_per_epoch(self.loader, cfg)
        self.fit = build_fit(model, cfg, self.session, self.steps)
        self.ckpt = Checkpointer(run_dir / CHECKPOINT_DIR, world.rank, world.world_size,
                                 cfg.checkpoint.keep)
        self.progress, resumed = self.restore(resume)
        self.log = RunLogger(run_dir, world.rank, cfg.logging,
                             resumed_at=self.progress.global_step if resume else None)
        self.log.info(f"{family.name} {cfg.model.name}: {self.splits.describe}, "
                      f"{world.world_size} rank(s) on {self.session.device}, {self.steps} "
                      f"steps/epoch" + (f", resumed from {resumed.name}" if resumed else ""))
        note = loader_workers_note(cfg.data.num_workers, usable_cpus())
        if note:
            self.log.info(note)
        self.samples, self.last_loss, self.last_val = 0, None, {}
        self.stop_cadence = StopCadence(cfg.train.stop_check_every, cfg.train.stop_check_s)

    # ------------------------------------------------------------ the loop
    def train(self) -> int:
        cfg, p = self.cfg, self.progress
        t_train = time.time()
        with self.hooks.stop_flag() as stop:
            for epoch in range(p.epoch, cfg.train.epochs):
                if not self.train_epoch(epoch, stop):
                    return self.close(REQUEUE_EXIT_CODE, f"preempted at step {p.global_step}: "
                                      f"checkpoint saved, exit {REQUEUE_EXIT_CODE} to be requeued")
                self.step_schedule("epoch")
                self.validate(epoch)
                self.save()
                if stop.should_stop():
                    return self.close(REQUEUE_EXIT_CODE, f"preempted after epoch {epoch}: "
                                      f"checkpoint saved, exit {REQUEUE_EXIT_CODE}")
        self.finish(time.time() - t_train)
        return self.close(0)

    def train_epoch(self, epoch: int, stop) -> bool:
        """The epoch's remaining optimizer steps; False if the ranks agreed to stop."""
        cfg, p = self.cfg, self.progress
        accum = cfg.optim.grad_accum
        self.fit.model.train()
        micro = p.step_in_epoch * accum
        batches = epoch_batches(self.loader, self.sampler, epoch, cfg.seed, self.session.world.rank)
        for batch in self.log.progress(batches, self.steps * accum - micro, f"epoch {epoch}"):
            if p.step_in_epoch >= self.steps:
                break
            stepped = self.micro_step(batch, micro)
            micro += 1
            if not stepped:
                continue
            p.step_in_epoch += 1
            p.global_step += 1
            self.log_step(epoch)
            self.step_schedule("step")
            if self.at_step_boundary(stop):
                return False
        return True

    def micro_step(self, batch: dict, micro: int) -> bool:
        """Forward (autocast) + backward of one micro-batch; True when the optimizer stepped."""
        fit, key = self.fit, self.fam.input_key
        b = to_device(batch, self.session.device, self.cfg.model.channels_last)
        b[key] = b[key].to(fit.input_dtype())
        with fit.sync_context(micro):
            with fit.autocast():
                loss, parts = self.fam.loss(fit.model, b)
            stepped = fit.backward(loss, micro)
        self.samples += len(b[key])
        self.last_loss = (loss.detach(), parts)   # read on the host only when logged
        return stepped

    def step_schedule(self, interval: str) -> None:
        if self.cfg.schedule.interval == interval:
            self.fit.scheduler.step()

    def log_step(self, epoch: int) -> None:
        step = self.progress.global_step
        if self.log.wants_step(step):
            loss, parts = self.last_loss
            self.log.step(epoch, step, {"loss": float(loss), **{k: float(v) for k, v in parts.items()},
                                        "lr": self.fit.lr})

    def at_step_boundary(self, stop) -> bool:
        """Agree on preemption (at the StopCadence) and checkpoint if due."""
        p, cfg = self.progress, self.cfg
        halt = self.stop_cadence.due(p.global_step) and stop.should_stop()
        every = cfg.checkpoint.every_steps
        if halt or (every and p.global_step % every == 0):
            self.save()
        return halt

    def validate(self, epoch: int) -> None:
        """Score the validation split, keep the best weights, log, and call the hooks."""
        fam, p, world = self.fam, self.progress, self.session.world
        sync_buffers(self.fit)
        self.last_val = val = fam.scores(fam.evaluate(self.fit, self.splits.val, self.session))
        p.epoch, p.step_in_epoch = epoch + 1, 0
        if val[fam.best_metric] > p.best_metric:
            p.best_metric, p.best_epoch = val[fam.best_metric], epoch
            save_best(self.fit.eval_net, self.run_dir, world.rank)
        metrics = fam.epoch_metrics(val)
        self.log.epoch(epoch, p.global_step, metrics)
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(epoch, metrics)
        if world.is_main:
            fam.after_epoch(self.fit.eval_net, self.splits, self.run_dir, epoch)

    # ------------------------------------------------------------ state
    def checkpoint_states(self, consumed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Named states for rank 0's file and for every rank's own file."""
        return ({**self.fit.states(), **self.fam.states()},
                {"rng": RNGState(), "sampler": SamplerPosition(self.sampler, consumed)})

    def save(self) -> Path:
        sync_buffers(self.fit)
        consumed = self.progress.step_in_epoch * self.cfg.optim.grad_accum * self.cfg.data.batch_size
        states, rank_states = self.checkpoint_states(consumed)
        return self.ckpt.save(self.progress, states, rank_states, config=to_dict(self.cfg),
                              ds_engine=self.fit.engine)

    def restore(self, spec: str | None) -> tuple[Progress, Path | None]:
        """The newest valid (or the given) checkpoint; a fresh Progress if there is none."""
        path = find_resume(self.ckpt.dir, spec)
        if path is None:
            return Progress(), None
        states, rank_states = self.checkpoint_states()
        progress, _ = self.ckpt.load(path, states, rank_states, ds_engine=self.fit.engine)
        return progress, path

    # ------------------------------------------------------------ the end
    def finish(self, train_s: float) -> None:
        """The best model's scores (and exports) per split, then summary.json."""
        fam, p, world = self.fam, self.progress, self.session.world
        digests = all_digests(self.fit.model)
        load_best(self.fit.eval_net, self.run_dir)
        results = {}
        for split in dict.fromkeys(fam.final_splits()):
            ds = self.splits.val if split == self.splits.val_split else fam.open_split(split)
            pred = fam.evaluate(self.fit, ds, self.session)
            results[split] = fam.scores(pred)
            if world.is_main:
                fam.export(split, ds, pred, self.run_dir, self.fit.eval_net)
        test = results[self.cfg.data.test_split]
        if world.is_main:
            write_json(self.run_dir / "summary.json", {
                "family": fam.name, "name": self.cfg.name, **fam.summary(),
                "epochs": self.cfg.train.epochs, "global_step": p.global_step,
                "best_epoch": p.best_epoch,
                f"best_{self.splits.val_split}_{fam.best_metric}": p.best_metric,
                "best_selected_on": self.splits.val_split, "data": self.data_plan(),
                "last_epoch_val": self.last_val,
                "test": test, "splits": results, "param_digests": digests,
                "world_size": world.world_size, "backend": self.cfg.dist.backend,
                **self.fit.describe(),
                "train_seconds": train_s,
                "train_samples_per_s": self.samples * world.world_size / max(train_s, 1e-9),
                "wall_seconds": time.time() - self.t_start})
        self.log.info(f"done: {self.cfg.data.test_split} {fam.best_metric}="
                      f"{test[fam.best_metric]:.4f}")

    def data_plan(self) -> dict[str, str]:
        """Which videos trained, picked the epoch and graded the run (for the report)."""
        d = self.cfg.data
        videos = self.splits.train.manifest.videos
        return {name: describe(selection(d, name, videos, self.cfg.seed))
                for name in dict.fromkeys([d.train_split, self.splits.val_split, d.test_split])}

    def close(self, code: int, message: str = "") -> int:
        if message:
            self.log.info(message)
        self.log.close()
        # the loader's persistent workers end here: torchrun ranks leave by os._exit
        # (hpc.exit_worker), which skips the finalizers that unlink their queues' named
        # semaphores (forkserver), and the resource tracker would warn of leaks
        self.loader = None
        gc.collect()
        self.fit.release()
        destroy_distributed()
        return code


__all__ = ["RunHooks", "Trainer", "run"]
