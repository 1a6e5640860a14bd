"""FCDD's from-scratch network and its heatmap function.

    net = fcdd_cnn224()                 # [B, 3, 224, 224] -> [B, F, 28, 28], receptive field 59, stride 8
    A = upsampler(pseudo_huber(head(net(x))))   # [B, 1, 224, 224] anomaly scores >= 0

(The pretrained alternative, VGG-11-BN, is fastad.models.components.backbones.vgg11_features.)
"""
from __future__ import annotations

import torch
from torch import nn

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
