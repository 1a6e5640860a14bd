"""Sparse random projection (Achlioptas / Li et al.), as PatchCore applies before its coreset."""
from __future__ import annotations

import math

import torch


def sparse_random_matrix(in_dim: int, out_dim: int, seed: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[in_dim, out_dim] matrix with entries ±sqrt(s / out_dim) with probability 1/(2s) each and
    0 otherwise, s = sqrt(in_dim): pairwise distances are kept up to a small relative error."""
    generator = torch.Generator().manual_seed(seed)
    density = 1.0 / math.sqrt(in_dim)
    nonzero = torch.rand(in_dim, out_dim, generator=generator) < density
    signs = torch.randint(0, 2, (in_dim, out_dim), generator=generator) * 2 - 1
    scale = math.sqrt(1.0 / density) / math.sqrt(out_dim)
    return (nonzero * signs * scale).to(dtype=dtype, device=device)
