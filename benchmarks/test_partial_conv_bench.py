"""Benchmarks of fastad.ops.partial_conv2d against the two-convolution formulation in plain
PyTorch (fastad.ops.reference.partial_conv2d: conv(mask, ones) for the coverage, conv(input ⊙ mask)
with bias, then NVIDIA's (raw − b)·ratio + b and ·update_mask as separate torch ops).

Global-Net sizes: batch 32, 3×3 kernels, channels 64→64 and 128→128, 64×64 and 128×128 inputs,
padding 1, a single-channel mask with one Glance patch (a quarter of the side) masked out per
image; forward, and forward + backward (input, weight and bias gradients). "fastad" computes the
coverage on every call (no caching), like the reference. One multi_channel case as well. The
128×128 cases run 2 rounds to keep the suite short on 2 cores.

Run: pytest benchmarks/test_partial_conv_bench.py --benchmark-group-by=group
"""
from __future__ import annotations

import pytest
import torch

from benchlib import requires_cuda
from fastad.ops import reference
from partial_conv_cases import BATCH, CASES, CONTENDERS, layer_data, timed_call

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("channels,size,multi_channel", CASES,
                         ids=[f"{c}ch-{s}px{'-multi' if m else ''}" for c, s, m in CASES])
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_partial_conv2d(benchmark, contender, channels, size, multi_channel, mode, device):
    if multi_channel and device == "cpu" and mode == "forward":
        pytest.skip("multi_channel is timed forward+backward only on the CPU, to keep the suite short")
    benchmark.group = f"partial_conv2d {device} {mode} B{BATCH} {channels}->{channels} {size}x{size}" + (
        " multi_channel" if multi_channel else "")
    benchmark.extra_info["contender"] = contender
    data = layer_data(channels, size, multi_channel, device)
    run = timed_call(CONTENDERS[contender], device, mode == "forward+backward", data, multi_channel)
    rounds = 2 if (device == "cpu" and size >= 128) else 3
    out = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
    want, _ = reference.partial_conv2d(data[0][:2], data[1][:2], data[2], data[3], padding=1, multi_channel=multi_channel)
    torch.testing.assert_close(out[:2].detach(), want, rtol=1e-3, atol=1e-3)
