"""NearestNeighborScorer: the nn-level k-nearest-neighbour search over a fixed set of embeddings.

It is built from a bank and keeps it in the form the search wants (centred, with squared norms);
it neither fills itself nor lives in a model's checkpoint. The model component that does, the
memory bank a checkpoint holds, is fastad.models.components.memory_bank.MemoryBank, which builds
one of these over its stored rows."""
from __future__ import annotations

import torch
from torch import nn

from fastad.ops.autocast import float32_under_autocast
from fastad.nn.random_projection import sparse_random_matrix
from fastad.ops import kcenter_coreset
from fastad.ops.knn import check_knn, knn_prepared
from fastad.checks import check_finite, check_float, check_int, check_tensor


class NearestNeighborScorer(nn.Module):
    """Scores query embeddings by their mean distance to their k nearest rows of `bank` (PEDENet
    eq. 12, PatchCore's patch score), and thins the bank to a k-center coreset.

    The bank is stored centred on its mean together with its squared norms, so a query costs
    one centring and one fused search (fastad.ops.knn), nothing per bank row.

    Args:
        bank: [M, D] float32 (float64 on CPU) embeddings of normal data, finite.
        k: neighbours per query; the score is the mean distance to them.
    """

    def __init__(self, bank: torch.Tensor, k: int = 1):
        super().__init__()
        check_tensor("bank", bank, 2, "[M, D]")
        check_float("bank", bank)
        if bank.shape[0] == 0 or bank.shape[1] == 0:
            raise ValueError(f"bank must be a non-empty [M, D], got {tuple(bank.shape)}")
        check_finite("bank", bank)
        check_int("k", k, 1, bank.shape[0])
        self.k = k
        for name in ("centre", "centred_bank", "bank_sq_norms"):
            self.register_buffer(name, None)
        self._store(bank)

    def _store(self, bank: torch.Tensor) -> None:
        self.centre = bank.mean(0, dtype=torch.float64).to(bank.dtype)
        self.centred_bank = bank - self.centre
        self.bank_sq_norms = self.centred_bank.pow(2).sum(1)

    @property
    def memory_bank(self) -> torch.Tensor:
        """[M, D] the bank as given (after any subsample)."""
        return self.centred_bank + self.centre

    @float32_under_autocast
    def knn(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query [N, D] -> (dist [N, k] ascending, index [N, k] into memory_bank)."""
        check_knn(query, self.centred_bank, self.k, check_values=False)
        check_finite("query", query)
        return knn_prepared(query - self.centre, self.centred_bank, self.k, self.bank_sq_norms)

    def score(self, query: torch.Tensor) -> torch.Tensor:
        """query [N, D] -> [N] mean distance to the k nearest bank rows."""
        dist, _ = self.knn(query)
        return dist.mean(1)

    forward = score

    def subsample(self, size: float | int, seed: int = 0, projection_dim: int | None = None) -> torch.Tensor:
        """Keeps a greedy k-center coreset of the bank, as PatchCore does.

        Args:
            size: a fraction in (0, 1] of the bank, or a row count (int >= 1).
            seed: picks the first centre.
            projection_dim: search the coreset on a sparse random projection to this many
                dimensions (faster for wide embeddings); None searches the embeddings themselves.

        Returns:
            index [n] of the kept rows in the previous bank, in selection order.
        """
        m = self.centred_bank.shape[0]
        if isinstance(size, float) and not isinstance(size, bool):
            if not 0.0 < size <= 1.0:
                raise ValueError(f"size as a fraction must be in (0, 1], got {size}")
            n = max(1, int(round(size * m)))
        else:
            check_int("size", size, 1, m)
            n = size
        features = self.centred_bank
        if projection_dim is not None:
            check_int("projection_dim", projection_dim, 1)
            matrix = sparse_random_matrix(features.shape[1], projection_dim, seed, features.dtype, features.device)
            features = features @ matrix
        start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(seed)))
        index = kcenter_coreset(features, n, start, check_values=False)
        self._store(self.memory_bank[index])
        self.k = min(self.k, n)
        return index
