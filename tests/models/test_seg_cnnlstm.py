"""Segmentation models (smp, no downloads) and the CNN-LSTM in both of its paths."""
from __future__ import annotations

import pytest
import torch

from lus_dist.training.losses import dice_ce_loss
from lus_dist.models import CNNLSTM, CNNLSTMConfig, build_seg_model, extract_features


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "deeplabv3plus"])
def test_seg_forward_backward(arch):
    model = build_seg_model(arch, "resnet18", in_channels=1, num_classes=4)
    logits = model(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 4, 32, 32)
    dice_ce_loss(logits, torch.randint(0, 4, (2, 32, 32))).backward()
    assert model.encoder.conv1.weight.grad is not None


def test_seg_weights_file(tmp_path):
    src = build_seg_model("unet")
    whole, enc = tmp_path / "whole.pt", tmp_path / "enc.pt"
    torch.save(src.state_dict(), whole)
    torch.save({"state_dict": src.encoder.state_dict()}, enc)
    a = build_seg_model("unet", weights_path=str(whole))
    assert torch.equal(a.decoder.blocks[0].conv1[0].weight, src.decoder.blocks[0].conv1[0].weight)
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, ddp)
    assert torch.equal(build_seg_model("unet", weights_path=str(ddp)).encoder.conv1.weight,
                       src.encoder.conv1.weight)
    b = build_seg_model("unet", weights_path=str(enc))
    assert torch.equal(b.encoder.conv1.weight, src.encoder.conv1.weight)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_seg_model("unet", weights_path=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="do not match"):
        build_seg_model("unet", in_channels=3, weights_path=str(whole))
    (tmp_path / "junk.pt").write_text("not torch")
    with pytest.raises(ValueError, match="junk.pt: not a readable"):
        build_seg_model("unet", weights_path=str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="unknown segmentation arch"):
        build_seg_model("segformer")


@pytest.mark.parametrize("encoder", ["small_cnn", "resnet18", "mobilenetv3_small_050"])
def test_cnnlstm_end_to_end(encoder):
    torch.manual_seed(0)
    model = CNNLSTM(CNNLSTMConfig(encoder=encoder, lstm_units=16, dense_units=8))
    frames = torch.rand(2, 5, 1, 64, 64)
    logits = model(frames)
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cnnlstm_frozen_encoder_and_cached_features(tmp_path):
    torch.manual_seed(0)
    base = CNNLSTM(CNNLSTMConfig(lstm_units=16))
    torch.save(base.encoder.state_dict(), tmp_path / "enc.pt")
    cfg = CNNLSTMConfig(encoder_weights=str(tmp_path / "enc.pt"), freeze_encoder=True,
                        lstm_units=16)
    model = CNNLSTM(cfg).train()
    assert not model.encoder.training and not any(p.requires_grad
                                                  for p in model.encoder.parameters())
    frames = torch.rand(3, 4, 1, 32, 32)
    model(frames).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    feats = extract_features(model, frames, batch_size=5)
    assert feats.shape == (3, 4, 128)
    assert torch.allclose(feats, extract_features(base, frames), atol=1e-6)  # same weights
    head = CNNLSTM.from_features(128, CNNLSTMConfig(lstm_units=16))
    head.load_state_dict({k: v for k, v in model.state_dict().items()
                          if not k.startswith("encoder.")})
    model.eval(), head.eval()
    assert torch.allclose(head(feats), model(frames), atol=1e-5)
    with pytest.raises(ValueError, match="features per frame"):
        head(torch.rand(1, 4, 64))
    with pytest.raises(ValueError, match="from_features"):
        head(frames)


def test_cnnlstm_unknown_timm_encoder():
    with pytest.raises(ValueError, match="unknown encoder 'nope_net'"):
        CNNLSTM(CNNLSTMConfig(encoder="nope_net"))
