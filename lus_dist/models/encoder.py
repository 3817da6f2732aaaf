"""Frame encoders, the contrastive pretraining model, and the one way to load an encoder.

An *encoder* maps frames (N, C, H, W) to vectors (N, F). The same architectures sit inside
every model of the project: "small_cnn" (Roy et al.'s six conv blocks) is the body of the
frame CNN, of Reg-STN's classifier and of the CNN-LSTM's default encoder; "resnet18" is the
ResNet-18 frame baseline, a CNN-LSTM option and segmentation-models-pytorch's resnet18
encoder (same state-dict keys). Pretraining trains an encoder and `export_encoder` writes
it; `load_encoder(model, path)` puts it into any of those models: `encoder_slot` knows
where each model keeps its encoder, and the file's keys and shapes must match exactly
(the error names the file and the mismatch). `encoder_weights: imagenet` takes the
architecture's ImageNet weights from the machine (`models/imagenet.py`) with their input
normalisation (`InputNorm`), which then travels in the encoder's state to every export,
checkpoint and model that loads one.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from . import check_and_load, read_state_dict
from .cnn import ScoreClassifier, TimmFrame
from .imagenet import IMAGENET

EXPORT_FORMAT = "lus-dist-encoder/1"
ENCODER_FILE = "encoder.pt"      # what a run exports, and a downstream config names


def build_encoder(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """(module mapping (N, C, H, W) -> (N, F), F). Random init: nothing is downloaded."""
    if name == "small_cnn":
        body = ScoreClassifier(in_channels, 2).features  # Roy et al.'s six conv blocks
        return nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 128
    if name == "resnet18":
        from torchvision.models import resnet18
        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        return net, 512
    import timm
    if not timm.is_model(name):
        raise ValueError(f"unknown encoder {name!r}: use small_cnn, resnet18 or a "
                         f"timm model name (e.g. xception41, efficientnet_b0)")
    net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    # models with a pre-logits head (MobileNetV3, ...) emit head_hidden_size, not num_features
    return net, int(getattr(net, "head_hidden_size", None) or net.num_features)


class ContrastiveModel(nn.Module):
    """Encoder + SimCLR projection head (Linear-BN-ReLU-Linear); forward gives projections.

    The head only serves the contrastive loss; downstream models get the encoder alone.
    """

    def __init__(self, encoder: str = "small_cnn", in_channels: int = 1, proj_dim: int = 128,
                 proj_hidden: int = 512, encoder_weights: str | None = None):
        super().__init__()
        if proj_dim < 1 or proj_hidden < 1:
            raise ValueError(f"projection sizes must be >= 1, got {proj_hidden} -> {proj_dim}")
        self.encoder_name, self.in_channels = encoder, in_channels
        self.encoder, self.feature_dim = build_encoder(encoder, in_channels)
        self.projector = nn.Sequential(nn.Linear(self.feature_dim, proj_hidden, bias=False),
                                       nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True),
                                       nn.Linear(proj_hidden, proj_dim))
        if encoder_weights:   # continue from a file (e.g. ImageNet: domain-adaptive pretraining)
            load_encoder(self, encoder_weights)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) encoder features: what kNN monitoring and downstream models see."""
        return self.encoder(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(x))


def encoder_slot(model: nn.Module) -> tuple[str | None, nn.Module, tuple[str, ...]]:
    """(encoder architecture or None if unknown, module holding the encoder's weights,
    key prefixes of that module an exported encoder does not have).

    Loading into the returned module writes into `model` (the slot shares its submodules).
    """
    from .cnn import ResNet18Frame
    from .cnnlstm import CNNLSTM

    net = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    if isinstance(net, ContrastiveModel):
        return net.encoder_name, net.encoder, ()
    if isinstance(net, CNNLSTM):
        if net.encoder is None:
            raise ValueError("this CNN-LSTM was built from_features: it has no encoder to load")
        return net.cfg.encoder, net.encoder, ()
    if isinstance(getattr(net, "classifier", None), ScoreClassifier):
        # frame CNN, random-crop CNN, Reg-STN (its classifier; the localiser stays random):
        # wrapped like build_encoder's small_cnn so the keys read "0.<layer>..."
        return "small_cnn", nn.Sequential(net.classifier.features), ()
    if isinstance(net, ResNet18Frame):
        return "resnet18", net.net, ("fc.",)
    if isinstance(net, TimmFrame):
        return net.arch, net.net, (net.net.pretrained_cfg["classifier"] + ".",)
    if hasattr(net, "encoder") and hasattr(net, "decoder"):  # segmentation-models-pytorch
        return None, net.encoder, ()
    raise TypeError(f"{type(net).__name__} has no known encoder slot for encoder weights")


def export_encoder(model: nn.Module, path: str | Path) -> Path:
    """Write a model's encoder (no projection head, no classifier) as a weights-only file
    `load_encoder` reads: from contrastive pretraining, or from a trained frame CNN, whose
    frozen features then feed a CNN-LSTM as Barros et al.'s ImageNet CNN fed theirs."""
    arch, slot, ignore = encoder_slot(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in slot.state_dict().items()
             if not k.startswith(ignore)}
    torch.save({"format": EXPORT_FORMAT, "encoder": arch, "state_dict": state}, path)
    return path


