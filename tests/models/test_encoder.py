"""One mechanism for pretrained encoders: export from the contrastive model, load into the
frame CNN, Reg-STN's classifier, the CNN-LSTM and a resnet18 segmentation encoder."""
from __future__ import annotations

import pytest
import torch

from lus_dist.models import (CNNLSTM, CNNLSTMConfig, ContrastiveModel, build_frame_model,
                             build_seg_model, export_encoder, load_encoder)


def exported(tmp_path, encoder="small_cnn", in_channels=1):
    torch.manual_seed(1)
    model = ContrastiveModel(encoder, in_channels, proj_dim=16, proj_hidden=32)
    return model, export_encoder(model, tmp_path / f"{encoder}.pt")


def same_features(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    """Same weights and buffers under the same names, and the same output."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
        return False
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.allclose(a(x).flatten(1), b(x).flatten(1), atol=1e-6)


def test_contrastive_model_projects_and_exports_without_head(tmp_path):
    model, path = exported(tmp_path)
    z = model(torch.rand(4, 1, 32, 32))
    assert z.shape == (4, 16) and model.features(torch.rand(2, 1, 32, 32)).shape == (2, 128)
    saved = torch.load(path, weights_only=True)
    assert saved["encoder"] == "small_cnn"
    assert not any("projector" in k for k in saved["state_dict"])


@pytest.mark.parametrize("name", ["cnn_sord", "regstn_learned", "cnn_randcrop_sord"])
def test_frame_models_take_the_encoder(tmp_path, name):
    source, path = exported(tmp_path)
    model = build_frame_model(name, in_channels=1, num_classes=4, encoder_weights=str(path))
    x = torch.rand(3, 1, 32, 32)
    assert same_features(source.encoder[0], model.classifier.features, x)
    fresh = build_frame_model(name, in_channels=1, num_classes=4)
    assert not same_features(source.encoder[0], fresh.classifier.features, x)


def test_cnnlstm_takes_the_encoder_and_old_encoder_files(tmp_path):
    source, path = exported(tmp_path)
    model = CNNLSTM(CNNLSTMConfig(encoder_weights=str(path), lstm_units=8))
    assert same_features(source.encoder, model.encoder, torch.rand(2, 1, 32, 32))
    torch.save(source.encoder.state_dict(), tmp_path / "bare.pt")  # a bare state dict works too
    bare = CNNLSTM(CNNLSTMConfig(encoder_weights=str(tmp_path / "bare.pt"), lstm_units=8))
    assert same_features(source.encoder, bare.encoder, torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize("name,encoder", [("cnn_ce", "small_cnn"), ("resnet18_sord", "resnet18")])
def test_a_trained_frame_cnn_exports_the_encoder_a_cnnlstm_reads(tmp_path, name, encoder):
    """The experiment's CNN-LSTM runs on its frame CNN's frozen features (Barros et al.'s
    two stages): the exported file must carry exactly the body, not the classifier."""
    torch.manual_seed(2)
    frame = build_frame_model(name, in_channels=1, num_classes=3)
    path = export_encoder(frame, tmp_path / "encoder.pt")
    saved = torch.load(path, weights_only=True)
    assert saved["encoder"] == encoder and not any(k.startswith(("fc.", "head.")) for k in saved["state_dict"])
    lstm = CNNLSTM(CNNLSTMConfig(encoder=encoder, encoder_weights=str(path), lstm_units=8))
    body = frame.classifier.features if encoder == "small_cnn" else frame.net
    if encoder == "resnet18":
        body.fc = torch.nn.Identity()
    lstm.encoder.eval(), body.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(lstm.encoder(x).flatten(1), body(x).mean((-2, -1)) if encoder == "small_cnn"
                              else body(x), atol=1e-5)


def test_resnet18_encoder_goes_into_frame_baseline_cnnlstm_and_unet(tmp_path):
    source, path = exported(tmp_path, "resnet18")
    x = torch.rand(2, 1, 64, 64)
    frame = build_frame_model("resnet18_sord", 1, 4, encoder_weights=str(path))
    frame.net.fc = torch.nn.Identity()
    assert same_features(source.encoder, frame.net, x)
    lstm = CNNLSTM(CNNLSTMConfig(encoder="resnet18", encoder_weights=str(path), lstm_units=8))
    assert same_features(source.encoder, lstm.encoder, x)
    unet = build_seg_model("unet", "resnet18", in_channels=1, encoder_weights=str(path))
    assert torch.equal(unet.encoder.conv1.weight, source.encoder.conv1.weight)
    assert torch.equal(unet.encoder.layer4[1].bn2.running_var, source.encoder.layer4[1].bn2.running_var)


def test_mismatches_name_the_file_and_the_problem(tmp_path):
    _, small = exported(tmp_path)
    with pytest.raises(ValueError, match=r"small_cnn\.pt.*holds a 'small_cnn' encoder.*'resnet18'"):
        CNNLSTM(CNNLSTMConfig(encoder="resnet18", encoder_weights=str(small)))
    _, three = exported(tmp_path / "rgb", in_channels=3)
    with pytest.raises(ValueError, match=r"rgb/small_cnn\.pt: weights do not match.*wrong shape.*0\.0\.weight"):
        build_frame_model("cnn_sord", 1, 4, encoder_weights=str(three))
    with pytest.raises(ValueError, match=r"small_cnn\.pt: weights do not match"):
        build_seg_model("unet", "resnet18", in_channels=1, encoder_weights=str(small))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_frame_model("cnn_sord", 1, 4, encoder_weights=str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_text("not torch")
    with pytest.raises(ValueError, match="junk.pt: not a readable"):
        load_encoder(build_frame_model("cnn_sord", 1, 4), tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="from_features"):
        load_encoder(CNNLSTM.from_features(128), small)


def gray_response(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return encoder(x).flatten(1)


def test_a_torchvision_imagenet_file_goes_into_every_resnet18_slot(tmp_path, capsys):
    """A cluster's ImageNet file (torchvision's layout: RGB stem, 1000-class `fc`) starts
    the grayscale models: the head is dropped and the stem summed over RGB, so every
    encoder answers a gray frame exactly as the ImageNet net answers it as RGB."""
    import torchvision

    torch.manual_seed(3)
    imagenet = torchvision.models.resnet18(weights=None, num_classes=1000)
    for m in imagenet.modules():   # non-trivial BN statistics, so a mix-up would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    imagenet.fc = torch.nn.Identity()
    x = torch.rand(2, 1, 64, 64)
    expected = gray_response(imagenet, x.repeat(1, 3, 1, 1))

    frame = build_frame_model("resnet18_ce", 1, 3, encoder_weights=str(path))
    assert frame.net.fc.out_features == 3        # its own head, not ImageNet's
    frame.net.fc = torch.nn.Identity()
    lstm = CNNLSTM(CNNLSTMConfig(encoder="resnet18", encoder_weights=str(path), lstm_units=8))
    for encoder in (frame.net, lstm.encoder):
        assert torch.allclose(gray_response(encoder, x), expected, atol=1e-4)
    unet = build_seg_model("unet", "resnet18", in_channels=1, encoder_weights=str(path))
    assert torch.allclose(unet.encoder.conv1.weight, imagenet.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(unet.encoder.layer4[1].bn2.running_var, imagenet.layer4[1].bn2.running_var)
    said = capsys.readouterr().err
    assert "dropped the file's classifier head ['fc.bias', 'fc.weight']" in said
    assert "conv1.weight: RGB filters adapted to 1 input channel(s)" in said


def test_a_timm_imagenet_file_goes_into_a_timm_cnnlstm_encoder(tmp_path):
    import timm

    torch.manual_seed(4)
    name = "mobilenetv3_small_050"
    imagenet = timm.create_model(name, pretrained=False)      # RGB stem, `classifier` head
    path = tmp_path / f"{name}.pth"
    torch.save(imagenet.state_dict(), path)
    lstm = CNNLSTM(CNNLSTMConfig(encoder=name, encoder_weights=str(path), lstm_units=8))
    imagenet.reset_classifier(0)
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(gray_response(lstm.encoder, x),
                          gray_response(imagenet, x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_an_imagenet_file_of_another_architecture_is_still_refused(tmp_path):
    import torchvision

    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet34\.pth: weights do not match.*unexpected.*layer"):
        build_frame_model("resnet18_ce", 1, 3, encoder_weights=str(path))
