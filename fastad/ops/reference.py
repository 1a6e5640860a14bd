"""Pure-PyTorch reference implementations of fastad's ops.

They define what each op computes: the tests compare the kernels against them, the benchmarks
time them as the baseline, and fastad.set_backend("reference") runs them instead of the
compiled kernels. Written for clarity and exactness, not speed.
"""
from __future__ import annotations

import torch

KNN_QUERY_CHUNK = 1024


def knn(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query [N, D], bank [M, D] -> (dist [N, k] ascending, index [N, k] int64), ties to the
    lower index. Distances are computed directly (no |q|² − 2q·b + |b|² expansion), a chunk of
    queries at a time."""
    dists, indices = [], []
    for chunk in query.split(KNN_QUERY_CHUNK):
        d = torch.cdist(chunk, bank, compute_mode="donot_use_mm_for_euclid_dist")
        d, i = torch.sort(d, dim=1, stable=True)
        dists.append(d[:, :k])
        indices.append(i[:, :k])
    if not dists:
        return query.new_empty((0, k)), torch.empty((0, k), dtype=torch.long, device=query.device)
    return torch.cat(dists), torch.cat(indices)


def kcenter_coreset(features: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """features [M, D] -> index [n]: greedy k-center from row `start`, ties to the lower index,
    chosen rows never chosen again."""
    chosen = torch.empty(n, dtype=torch.long, device=features.device)
    min_dist = torch.full((features.shape[0],), float("inf"), dtype=torch.float64, device=features.device)
    centre = start
    for step in range(n):
        chosen[step] = centre
        sq = (features - features[centre]).double().pow(2).sum(1)
        min_dist = torch.minimum(min_dist, sq)
        min_dist[chosen[: step + 1]] = -1.0
        centre = int(torch.argmax(min_dist))  # the first maximum
    return chosen
