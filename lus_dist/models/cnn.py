"""Roy et al.'s six-block CNN score classifier and the Table 1 baselines built on it.

The classifier is shared by Reg-STN (both crops), CNN+CE/SORD, CNN+STN and CNN+random crop.
Max pooling uses `ceil_mode=True`, so a 1x1 map stays 1x1: the same network runs on 32x32
crops of 64x64 phantom frames and on 112x112 crops of 224x224 frames without a size switch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import FrameOutput

# (channels of conv 1, channels of conv 2) per block, as in the paper.
BLOCK_WIDTHS: tuple[tuple[int, int], ...] = ((32, 32), (64, 64), (64, 64), (64, 64),
                                             (128, 128), (128, 128))
DROPOUT_AFTER_BLOCK = 4  # zero-based: the 128-128 block followed by dropout 0.3
HIDDEN = 256


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def double_conv_blocks(in_channels: int, dropout: float = 0.3,
                       pool_last: bool = True) -> list[nn.Module]:
    """The paper's six blocks (two conv-BN-ReLU + 2x2 max pool each; dropout after the
    fifth). `pool_last=False` leaves out the sixth pool, as the reference's localiser."""
    layers: list[nn.Module] = []
    cin = in_channels
    for i, (c1, c2) in enumerate(BLOCK_WIDTHS):
        layers += conv_bn_relu(cin, c1) + conv_bn_relu(c1, c2)
        if pool_last or i < len(BLOCK_WIDTHS) - 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        if i == DROPOUT_AFTER_BLOCK:
            layers.append(nn.Dropout(dropout))
        cin = c2
    return layers


class ScoreClassifier(nn.Module):
    """Six conv blocks (two 3x3 convs + pool each) -> global average pool -> 256 -> classes."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(*double_conv_blocks(in_channels, dropout))
        cin = BLOCK_WIDTHS[-1][1]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, HIDDEN), nn.ReLU(inplace=True),
                                  nn.Linear(HIDDEN, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def affine_crop(x: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Sample an (h, w) crop of x through theta (B, 2, 3), in float32.

    float32 because grid_sample needs input and grid of one dtype and theta may come out of
    a bf16-autocast Linear; the result is cast back so a pure-bf16 model stays bf16.
    """
    b, c = x.shape[:2]
    grid = F.affine_grid(theta.float(), [b, c, *out_hw], align_corners=False)
    return F.grid_sample(x.float(), grid, align_corners=False).to(x.dtype)


def half_size(x: torch.Tensor) -> tuple[int, int]:
    h, w = x.shape[-2:]
    return max(1, h // 2), max(1, w // 2)


class PlainCNN(nn.Module):
    """CNN + CE or CNN + SORD (Table 1): the classifier on the whole frame."""

    def __init__(self, in_channels: int, num_classes: int, loss: str = "sord"):
        super().__init__()
        self.classifier = ScoreClassifier(in_channels, num_classes)
        self.loss = loss

    def forward(self, x: torch.Tensor) -> FrameOutput:
        return FrameOutput(self.classifier(x), {}, self.loss)


class RandomCropCNN(nn.Module):
    """CNN + random crop + SORD: Reg-STN's crop size without a learned localiser.

    Training draws a random crop of `scale` x the frame lying inside it (one affine per
    sample, vectorised); evaluation takes the centre crop of the same size.
    """

    def __init__(self, in_channels: int, num_classes: int, scale: float = 0.5):
        super().__init__()
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"random crop scale must be in (0, 1], got {scale}")
        self.classifier = ScoreClassifier(in_channels, num_classes)
        self.scale = scale

    def thetas(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = self.scale
        if self.training:
            theta[:, :, 2] = (torch.rand(b, 2, device=x.device) * 2 - 1) * (1 - self.scale)
        return theta

    def forward(self, x: torch.Tensor) -> FrameOutput:
        theta = self.thetas(x)
        crop = affine_crop(x, theta, half_size(x))
        return FrameOutput(self.classifier(crop), {"thetas": theta[:, None]}, "sord")


class ResNet18Frame(nn.Module):
    """ResNet-18 + SORD (Table 1) or + CE (unordered classes, e.g. POCUS's video classes),
    randomly initialised: nothing is downloaded."""

    def __init__(self, in_channels: int, num_classes: int, loss: str = "sord"):
        super().__init__()
        self.loss = loss
        from torchvision.models import resnet18
        net = resnet18(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.net = net

    def forward(self, x: torch.Tensor) -> FrameOutput:
        return FrameOutput(self.net(x), {}, self.loss)


class TimmFrame(nn.Module):
    """A timm ImageNet architecture as frame classifier, + CE or + SORD: EfficientNet-Lite0
    (`efficientnet_lite0_ce`) starts from its ImageNet weights with `encoder_weights:
    imagenet` (installed with the package that ships them), else from random weights."""

    def __init__(self, arch: str, in_channels: int, num_classes: int, loss: str = "ce",
                 drop_rate: float = 0.2, drop_path_rate: float = 0.0):
        super().__init__()
        import timm
        self.arch, self.loss = arch, loss
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                     in_chans=in_channels, drop_rate=drop_rate,
                                     drop_path_rate=drop_path_rate)

    def forward(self, x: torch.Tensor) -> FrameOutput:
        return FrameOutput(self.net(x), {}, self.loss)
