"""How often the ranks agree on a stop: pure interval arithmetic, the measured (auto)
cadence on an injected clock, and under a real 2-rank gloo group the ranks fix the same
interval (the slowest rank's) so their collectives stay paired."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from lus_dist.engine.cadence import MEASURED_STEPS, StopCadence, checks_every


@given(st.floats(1e-4, 100), st.floats(0.1, 30))
def test_interval_is_at_least_one_and_spans_about_the_target(step_s, target_s):
    n = checks_every(step_s, target_s)
    assert n >= 1
    assert n == 1 or n * step_s <= target_s * (1 + 1e-6)
    assert target_s < (n + 1) * step_s


def test_degenerate_timings_check_every_step():
    assert checks_every(0.0, 2.0) == 1 and checks_every(0.5, 0.0) == 1


def test_fixed_interval_is_used_as_is():
    c = StopCadence(every=4, target_s=2.0)
    assert [s for s in range(1, 13) if c.due(s)] == [4, 8, 12]


def test_auto_checks_every_step_while_measuring_then_at_the_measured_interval():
    now = [0.0]
    c = StopCadence(every=0, target_s=2.0, clock=lambda: now[0])
    due = []
    for s in range(1, 61):
        now[0] = 0.1 * s + 1e-9                  # 0.1 s per step
        due += [s] if c.due(s) else []
    assert due[:MEASURED_STEPS + 1] == list(range(1, MEASURED_STEPS + 2))
    assert c.every == 20
    assert due[MEASURED_STEPS + 1:] == [20, 40, 60]


def _two_ranks(rank: int, world: int, port: int, step_s: float, out) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    now = [0.0]
    c = StopCadence(every=0, target_s=1.0, clock=lambda: now[0])
    for s in range(1, MEASURED_STEPS + 2):
        now[0] = step_s * s + 1e-9
        c.due(s)
    out.put((rank, c.every))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_fix_the_same_interval_from_the_slowest_rank():
    import multiprocessing as mp
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_two_ranks, args=(r, 2, port, step, out))
             for r, step in ((0, 0.01), (1, 0.25))]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert got == {0: 4, 1: 4}   # 1 s / 0.25 s on both ranks
