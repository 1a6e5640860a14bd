"""PatchCore's backbone: torchvision's ResNet family (no torchvision needed, nothing downloaded),
with torchvision's parameter names so that a torchvision weights file loads as it is.

    net = resnet("resnet18", last_layer="layer3")          # stem, layer1..layer3 (no layer4, no fc)
    load_torchvision_state(net, read_state_dict(path, "weights", "torchvision resnet18"), path)
    features = net(images, ("layer2", "layer3"))           # {"layer2": [B, 128, H/8, W/8], "layer3": ...}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastad.models.glance_teacher import IMAGENET_MEAN, IMAGENET_STD, BasicBlock

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
