"""CNN-LSTM video classifier (Barros et al. 2021): frame encoder -> LSTM -> dense -> classes.

The authors extracted Xception features once (Keras) and trained the recurrent head on
them. Both paths exist here: end to end on clips (B, T, C, H, W), or a head-only model on
cached features (B, T, F) written by a feature-extraction step with `extract_features`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .encoder import build_encoder, load_encoder


@dataclass
class CNNLSTMConfig:
    encoder: str = "small_cnn"  # "small_cnn", "resnet18" or any timm model name
    encoder_weights: str | None = None  # local encoder file (models.load_encoder); never downloaded
    freeze_encoder: bool = False
    in_channels: int = 1
    seq_len: int = 10  # frames per clip (paper: 5 / 10 / 15 / 20); set by the data
    lstm_units: int = 64
    dropout: float = 0.5
    dense_units: int = 64
    num_classes: int = 3


class CNNLSTM(nn.Module):
    """forward(frames (B, T, C, H, W) or features (B, T, F)) -> logits (B, num_classes)."""

    def __init__(self, cfg: CNNLSTMConfig | None = None, feature_dim: int | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CNNLSTMConfig()
        if cfg.seq_len < 1 or cfg.lstm_units < 1 or not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"bad CNN-LSTM config: {cfg}")
        self.encoder: nn.Module | None = None
        if feature_dim is None:
            self.encoder, feature_dim = build_encoder(cfg.encoder, cfg.in_channels)
            if cfg.encoder_weights:
                load_encoder(self, cfg.encoder_weights)
            if cfg.freeze_encoder:
                self.encoder.requires_grad_(False)
        self.feature_dim = feature_dim
        self.lstm = nn.LSTM(feature_dim, cfg.lstm_units, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.lstm_units,
                                  cfg.dense_units), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.dense_units, cfg.num_classes))

    @property
    def encoder_name(self) -> str:
        """The `build_encoder` architecture of `encoder`: what `load_encoder` checks a file
        against and `export_encoder` records."""
        return self.cfg.encoder

    @classmethod
    def from_features(cls, feature_dim: int, cfg: CNNLSTMConfig | None = None) -> "CNNLSTM":
        """The recurrent head alone, trained on cached (B, T, F) features."""
        return cls(cfg, feature_dim=feature_dim)

    def train(self, mode: bool = True) -> "CNNLSTM":
        super().train(mode)
        if self.encoder is not None and self.cfg.freeze_encoder:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T, F): all frames of all clips in one encoder batch."""
        if self.encoder is None:
            raise ValueError("this CNN-LSTM was built from_features: pass (B, T, F) features")
        b, t = frames.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_encoder):
            feats = self.encoder(frames.reshape(b * t, *frames.shape[2:]))
        return feats.reshape(b, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            x = self.encode(x)
        elif x.dim() != 3:
            raise ValueError(f"CNN-LSTM expects (B,T,C,H,W) frames or (B,T,F) features, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[-1] != self.feature_dim:
            raise ValueError(f"CNN-LSTM expects {self.feature_dim} features per frame, "
                             f"got {x.shape[-1]}")
        _, (h, _) = self.lstm(x.float() if x.dtype == torch.float64 else x)
        return self.head(h[-1])


@torch.no_grad()
def extract_features(encoder: nn.Module, frames: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
    """Per-frame features for caching: frames (N, C, H, W) or (B, T, C, H, W) -> (..., F).

    `encoder` may be a CNNLSTM (its encoder is used) or any module mapping images to
    vectors. Eval mode, chunked so a long video fits in memory; the mode is restored.
    """
    enc = encoder.encoder if isinstance(encoder, CNNLSTM) else encoder
    if enc is None:
        raise ValueError("extract_features: this CNN-LSTM has no frame encoder")
    if frames.dim() < 4 or frames.numel() == 0:
        raise ValueError(f"extract_features: expected (N,C,H,W) or (B,T,C,H,W) frames, "
                         f"got shape {tuple(frames.shape)}")
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    was_training = enc.training
    enc.eval()
    try:
        out = torch.cat([enc(flat[i:i + batch_size]).flatten(1)
                         for i in range(0, flat.shape[0], batch_size)])
    finally:
        enc.train(was_training)
    return out.reshape(*lead, -1)
