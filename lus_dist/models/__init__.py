"""Frame, segmentation and CNN-LSTM models (Roy et al. 2020; Barros et al. 2021).

Every frame model returns a `FrameOutput`, so the training loop has one forward line and
one loss line (`lus_dist.losses.frame_loss`) whatever the model: the loss reads what the
model put in `aux` (crop-2 logits, scales and their prior) and which loss it was built for.
"""
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


def read_state_dict(path, what: str) -> tuple[dict, dict]:
    """(state dict, metadata) from a local weights file; the error names the file.

    Accepts a bare state dict or one wrapped under "state_dict"/"model" (common checkpoint
    layouts; the wrapper's other non-tensor entries are returned as metadata) and strips a
    DDP "module." prefix. Nothing is ever downloaded: pretrained weights are files on disk.
    """
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: {what} weights file not found")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{file}: not a readable PyTorch state dict for {what} ({exc})") from None
    meta: dict = {}
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            meta = {k: v for k, v in state.items() if k != key and not isinstance(v, (dict, torch.Tensor))}
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a state dict for {what}, got {type(state).__name__}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DDP wrapper
    return state, meta


def check_and_load(module: torch.nn.Module, state: dict, file, what: str,
                   ignore: tuple[str, ...] = ()) -> None:
    """Load `state` into `module` only if keys and shapes match exactly (keys starting with
    an `ignore` prefix, e.g. a classifier's "fc.", are left as they are)."""
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state)
                    if tuple(own[k].shape) != tuple(getattr(state[k], "shape", ())))
    if missing or unexpected or shapes:
        raise ValueError(f"{file}: weights do not match {what}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape (file vs model) {shapes[:5]}")
    module.load_state_dict(state, strict=not ignore)


def load_weights_file(module: torch.nn.Module, path: str, what: str) -> None:
    """Load a local state dict into `module`; the error names the file and the mismatch."""
    from .encoder import restore_input_norms

    state, _ = read_state_dict(path, what)
    restore_input_norms(module, state)        # e.g. an ImageNet-initialised encoder's input
    check_and_load(module, state, path, what)


from .registry import FRAME_MODELS, build_frame_model  # noqa: E402
from .localization import draw_boxes, stn_boxes  # noqa: E402
from .seg import SEG_ARCHS, build_seg_model  # noqa: E402
from .cnnlstm import CNNLSTM, CNNLSTMConfig, extract_features  # noqa: E402
from .encoder import (ENCODER_FILE, ContrastiveModel, build_encoder, encoder_slot, export_encoder,  # noqa: E402
                      load_encoder, restore_input_norms)
from .imagenet import IMAGENET  # noqa: E402

__all__ = ["FrameOutput", "load_weights_file", "FRAME_MODELS", "build_frame_model",
           "stn_boxes", "draw_boxes", "SEG_ARCHS", "build_seg_model", "CNNLSTM",
           "CNNLSTMConfig", "extract_features", "read_state_dict", "check_and_load",
           "ENCODER_FILE", "ContrastiveModel", "build_encoder", "encoder_slot", "export_encoder", "load_encoder",
           "restore_input_norms", "IMAGENET"]
