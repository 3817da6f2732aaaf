"""Reg-STN (Roy et al. 2020) and the Table 1 frame baselines: one loop, top to bottom.

start -> data -> model -> resume -> for each epoch: train steps (preemption check at each
step boundary) -> schedule -> validate (weighted F1) -> STN grid -> checkpoint -> finally the
best model's per-frame probabilities for the aggregator and summary.json.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hpc import REQUEUE_EXIT_CODE, PreemptionFlag
from lus_dist.losses import frame_loss
from lus_dist.metrics import frame_metrics
from lus_dist.models import build_frame_model, draw_boxes, stn_boxes

from . import common as C
from .checkpoint import load_best, save_best, unwrap
from .config import RegSTNConfig
from .logging import RunLogger

BEST_METRIC = "weighted_f1"


@torch.no_grad()
def evaluate(fit: C.Fit, ds, cfg: RegSTNConfig, session: C.Session) -> dict[str, np.ndarray]:
    """Per-frame softmax probabilities + ids for a whole split, gathered in dataset order."""
    net = fit.net      # the bare module: no collective in forward, unequal blocks are safe
    net.eval()
    out: dict[str, list] = {"probs": [], "score": [], "video": [], "frame": []}
    for batch in C.eval_loader(ds, cfg, session.world):
        x = batch["image"].to(session.device, fit.input_dtype())
        with fit.autocast():
            logits = net(x).logits
        out["probs"].append(torch.softmax(logits.float(), 1).cpu().numpy())
        for k in ("score", "video", "frame"):
            out[k].append(batch[k].numpy())
    net.train()
    k = len(cfg.frame_classes)
    arrays = {n: np.concatenate(v) if v else np.zeros((0, k) if n == "probs" else 0)
              for n, v in out.items()}
    return C.gather(arrays)


def stn_grid(model, ds, n: int, path: Path) -> None:
    """n frames spread over the split (so over videos), 2 rows, with both crop boxes."""
    picks = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
    x = torch.stack([ds[int(i)]["image"] for i in picks])
    boxes = stn_boxes(model, x.to(next(model.parameters()).device)).cpu()
    cols = (len(x) + 1) // 2
    c, h, w = x.shape[1:]
    canvas = torch.zeros(c, h * 2, w * cols)
    for i, frame in enumerate(x):
        r, q = divmod(i, cols)
        canvas[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = frame
        boxes[i] += torch.tensor([q * w, r * h, q * w, r * h])
    draw_boxes(canvas, boxes.reshape(-1, 4), path, upscale=max(1, 256 // h))


def scores(pred: dict[str, np.ndarray]) -> dict[str, float]:
    known = pred["score"] >= 0
    return frame_metrics(pred["score"][known], pred["probs"][known].argmax(1), pred["probs"].shape[1])


def run(cfg: RegSTNConfig, run_dir: Path, resume: str | None = None) -> int:
    t_start = time.time()
    session = C.start(cfg, run_dir)
    world = session.world
    train_ds = C.open_split(cfg, cfg.data.train_split, mode="frame")
    val_split = cfg.data.val_split or cfg.data.test_split
    val_ds = C.open_split(cfg, val_split, mode="frame")
    channels, height, width = train_ds[0]["image"].shape
    model = build_frame_model(cfg.model.name, in_channels=channels, num_classes=len(cfg.frame_classes),
                              image_size=(height, width), **cfg.model.kwargs)
    C.seed_rank(cfg.seed, world.rank)
    fit = C.build_fit(model, cfg, session)
    loader, sampler = C.train_loader(train_ds, train_ds.frame_scores, cfg, world)
    n_steps = C.steps_per_epoch(loader, cfg)
    ckpt = C.checkpointer(cfg, session)
    progress, resumed = C.resume(ckpt, fit, sampler, resume)
    log = RunLogger(run_dir, world.rank, cfg.logging, purge_step=progress.global_step or None)
    log.info(f"Reg-STN {cfg.model.name}: {len(train_ds)} train / {len(val_ds)} {val_split} frames, "
             f"{world.world_size} rank(s) on {session.device}, {n_steps} steps/epoch"
             + (f", resumed from {resumed.name}" if resumed else ""))

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
                stepped, loss, parts = C.micro_step(
                    fit, micro, lambda: frame_loss(fit.model(x), b["score"], cfg.loss))
                micro += 1
                samples += len(x)
                if not stepped:
                    continue
                progress.step_in_epoch += 1
                progress.global_step += 1
                log.step(epoch, progress.global_step,
                         {"loss": loss.item(), **parts, "lr": fit.optimizer.param_groups[0]["lr"]})
                if C.after_step(ckpt, fit, sampler, progress, cfg, preempt):
                    log.info(f"preempted at step {progress.global_step}: checkpoint saved, "
                             f"exit {REQUEUE_EXIT_CODE} to be requeued")
                    return C.finish(log, REQUEUE_EXIT_CODE)
            fit.scheduler.step()
            C.sync_buffers(fit)
            val = scores(evaluate(fit, val_ds, cfg, session))
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            if val[BEST_METRIC] > progress.best_metric:
                progress.best_metric, progress.best_epoch = val[BEST_METRIC], epoch
                save_best(fit.model, run_dir, world.rank)
            log.epoch(epoch, progress.global_step, {f"val_{k}": v for k, v in val.items()
                                                    if k in ("accuracy", BEST_METRIC)})
            if world.rank == 0 and cfg.viz_frames > 0 and hasattr(unwrap(fit.model), "transforms"):
                stn_grid(fit.model, val_ds, cfg.viz_frames, run_dir / "viz" / f"epoch-{epoch:03d}.png")
            C.save(ckpt, fit, sampler, progress, cfg)
            if preempt.should_stop():
                return C.finish(log, REQUEUE_EXIT_CODE)
    train_s = time.time() - t_train
    digests = C.all_digests(fit.model)

    load_best(fit.model, run_dir)
    results = {}
    for split in dict.fromkeys([*cfg.predict_splits, cfg.data.test_split]):
        ds = val_ds if split == val_split else C.open_split(cfg, split, mode="frame")
        pred = evaluate(fit, ds, cfg, session)
        results[split] = scores(pred)
        if split in cfg.predict_splits and world.rank == 0:
            C.write_frame_predictions(run_dir / "predictions" / f"{split}.h5", pred, ds, split,
                                      cfg.frame_classes)
    if world.rank == 0:
        C.write_json(run_dir / "summary.json", {
            "family": "regstn", "name": cfg.name, "model": cfg.model.name,
            "epochs": cfg.train.epochs, "global_step": progress.global_step,
            "best_epoch": progress.best_epoch, f"best_{val_split}_{BEST_METRIC}": progress.best_metric,
            "best_selected_on": val_split, "last_epoch_val": val,
            "test": results[cfg.data.test_split], "splits": results,
            "param_digests": digests, "world_size": world.world_size, "backend": cfg.dist.backend,
            "train_seconds": train_s,
            "train_samples_per_s": samples * world.world_size / max(train_s, 1e-9),
            "wall_seconds": time.time() - t_start})
    log.info(f"done: test {BEST_METRIC}={results[cfg.data.test_split][BEST_METRIC]:.4f}")
    return C.finish(log)
