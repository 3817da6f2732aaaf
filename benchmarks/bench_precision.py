"""One training step of the frame CNN per precision plan, on this machine's CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_precision.py [--size 64] [--batch 32]

Why: `lus experiment` trains its CNNs with `train.bf16=native`, which turns bf16 autocast on
for CPUs with AMX-BF16 / AVX512-BF16 (hpc.device_plan.cpu_has_native_bf16). This measures
what that buys against the fp32 baseline, in the same run: the frame CNN (Roy et al.'s six
double-conv blocks, the experiment's `cnn_ce`) doing forward + backward + AdamW on one batch,
fp32 vs bf16, contiguous vs channels_last, interleaved over `--repeats` rounds so a load
change hits every variant alike. On a CPU without native bf16 the bf16 rows are slower than
fp32, which is why `native` leaves those CPUs at fp32.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hpc.device_plan import cpu_flags, cpu_has_native_bf16
from lus_dist.models.cnn import ScoreClassifier

VARIANTS = {"fp32": (False, False), "fp32 channels_last": (False, True),
            "bf16": (True, False), "bf16 channels_last": (True, True)}


def step_seconds(bf16: bool, channels_last: bool, size: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = ScoreClassifier(1, 3)
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 3, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for i in range(steps + 2):          # two warm-up steps (oneDNN picks its kernels)
        if i == 2:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    native = cpu_has_native_bf16(cpu_flags())
    print(f"torch {torch.__version__}, 1 thread, CPU native bf16: {native}; "
          f"{args.batch} frames of {args.size} px per step")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (bf16, cl) in VARIANTS.items():
            times[name].append(step_seconds(bf16, cl, args.size, args.batch, args.steps))
    base = statistics.median(times["fp32"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:20s} {med * 1000:7.1f} ms/step  speed-up vs fp32 {base / med:4.2f}x")
    best = statistics.median(times["bf16 channels_last"])
    print(f"precision: native_bf16={native} bf16_channels_last_vs_fp32={base / best:.2f}")


if __name__ == "__main__":
    main()
