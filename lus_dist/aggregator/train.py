"""Training and evaluation of the uninorm aggregator under the authors' protocols.

Faithful to Roy et al.'s trainer: full-batch Adam (per-video losses summed, one step per
epoch), MultiStepLR at epochs 15/20/25, neutral elements clamped to [0, 1] after each step
unless normalize_neutral, early stop on the last epoch or the best training
accuracy/loss seen before a step. Three deliberate departures, documented in
`AggregatorConfig`: "train_loss" keeps the *lowest* loss (the authors' code kept the
highest), "kl" is KL(target || softmax(output)) (theirs fed raw outputs to KLDivLoss),
and the loss reads the outputs as logits times `logit_scale` (theirs: times 1).

Why the scale: a uninorm's value lies in [0, 1], and over tens of frames it saturates
near 0 or 1. Read as logits, such values cap softmax at e / (e + C - 1) (0.48 for four
classes), far below the SORD targets' 0.79-0.99, so a video predicted wrong with every
output near 0 costs log C (1.39) and one predicted right with its rivals near 1 about
1.2: the loss barely tells right from wrong, and on the phantom's frame scores the
authors' 30 Adam steps lowered it (11.4 -> 9.2) while training accuracy fell (0.89 ->
0.78). Scaled by 10, a one-hot output reaches softmax 0.9999, so a clear right video
costs ~0.1 against 1.39 for a wrong one: lowering the loss means deciding right. The
scale is a positive constant: the decision (argmax of the uninorm's values) and the
aggregator are unchanged. The loss stays discontinuous in the neutral elements (a frame
crossing e switches region), so a step can jump a cliff (9.0 -> 15.3 over 30 steps on
one phantom run): by default the parameters kept are those of the lowest training loss
seen before a step, the initial ones included.

All folds of a protocol train at once as one model with a leading folds axis: the folds'
parameters never interact (the loss is a sum over folds, Adam is elementwise), so this is
the same optimisation as one fold at a time, with no per-video or per-fold Python loop.
The result is a deterministic function of (config, data, protocol, k, seed).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lus_dist.aggregator.data import FramePredictions, VideoBatch, pad_videos
from lus_dist.aggregator.protocols import Folds, ProtocolError, make_folds
from lus_dist.aggregator.targets import video_targets
from lus_dist.aggregator.uninorm import (VARIANTS, Packed, argmax_mean, majority_argmax,
                                        max_argmax, pack)
from lus_dist.io.config import to_dict
from lus_dist.training.metrics import frame_metrics, quadratic_kappa

METHODS = ("uninorm", "argmax_mean", "max_argmax", "majority_argmax")
BASELINES = {"argmax_mean": argmax_mean, "max_argmax": max_argmax,
             "majority_argmax": majority_argmax}
METRICS = ("weighted_f1", "weighted_precision", "weighted_recall", "accuracy",
           "quadratic_kappa")


@dataclass
class AggregatorConfig:
    """The authors' aggregator.py options (their defaults in brackets where ours differ:
    the README's published command uses product/min, lr 0.01, 30 epochs, gap 0.5)."""
    variant: str = "uninorm"          # uninorm | binary (COVID/no-COVID) | hierarchy
    target: str = "video_score"       # video_score | video_label (what a video is scored by)
    tnorm: str = "product"            # product | lukasiewicz
    off_diagonal: str = "min"         # min | mean | max
    loss: str = "ce"                  # ce | kl (proper KL, see module docstring)
    sord: bool = True                 # SORD soft targets instead of one-hot
    zero_score_gap: float = 0.5
    sord_multiplier: float = 2.0
    init_neutral: float = 0.0
    normalize_neutral: bool = False   # neutral / video length, unclamped (as the authors)
    linear: bool = False              # learnable C x C linear layer after the uninorm
    logit_scale: float = 10.0         # [1]; the bare uninorm's values x scale are the
                                      # loss's logits (above); with `linear`, 1
    lr: float = 0.01
    lr_gamma: float = 1.0             # [1/3]; MultiStepLR factor at lr_milestones
    lr_milestones: list[int] = field(default_factory=lambda: [15, 20, 25])
    epochs: int = 30                  # [20]
    early_stop: str = "train_loss"    # [last] | train_acc | train_loss (lowest, see above)

    def validate(self) -> None:
        choices = {"variant": tuple(VARIANTS), "target": ("video_score", "video_label"),
                   "tnorm": ("product", "lukasiewicz"), "off_diagonal": ("min", "mean", "max"),
                   "loss": ("ce", "kl"), "early_stop": ("last", "train_acc", "train_loss")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"aggregator config: {key}={getattr(self, key)!r}; "
                                 f"choose from {allowed}")
        if self.epochs < 1 or self.lr <= 0 or self.logit_scale <= 0:
            raise ValueError("aggregator config: epochs must be >= 1, lr and logit_scale > 0")


