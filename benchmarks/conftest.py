"""Shared helpers for fastad's pytest-benchmark suites.

Data is seeded and cached per shape, so every contender in a group times the same tensors and
no contender pays for generating them. CUDA cases carry `requires_cuda` and are skipped on
machines without a GPU.
"""
from __future__ import annotations

import functools

import pytest
import torch

SEED = 0

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


@functools.lru_cache(maxsize=4)
def random_matrix(rows: int, cols: int, device: str = "cpu", seed: int = SEED) -> torch.Tensor:
    """A seeded [rows, cols] float32 standard-normal matrix, generated on the CPU (so the
    values do not depend on the device) and cached. Treat it as read-only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rows * 7919 + cols)
    return torch.randn(rows, cols, generator=generator).to(device)


def knn_data(n: int, m: int, d: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(query [n, d], bank [m, d]) for a knn benchmark, drawn from independent seeds."""
    return random_matrix(n, d, device, seed=SEED + 1), random_matrix(m, d, device, seed=SEED + 2)


def synchronized(fn, device: str):
    """fn itself on the CPU; on CUDA, fn followed by torch.cuda.synchronize(), so that the
    timer sees the kernels finish."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def run_pedantic(benchmark, fn, rounds: int = 3, warmup_rounds: int = 1):
    """Times fn() with one call per round and returns its last result."""
    return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
