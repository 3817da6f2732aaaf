"""Segmentation of LUS markers (U-Net / U-Net++ / DeepLabV3+, Dice + CE): one loop.

Only frames with an annotated mask are read (`with_masks=True`). Validation sums one
pixel confusion matrix over the whole split (all ranks), so Dice is over the split, not
a mean of per-image scores; the best model is the one with the highest foreground Dice.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hpc import REQUEUE_EXIT_CODE, PreemptionFlag
from lus_dist.losses import dice_ce_loss
from lus_dist.metrics import dice_iou, segmentation_confusion
from lus_dist.models import build_seg_model
from lus_dist.shards.format import MASK_CLASSES

from . import common as C
from .checkpoint import load_best, save_best
from .config import SegConfig
from .logging import RunLogger

BEST_METRIC = "mean_fg_dice"


@torch.no_grad()
def evaluate(fit: C.Fit, ds, cfg: SegConfig, session: C.Session) -> dict[str, float]:
    """Per-class Dice and IoU over a whole split, plus their foreground means."""
    net = fit.net      # the bare module: no collective in forward, unequal blocks are safe
    net.eval()
    k = len(MASK_CLASSES)
    cm = torch.zeros(k, k, dtype=torch.int64, device=session.device)
    for batch in C.eval_loader(ds, cfg, session.world):
        x = batch["image"].to(session.device, fit.input_dtype())
        with fit.autocast():
            logits = net(x)
        cm += segmentation_confusion(logits.argmax(1), batch["mask"].to(session.device), k)
    net.train()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(cm)
    scores = dice_iou(cm, MASK_CLASSES)
    out = {f"{m}_{c}": v for m, per in scores.items() for c, v in per.items()}
    fg = MASK_CLASSES[1:]
    out["mean_fg_dice"] = float(np.nanmean([scores["dice"][c] for c in fg]))
    out["mean_fg_iou"] = float(np.nanmean([scores["iou"][c] for c in fg]))
    return out


def run(cfg: SegConfig, run_dir: Path, resume: str | None = None) -> int:
    t_start = time.time()
    session = C.start(cfg, run_dir)
    world = session.world
    train_ds = C.open_split(cfg, cfg.data.train_split, mode="frame", with_masks=True)
    val_split = cfg.data.val_split or cfg.data.test_split
    val_ds = C.open_split(cfg, val_split, mode="frame", with_masks=True)
    channels = train_ds[0]["image"].shape[0]
    model = build_seg_model(cfg.model.name, in_channels=channels, num_classes=len(MASK_CLASSES),
                            **cfg.model.kwargs)
    C.seed_rank(cfg.seed, world.rank)
    fit = C.build_fit(model, cfg, session)
    loader, sampler = C.train_loader(train_ds, None, cfg, world)
    n_steps = C.steps_per_epoch(loader, cfg)
    ckpt = C.checkpointer(cfg, session)
    progress, resumed = C.resume(ckpt, fit, sampler, resume)
    log = RunLogger(run_dir, world.rank, cfg.logging, purge_step=progress.global_step or None)
    log.info(f"segmentation {cfg.model.name}: {len(train_ds)} train / {len(val_ds)} {val_split} "
             f"masked frames, {world.world_size} rank(s) on {session.device}, {n_steps} steps/epoch"
             + (f", resumed from {resumed.name}" if resumed else ""))

    def loss_fn(x, mask):
        loss = dice_ce_loss(fit.model(x), mask, cfg.dice_weight, cfg.ce_weight)
        return loss, {}

    samples, t_train, val = 0, time.time(), {}
    with PreemptionFlag() as preempt:
        for epoch in range(progress.epoch, cfg.train.epochs):
            fit.model.train()
            micro = progress.step_in_epoch * cfg.optim.grad_accum
            batches = C.epoch_batches(loader, sampler, epoch, cfg.seed, world.rank)
            for batch in log.progress(batches, n_steps * cfg.optim.grad_accum - micro, f"epoch {epoch}"):
                if progress.step_in_epoch >= n_steps:
                    break
                b = C.to_device(batch, session.device, cfg.model.channels_last)
                x = b["image"].to(fit.input_dtype())
                stepped, loss, _ = C.micro_step(fit, micro, lambda: loss_fn(x, b["mask"]))
                micro += 1
                samples += len(x)
                if not stepped:
                    continue
                progress.step_in_epoch += 1
                progress.global_step += 1
                log.step(epoch, progress.global_step,
                         {"loss": loss.item(), "lr": fit.optimizer.param_groups[0]["lr"]})
                if C.after_step(ckpt, fit, sampler, progress, cfg, preempt):
                    log.info(f"preempted at step {progress.global_step}: exit {REQUEUE_EXIT_CODE}")
                    return C.finish(log, REQUEUE_EXIT_CODE)
            fit.scheduler.step()
            C.sync_buffers(fit)
            val = evaluate(fit, val_ds, cfg, session)
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            if val[BEST_METRIC] > progress.best_metric:
                progress.best_metric, progress.best_epoch = val[BEST_METRIC], epoch
                save_best(fit.model, run_dir, world.rank)
            log.epoch(epoch, progress.global_step, {f"val_{k}": v for k, v in val.items()
                                                    if k.startswith(("dice_", "mean_fg"))})
            C.save(ckpt, fit, sampler, progress, cfg)
            if preempt.should_stop():
                return C.finish(log, REQUEUE_EXIT_CODE)
    train_s = time.time() - t_train
    digests = C.all_digests(fit.model)

    load_best(fit.model, run_dir)
    test_ds = val_ds if cfg.data.test_split == val_split else \
        C.open_split(cfg, cfg.data.test_split, mode="frame", with_masks=True)
    test = evaluate(fit, test_ds, cfg, session)
    if world.rank == 0:
        C.write_json(run_dir / "summary.json", {
            "family": "seg", "name": cfg.name, "model": cfg.model.name,
            "epochs": cfg.train.epochs, "global_step": progress.global_step,
            "best_epoch": progress.best_epoch, f"best_{val_split}_{BEST_METRIC}": progress.best_metric,
            "best_selected_on": val_split, "last_epoch_val": val, "test": test,
            "param_digests": digests,
            "world_size": world.world_size, "backend": cfg.dist.backend, "train_seconds": train_s,
            "train_samples_per_s": samples * world.world_size / max(train_s, 1e-9),
            "wall_seconds": time.time() - t_start})
    log.info(f"done: test {BEST_METRIC}={test[BEST_METRIC]:.4f}")
    return C.finish(log)