def build_model(cfg: AggregatorConfig, num_classes: int, n_models: int | None = None,
                seed: int = 0) -> nn.Module:
    cfg.validate()
    return VARIANTS[cfg.variant](
        num_classes, tnorm=cfg.tnorm, off_diagonal=cfg.off_diagonal,
        normalize_neutral=cfg.normalize_neutral, init_neutral=cfg.init_neutral,
        linear=cfg.linear, n_models=n_models, generator=torch.Generator().manual_seed(seed))


def num_outputs(cfg: AggregatorConfig, num_classes: int) -> int:
    return 2 if cfg.variant == "binary" else num_classes


def video_loss(out: Tensor, soft: Tensor, kind: str) -> Tensor:
    """Per-video loss (..., V) of outputs (..., V, C) read as logits, as the authors do."""
    logp = torch.log_softmax(out, dim=-1)
    if kind == "kl":
        return (torch.xlogy(soft, soft) - soft * logp).sum(-1)
    return -(soft * logp).sum(-1)


@contextlib.contextmanager
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead, and on a shared
    2-core machine they make each step ~10x slower. Restored on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(packed: Packed, targets: Tensor, train: Tensor, cfg: AggregatorConfig,
        num_classes: int, seed: int = 0) -> nn.Module:
    """Train one aggregator per row of `train` (F, V) bool; returns the batched model."""
    with _one_thread():
        return _fit(packed, targets, train, cfg, num_classes, seed)


def _fit(packed: Packed, targets: Tensor, train: Tensor, cfg: AggregatorConfig,
         num_classes: int, seed: int) -> nn.Module:
    dev = packed.frames.device
    model = build_model(cfg, num_classes, n_models=train.shape[0], seed=seed).to(dev)
    soft = video_targets(targets, num_outputs(cfg, num_classes), cfg.sord,
                         cfg.zero_score_gap, cfg.sord_multiplier).to(dev)
    targets, train = targets.to(dev), train.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.lr_milestones, gamma=cfg.lr_gamma)
    w = train.to(torch.float64)
    n_train = w.sum(1)
    best = torch.full((train.shape[0],), -math.inf, dtype=torch.float64, device=dev)
    snapshot = {k: v.detach().clone() for k, v in model.named_parameters()}
    scale = 1.0 if cfg.linear else cfg.logit_scale   # a linear layer learns its own
    for _ in range(cfg.epochs):
        out = model(packed)
        per_video = video_loss(out * scale, soft, cfg.loss) * w
        if cfg.early_stop != "last":
            with torch.no_grad():
                if cfg.early_stop == "train_acc":
                    score = ((out.argmax(-1) == targets) * w).sum(1) / n_train
                else:
                    score = -per_video.sum(1) / n_train
                _keep_improved(model, snapshot, score > best)
                best = torch.maximum(best, score)
        opt.zero_grad()
        per_video.sum().backward()
        opt.step()
        model.clamp_()
        sched.step()
    if cfg.early_stop != "last":
        with torch.no_grad():
            for k, v in model.named_parameters():
                v.copy_(snapshot[k])
    return model


def _keep_improved(model: nn.Module, snapshot: dict[str, Tensor], improved: Tensor) -> None:
    for k, v in model.named_parameters():  # every parameter leads with the folds axis
        snapshot[k][improved] = v.detach()[improved]


