"""ScoreMapUpsampler: FCDD's Gaussian receptive-field upsampling as a module, with the receptive
field, total stride and centre offset derived from the network's layers."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastad.checks import check_pair
from fastad.ops.upsample import gaussian_upsample

_GEOMETRY_FREE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
                  nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.Dropout, nn.Dropout2d,
                  nn.Sequential, nn.ModuleList)
_UNSUPPORTED = (nn.ConvTranspose2d, nn.Upsample, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear,
                nn.Flatten, nn.Unfold, nn.Fold, nn.PixelShuffle, nn.PixelUnshuffle)


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of one output unit of a conv net, in input pixels: unit i's receptive field spans
    `extent` pixels centred on stride * i + start."""

    extent: int
    stride: int
    start: float


def receptive_field(net: nn.Module) -> ReceptiveField:
    """Walks net.modules() in definition order (which must be the order they run in, as in
    nn.Sequential stacks) through every Conv2d, MaxPool2d and AvgPool2d, with j = 1, r = 1, s = 0
    for the input and per layer (kernel k, dilation d giving k_eff = d(k-1) + 1, padding p,
    stride t): s' = s + ((k_eff-1)/2 - p) j, r' = r + (k_eff-1) j, j' = j t.
    Layers need square kernels, strides, paddings and dilations. Activations, norms and dropout
    are geometry-free; modules that resample (ConvTranspose2d, Upsample, adaptive pools, Linear)
    are rejected with a ValueError."""
    jump, extent, start = 1, 1, 0.0
    for name, module in net.named_modules():
        if isinstance(module, _UNSUPPORTED):
            raise ValueError(f"net layer {name!r} ({type(module).__name__}) has no fixed receptive field")
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, stride, padding, dilation = _layer_geometry(name, module)
            k_eff = dilation * (k - 1) + 1
            start += ((k_eff - 1) / 2 - padding) * jump
            extent += (k_eff - 1) * jump
            jump *= stride
    return ReceptiveField(extent, jump, start)


def _layer_geometry(name: str, module: nn.Module) -> tuple[int, int, int, int]:
    k, stride = _square(name, "kernel_size", module.kernel_size), _square(name, "stride", module.stride)
    dilation = _square(name, "dilation", getattr(module, "dilation", 1))
    padding = module.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        padding = dilation * (k - 1) // 2  # torch pads the extra pixel of an even kernel on the right
    padding = _square(name, "padding", padding)
    return k, stride, padding, dilation


def _square(name: str, what: str, value) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"net layer {name!r} must have a square {what}, got {tuple(value)}")
        value = value[0]
    return int(value)


class ScoreMapUpsampler(nn.Module):
    """Upsamples FCDD heatmaps [B, C, h, w] to [B, C, H, W] with fastad.ops.gaussian_upsample.

    Args:
        receptive_field, stride, start: the geometry of the heatmap's units (see
            fastad.ops.gaussian_upsample); from_network derives them from the net.
        sigma: Gaussian standard deviation in pixels (FCDD: 12 on MVTec-AD).
        out_size: int or (H, W), the default output size (usually the network input size).
    """

    def __init__(self, receptive_field: int, stride: int, start: float, sigma: float = 12.0, out_size=None):
        super().__init__()
        self.receptive_field, self.stride, self.start, self.sigma = receptive_field, stride, float(start), sigma
        self.out_size = None if out_size is None else check_pair("out_size", out_size)

    @classmethod
    def from_network(cls, net: nn.Module, input_size, sigma: float = 12.0) -> "ScoreMapUpsampler":
        """The upsampler for heatmaps of `net` (see receptive_field) on inputs of input_size
        (int or (H, W)), which becomes the output size."""
        field = receptive_field(net)
        return cls(field.extent, field.stride, field.start, sigma, check_pair("input_size", input_size))

    def forward(self, heatmap: torch.Tensor, out_size=None) -> torch.Tensor:
        size = out_size if out_size is not None else self.out_size
        if size is None:
            raise ValueError("out_size must be given: this upsampler was built without a default out_size")
        return gaussian_upsample(heatmap, size, self.receptive_field, self.stride, self.start, self.sigma)

    def extra_repr(self) -> str:
        return (f"receptive_field={self.receptive_field}, stride={self.stride}, start={self.start}, "
                f"sigma={self.sigma}, out_size={self.out_size}")
