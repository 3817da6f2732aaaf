"""Frame models: build, forward + backward on 1-channel 64x64, shapes, sizes, priors."""
from __future__ import annotations

import pytest
import torch

from lus_dist.training.losses import FrameLossConfig, frame_loss
from lus_dist.models import FRAME_MODELS, FrameOutput, build_frame_model
from lus_dist.models.cnn import ScoreClassifier
from lus_dist.models.regstn import Localiser, RegSTN

PAPER_BLOCKS = [(32, 32), (64, 64), (64, 64), (64, 64), (128, 128), (128, 128)]


def conv_bn(cin: int, cout: int) -> int:
    return 9 * cin * cout + 2 * cout  # 3x3 conv without bias + BatchNorm affine


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(FRAME_MODELS))
def test_forward_backward_64px(name):
    torch.manual_seed(0)
    model = build_frame_model(name, in_channels=1, num_classes=4, image_size=64)
    x, y = torch.rand(4, 1, 64, 64), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert isinstance(out, FrameOutput) and out.logits.shape == (4, 4)
    loss, parts = frame_loss(out, y, FrameLossConfig())
    loss.backward()
    assert torch.isfinite(loss) and parts["loss"] == pytest.approx(loss.item())
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter must get a gradient (DDP)"
    model.eval()
    with torch.no_grad():
        assert model(x).logits.shape == (4, 4)


def test_classifier_matches_paper_blocks():
    cin, expected = 1, 0
    for c1, c2 in PAPER_BLOCKS:
        expected += conv_bn(cin, c1) + conv_bn(c1, c2)
        cin = c2
    expected += 128 * 256 + 256 + 256 * 4 + 4
    clf = ScoreClassifier(1, 4)
    assert n_params(clf) == expected
    convs = [m.out_channels for m in clf.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [c for block in PAPER_BLOCKS for c in block]
    drops = [m.p for m in clf.features if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.3]
    assert [m for m in clf.modules() if isinstance(m, torch.nn.Linear)][0].out_features == 256


@pytest.mark.parametrize("mode,n_out", [("fixed", 4), ("learned", 8), ("affine", 6)])
def test_regstn_parameter_count(mode, n_out):
    loc = conv_bn(1, 32) + conv_bn(32, 64) + conv_bn(64, 64) + conv_bn(64, 128)
    loc += 128 * 128 + 128 + 128 * n_out + n_out
    model = RegSTN(1, 4, mode=mode)
    assert n_params(model.localiser) == loc
    assert isinstance(model.localiser, Localiser)
    assert n_params(model) == loc + n_params(ScoreClassifier(1, 4))


def test_regstn_starts_from_paper_priors():
    x = torch.rand(2, 1, 64, 64)
    fixed = build_frame_model("regstn_fixed").eval()
    thetas, scales = fixed.transforms(x)
    want = torch.tensor([[[0.5, 0, 0.3], [0, 0.5, 0.3]], [[0.75, 0, 0.2], [0, 0.75, 0.2]]])
    assert scales is None and torch.allclose(thetas, want.expand(2, -1, -1, -1), atol=1e-6)
    learned = build_frame_model("regstn_learned").eval()
    thetas, scales = learned.transforms(x)
    assert torch.allclose(scales, torch.tensor([[0.5, 0.75]] * 2), atol=1e-6)
    assert torch.allclose(thetas, want.expand(2, -1, -1, -1), atol=1e-6)


def test_regstn_crops_are_half_size_and_inference_uses_crop1():
    model = build_frame_model("regstn_learned").eval()
    seen = []
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    x = torch.rand(3, 1, 64, 48)
    out = model(x)
    assert seen == [torch.Size([3, 1, 32, 24])] and "logits2" not in out.aux
    model.train()
    out = model(x)
    assert seen[-1] == torch.Size([6, 1, 32, 24]) and out.aux["logits2"].shape == (3, 4)


def test_stn_loss_terms():
    model = build_frame_model("regstn_learned")
    out = model(torch.rand(2, 1, 64, 64))
    _, parts = frame_loss(out, torch.tensor([1, 2]), FrameLossConfig(lambda_cons=0.0))
    assert set(parts) == {"loss", "sord", "cons", "stn"} and parts["cons"] == 0.0
    aux = dict(out.aux, scales=torch.tensor([[0.7, 0.75], [0.5, 0.25]]))
    _, parts = frame_loss(out._replace(aux=aux), torch.tensor([1, 2]),
                          FrameLossConfig(lambda_stn=2.0))
    assert parts["stn"] == pytest.approx(2.0 * (0.2 + 0.5) / 4, rel=1e-6)


def test_ce_and_sord_baselines_differ_only_by_loss():
    torch.manual_seed(0)
    ce = build_frame_model("cnn_ce")
    out = ce(torch.rand(2, 1, 64, 64))
    assert out.loss == "ce"
    loss, parts = frame_loss(out, torch.tensor([0, 3]))
    want = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 3]))
    assert set(parts) == {"loss", "ce"} and loss.item() == pytest.approx(want.item(), rel=1e-6)
    _, parts = frame_loss(out, torch.tensor([0, 3]), FrameLossConfig(loss="sord"))
    assert "sord" in parts