@dataclass
class ProtocolResult:
    protocol: str
    k: int
    seed: int
    config: dict
    class_names: tuple[str, ...]
    per_fold: dict[str, list[dict[str, float]]]   # method -> one metrics dict per fold
    pooled: dict[str, dict[str, float]]           # method -> metrics over all test videos
    videos: dict[str, list]                       # per tested video: id, fold, target, preds
    neutral: list                                 # learned neutral elements, per fold
    n_excluded: int                               # videos without a target (not used)

    @property
    def mean_weighted_f1(self) -> float:
        return float(np.mean([f["weighted_f1"] for f in self.per_fold["uninorm"]]))

    def summary(self) -> list[dict[str, float | str]]:
        """mean and std (ddof=1 over folds, as the project's report tables) per method."""
        rows = []
        for method, folds in self.per_fold.items():
            row: dict[str, float | str] = {"method": method, "folds": len(folds)}
            for m in METRICS:
                vals = np.array([f[m] for f in folds])
                row[f"{m}_mean"] = float(vals.mean())
                row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                row[f"{m}_pooled"] = self.pooled[method][m]
            rows.append(row)
        return rows

    def format_table(self) -> str:
        head = f"{'method':<12} " + " ".join(f"{m:>22}" for m in METRICS[:3]) + \
            f" {'pooled F1':>10}"
        lines = [f"protocol {self.protocol} ({len(self.per_fold['uninorm'])} folds, "
                 f"seed {self.seed}); mean ± std over folds", head]
        for r in self.summary():
            cells = " ".join(f"{r[f'{m}_mean']:>13.3f} ± {r[f'{m}_std']:<6.3f}"
                             for m in METRICS[:3])
            lines.append(f"{r['method']:<12} {cells} {r['weighted_f1_pooled']:>10.3f}")
        if self.n_excluded:
            lines.append(f"({self.n_excluded} video(s) without a target were left out)")
        return "\n".join(lines)


def classification_metrics(y: np.ndarray, pred: np.ndarray, num_classes: int
                           ) -> dict[str, float]:
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    m = frame_metrics(y, pred, num_classes) | {"quadratic_kappa": quadratic_kappa(y, pred, num_classes)}
    return {k: m[k] for k in METRICS} | {"n": int(len(y))}


def video_targets_of(batch: VideoBatch, cfg: AggregatorConfig) -> np.ndarray:
    y = np.asarray(batch.video_score if cfg.target == "video_score" else batch.video_label)
    return np.where(y > 0, 1, y) if cfg.variant == "binary" else y


def evaluate(model: nn.Module, packed: Packed, batch: VideoBatch, targets: np.ndarray,
             folds: Folds, cfg: AggregatorConfig) -> tuple[dict, dict, dict]:
    """Per-fold and pooled metrics on each fold's test videos, baselines beside."""
    with torch.no_grad():
        preds = {"uninorm": model(packed).argmax(-1).cpu().numpy(),
                 **{m: f(batch.x, batch.mask).cpu().numpy() for m, f in BASELINES.items()}}
    if cfg.variant == "binary":
        for m in BASELINES:
            preds[m] = (preds[m] > 0).astype(np.int64)
    n_out = num_outputs(cfg, batch.x.shape[-1])
    per_fold = {m: [] for m in METHODS}
    videos: dict[str, list] = {"video_id": [], "patient_id": [], "fold": [], "target": [],
                               **{m: [] for m in METHODS}}
    for f in range(folds.num_folds):
        idx = np.nonzero(folds.test[f])[0]
        for m in METHODS:
            p = preds[m][f, idx] if preds[m].ndim == 2 else preds[m][idx]
            per_fold[m].append(classification_metrics(targets[idx], p, n_out))
            videos[m].extend(p.tolist())
        videos["video_id"].extend(batch.video_id[idx].tolist())
        videos["patient_id"].extend(batch.patient_id[idx].tolist())
        videos["fold"].extend([f] * len(idx))
        videos["target"].extend(targets[idx].tolist())
    pooled = {m: classification_metrics(np.array(videos["target"]), np.array(videos[m]), n_out)
              for m in METHODS}
    return per_fold, pooled, videos


