"""Score-map upsampling ops against their references at the sizes FCDD, PEDENet and GlanceNet use.

Groups: "gaussian_upsample <h>-><H> b32" (forward, and "train" = forward + backward),
"patch_average 64/<stride> 256 b32", "idw_upsample 64/<stride> 256 b32", "gaussian_blur s4 32x1x256".
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import fastad
from fastad.nn.score_map_upsampler import receptive_field
from fastad.ops import PatchGrid, reference
from benchlib import requires_cuda, run_pedantic, synchronized

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]
BATCH = 32


@functools.lru_cache(maxsize=1)
def fcdd_geometry():
    """Receptive field of a VGG11 prefix at stride 8 (three pools, then two more 3x3 convs), the
    shape of FCDD's VGG-based heatmap network."""
    layers, channels = [], 3
    for width in [64, "M", 128, "M", 256, 256, "M", 512, 512]:
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return receptive_field(nn.Sequential(*layers))


def data(shape, device, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.rand(*shape, generator=g).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("h,out", [(28, 224), (32, 256)])
@pytest.mark.parametrize("contender", ["fastad", "reference"])
def test_gaussian_upsample(benchmark, device, h, out, contender):
    field = fcdd_geometry()
    heatmap = data((BATCH, 1, h, h), device)
    op = fastad.ops.gaussian_upsample if contender == "fastad" else reference.gaussian_upsample
    args = ((out, out), field.extent, field.stride, field.start, 12.0)
    benchmark.group = f"gaussian_upsample {h}->{out} b{BATCH} {device}"
    benchmark.name = contender
    run_pedantic(benchmark, synchronized(lambda: op(heatmap, *args), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contender", ["fastad", "reference"])
def test_gaussian_upsample_train(benchmark, device, contender):
    """Forward and backward, as in FCDD's training loss on the upsampled map."""
    field = fcdd_geometry()
    heatmap = data((BATCH, 1, 28, 28), device).requires_grad_()
    op = fastad.ops.gaussian_upsample if contender == "fastad" else reference.gaussian_upsample
    args = ((224, 224), field.extent, field.stride, field.start, 12.0)

    def step():
        op(heatmap, *args).sum().backward()

    benchmark.group = f"gaussian_upsample train 28->224 b{BATCH} {device}"
    benchmark.name = contender
    run_pedantic(benchmark, synchronized(step, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [16, 8])
@pytest.mark.parametrize("contender", ["fastad", "reference"])
def test_patch_average(benchmark, device, stride, contender):
    grid = PatchGrid(64, stride, 256)
    scores = data((BATCH, grid.num_patches), device)
    op = fastad.ops.patch_average if contender == "fastad" else reference.patch_average
    benchmark.group = f"patch_average 64/{stride} 256 b{BATCH} {device}"
    benchmark.name = contender
    run_pedantic(benchmark, synchronized(lambda: op(scores, grid, (256, 256)), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [16, 8])
@pytest.mark.parametrize("contender", ["fastad", "reference"])
def test_idw_upsample(benchmark, device, stride, contender):
    grid = PatchGrid(64, stride, 256)
    scores = data((BATCH, grid.num_patches), device)
    op = fastad.ops.idw_upsample if contender == "fastad" else reference.idw_upsample
    benchmark.group = f"idw_upsample 64/{stride} 256 b{BATCH} {device}"
    benchmark.name = contender
    run_pedantic(benchmark, synchronized(lambda: op(scores, grid, (256, 256), 2.0, None), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contender", ["fastad", "reference"])
def test_gaussian_blur(benchmark, device, contender):
    """reference = anomalib's way: reflect pad, one full 33x33 2-D convolution."""
    maps = data((BATCH, 1, 256, 256), device)
    op = fastad.ops.gaussian_blur if contender == "fastad" else reference.gaussian_blur
    benchmark.group = f"gaussian_blur s4 {BATCH}x1x256x256 {device}"
    benchmark.name = contender
    run_pedantic(benchmark, synchronized(lambda: op(maps, 4.0, 33), device))
