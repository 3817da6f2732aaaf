"""A torchrun worker that runs several `lus train` command lines one after another.

`python -m hpc.launch --standalone --nproc-per-node=N tests/engine/train_cells.py CELLS.json`
where CELLS.json is a list of `lus` argument lists (["train", family, "--config", ...]).
Each one goes through the real `lus` CLI in the same ranks, so the interpreter, torch and
DeepSpeed imports and the loader workers' forkserver are paid once per launch, not per
cell. Every run makes and destroys its own process group; between runs the ranks meet on
a store of their own (on torchrun's MASTER_PORT), where rank 0 also publishes a fresh port
for the next run's group: no rank may join run k+1 while another still holds run k's.
Exit: the first non-zero cell's code (the cells after it still run), else 0.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path


CELL_MARK = "train_cells: output of cell "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meet(store, key: str, world: int, timeout_s: float = 900) -> None:
    """Wait until `world` ranks have reached `key`."""
    store.add(key, 1)
    deadline = time.time() + timeout_s
    while int(store.add(key, 0)) < world:
        if time.time() > deadline:
            raise TimeoutError(f"ranks did not all reach {key}")
        time.sleep(0.05)


def main() -> int:
    import torch.distributed as dist

    from hpc.dist import exit_worker
    from lus.cli import main as lus_main

    cells = json.loads(Path(sys.argv[1]).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          rank == 0, timeout=timedelta(seconds=900))
    run_id = os.environ.pop("TORCHELASTIC_RUN_ID", None)   # each cell returns, see gpu_smoke
    codes = []
    for k, argv in enumerate(cells):
        if rank == 0:
            store.set(f"port{k}", str(free_port()))
        os.environ["MASTER_PORT"] = store.get(f"port{k}").decode()
        print(f"train_cells: cell {k}: lus {' '.join(argv)}", file=sys.stderr, flush=True)
        if rank == 0:            # where each cell's own output starts (engine_helpers.cell_output)
            print(f"{CELL_MARK}{k}", flush=True)
        codes.append(lus_main(argv))
        meet(store, f"done{k}", world)
    if rank == 0:                    # rank 0 serves the store: it leaves last
        meet(store, "left", world)
    else:
        store.add("left", 1)
    if run_id is not None:
        os.environ["TORCHELASTIC_RUN_ID"] = run_id
    return exit_worker(next((c for c in codes if c), 0))


if __name__ == "__main__":
    sys.exit(main())