def labelled_videos(preds: FramePredictions | VideoBatch, cfg: AggregatorConfig):
    """Pad, then keep the videos that have a target; returns (batch, targets, n_left_out)."""
    batch = preds if isinstance(preds, VideoBatch) else pad_videos(preds)
    y = video_targets_of(batch, cfg)
    keep = y >= 0
    if not keep.any():
        raise ProtocolError(f"no video has a {cfg.target} (all unknown)")
    n_out = num_outputs(cfg, batch.x.shape[-1])
    if y[keep].max() >= n_out:
        raise ProtocolError(f"{cfg.target} values {sorted(set(y[keep].tolist()))} do not fit "
                            f"the {n_out} outputs of the {cfg.variant} aggregator")
    sub = VideoBatch(x=batch.x[torch.from_numpy(keep)], mask=batch.mask[torch.from_numpy(keep)],
                     class_names=batch.class_names,
                     **{k: getattr(batch, k)[keep] for k in (
                         "video_id", "patient_id", "hospital_id", "video_score",
                         "video_label", "split")})
    return sub, y[keep], int((~keep).sum())


def run_protocol(preds: FramePredictions | VideoBatch, cfg: AggregatorConfig,
                 protocol: str = "kfold", k: int = 5, seed: int = 0) -> ProtocolResult:
    """Train on each fold's training videos, score its test videos; baselines beside."""
    cfg.validate()
    batch, y, n_excluded = labelled_videos(preds, cfg)
    folds = make_folds(batch.patient_id, y, protocol, k=k, seed=seed, split=batch.split)
    packed = pack(batch.x, batch.mask)
    targets = torch.from_numpy(y)
    model = fit(packed, targets, torch.from_numpy(folds.train), cfg, batch.x.shape[-1], seed)
    per_fold, pooled, videos = evaluate(model, packed, batch, y, folds, cfg)
    neutral = [p.detach().cpu().numpy().tolist() for n, p in model.named_parameters()
               if n.endswith("neutral")]
    return ProtocolResult(protocol=protocol, k=k if "kfold" in protocol else folds.num_folds,
                          seed=seed, config=to_dict(cfg), class_names=batch.class_names,
                          per_fold=per_fold, pooled=pooled, videos=videos, neutral=neutral,
                          n_excluded=n_excluded)


def fit_all(preds: FramePredictions | VideoBatch, cfg: AggregatorConfig,
            seed: int = 0) -> nn.Module:
    """One aggregator trained on every labelled video (for `lus predict --aggregator`)."""
    cfg.validate()
    batch, y, _ = labelled_videos(preds, cfg)
    num_classes = batch.x.shape[-1]
    packed = pack(batch.x, batch.mask)
    trained = fit(packed, torch.from_numpy(y), torch.ones(1, len(y), dtype=torch.bool), cfg,
                  num_classes, seed)
    single = build_model(cfg, num_classes, n_models=None, seed=seed)
    single.load_state_dict({k: v[0] for k, v in trained.state_dict().items()})
    return single


def grade(model: nn.Module, preds: FramePredictions | VideoBatch, cfg: AggregatorConfig
          ) -> dict[str, dict]:
    """A fitted aggregator's metrics (baselines beside) on every labelled video of `preds`:
    videos it was neither trained nor selected on, e.g. the test split's after a sweep."""
    batch, y, _ = labelled_videos(preds, cfg)
    every = np.ones((1, len(y)), dtype=bool)
    _, pooled, _ = evaluate(model, pack(batch.x, batch.mask), batch, y,
                            Folds(test=every, train=~every), cfg)
    return pooled


def save_aggregator(path, model: nn.Module, cfg: AggregatorConfig,
                    class_names: tuple[str, ...]) -> None:
    """A plain-tensor file (loadable with torch.load(weights_only=True)): config dict,
    state_dict and the class names it was trained on."""
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": to_dict(cfg), "state_dict": model.state_dict(),
                "class_names": list(class_names)}, path)