@pytest.mark.parametrize("ce,sord", [("cnn_ce", "cnn_sord"), ("resnet18_ce", "resnet18_sord")])
def test_ce_twin_has_the_same_weights_and_only_another_loss(ce, sord):
    """POCUS's classes (covid, pneumonia, healthy) have no order, so each SORD baseline has a
    CE twin: same network, same parameters, cross-entropy instead of the ordinal targets."""
    torch.manual_seed(0)
    a = build_frame_model(ce, 1, 3)
    b = build_frame_model(sord, 1, 3)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.rand(2, 1, 64, 64)
    out_a, out_b = a(x), b(x)
    assert (out_a.loss, out_b.loss) == ("ce", "sord")
    assert torch.equal(out_a.logits, out_b.logits)


def test_224px_and_channels_last_and_bf16():
    model = build_frame_model("regstn_fixed", image_size=224).eval()
    x = torch.rand(1, 1, 224, 224).to(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).logits
    assert ref.shape == low.shape == (1, 4)
    assert torch.allclose(ref, low.float(), atol=0.1 * ref.abs().max().item() + 0.05)


def test_random_crop_is_random_in_training_and_central_in_eval():
    model = build_frame_model("cnn_randcrop_sord")
    x = torch.rand(64, 1, 64, 64)
    t = model.thetas(x)
    assert (t[:, :, 2].abs() <= 0.5).all() and t[:, :, 2].std() > 0.1
    model.eval()
    assert model.thetas(x)[:, :, 2].abs().max() == 0


def test_bad_names_and_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown frame model 'regstn'"):
        build_frame_model("regstn")
    with pytest.raises(ValueError, match="too small"):
        build_frame_model("cnn_sord", image_size=4)
    with pytest.raises(ValueError, match="bad model option"):
        build_frame_model("cnn_sord", colour=3)


def test_regstn_paper_localiser_matches_the_reference():
    """The reference's localiser: six double-conv blocks, 128*7*7 -> 32 -> parameters."""
    blocks, cin = 0, 1
    for c1, c2 in PAPER_BLOCKS:
        blocks += conv_bn(cin, c1) + conv_bn(c1, c2)
        cin = c2
    for mode, n_out in (("learned", 8), ("fixed", 4)):
        model = RegSTN(1, 4, mode=mode, localiser="paper")
        assert n_params(model.localiser) == blocks + 128 * 49 * 32 + 32 + 32 * n_out + n_out
    light = build_frame_model("regstn_learned", 1, 4)
    paper = build_frame_model("regstn_learned", 1, 4, localiser="paper")
    assert round(n_params(light) / 1e6, 2) == 0.91 and round(n_params(paper) / 1e6, 2) == 1.70
    for size in (64, 224):
        x = torch.rand(2, 1, size, size)
        out = paper(x)
        assert out.logits.shape == (2, 4) and out.aux["thetas"].shape == (2, 2, 2, 3)
        # the last layer starts at the priors, so the first crops are the paper's
        assert torch.allclose(out.aux["scales"], torch.tensor([[0.5, 0.75]] * 2), atol=1e-6)
    with pytest.raises(ValueError, match="localiser"):
        build_frame_model("regstn_learned", 1, 4, localiser="huge")
