"""What every frame model returns, so the loop has one forward line and one loss line."""
from __future__ import annotations

from typing import NamedTuple

import torch


class FrameOutput(NamedTuple):
    """A NamedTuple (not a dataclass) so DDP/DeepSpeed output traversal sees the tensors.

    logits: (B, num_classes) scores used for prediction (crop 1 for Reg-STN).
    aux: extra tensors for the loss or visualisation: "logits2" (B, K), "scales" (B, 2),
        "scale_prior" (2,), "thetas" (B, n, 2, 3). Empty for plain classifiers.
    loss: the loss the model was built for ("sord" or "ce"); `FrameLossConfig.loss="auto"`
        follows it, so `cnn_ce` and `cnn_sord` differ only by their registry name.
    """
    logits: torch.Tensor
    aux: dict[str, torch.Tensor]
    loss: str = "sord"
