"""PartialConv2d: a drop-in for NVIDIA's PartialConv2d (Liu et al. 2018) over fastad's ops."""
from __future__ import annotations

import torch
from torch import nn

from fastad.ops.autocast import float32_under_autocast
from fastad.backend import use_reference
from fastad.ops import partial_conv as ops


class PartialConv2d(nn.Conv2d):
    """Partial convolution layer with the constructor and forward of NVIDIA's PartialConv2d.

    forward(input [B, C_in, H, W], mask_in=None) -> out [B, C_out, Ho, Wo], or
    (out, update_mask) when return_mask. mask_in: None (all ones), [B or 1, 1, H, W], or
    [B or 1, C_in, H, W] when multi_channel. update_mask is [B or 1, 1, Ho, Wo], or
    [B or 1, C_out, Ho, Wo] when multi_channel (see fastad.ops.partial_conv2d).

    Semantics are NVIDIA's (zero padding renormalised at the borders, clamp of non-binary
    coverage) except that with groups > 1 and multi_channel the coverage is counted per group.

    Coverage cache: the layer keeps the coverage of the last mask and reuses it when the same
    mask object comes again unchanged: same tensor object, data pointer, version counter (bumped
    by every in-place write), shape, strides, dtype, device, and the same conv parameters and
    input size. The cache holds a reference to that mask. Inference tensors (no version counter)
    and torch.compile tracing are never cached.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, multi_channel: bool = False, return_mask: bool = False,
                 padding_mode: str = "zeros", device=None, dtype=None):
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (partial convolution renormalises zero-padded "
                             f"borders), got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a pair of ints, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.multi_channel = multi_channel
        self.return_mask = return_mask
        self._cache_key: tuple | None = None
        self._cache_mask: torch.Tensor | None = None
        self._cache_coverage: ops.Coverage | None = None

    @float32_under_autocast
    def forward(self, input: torch.Tensor, mask_in: torch.Tensor | None = None):
        args = (self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, self.multi_channel)
        mask = ops.check_partial_conv2d(input, mask_in, *args)
        if use_reference():
            out, update_mask = ops.partial_conv2d(input, mask, *args)
        else:
            out, update_mask = ops.partial_conv2d_checked(input, mask, *args, self._coverage(input, mask_in, mask))
        return (out, update_mask) if self.return_mask else out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", multi_channel={self.multi_channel}, return_mask={self.return_mask}"

    def _coverage(self, input: torch.Tensor, mask_in: torch.Tensor | None, mask: torch.Tensor | None):
        """The cached coverage of mask_in if still valid, else mask's (cached when allowed)."""
        key = self._mask_key(input, mask_in)
        if key is not None and self._cache_key == key and self._cache_mask is mask_in:
            return self._cache_coverage
        coverage = ops.mask_coverage(input.shape, mask, self.weight.shape, self.stride, self.padding, self.dilation,
                                     self.groups, self.multi_channel, device=input.device, dtype=input.dtype)
        if key is not None:
            self._cache_key, self._cache_mask, self._cache_coverage = key, mask_in, coverage
        return coverage

    def _mask_key(self, input: torch.Tensor, mask: torch.Tensor | None) -> tuple | None:
        """What the coverage depends on, or None when it must not be cached."""
        if torch.compiler.is_compiling():
            return None
        layer = (tuple(input.shape[1:]) if mask is not None else tuple(input.shape), input.dtype, input.device,
                 tuple(self.weight.shape), self.stride, self.padding, self.dilation, self.groups, self.multi_channel)
        if mask is None:
            return ("ones",) + layer
        if mask.is_inference():
            return None
        return ("mask", mask.data_ptr(), mask._version, tuple(mask.shape), mask.stride(), mask.dtype,
                mask.device) + layer
