"""Whole scoring pipelines: one batch of 8 builtin:brick test images through fastad.Scorer, with
fastad's ops against the same pipeline on the reference ops, fastad with the network in NCHW
instead of channels_last, and, for PEDENet, the plain port that crops every patch. Groups: "pipeline <model> <device> <precision> b8".

benchmarks/throughput.py reports the same as images/s and single-image p50/p99 latency.
"""
from __future__ import annotations

import functools

import pytest
import torch

import fastad
from fastad.engine import Scorer
from fastad.models import create_model
from benchlib import load_builtin, requires_cuda, run_pedantic, synchronized

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]
BATCH = 8


@functools.lru_cache(maxsize=2)
def builtin_images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train [40, 3, S, S], the first BATCH test images [8, 3, S, S]) of builtin:brick."""
    train, test, _, _ = load_builtin("brick", size)
    return train, test[:BATCH]


def ready_model(name: str, device: str, **config):
    """The model set up on builtin:brick without training steps (speed does not depend on the weights)."""
    torch.manual_seed(0)
    model = create_model(name, **config)
    train, _ = builtin_images(model.image_size)
    fastad.engine.train(model.to(device), train.to(device), steps=0, progress=False)
    return model


CONTENDERS = {  # name: (model config, ops backend, Scorer memory format)
    "fastad": ({}, "native", "channels_last"),
    "reference": ({}, "reference", "channels_last"),
    "fastad NCHW": ({}, "native", "contiguous"),
    "plain port (crops, reference ops, NCHW)": ({"dense_embedding": False}, "reference", "contiguous"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("model_name", ["pedenet", "fcdd", "glance", "utad"])
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_pipeline(benchmark, contender, model_name, precision, device):
    config, backend, memory_format = CONTENDERS[contender]
    if config and model_name != "pedenet":
        pytest.skip("the crop-based port only differs for PEDENet")
    benchmark.group = f"pipeline {model_name} {device} {precision} b{BATCH}"
    benchmark.name = contender
    scorer = Scorer(ready_model(model_name, device, **config), device, BATCH, precision, memory_format=memory_format)
    _, images = builtin_images(scorer.image_size)
    images = images.to(device)
    with fastad.use_backend(backend):
        result = run_pedantic(benchmark, synchronized(lambda: scorer.score(images), device))
    assert result.maps.shape == (BATCH, scorer.image_size, scorer.image_size)