def load_encoder(model: nn.Module, path: str | Path, arch: str | None = None) -> nn.Module:
    """Load encoder weights from a local file into `model`'s encoder; returns `model`.

    Accepts `export_encoder` files (which must match exactly) and bare state dicts,
    including whole ImageNet classifiers as torchvision and timm save them (fitted by
    `adapt_pretrained_state`), and `imagenet` (`load_imagenet`; `arch` names the encoder
    of a model `encoder_slot` cannot name, e.g. a segmentation encoder). Raises
    FileNotFoundError or ValueError naming the file and what does not match
    (architecture, keys, shapes).
    """
    if str(path) == IMAGENET:
        return load_imagenet(model, arch)
    arch, slot, ignore = encoder_slot(model)
    what = f"{arch or type(getattr(model, 'module', model)).__name__} encoder"
    state, meta = read_state_dict(path, what)
    restore_input_norms(slot, state)     # a file that carries its normalisation brings it
    if arch and meta.get("encoder") and meta["encoder"] != arch:
        raise ValueError(f"{path}: holds a {meta['encoder']!r} encoder, this model's encoder "
                         f"is {arch!r}")
    changes = []
    if meta.get("format") != EXPORT_FORMAT:   # our own exports must match exactly
        own = {k: v for k, v in slot.state_dict().items() if not k.startswith(ignore)}
        state, changes = adapt_pretrained_state(state, own)
    check_and_load(slot, state, path, what, ignore)
    if changes:
        _say(f"encoder weights {path}: " + "; ".join(changes))
    return model


def load_imagenet(model: nn.Module, arch: str | None = None) -> nn.Module:
    """The encoder's ImageNet weights from this machine (`imagenet.imagenet_weights`: an
    installed package's file or a local cache file, never a download), head dropped, RGB
    stem fitted, and the weights' input normalisation put in front of the encoder.

    Gray frames meet a summed stem: with one statistic for all channels (EfficientNet-Lite's
    (x - 127) / 128) that is exactly the ImageNet net on the gray frame replicated to RGB;
    with per-channel statistics (torchvision's) the channel mean is used."""
    from .imagenet import imagenet_weights, read_weights

    slot_arch, slot, ignore = encoder_slot(model)
    weights = imagenet_weights(slot_arch or arch)
    own = {k: v for k, v in slot.state_dict().items()
           if not k.startswith(ignore) and not k.startswith("input_norm.")}
    # smp's timm encoders ("tu-<name>") hold the timm net under "model."
    prefix = "model." if own and all(k.startswith("model.") for k in own) else ""
    own = {k[len(prefix):]: v for k, v in own.items()}
    state, changes = adapt_pretrained_state(read_weights(weights, own), own)
    channels = next(v.shape[1] for v in own.values() if v.ndim == 4)   # the stem comes first
    norm = install_input_norm(slot, channel_stat(weights.mean, channels),
                              channel_stat(weights.std, channels))
    state = {prefix + k: v for k, v in state.items()}
    state.update({f"input_norm.{k}": v for k, v in norm.state_dict().items()})
    check_and_load(slot, state, weights.path, f"{weights.arch} encoder", ignore)
    _say(f"ImageNet weights for {weights.arch}: {weights.path} ({weights.origin}); input "
         f"(x - {_fmt(norm.mean)}) / {_fmt(norm.std)} on [0, 1] frames; " + "; ".join(changes))
    return model


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":   # said once, not once per rank
        print(message, file=sys.stderr, flush=True)


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in t.flatten().tolist()) + "]"


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


# classifier heads of torchvision and timm ImageNet models (resnet `fc`, efficientnet and
# mobilenet `classifier`, xception41 `head.fc`, legacy xception `last_linear`), dropped
# only where the encoder lacks them
HEAD_PREFIXES = ("fc.", "classifier.", "head.fc.", "head.", "last_linear.",
                 "conv_head.", "bn2.")   # efficientnet's top conv, which features-only encoders lack


def adapt_pretrained_state(state: dict, own: dict) -> tuple[dict, list[str]]:
    """An ImageNet file made for 3-channel RGB and 1000 classes, fitted to an encoder:
    (state, what was changed). Pure.

    Clusters often hold the torchvision or timm ImageNet files (Barros et al. started from
    ImageNet Xception), but the frames here are grayscale and the encoder has no ImageNet
    classifier. So a classifier head the encoder lacks is dropped, and an RGB first conv
    goes to the encoder's channel count with timm's `adapt_input_conv` (1 channel: the RGB
    filters summed, the response to a gray image unchanged). Anything else that differs is
    left for `check_and_load` to refuse.
    """
    from timm.models import adapt_input_conv

    out, changes = {}, []
    dropped = sorted(k for k in state if k not in own and k.startswith(HEAD_PREFIXES))
    if dropped:
        changes.append(f"dropped the file's classifier head {dropped}")
    for key, value in state.items():
        if key in dropped:
            continue
        mine = own.get(key)
        if _rgb_conv_for(value, mine):
            value = adapt_input_conv(mine.shape[1], value)
            changes.append(f"{key}: RGB filters adapted to {mine.shape[1]} input channel(s)")
        out[key] = value
    return out, changes


def _rgb_conv_for(value, mine) -> bool:
    """A conv weight that differs from the model's only by having 3 input channels."""
    return (isinstance(value, torch.Tensor) and mine is not None and value.ndim == 4 == mine.ndim
            and value.shape[1] == 3 != mine.shape[1] and value.shape[0] == mine.shape[0]
            and value.shape[2:] == mine.shape[2:])
