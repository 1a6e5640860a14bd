"""Pure-PyTorch reference implementations of fastad's ops.

They define what each op computes: the tests compare the kernels against them, the benchmarks
time them as the baseline, and fastad.set_backend("reference") runs them instead of the
compiled kernels. Written for clarity and exactness, not speed.
"""
from __future__ import annotations

import math

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


# --- gmm: gmm_log_prob, gmm_params -------------------------------------------------------------


def gmm_log_prob(z: torch.Tensor, log_phi: torch.Tensor, mu: torch.Tensor, scale_tril: torch.Tensor,
                 per_component: bool = False) -> torch.Tensor:
    """z [N, D], log_phi [K], mu [K, D], scale_tril [K, D, D] (lower triangle read) -> [N]
    log Σ_k φ_k N(z | μ_k, L_k L_kᵀ), or [N, K] of the per-component terms. The straightforward
    batched formula: one [K, D, N] triangular solve, then a logsumexp."""
    factor = torch.tril(scale_tril)
    diff = (z.t().unsqueeze(0) - mu.unsqueeze(2))  # [K, D, N]
    y = torch.linalg.solve_triangular(factor, diff, upper=False)
    mahalanobis = y.pow(2).sum(1).t()  # [N, K]
    log_det = factor.diagonal(dim1=1, dim2=2).log().sum(1)
    half_d_log_2pi = 0.5 * z.shape[1] * math.log(2 * math.pi)
    per_term = log_phi - 0.5 * mahalanobis - log_det - half_d_log_2pi
    return per_term if per_component else torch.logsumexp(per_term, dim=1)


def gmm_params(z: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-6):
    """z [N, D], gamma [N, K] -> (phi [K], mu [K, D], sigma [K, D, D]) of eqs. 3–5 with eps·I
    added, through the [N, K, D] deviations z_n − μ_k."""
    weight = gamma.sum(0)
    denom = weight.clamp_min(torch.finfo(z.dtype).tiny)
    mu = torch.einsum("nk,nd->kd", gamma, z) / denom[:, None]
    diff = z[:, None, :] - mu[None]  # [N, K, D]
    sigma = torch.einsum("nk,nkd,nke->kde", gamma, diff, diff) / denom[:, None, None]
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return weight / z.shape[0], mu, sigma + eps * eye
