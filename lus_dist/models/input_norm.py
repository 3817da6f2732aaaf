"""An encoder's input normalisation as part of its state (`InputNorm` buffers), so weights
trained on another input range (ImageNet's) carry their normalisation into every export,
checkpoint and model that loads them."""
from __future__ import annotations

import torch
from torch import nn


class InputNorm(nn.Module):
    """Frames in [0, 1] -> the input the weights were trained on, (x - mean) / std per
    channel. Buffers, so the normalisation is part of the encoder's state: exports,
    checkpoints and best.pt carry it, and whatever loads them gets it back."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _normalise_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_norm(args[0]), *args[1:])


def install_input_norm(slot: nn.Module, mean, std) -> InputNorm:
    """`slot` normalises its input from now on. A forward pre-hook rather than a wrapper, so
    the slot keeps its architecture's keys (weight files of that architecture keep loading)
    and models that call their encoder directly need no change."""
    if not isinstance(getattr(slot, "input_norm", None), InputNorm):
        slot.register_forward_pre_hook(_normalise_input)
    ref = next(iter(slot.parameters()), None)
    slot.input_norm = InputNorm(mean, std).to(ref.device if ref is not None else "cpu")
    return slot.input_norm


def restore_input_norms(model: nn.Module, state: dict) -> None:
    """Install the input normalisations a saved state holds into the modules they belong to
    (a model rebuilt without its start-up weights, as `lus predict` does, or an encoder
    loading an export of an ImageNet-initialised one)."""
    for key in state:
        if key == "input_norm.mean" or key.endswith(".input_norm.mean"):
            where = key[:-len("input_norm.mean")]
            try:
                slot = model.get_submodule(where.rstrip("."))
            except AttributeError:
                continue      # not this model's: the key check that follows names it
            install_input_norm(slot, state[key], state.get(where + "input_norm.std", 1.0))


def channel_stat(values, channels: int) -> tuple[float, ...]:
    """Per-channel statistics for a `channels`-channel input: as given for RGB, their mean
    for gray (or any other count), whose frames meet a summed or replicated stem."""
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else (sum(values) / len(values),) * channels
