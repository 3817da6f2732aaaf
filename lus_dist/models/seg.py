"""Segmentation of LUS markers (Roy et al.'s pixel-level task) with segmentation-models-pytorch.

Encoders start random (smp's `encoder_weights=None`): this project never downloads weights.
A local file may hold weights for the whole network or for its encoder only; `imagenet`
takes the encoder's ImageNet weights from the machine (`models/imagenet.py`).
"""
from __future__ import annotations

from torch import nn

from . import load_weights_file
from .encoder import load_encoder
from .imagenet import IMAGENET

SEG_ARCHS: dict[str, str] = {"unet": "Unet", "unetplusplus": "UnetPlusPlus",
                             "deeplabv3plus": "DeepLabV3Plus"}


def build_seg_model(arch: str, encoder: str = "resnet18", in_channels: int = 1,
                    num_classes: int = 4, weights_path: str | None = None,
                    encoder_weights: str | None = None) -> nn.Module:
    """forward(x (B, C, H, W)) -> logits (B, num_classes, H, W); H, W multiples of 32.

    `weights_path`: the whole network (or its encoder); `encoder_weights`: an encoder file
    as every model family takes it (`load_encoder`; e.g. a pretrained resnet18 encoder,
    whose keys are smp's resnet18 encoder's), or `imagenet` (e.g. resnet18 with
    torchvision's file in the local cache, tu-tf_efficientnet_lite0 with the
    EfficientNet-Lite0 package)."""
    import segmentation_models_pytorch as smp

    if arch not in SEG_ARCHS:
        raise ValueError(f"unknown segmentation arch {arch!r}; choose one of {sorted(SEG_ARCHS)}")
    encoder_arch = imagenet_arch(encoder, encoder_weights) if encoder_weights else None
    try:
        model = getattr(smp, SEG_ARCHS[arch])(encoder_name=encoder, encoder_weights=None,
                                              in_channels=in_channels, classes=num_classes)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"segmentation encoder {encoder!r} not available for {arch}: "
                         f"{exc}") from None
    if weights_path is not None:
        _load(model, weights_path, f"{arch}/{encoder}")
    if encoder_weights:
        load_encoder(model, encoder_weights, arch=encoder_arch)
    return model


def imagenet_arch(encoder: str, encoder_weights: str) -> str:
    """The architecture whose ImageNet weights an smp encoder takes: smp's resnets have
    torchvision's keys, `tu-<name>` is timm's own `<name>`. smp's `timm-...` copies are
    refused: `timm-tf_efficientnet_lite0` pads symmetrically with BN eps 1e-5, not as the
    TF-trained EfficientNet-Lite weights expect."""
    if encoder_weights == IMAGENET and encoder.startswith("timm-"):
        raise ValueError(f"segmentation encoder {encoder!r} does not take ImageNet weights "
                         f"here: use timm's own net, tu-{encoder[len('timm-'):]}")
    return encoder.removeprefix("tu-")


def _load(model: nn.Module, path: str, what: str) -> None:
    """Whole-network weights first; if the keys are the encoder's, load the encoder only."""
    try:
        load_weights_file(model, path, what)
    except ValueError as whole_error:
        try:
            load_encoder(model, path)   # the one encoder mechanism, as `encoder_weights`
        except ValueError:
            raise whole_error from None
