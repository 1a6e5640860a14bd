"""FCDD's networks and its heatmap function.

    net = fcdd_cnn224()                 # [B, 3, 224, 224] -> [B, F, 28, 28], receptive field 59, stride 8
    net = PretrainedTrunk("efficientnet_lite0", weights="pretrained")   # frozen lite0 to stride 8 + trainable convs
    A = upsampler(pseudo_huber(head(net(x))))   # [B, 1, 224, 224] anomaly scores >= 0
    field = receptive_geometry(nn.Sequential(net, head), 224)          # that upsampler's geometry

(The paper's pretrained network, VGG-11-BN, is fastad.models.components.backbones.vgg11_features.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fastad.models.components.zoo import BACKBONES, model_backbone
from fastad.nn.score_map_upsampler import ReceptiveField

#: Filter counts of FCDD's from-scratch CNN for 224 x 224 inputs (convs 1-5).
CNN224_FILTERS = (8, 32, 64, 128, 128)


def pseudo_huber(x: torch.Tensor) -> torch.Tensor:
    """h(x) = sqrt(x^2 + 1) - 1, elementwise (>= 0, smooth at 0), computed as
    x^2 / (sqrt(x^2 + 1) + 1): the same value without the cancellation that rounds small scores to
    0 (in bfloat16 every |x| < 0.06; in float32 every |x| < 3e-4)."""
    square = x * x
    return square / (torch.sqrt(square + 1) + 1)


def _conv_block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout, eps=1e-4), nn.LeakyReLU(0.01)]


def fcdd_cnn224(width: float = 1.0, in_channels: int = 3) -> nn.Sequential:
    """FCDD's from-scratch CNN for 224 x 224 inputs, without the final 1x1 convolution:
    conv5x5(8)-BN-LReLU-maxpool3/2, conv5x5(32)-BN-LReLU-maxpool3/2, conv3x3(64)-BN-LReLU,
    conv3x3(128)-BN-LReLU-maxpool3/2, conv3x3(128) (filter counts scaled by `width`, at least 1).
    [B, C, H, W] -> [B, F, H/8, W/8] (F = 128 * width); receptive field 59 px, stride 8, unit 0
    centred on pixel 0."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    f = [max(1, round(n * width)) for n in CNN224_FILTERS]
    return nn.Sequential(*_conv_block(in_channels, f[0], 5), nn.MaxPool2d(3, 2, 1),
                         *_conv_block(f[0], f[1], 5), nn.MaxPool2d(3, 2, 1),
                         *_conv_block(f[1], f[2], 3), *_conv_block(f[2], f[3], 3), nn.MaxPool2d(3, 2, 1),
                         nn.Conv2d(f[3], f[4], 3, padding=1))


#: the zoo tap a PretrainedTrunk's frozen part ends at (stride 8: where the paper cuts VGG-11)
FROZEN_TAP = "stride8"
#: filter counts of the trainable convolutions on top of the frozen part (scaled by `width`)
UPPER_FILTERS = (128, 128)


class PretrainedTrunk(nn.Module):
    """FCDD's network on a pretrained backbone (the paper's frozen VGG-11 role): a zoo backbone
    (components.zoo) up to FROZEN_TAP, frozen (weights and BatchNorm statistics; it normalises
    its own input), then conv3x3-BN-LReLU and conv3x3 (UPPER_FILTERS scaled by `width`, at least
    1), trainable. images [B, 3, H, W] in [0, 1] -> [B, F, H/8, W/8].

    Args:
        name: an EfficientNet-Lite zoo entry. width: > 0. weights: "pretrained", "random" or a
            file path (see components.zoo.build_backbone). seed: draws the random backbone.
        read: False builds the frozen layers without reading or drawing anything (a checkpoint
            fills them).
    """

    def __init__(self, name: str, width: float = 1.0, weights: str = "pretrained", seed: int = 0,
                 read: bool = True):
        super().__init__()
        self.frozen = model_backbone("fcdd", name, (FROZEN_TAP,), weights, seed, read)
        f = [max(1, round(n * width)) for n in UPPER_FILTERS]
        self.upper = nn.Sequential(*_conv_block(BACKBONES[name].taps[FROZEN_TAP][1], f[0], 3),
                                   nn.Conv2d(f[0], f[1], 3, padding=1))

    def train(self, mode: bool = True):
        """The frozen part stays in eval mode (its BatchNorm statistics fixed) whatever `mode`."""
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.upper(self.frozen(images)[FROZEN_TAP])


def receptive_geometry(net: nn.Module, size: int) -> ReceptiveField:
    """The geometry of net's output units on square inputs of `size` px, walking net.modules()
    in definition order (their run order) through every Conv2d, MaxPool2d and AvgPool2d, as
    fastad.nn.score_map_upsampler.receptive_field does, but following the spatial size so that
    TF-style "same" convolutions (timm's Conv2dSame: padding computed per input, the odd pixel
    on the bottom/right) get their actual top/left padding
    max((ceil(n / s) - 1) s + k_eff - n, 0) // 2. Residual shortcuts are identities or 1x1 convs
    inside the main path's field, so the main path gives the field. Square layers only."""
    from timm.layers import Conv2dSame

    jump, extent, start, n = 1, 1, 0.0, size
    for module in net.modules():
        if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        k, stride, dilation = (_first(getattr(module, a, 1)) for a in ("kernel_size", "stride", "dilation"))
        padding = dilation * (k - 1) // 2 if module.padding == "same" else _first(module.padding)
        k_eff = dilation * (k - 1) + 1
        if isinstance(module, Conv2dSame):
            padding = max((math.ceil(n / stride) - 1) * stride + k_eff - n, 0) // 2
            n = math.ceil(n / stride)
        else:
            n = (n + 2 * padding - k_eff) // stride + 1
        start += ((k_eff - 1) / 2 - padding) * jump
        extent += (k_eff - 1) * jump
        jump *= stride
    return ReceptiveField(extent, jump, start)


def _first(value) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"net layers must be square, got {tuple(value)}")
        value = value[0]
    return int(value)
