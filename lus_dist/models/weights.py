"""Local weight files: read, checked key by key and shape by shape, loaded; never downloaded."""
from __future__ import annotations

import torch

from .input_norm import restore_input_norms


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
    state, _ = read_state_dict(path, what)
    restore_input_norms(module, state)        # e.g. an ImageNet-initialised encoder's input
    check_and_load(module, state, path, what)
