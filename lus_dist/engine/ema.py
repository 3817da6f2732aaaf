"""An exponential moving average of a model's weights, checkpointable and exact on resume.

Why: per-epoch validation scores of the raw weights swing by 0.2-0.4 on the POCUS clips;
the EMA weights average out the last steps' noise and are what the stable
recipe evaluates, checkpoints and exports. It is torch's own `AveragedModel` with
`get_ema_multi_avg_fn` (foreach updates), averaging the BatchNorm buffers too
(`use_buffers=True`), so the EMA model is self-consistent without a BN re-estimation pass.

Resume is exact because the state is the averaged tensors plus `n_averaged` (the first
update copies the weights); nothing else is hidden. Usage, once per optimiser step:

    ema = EMA(model, decay=0.999)        # model unwrapped: not the DDP/DeepSpeed wrapper
    ...; optimizer.step(); ema.update(model)
    evaluate(ema.module); states["ema"] = ema   # state_dict / load_state_dict
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class EMA:
    """`ema.module` is the averaged model (same class as the source, eval it directly)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(_unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights and buffers into the average."""
        self.averaged.update_parameters(_unwrap(model))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if float(state["decay"]) != self.decay:
            raise ValueError(f"EMA state has decay {state['decay']}, this run uses {self.decay}")
        self.averaged.load_state_dict(state["averaged"])
