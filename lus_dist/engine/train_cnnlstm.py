"""CNN-LSTM video classifier (Barros et al. 2021) on fixed-length clips: one loop.

Each item is one video's clip (`clip_len` frames, uniform over the video as the paper, or
a random window). Validation reports Barros et al.'s columns (accuracy, per-class
sensitivity/specificity, COVID-vs-rest accuracy); the best model is the most accurate.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hpc import REQUEUE_EXIT_CODE, PreemptionFlag
from lus_dist.metrics import video_metrics
from lus_dist.models import CNNLSTM, CNNLSTMConfig as ModelCfg
from lus_dist.shards.format import VIDEO_CLASSES

from . import common as C
from .checkpoint import load_best, save_best
from .config import CNNLSTMConfig
from .logging import RunLogger

BEST_METRIC = "accuracy"


@torch.no_grad()
def evaluate(fit: C.Fit, ds, cfg: CNNLSTMConfig, session: C.Session) -> dict[str, np.ndarray]:
    net = fit.net      # the bare module: no collective in forward, unequal blocks are safe
    net.eval()
    out: dict[str, list] = {"probs": [], "label": [], "video": []}
    for batch in C.eval_loader(ds, cfg, session.world):
        with fit.autocast():
            logits = net(batch["frames"].to(session.device, fit.input_dtype()))
        out["probs"].append(torch.softmax(logits.float(), 1).cpu().numpy())
        out["label"].append(batch["label"].numpy())
        out["video"].append(batch["video"].numpy())
    net.train()
    k = len(VIDEO_CLASSES)
    return C.gather({n: np.concatenate(v) if v else np.zeros((0, k) if n == "probs" else 0)
                     for n, v in out.items()})


def scores(pred: dict[str, np.ndarray]) -> dict[str, float]:
    known = pred["label"] >= 0
    return video_metrics(pred["label"][known], pred["probs"][known], VIDEO_CLASSES)


def write_video_predictions(path: Path, pred: dict[str, np.ndarray], ds) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = ds.manifest.videos["video_id"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "label", *[f"prob_{c}" for c in VIDEO_CLASSES]])
        for v, y, p in zip(pred["video"], pred["label"], pred["probs"]):
            w.writerow([ids[v], int(y), *map(float, p)])


def run(cfg: CNNLSTMConfig, run_dir: Path, resume: str | None = None) -> int:
    t_start = time.time()
    session = C.start(cfg, run_dir)
    world = session.world
    clip = {"mode": "clip", "clip_len": cfg.data.clip_len, "clip_sampling": cfg.data.clip_sampling,
            "seed": cfg.seed}
    train_ds = C.open_split(cfg, cfg.data.train_split, **clip)
    val_split = cfg.data.val_split or cfg.data.test_split
    val_ds = C.open_split(cfg, val_split, **{**clip, "clip_sampling": "uniform"})
    channels = train_ds[0]["frames"].shape[1]
    model = CNNLSTM(ModelCfg(**{**cfg.model.kwargs, "in_channels": channels,
                                "seq_len": cfg.data.clip_len, "num_classes": len(VIDEO_CLASSES)}))
    C.seed_rank(cfg.seed, world.rank)
    fit = C.build_fit(model, cfg, session)
    loader, sampler = C.train_loader(train_ds, train_ds.labels, cfg, world)
    n_steps = C.steps_per_epoch(loader, cfg)
    ckpt = C.checkpointer(cfg, session)
    progress, resumed = C.resume(ckpt, fit, sampler, resume)
    log = RunLogger(run_dir, world.rank, cfg.logging, purge_step=progress.global_step or None)
    log.info(f"CNN-LSTM {model.cfg.encoder}: {len(train_ds)} train / {len(val_ds)} {val_split} clips "
             f"of {cfg.data.clip_len}, {world.world_size} rank(s), {n_steps} steps/epoch"
             + (f", resumed from {resumed.name}" if resumed else ""))

    def loss_fn(frames, label):
        return F.cross_entropy(fit.model(frames), label), {}

    samples, t_train, val = 0, time.time(), {}
    with PreemptionFlag() as preempt:
        for epoch in range(progress.epoch, cfg.train.epochs):
            fit.model.train()
            micro = progress.step_in_epoch * cfg.optim.grad_accum
            batches = C.epoch_batches(loader, sampler, epoch, cfg.seed, world.rank)
            for batch in log.progress(batches, n_steps * cfg.optim.grad_accum - micro, f"epoch {epoch}"):
                if progress.step_in_epoch >= n_steps:
                    break
                b = C.to_device(batch, session.device)
                frames = b["frames"].to(fit.input_dtype())
                stepped, loss, _ = C.micro_step(fit, micro, lambda: loss_fn(frames, b["label"]))
                micro += 1
                samples += len(frames)
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
            val = scores(evaluate(fit, val_ds, cfg, session))
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            if val[BEST_METRIC] > progress.best_metric:
                progress.best_metric, progress.best_epoch = val[BEST_METRIC], epoch
                save_best(fit.model, run_dir, world.rank)
            log.epoch(epoch, progress.global_step, {f"val_{k}": val[k] for k in
                                                    ("accuracy", "weighted_f1", "covid_recall")})
            C.save(ckpt, fit, sampler, progress, cfg)
            if preempt.should_stop():
                return C.finish(log, REQUEUE_EXIT_CODE)
    train_s = time.time() - t_train
    digests = C.all_digests(fit.model)

    load_best(fit.model, run_dir)
    test_ds = val_ds if cfg.data.test_split == val_split else \
        C.open_split(cfg, cfg.data.test_split, **{**clip, "clip_sampling": "uniform"})
    pred = evaluate(fit, test_ds, cfg, session)
    test = scores(pred)
    if world.rank == 0:
        write_video_predictions(run_dir / "predictions" / f"{cfg.data.test_split}_videos.csv",
                                pred, test_ds)
        C.write_json(run_dir / "summary.json", {
            "family": "cnnlstm", "name": cfg.name, "encoder": model.cfg.encoder,
            "epochs": cfg.train.epochs, "global_step": progress.global_step,
            "best_epoch": progress.best_epoch, f"best_{val_split}_{BEST_METRIC}": progress.best_metric,
            "best_selected_on": val_split, "last_epoch_val": val, "test": test,
            "param_digests": digests,
            "world_size": world.world_size, "backend": cfg.dist.backend, "train_seconds": train_s,
            "train_samples_per_s": samples * world.world_size / max(train_s, 1e-9),
            "wall_seconds": time.time() - t_start})
    log.info(f"done: test {BEST_METRIC}={test[BEST_METRIC]:.4f}")
    return C.finish(log)
