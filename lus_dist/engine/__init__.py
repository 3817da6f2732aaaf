"""The training engine: one readable loop per model family over shared pieces.

`lus train {regstn,seg,cnnlstm}` (cli.py) -> train_regstn.py / train_seg.py /
train_cnnlstm.py, which call common.py (start-up, data, DDP/DeepSpeed wrapping, stepping),
checkpoint.py (atomic, resumable to the step) and logging.py (rank-0 CSV/TensorBoard).
Run dir: config.yaml, checkpoints/, tb/, metrics.csv, viz/, predictions/, summary.json.
"""
from .config import FAMILIES, CNNLSTMConfig, RegSTNConfig, RunConfig, SegConfig, load_run_config

__all__ = ["FAMILIES", "RunConfig", "RegSTNConfig", "SegConfig", "CNNLSTMConfig", "load_run_config"]
