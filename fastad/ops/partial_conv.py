"""Partial convolution (Liu et al. 2018) with NVIDIA PartialConv2d semantics
(fastad::partial_conv_coverage, fastad::partial_conv_renormalize[_backward]): argument checks,
autograd, fake kernels and backend dispatch.

partial_conv2d = torch's conv2d of input ⊙ mask without bias (cuDNN / oneDNN, differentiated by
autograd), the mask coverage as a box sum in fastad's kernels (never a convolution), and one fused
renormalisation kernel: out = (raw·ratio + b)·update, which equals NVIDIA's ((raw + b) − b)·ratio
+ b, ·update, up to the rounding of the "+ b − b" round trip. In eager mode the renormalisation
runs in place on the fresh convolution output (NCHW or channels_last, read directly); under
torch.compile the functional op runs. The design's measurements are in benchmarks/RESULTS.md
(partial_conv2d).

Groups: NVIDIA's layer counts coverage over all C_in channels (slide_winsize = C_in·kH·kW) even
when groups > 1; fastad counts each group's own C_in/groups channels. With groups=1, or with
multi_channel=False, the two agree exactly.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn.modules.utils import _pair

from fastad.ops.autocast import float32_under_autocast
from fastad.ops import fake
from fastad import extension
from fastad.backend import use_reference
from fastad.ops import reference
from fastad.checks import check_float, check_same_device, check_tensor


class Coverage(NamedTuple):
    """counts [B or 1, G, Ho, Wo]: the mask summed over each window (and group);
    slide_winsize: the count of a fully valid window."""

    counts: torch.Tensor
    slide_winsize: float


@float32_under_autocast
def partial_conv_coverage(mask: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """Box sum of a mask as a convolution with a ones kernel would compute it.

    Args:
        mask: [B, C, H, W] float32 or float64.
        kernel_size, stride, padding, dilation: int or pair, as for conv2d (zero padding).
        groups: divides C; each group's C/groups channels are summed together.

    Returns:
        coverage [B, groups, Ho, Wo] in mask's dtype.
    """
    check_tensor("mask", mask, 4, "[B, C, H, W]")
    check_float("mask", mask, cuda_float64=True)
    kernel_size, stride, padding, dilation = _conv_params(kernel_size, stride, padding, dilation)
    _check_int_param("groups", groups, 1)
    if mask.shape[1] % groups:
        raise ValueError(f"groups ({groups}) must divide the mask's channels ({mask.shape[1]})")
    for axis in range(2):
        if _out_size(mask.shape[2 + axis], kernel_size[axis], stride[axis], padding[axis], dilation[axis]) < 1:
            raise ValueError(f"the dilated kernel {kernel_size} does not fit the padded mask {tuple(mask.shape)}")
    if use_reference():
        return reference.partial_conv_coverage(mask, kernel_size, stride, padding, dilation, groups)
    extension.require("partial_conv_coverage")
    return torch.ops.fastad.partial_conv_coverage(mask, kernel_size, stride, padding, dilation, groups)


@float32_under_autocast
def partial_conv_renormalize(raw: torch.Tensor, coverage: torch.Tensor, bias: torch.Tensor | None, slide_winsize: float):
    """The fused tail of a partial convolution.

    Args:
        raw: [B, Co, Ho, Wo] float32 or float64, the convolution of input ⊙ mask without bias.
        coverage: [B or 1, G, Ho, Wo], same dtype as raw; G divides Co (channel o uses group
            o // (Co/G)).
        bias: [Co] or None.
        slide_winsize: coverage of a fully valid window.

    Returns:
        (out [B, Co, Ho, Wo], update_mask [B or 1, G, Ho, Wo]) with update = clamp(coverage, 0, 1),
        ratio = slide_winsize / (coverage + 1e-8) · update, out = (raw·ratio + bias)·update, or
        raw·ratio without bias. Differentiable in raw and bias. out has raw's layout when raw is
        contiguous in NCHW or channels_last order (read without a copy), else it is NCHW.
    """
    check_float("raw", raw, cuda_float64=True)
    if use_reference():
        return reference.partial_conv_renormalize(raw, coverage, bias, slide_winsize)
    extension.require("partial_conv_renormalize")
    return torch.ops.fastad.partial_conv_renormalize(raw, coverage, bias, float(slide_winsize))


def mask_coverage(input_shape, mask: torch.Tensor | None, weight_shape, stride=1, padding=0, dilation=1,
                  groups: int = 1, multi_channel: bool = False, *, device=None, dtype=None) -> Coverage:
    """The coverage a PartialConv2d layer needs, for caching across calls with the same mask.

    Args:
        input_shape: (B, C_in, H, W) of the layer input.
        mask: None (all ones), or as partial_conv2d takes it, already of the input's dtype.
        weight_shape: (C_out, C_in/groups, kH, kW).
        device, dtype: of the all-ones mask when mask is None.

    Returns:
        Coverage(counts [B or 1, G, Ho, Wo], slide_winsize) with G = groups when multi_channel,
        else 1, and slide_winsize = (C_in/groups if multi_channel else 1)·kH·kW.
    """
    kernel = tuple(weight_shape[2:])
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    per_group = input_shape[1] // groups
    slide = float((per_group if multi_channel else 1) * kernel[0] * kernel[1])
    if mask is None:
        ones = torch.ones((1, 1, *input_shape[2:]), device=device, dtype=dtype)
        counts = partial_conv_coverage(ones, kernel, stride, padding, dilation, 1)
        if multi_channel:  # NVIDIA's all-ones [B, C_in, H, W]: every channel of a group counts
            counts = (counts * per_group).expand(-1, groups, -1, -1)
        return Coverage(counts, slide)
    if not multi_channel:
        return Coverage(partial_conv_coverage(mask, kernel, stride, padding, dilation, 1), slide)
    if mask.shape[1] > 1 and mask.stride(1) == 0:
        # the same memory for every channel (e.g. the update mask a multi_channel layer returns):
        # one channel's window sums times the channels per group
        single = partial_conv_coverage(mask[:, :1], kernel, stride, padding, dilation, 1)
        return Coverage((single * per_group).expand(-1, groups, -1, -1), slide)
    return Coverage(partial_conv_coverage(mask, kernel, stride, padding, dilation, groups), slide)


@float32_under_autocast
def partial_conv2d(input: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   stride=1, padding=0, dilation=1, groups: int = 1, multi_channel: bool = False, *,
                   coverage: Coverage | None = None):
    """Partial convolution with NVIDIA PartialConv2d semantics (zero padding).

    Args:
        input: [B, C_in, H, W] float32 or float64 (float16/bfloat16 under torch.autocast only).
        mask: None (all ones); [B or 1, 1, H, W] when not multi_channel, [B or 1, C_in, H, W]
            when multi_channel; floating or bool, cast to input's dtype. Not differentiable.
        weight: [C_out, C_in/groups, kH, kW]; bias: [C_out] or None.
        stride, padding, dilation: int or pair; groups: as for conv2d.
        multi_channel: whether the mask has one channel per input channel.
        coverage: a Coverage from mask_coverage() for this very mask and layer (a cache hit);
            None computes it.

    Returns:
        (out [B, C_out, Ho, Wo], update_mask): update_mask is [B or 1, 1, Ho, Wo], or
        [B or 1, C_out, Ho, Wo] when multi_channel (a broadcast view over channels when
        groups=1; NVIDIA's layer returns the same values materialised).
        out = (conv(input ⊙ mask) − b)·ratio + b, then ·update_mask, where update_mask =
        clamp(coverage, 0, 1) and ratio = slide_winsize / (coverage + 1e-8)·update_mask.
        Differentiable in input, weight and bias (first-order: the renormalisation's backward
        kernel has no derivative of its own, so no double backward).
    """
    mask = check_partial_conv2d(input, mask, weight, bias, stride, padding, dilation, groups, multi_channel)
    if use_reference():
        return reference.partial_conv2d(input, mask, weight, bias, stride, padding, dilation, groups, multi_channel)
    return partial_conv2d_checked(input, mask, weight, bias, stride, padding, dilation, groups, multi_channel,
                                  coverage)


def partial_conv2d_checked(input, mask, weight, bias, stride, padding, dilation, groups, multi_channel,
                           coverage: Coverage | None = None):
    """partial_conv2d() on arguments that check_partial_conv2d() passed (mask as it returned it),
    on the native backend."""
    extension.require("partial_conv2d")
    if coverage is None:
        coverage = mask_coverage(input.shape, mask, weight.shape, stride, padding, dilation, groups, multi_channel,
                                 device=input.device, dtype=input.dtype)
    if mask is None:
        masked = input
    elif torch.compiler.is_compiling():
        masked = input * mask
    else:
        masked = _MaskInput.apply(input, mask)
    raw = torch.nn.functional.conv2d(masked, weight, None, stride, padding, dilation, groups)
    counts = coverage.counts.to(raw.dtype)
    if bias is not None:
        bias = bias.to(raw.dtype)
    if _kernel_reads_directly(raw) and not torch.compiler.is_compiling():
        out, update = _RenormalizeInPlace.apply(raw, counts, bias, coverage.slide_winsize)
    else:
        out, update = torch.ops.fastad.partial_conv_renormalize(raw, counts, bias, coverage.slide_winsize)
    if multi_channel:
        batch = input.shape[0] if mask is None else mask.shape[0]
        shape = (batch, weight.shape[0], *update.shape[2:])
        update = update.expand(shape) if update.shape[1] == 1 else update.repeat_interleave(
            weight.shape[0] // update.shape[1], dim=1).expand(shape)
    return out, update


def check_partial_conv2d(input, mask, weight, bias, stride, padding, dilation, groups, multi_channel):
    """Raises TypeError / ValueError naming the bad argument; returns the mask cast to input's
    dtype (None stays None)."""
    check_tensor("input", input, 4, "[B, C_in, H, W]")
    check_tensor("weight", weight, 4, "[C_out, C_in/groups, kH, kW]")
    check_float("input", input, cuda_float64=True)
    if weight.dtype != input.dtype:
        raise TypeError(f"weight must have input's dtype {input.dtype}, got {weight.dtype}")
    check_same_device(("input", "weight"), input, weight)
    _check_int_param("groups", groups, 1)
    if not isinstance(multi_channel, bool):
        raise TypeError(f"multi_channel must be a bool, got {type(multi_channel).__name__}")
    batch, in_channels, height, width = input.shape
    if in_channels % groups or weight.shape[0] % groups:
        raise ValueError(f"groups ({groups}) must divide input channels ({in_channels}) and weight's C_out ({weight.shape[0]})")
    if weight.shape[1] * groups != in_channels:
        raise ValueError(f"weight must be [C_out, {in_channels // groups}, kH, kW] for {in_channels} input channels "
                         f"and groups={groups}, got {tuple(weight.shape)}")
    kernel_size, stride, padding, dilation = _conv_params(tuple(weight.shape[2:]), stride, padding, dilation)
    for axis in range(2):
        if _out_size(input.shape[2 + axis], kernel_size[axis], stride[axis], padding[axis], dilation[axis]) < 1:
            raise ValueError(f"the dilated kernel {kernel_size} does not fit the padded input {tuple(input.shape)}")
    if bias is not None:
        check_tensor("bias", bias, 1, f"[C_out={weight.shape[0]}]")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape [C_out={weight.shape[0]}], got {tuple(bias.shape)}")
        check_same_device(("input", "bias"), input, bias)
    if mask is None:
        return None
    expected = f"[B or 1, {in_channels if multi_channel else 1}, {height}, {width}]"
    check_tensor("mask", mask, 4, expected)
    mask_channels = in_channels if multi_channel else 1
    if mask.shape[0] not in (1, batch) or mask.shape[1] != mask_channels or tuple(mask.shape[2:]) != (height, width):
        hint = "" if multi_channel or mask.shape[1] != in_channels else " (pass multi_channel=True for a per-channel mask)"
        raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}{hint}")
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise TypeError(f"mask must be floating or bool, got {mask.dtype}")
    check_same_device(("input", "mask"), input, mask)
    return mask.to(input.dtype)


def _conv_params(kernel_size, stride, padding, dilation):
    names = ("kernel_size", "stride", "padding", "dilation")
    params = []
    for name, value, low in zip(names, (kernel_size, stride, padding, dilation), (1, 1, 0, 1)):
        pair = _pair(value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        for v in pair:
            _check_int_param(name, v, low)
        params.append(tuple(int(v) for v in pair))
    return params


def _check_int_param(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (or a pair of ints), got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _coverage_fake(mask, kernel_size, stride, padding, dilation, groups):
    op = "partial_conv_coverage"
    fake.check(mask.dim() == 4, f"{op}: mask must be [B, C, H, W], got shape {fake.shape(mask)}")
    fake.check(mask.dtype.is_floating_point,
               f"{op}: mask must be a floating tensor, got {fake.SCALAR_NAMES.get(mask.dtype, mask.dtype)}")
    fake.check(len(kernel_size) == len(stride) == len(padding) == len(dilation) == 2,
               f"{op}: kernel_size, stride, padding and dilation take 2 values each")
    for a in range(2):
        fake.check(kernel_size[a] >= 1 and stride[a] >= 1 and dilation[a] >= 1 and padding[a] >= 0,
                   f"{op}: need kernel_size, stride, dilation >= 1 and padding >= 0")
    fake.check(groups >= 1 and mask.shape[1] % groups == 0,
               f"{op}: groups ({groups}) must divide the mask's channels ({mask.shape[1]})")
    size = [_out_size(mask.shape[2 + a], kernel_size[a], stride[a], padding[a], dilation[a]) for a in range(2)]
    fake.check(size[0] >= 1 and size[1] >= 1, f"{op}: the dilated kernel does not fit the padded mask {fake.shape(mask)}")
    return mask.new_empty((mask.shape[0], groups, *size))


def _check_renormalize_fake(op, raw, coverage, bias):
    """csrc/partial_conv/partial_conv_common.h's check_renormalize_args, for the fake kernels."""
    fake.check(raw.dim() == 4, f"{op}: raw / grad_out must be [B, Co, Ho, Wo], got shape {fake.shape(raw)}")
    fake.check(coverage.dim() == 4, f"{op}: coverage must be [B or 1, G, Ho, Wo], got shape {fake.shape(coverage)}")
    fake.check(coverage.shape[0] in (raw.shape[0], 1),
               f"{op}: coverage batch must be 1 or {raw.shape[0]}, got {coverage.shape[0]}")
    fake.check(coverage.shape[1] >= 1 and raw.shape[1] % coverage.shape[1] == 0,
               f"{op}: coverage groups ({coverage.shape[1]}) must divide the output channels ({raw.shape[1]})")
    fake.check(coverage.shape[2:] == raw.shape[2:],
               f"{op}: coverage is {fake.shape(coverage)} but the output is {fake.shape(raw)}")
    fake.check(raw.dtype.is_floating_point and coverage.dtype == raw.dtype,
               f"{op}: raw and coverage must share one floating dtype, got {fake.SCALAR_NAMES.get(raw.dtype)} and "
               f"{fake.SCALAR_NAMES.get(coverage.dtype)}")
    fake.check(coverage.device == raw.device, f"{op}: raw and coverage are on different devices")
    if bias is not None:
        fake.check(bias.dim() == 1 and bias.shape[0] == raw.shape[1],
                   f"{op}: bias must be [Co={raw.shape[1]}], got shape {fake.shape(bias)}")
        fake.check(bias.dtype == raw.dtype and bias.device == raw.device, f"{op}: bias must match raw's dtype and device")


def _kernel_reads_directly(t):
    """Whether the renormalisation kernels read t [B, Co, Ho, Wo] without a copy: dense in NCHW or
    in channels_last order. Their output then takes t's layout (empty_like), else it is NCHW."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _output_like(t):
    return torch.empty_like(t) if _kernel_reads_directly(t) else t.new_empty(t.shape)


def _renormalize_fake(raw, coverage, bias, slide_winsize):
    _check_renormalize_fake("partial_conv_renormalize", raw, coverage, bias)
    return _output_like(raw), coverage.new_empty(coverage.shape)


def _renormalize_backward_fake(grad_out, coverage, slide_winsize, has_bias):
    _check_renormalize_fake("partial_conv_renormalize_backward", grad_out, coverage, None)
    return _output_like(grad_out), grad_out.new_empty((grad_out.shape[1] if has_bias else 0,))


def _renormalize_inplace_fake(raw, coverage, bias, slide_winsize):
    _check_renormalize_fake("partial_conv_renormalize_", raw, coverage, bias)
    return coverage.new_empty(coverage.shape)


def _renormalize_setup_context(ctx, inputs, output):
    _, coverage, bias, slide_winsize = inputs
    ctx.save_for_backward(coverage)
    ctx.slide_winsize = slide_winsize
    ctx.has_bias = bias is not None


def _renormalize_backward(ctx, grad_out, grad_update):
    (coverage,) = ctx.saved_tensors
    grad_raw, grad_bias = torch.ops.fastad.partial_conv_renormalize_backward(
        grad_out, coverage, ctx.slide_winsize, ctx.has_bias)
    return (grad_raw if ctx.needs_input_grad[0] else None, None,
            grad_bias if ctx.has_bias and ctx.needs_input_grad[2] else None, None)


class _MaskInput(torch.autograd.Function):
    """input ⊙ mask (mask broadcast, not differentiable) whose backward masks the incoming
    gradient in place. That gradient is the fresh grad_input of the convolution, the product's
    only consumer, so nothing else holds it; under create_graph (grad mode on in backward) or for
    an odd layout the backward multiplies out of place."""

    @staticmethod
    def forward(ctx, input, mask):
        ctx.save_for_backward(mask)
        return input * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        dense = grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last)
        if torch.is_grad_enabled() or not dense or grad.dtype != mask.dtype:
            return grad * mask, None
        return grad.mul_(mask), None


class _RenormalizeInPlace(torch.autograd.Function):
    """Eager path of partial_conv2d: the fresh conv output raw (contiguous in NCHW or channels_last
    order) is overwritten with the result (fastad::partial_conv_renormalize_), which saves
    allocating and first-touching a second [B, Co, Ho, Wo] tensor; the convolution's backward does
    not need raw. Same backward as the functional op."""

    @staticmethod
    def forward(ctx, raw, coverage, bias, slide_winsize):
        update = torch.ops.fastad.partial_conv_renormalize_(raw, coverage, bias, slide_winsize)
        ctx.mark_dirty(raw)
        ctx.mark_non_differentiable(update)
        _renormalize_setup_context(ctx, (raw, coverage, bias, slide_winsize), None)
        return raw, update

    @staticmethod
    def backward(ctx, grad_out, grad_update):
        return _renormalize_backward(ctx, grad_out, grad_update)


if extension.loaded():
    torch.library.register_fake("fastad::partial_conv_coverage", _coverage_fake)
    torch.library.register_fake("fastad::partial_conv_renormalize", _renormalize_fake)
    torch.library.register_fake("fastad::partial_conv_renormalize_", _renormalize_inplace_fake)
    torch.library.register_fake("fastad::partial_conv_renormalize_backward", _renormalize_backward_fake)
    torch.library.register_autograd("fastad::partial_conv_renormalize", _renormalize_backward,
                                    setup_context=_renormalize_setup_context)
