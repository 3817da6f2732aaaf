"""Reg-STN training step on CPU: vectorised SORD (frame_loss) vs a per-element SORD loop.

The authors build SORD targets sample by sample in Python; ours are one tensor expression.
Both variants train the same network on the same batches; the script checks the two losses
agree, then prints samples/s for each and the ratio, plus the loss-only timing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sord.py --steps 5
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from lus_dist.training.losses import FrameLossConfig, frame_loss
from lus_dist.models import FrameOutput, build_frame_model


def loop_frame_loss(out: FrameOutput, target: torch.Tensor, cfg: FrameLossConfig) -> torch.Tensor:
    """The baseline: one SORD target and one KL per sample, in Python."""
    k = out.logits.shape[1]
    per = []
    for i in range(out.logits.shape[0]):
        y = int(target[i])
        t = torch.tensor([-cfg.sord_multiplier * (y - c) ** 2 for c in range(k)]).softmax(0)
        per.append(F.kl_div(F.log_softmax(out.logits[i], 0), t, reduction="sum"))
    loss = torch.stack(per).mean()
    loss = loss + cfg.lambda_cons * F.mse_loss(out.logits, out.aux["logits2"])
    return loss + cfg.lambda_stn * F.l1_loss(out.aux["scales"],
                                             out.aux["scale_prior"].expand_as(out.aux["scales"]))


def train_steps(steps: int, warmup: int, batch: int, size: int) -> dict[str, list[float]]:
    """Alternate one step of each variant (same init, same batch) and time every step, so
    load from other processes on a shared machine hits both variants alike."""
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 4, (batch,))
    cfg = FrameLossConfig()
    runs = {}
    for variant in ("vectorised", "loop"):
        torch.manual_seed(0)
        model = build_frame_model("regstn_learned", 1, 4, size)
        runs[variant] = (model, torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4))
    times: dict[str, list[float]] = {v: [] for v in runs}
    losses: dict[str, list[float]] = {v: [] for v in runs}
    for step in range(warmup + steps):
        for variant, (model, opt) in runs.items():
            torch.manual_seed(step)  # same dropout masks for both variants
            t0 = time.perf_counter()
            out = model(x)
            loss = frame_loss(out, y, cfg)[0] if variant == "vectorised" else loop_frame_loss(
                out, y, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            losses[variant].append(loss.item())
            if step >= warmup:
                times[variant].append(dt)
    for a, b in zip(losses["vectorised"], losses["loop"]):
        if not math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-5):
            raise SystemExit(f"losses differ: vectorised {a} vs loop {b}")
    return times


def loss_only(batch: int, reps: int = 200) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = FrameLossConfig()
    out = FrameOutput(torch.randn(batch, 4, requires_grad=True),
                      {"logits2": torch.randn(batch, 4), "scales": torch.rand(batch, 2),
                       "scale_prior": torch.tensor([0.5, 0.75])})
    y = torch.randint(0, 4, (batch,))
    times = []
    for fn in (lambda: frame_loss(out, y, cfg)[0], lambda: loop_frame_loss(out, y, cfg)):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn().backward()
        times.append((time.perf_counter() - t0) / reps)
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    times = train_steps(args.steps, args.warmup, args.batch, args.size)
    fast, slow = (args.batch / statistics.median(times[v]) for v in ("vectorised", "loop"))
    print(f"Reg-STN (learned) training step, CPU, {args.threads} thread(s), "
          f"{args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps each "
          f"(alternating; median step time; same losses checked)")
    print(f"  vectorised SORD   : {fast:8.2f} samples/s")
    print(f"  per-element loop  : {slow:8.2f} samples/s")
    print(f"  ratio (vectorised / loop): {fast / slow:.3f}x")
    tv, tl = loss_only(args.batch)
    print(f"  loss+backward only: vectorised {tv * 1e3:.3f} ms, loop {tl * 1e3:.3f} ms, "
          f"ratio {tl / tv:.1f}x")


if __name__ == "__main__":
    main()
