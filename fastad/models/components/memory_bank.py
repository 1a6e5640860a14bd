"""MemoryBank: the model component that stores the embeddings of the normal training images.

It is what a checkpoint holds (one state_dict buffer, resized on load) and how a model fills it
(optionally to a coreset); the search itself is fastad.nn.NearestNeighborScorer, built over the
stored rows when first needed."""
from __future__ import annotations

import torch
from torch import nn

from fastad.nn.nearest_neighbor import NearestNeighborScorer


class MemoryBank(nn.Module):
    """Buffer `bank` [M, D] of normal embeddings (M = 0 until filled) and a NearestNeighborScorer
    over it, rebuilt only when the bank changes (never saved: a checkpoint holds the rows only). The buffer changes shape when filled; fastad's checkpoint loader
    resizes it before load_state_dict.

    Args:
        dim: D, the embedding size.
        k: neighbours per query; a query's score is its mean distance to them.
    """

    def __init__(self, dim: int, k: int = 1):
        super().__init__()
        self.k = k
        self.register_buffer("bank", torch.zeros(0, dim))
        self._cache: tuple[torch.Tensor, NearestNeighborScorer] | None = None

    def fill(self, embeddings: torch.Tensor, coreset: float | int | None = None, seed: int = 0) -> None:
        """bank := embeddings [M, D], or a greedy k-center coreset of them (a fraction or a row count)."""
        scorer = NearestNeighborScorer(embeddings.detach().contiguous(), k=self.k)
        if coreset is not None:
            scorer.subsample(coreset, seed=seed)
        self.bank = scorer.memory_bank.contiguous()
        self._cache = None  # rebuilt from the stored bank, so a reloaded checkpoint scores bit-identically

    def scorer(self) -> NearestNeighborScorer:
        if self.bank.shape[0] == 0:
            raise RuntimeError("the memory bank is empty: fill it from the normal training images first")
        if self._cache is None or self._cache[0] is not self.bank:
            self._cache = (self.bank, NearestNeighborScorer(self.bank, k=min(self.k, self.bank.shape[0])))
        return self._cache[1]

    def score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings [N, D] -> [N] mean distance to the k nearest bank rows (inside autocast the
        search runs in float32, like every fastad op)."""
        return self.scorer().score(embeddings)
