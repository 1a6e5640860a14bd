"""The partial-convolution cases and contenders that benchmarks/test_partial_conv_bench.py (one
contender after the other, pytest-benchmark) and benchmarks/partial_conv_paired.py (both back to
back in every round) time: the same data, the same calls."""
from __future__ import annotations

import functools

import torch

from fastad.ops import partial_conv2d, reference

BATCH = 32
CASES = [(64, 64, False), (128, 64, False), (64, 128, False), (128, 128, False), (64, 64, True)]
CONTENDERS = {"fastad": partial_conv2d, "reference": reference.partial_conv2d}


@functools.lru_cache(maxsize=2)
def layer_data(channels: int, size: int, multi_channel: bool, device: str):
    """(input, mask, weight, bias, grad_out) for one case, seeded, generated on the CPU."""
    g = torch.Generator().manual_seed(channels * 1000 + size)
    x = torch.randn(BATCH, channels, size, size, generator=g)
    weight = torch.randn(channels, channels, 3, 3, generator=g) * (2.0 / (9 * channels)) ** 0.5
    bias = torch.randn(channels, generator=g) * 0.1
    mask = torch.ones(BATCH, channels if multi_channel else 1, size, size)
    patch = size // 4
    corners = torch.randint(0, size - patch + 1, (BATCH, 2), generator=g)
    for i, (top, left) in enumerate(corners.tolist()):
        mask[i, :, top:top + patch, left:left + patch] = 0
    grad_out = torch.randn(BATCH, channels, size, size, generator=g)
    return tuple(t.to(device) for t in (x, mask, weight, bias, grad_out))


def timed_call(fn, device, backward, data, multi_channel):
    x, mask, weight, bias, grad_out = data
    leaves = [t.detach().requires_grad_(backward) for t in (x, weight, bias)]

    def run():
        out, _ = fn(leaves[0], mask, leaves[1], leaves[2], padding=1, multi_channel=multi_channel)
        if backward:
            torch.autograd.backward(out, grad_out, inputs=leaves)
            for leaf in leaves:
                leaf.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run
