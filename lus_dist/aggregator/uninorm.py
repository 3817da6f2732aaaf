"""Roy et al.'s uninorm video aggregator, batched over videos (and over independent models).

The authors aggregate a video's (C, T) frame probabilities by a recursion that halves the
frame axis (left half = T // 2 frames) and combines the two halves with a per-class
uninorm U_e(a, b):

    both <= e:   e * T(a / e, b / e)                       (t-norm region: "no evidence")
    both >  e:   e + (1 - e) * S((a - e)/(1 - e), (b - e)/(1 - e))   (t-conorm region)
    otherwise:   min / mean / max of (a, b)                (off-diagonal)

Their code recurses in Python per video. Here the recursion tree depends only on each
video's length, so it is laid out once (`build_schedule`, pure numpy) as levels of node
heights; a forward pass is then one gather + pairwise uninorm + concatenate per level
for all videos at once (ceil(log2(max_len)) steps). Parameters may carry a leading
"models" axis so that k folds train as one batched model (`n_models=k`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

TNORMS = ("product", "lukasiewicz")
OFF_DIAGONALS = ("min", "mean", "max")


def tnorm(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if kind == "product":
        return a * b
    return torch.clamp(a + b - 1.0, min=0.0)


def tconorm(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if kind == "product":
        return a + b - a * b
    return torch.clamp(a + b, max=1.0)


def off_diagonal(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if kind == "min":
        return torch.minimum(a, b)
    if kind == "max":
        return torch.maximum(a, b)
    return 0.5 * (a + b)


def uninorm_pair(a: Tensor, b: Tensor, e: Tensor, kind: str = "product",
                 off: str = "min") -> Tensor:
    """U_e(a, b), elementwise. Divisors are made safe at e = 0 / e = 1, where the
    authors' code divides by zero (their masks make those branches reachable only for
    a = b = e, whose value is e either way)."""
    low = (a <= e) & (b <= e)
    high = (a > e) & (b > e)
    e_lo = torch.where(e > 0, e, torch.ones_like(e))
    e_hi = torch.where(e < 1, 1.0 - e, torch.ones_like(e))
    t = e * tnorm(a / e_lo, b / e_lo, kind)
    s = e + (1.0 - e) * tconorm((a - e) / e_hi, (b - e) / e_hi, kind)
    return torch.where(low, t, torch.where(high, s, off_diagonal(a, b, off)))


@dataclass(frozen=True)
class TreeSchedule:
    """The halving recursion of every video, by node height.

    Level 0 holds the N frames (videos concatenated); level h the nodes of height h
    (ordered by start). `levels[h-1] = (left, right, video)`: children indices into
    concat(level h-2, level h-1) (just level 0 for h = 1), and each node's video.
    """
    levels: tuple[tuple[Tensor, Tensor, Tensor], ...]
    roots: Tensor           # (V,) index of each video's result within its level
    root_level: Tensor      # (V,) the level (= height) holding it
    lengths: np.ndarray     # (V,)


def _height(size: np.ndarray) -> np.ndarray:
    """A node over n frames has height ceil(log2 n): its larger child has ceil(n/2)."""
    return np.ceil(np.log2(np.maximum(size, 1))).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _schedule_cached(lengths_bytes: bytes) -> TreeSchedule:
    lengths = np.frombuffer(lengths_bytes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    st, sz, vid = _internal_nodes(offsets, lengths)
    h = _height(sz)
    order = np.lexsort((st, h))
    st, sz, vid, h = st[order], sz[order], vid[order], h[order]
    # level 0 = the frames; level h = nodes of height h, ordered by start. A node's
    # children have height h-1 or h-2, so each level gathers from the previous two.
    level_nodes = [(np.arange(int(lengths.sum())), np.ones(int(lengths.sum()), np.int64))]
    for height in range(1, int(h.max()) + 1 if len(h) else 1):
        sel = h == height
        level_nodes.append((st[sel], sz[sel]))
    levels = []
    for height in range(1, len(level_nodes)):
        (s2, z2), (s1, z1) = level_nodes[max(height - 2, 0)], level_nodes[height - 1]
        if height == 1:
            s2, z2 = s2[:0], z2[:0]
        src_start, src_size = np.concatenate([s2, s1]), np.concatenate([z2, z1])
        starts, sizes = level_nodes[height]
        half = sizes // 2
        left = _lookup(starts, half, src_start, src_size)
        right = _lookup(starts + half, sizes - half, src_start, src_size)
        levels.append((torch.from_numpy(left), torch.from_numpy(right),
                       torch.from_numpy(vid[h == height].copy())))
    roots = np.zeros(len(lengths), np.int64)
    roots_level = _height(lengths)
    for height, (starts, sizes) in enumerate(level_nodes):
        here = np.nonzero(roots_level == height)[0]
        roots[here] = _lookup(offsets[here], lengths[here], starts, sizes)
    return TreeSchedule(tuple(levels), torch.from_numpy(roots),
                        torch.from_numpy(roots_level), lengths.copy())


def _internal_nodes(offsets: np.ndarray, lengths: np.ndarray):
    """(start, size, video) of every recursion node over >= 2 frames, top-down."""
    starts, sizes, videos = offsets, lengths, np.arange(len(lengths))
    found = []
    while len(starts):
        keep = sizes >= 2
        starts, sizes, videos = starts[keep], sizes[keep], videos[keep]
        found.append((starts, sizes, videos))
        half = sizes // 2
        starts = np.concatenate([starts, starts + half])
        sizes = np.concatenate([half, sizes - half])
        videos = np.concatenate([videos, videos])
    return tuple(np.concatenate(p).astype(np.int64) for p in zip(*found))


def _lookup(start: np.ndarray, size: np.ndarray, all_start: np.ndarray,
            all_size: np.ndarray) -> np.ndarray:
    """Index in (all_start, all_size) of each node (start, size); they must be there."""
    scale = int(max(all_size.max(initial=0), size.max(initial=0))) + 1
    keys = all_start * scale + all_size
    order = np.argsort(keys, kind="stable")
    idx = order[np.searchsorted(keys[order], start * scale + size).clip(0, len(keys) - 1)]
    return idx.astype(np.int64)


def build_schedule(lengths: np.ndarray | list[int]) -> TreeSchedule:
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or len(lengths) == 0 or (lengths < 1).any():
        raise ValueError(f"video lengths must be a non-empty list of ints >= 1, got {lengths}")
    return _schedule_cached(lengths.tobytes())


def uninorm_reduce(frames: Tensor, schedule: TreeSchedule, neutral: Tensor,
                   kind: str = "product", off: str = "min") -> Tensor:
    """frames (*B, N, C), neutral (*B, V, C) per video -> (*B, V, C)."""
    batch = torch.broadcast_shapes(frames.shape[:-2], neutral.shape[:-2])
    dev = frames.device
    levels = [frames.expand(*batch, *frames.shape[-2:])]
    for left, right, video in schedule.levels:
        src = levels[-1] if len(levels) == 1 else torch.cat(levels[-2:], dim=-2)
        e = neutral.index_select(-2, video.to(dev))
        levels.append(uninorm_pair(src.index_select(-2, left.to(dev)),
                                   src.index_select(-2, right.to(dev)), e, kind, off))
    out = frames.new_zeros(*batch, len(schedule.lengths), frames.shape[-1])
    for height, values in enumerate(levels):
        here = torch.nonzero(schedule.root_level == height).squeeze(1)
        if len(here):
            out = out.index_copy(-2, here.to(dev),
                                 values.index_select(-2, schedule.roots[here].to(dev)))
    return out


@dataclass(frozen=True)
class Packed:
    """Valid frames of padded videos, concatenated, with their recursion schedule."""
    frames: Tensor          # (N, C)
    schedule: TreeSchedule
    lengths: Tensor         # (V,) float, for normalize_neutral

    @property
    def num_videos(self) -> int:
        return len(self.schedule.lengths)


def pack(x: Tensor, mask: Tensor) -> Packed:
    """(V, L, C) padded probabilities + (V, L) prefix mask -> Packed."""
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x (V, L, C) and mask (V, L), got {tuple(x.shape)} and "
                         f"{tuple(mask.shape)}")
    mask = mask.bool()
    lengths = mask.sum(1)
    prefix = torch.arange(x.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("mask must mark a prefix of each row (frames 0..T-1 valid, then padding)")
    schedule = build_schedule(lengths.cpu().numpy())
    return Packed(x[mask], schedule, lengths.to(x.dtype))


def _as_packed(x: Tensor | Packed, mask: Tensor | None) -> Packed:
    if isinstance(x, Packed):
        return x
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return pack(x, mask)


class UninormAggregator(nn.Module):
    """Learnable neutral element per class (clamped to [0, 1] by `clamp_` after each
    step, as the authors do unless normalize_neutral), optional linear layer.

    `n_models=None`: parameters (C,), output (V, C). `n_models=k`: parameters (k, C),
    output (k, V, C): k independent aggregators (one per fold) in one pass.
    """

    def __init__(self, num_classes: int, tnorm: str = "product", off_diagonal: str = "min",
                 normalize_neutral: bool = False, init_neutral: float = 0.0,
                 linear: bool = False, n_models: int | None = None,
                 generator: torch.Generator | None = None, dtype=torch.float64):
        super().__init__()
        if tnorm not in TNORMS:
            raise ValueError(f"tnorm must be one of {TNORMS}, got {tnorm!r}")
        if off_diagonal not in OFF_DIAGONALS:
            raise ValueError(f"off_diagonal must be one of {OFF_DIAGONALS}, got {off_diagonal!r}")
        shape = (num_classes,) if n_models is None else (n_models, num_classes)
        self.kind, self.off, self.normalize_neutral = tnorm, off_diagonal, normalize_neutral
        self.neutral = nn.Parameter(torch.full(shape, float(init_neutral), dtype=dtype))
        if linear:  # nn.Linear's default init, drawn from `generator` for reproducibility
            bound = 1.0 / num_classes ** 0.5
            w = torch.rand(*shape, num_classes, generator=generator, dtype=dtype)
            b = torch.rand(*shape, generator=generator, dtype=dtype)
            self.weight = nn.Parameter((2 * w - 1) * bound)
            self.bias = nn.Parameter((2 * b - 1) * bound)
        else:
            self.weight = self.bias = None

    def forward(self, x: Tensor | Packed, mask: Tensor | None = None) -> Tensor:
        p = _as_packed(x, mask)
        neutral = self.neutral.unsqueeze(-2).expand(*self.neutral.shape[:-1], p.num_videos,
                                                    self.neutral.shape[-1])
        if self.normalize_neutral:  # the authors divide by the sequence length
            neutral = neutral / p.lengths[:, None]
        out = uninorm_reduce(p.frames, p.schedule, neutral, self.kind, self.off)
        if self.weight is not None:
            out = torch.einsum("...vc,...dc->...vd", out, self.weight) + self.bias.unsqueeze(-2)
        return out

    @torch.no_grad()
    def clamp_(self) -> None:
        if not self.normalize_neutral:
            self.neutral.clamp_(0.0, 1.0)


class BinaryUninormAggregator(nn.Module):
    """COVID / no-COVID: per frame, a one-neutral uninorm merges the positive-score
    classes 1..C-1 into one "positive" value; a two-class uninorm then aggregates
    (score-0, positive) over frames. Output (..., V, 2)."""

    def __init__(self, num_classes: int, **kw):
        super().__init__()
        if num_classes < 2:
            raise ValueError("the binary variant needs at least 2 frame classes")
        self.local = UninormAggregator(1, **{**kw, "linear": False})
        self.global_ = UninormAggregator(2, **kw)
        self.num_classes = num_classes

    def forward(self, x: Tensor | Packed, mask: Tensor | None = None) -> Tensor:
        p = _as_packed(x, mask)
        n_pos = self.num_classes - 1
        per_frame = build_schedule(np.full(p.frames.shape[0], n_pos))
        n = p.frames.shape[0]
        local_neutral = self.local.neutral.unsqueeze(-2).expand(
            *self.local.neutral.shape[:-1], n, 1)
        if self.local.normalize_neutral:
            local_neutral = local_neutral / n_pos
        pos = uninorm_reduce(p.frames[:, 1:].reshape(-1, 1), per_frame, local_neutral,
                             self.local.kind, self.local.off)          # (*B, N, 1)
        neg = p.frames[:, :1].expand(*pos.shape[:-1], 1)
        two = torch.cat([neg, pos], dim=-1)
        return self.global_(Packed(two, p.schedule, p.lengths))

    def clamp_(self) -> None:
        self.local.clamp_()
        self.global_.clamp_()


class ScoreHierarchyAggregator(nn.Module):
    """The authors' ScoreHierarchyNet: decide score 0 vs >0 from mean frame mass; if
    score 0 wins (p0 >= 0.5) output [p0, p1 * softmax(U)], else [0, U], where U is a
    uninorm over the positive classes only."""

    def __init__(self, num_classes: int, **kw):
        super().__init__()
        self.score = UninormAggregator(num_classes - 1, **kw)

    def forward(self, x: Tensor | Packed, mask: Tensor | None = None) -> Tensor:
        p = _as_packed(x, mask)
        dev = p.frames.device
        video = torch.repeat_interleave(torch.arange(p.num_videos, device=dev),
                                        torch.from_numpy(p.schedule.lengths).to(dev))
        mass = torch.stack([p.frames[:, 0], p.frames[:, 1:].sum(-1)], dim=-1)
        mean = mass.new_zeros(p.num_videos, 2).index_add_(0, video, mass)
        pos_neg = torch.softmax(mean / p.lengths[:, None], dim=-1)
        u = self.score(Packed(p.frames[:, 1:].contiguous(), p.schedule, p.lengths))
        zero_wins = (pos_neg[:, :1] >= 0.5)
        first = torch.where(zero_wins, pos_neg[:, :1], torch.zeros_like(pos_neg[:, :1]))
        rest = torch.where(zero_wins, pos_neg[:, 1:] * torch.softmax(u, dim=-1), u)
        return torch.cat([first.expand_as(rest[..., :1]), rest], dim=-1)

    def clamp_(self) -> None:
        self.score.clamp_()


VARIANTS = {"uninorm": UninormAggregator, "binary": BinaryUninormAggregator,
            "hierarchy": ScoreHierarchyAggregator}


def argmax_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Baseline: class of the highest mean frame probability. (V, L, C) -> (V,)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return ((x * m).sum(1) / m.sum(1).clamp(min=1)).argmax(-1)


def max_argmax(x: Tensor, mask: Tensor) -> Tensor:
    """Baseline: the highest per-frame argmax class seen in the video. -> (V,)."""
    return torch.where(mask.bool(), x.argmax(-1), torch.full_like(mask, -1, dtype=torch.long)
                       ).max(1).values


def majority_argmax(x: Tensor, mask: Tensor) -> Tensor:
    """Baseline: the class most frames vote for (each frame its argmax); a tie goes to the
    lower class, so an ordinal score is never rounded up by a tie. -> (V,)."""
    votes = torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]) * mask.unsqueeze(-1).long()
    return votes.sum(1).argmax(-1)
