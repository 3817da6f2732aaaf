"""The training engine: one loop (loop.py) that every model family plugs into (family.py).

`lus train FAMILY` (lus/train.py) looks the family up in the registry (registry.py) and
runs `loop.run`, which uses session.py (start-up), data.py (loaders), fit.py (DDP/DeepSpeed
wrapping, stepping), checkpoint.py (atomic, resumable to the step) and logging.py (rank-0
CSV/TensorBoard). Run dir: config.yaml, checkpoints/, tb/, metrics.csv, viz/, predictions/,
summary.json.
"""
from .config import RunConfig
from .family import Family, Splits
from .loop import RunHooks, run

__all__ = ["Family", "RunConfig", "RunHooks", "Splits", "run"]
