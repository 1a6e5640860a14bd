"""What fastad's benchmark suites and scripts share (a module of this folder, not of the tests).

Data is seeded and cached per shape, so every contender in a group times the same tensors and
no contender pays for generating them. CUDA cases carry `requires_cuda` (and the `cuda` marker
pyproject.toml registers) and are skipped on machines without a GPU.

The pytest-benchmark suites import it as `from benchlib import ...`: pytest puts this folder on
the import path of the test files it collects here, and Python puts it there for a script of
this folder run as `python benchmarks/<script>.py`.
"""
from __future__ import annotations

import functools

import pytest
import torch

import fastad

SEED = 0

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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


def load_builtin(texture: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """builtin:<texture> at size x size -> (train images [N, 3, S, S], test images [T, 3, S, S],
    test masks [T, S, S] bool, test labels [T])."""
    train = fastad.data.open_dataset(f"builtin:{texture}", "train", size=size)
    test = fastad.data.open_dataset(f"builtin:{texture}", "test", size=size)
    samples = [test[i] for i in range(len(test))]
    return (torch.stack([train[i].image for i in range(len(train))]), torch.stack([s.image for s in samples]),
            torch.stack([s.mask for s in samples]), torch.tensor([s.label for s in samples]))
