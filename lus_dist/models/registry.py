"""Frame models by config name: Reg-STN variants and the baselines of Roy et al.'s Table 1."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .encoder import load_encoder
from .cnn import PlainCNN, RandomCropCNN, ResNet18Frame, TimmFrame
from .regstn import RegSTN

FRAME_MODELS: dict[str, Callable[..., nn.Module]] = {
    "regstn_fixed": lambda c, k, **kw: RegSTN(c, k, mode="fixed", **kw),
    "regstn_learned": lambda c, k, **kw: RegSTN(c, k, mode="learned", **kw),
    "cnn_ce": lambda c, k, **kw: PlainCNN(c, k, loss="ce", **kw),
    "cnn_sord": lambda c, k, **kw: PlainCNN(c, k, loss="sord", **kw),
    "resnet18_sord": lambda c, k, **kw: ResNet18Frame(c, k, **kw),
    "resnet18_ce": lambda c, k, **kw: ResNet18Frame(c, k, loss="ce", **kw),
    "cnn_stn": lambda c, k, **kw: RegSTN(c, k, mode="affine", **kw),
    "cnn_randcrop_sord": lambda c, k, **kw: RandomCropCNN(c, k, **kw),
    # EfficientNet-Lite0 in TF's layout ("same" padding), the layout of its ImageNet weights
    "efficientnet_lite0_ce": lambda c, k, **kw: TimmFrame("tf_efficientnet_lite0", c, k, "ce", **kw),
    "efficientnet_lite0_sord": lambda c, k, **kw: TimmFrame("tf_efficientnet_lite0", c, k, "sord", **kw),
}


def build_frame_model(name: str, in_channels: int = 1, num_classes: int = 4,
                      image_size: int | tuple[int, int] = 64, encoder_weights: str | None = None,
                      **kw) -> nn.Module:
    """All models size themselves from the input (ceil-mode and adaptive pooling), so
    `image_size` is only checked: below 8 px the half-size crops carry no structure.

    `encoder_weights`: a local encoder file (e.g. from contrastive pretraining) or
    `imagenet` (the encoder's ImageNet weights on this machine), loaded into the model's
    encoder by `load_encoder`; the rest of the model starts random."""
    if name not in FRAME_MODELS:
        raise ValueError(f"unknown frame model {name!r}; choose one of {sorted(FRAME_MODELS)}")
    sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(sizes) < 8:
        raise ValueError(f"image_size {image_size} too small for {name}: need >= 8 px")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"{name}: need in_channels >= 1 and num_classes >= 2, "
                         f"got {in_channels} and {num_classes}")
    try:
        model = FRAME_MODELS[name](in_channels, num_classes, **kw)
    except TypeError as exc:
        raise ValueError(f"{name}: bad model option(s) {sorted(kw)}: {exc}") from None
    return load_encoder(model, encoder_weights) if encoder_weights else model
