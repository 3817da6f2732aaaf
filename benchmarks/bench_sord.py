"""Reg-STN training step on CPU: vectorised SORD (frame_loss) vs a per-element SORD loop.

The authors build SORD targets sample by sample in Python; ours are one tensor expression.
Both variants train the same network on the same batches; the script checks the two losses
agree, then prints samples/s for each and the ratio, plus the loss-only timing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sord.py --steps 5
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from lus_dist.losses import FrameLossConfig, frame_loss
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


def run(variant: str, steps: int, warmup: int, batch: int, size: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_frame_model("regstn_learned", 1, 4, size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    cfg = FrameLossConfig()
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 4, (batch,))
    elapsed, first_loss = 0.0, math.nan
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(x)
        loss = frame_loss(out, y, cfg)[0] if variant == "vectorised" else loop_frame_loss(
            out, y, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 0:
            first_loss = loss.item()
        if step >= warmup:
            elapsed += time.perf_counter() - t0
    return steps * batch / elapsed, first_loss


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
    fast, loss_a = run("vectorised", args.steps, args.warmup, args.batch, args.size)
    slow, loss_b = run("per-element loop", args.steps, args.warmup, args.batch, args.size)
    if not math.isclose(loss_a, loss_b, rel_tol=1e-4):
        raise SystemExit(f"losses differ: vectorised {loss_a} vs loop {loss_b}")
    print(f"Reg-STN (learned) training step, CPU, {args.threads} thread(s), "
          f"{args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps")
    print(f"  vectorised SORD   : {fast:8.2f} samples/s (first loss {loss_a:.6f})")
    print(f"  per-element loop  : {slow:8.2f} samples/s (first loss {loss_b:.6f})")
    print(f"  ratio (vectorised / loop): {fast / slow:.3f}x")
    tv, tl = loss_only(args.batch)
    print(f"  loss+backward only: vectorised {tv * 1e3:.3f} ms, loop {tl * 1e3:.3f} ms, "
          f"ratio {tl / tv:.1f}x")


if __name__ == "__main__":
    main()
