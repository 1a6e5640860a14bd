"""GlanceNet's scores and losses: eqs. 7/11 (IAD), 9 (DAD), 2 (compactness) and the
self-supervised Local-Net objective (InfoNCE)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def iad_score(z_local: torch.Tensor, z_global: torch.Tensor) -> torch.Tensor:
    """Eqs. 7 / 11: z_local, z_global [N, Z] -> (1/Z) ||Z_l - Z_g||² per row, [N]."""
    return (z_local - z_global).pow(2).mean(1)


def dad_loss(logits: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Eq. 9 averaged over the batch: logits [N] of p, normal [N] (1 = normal patch, 0 = stained)
    -> mean of -(y log p + (1 - y) log(1 - p)) with y = normal (computed stably from logits)."""
    return F.binary_cross_entropy_with_logits(logits, normal.to(logits.dtype))


def compactness_loss(features: torch.Tensor) -> torch.Tensor:
    """Eq. 2: features [N, Z] -> Σ_{i≠j} c_ij over the Z x Z Pearson correlation matrix of the
    feature dimensions within the batch (N >= 2)."""
    if features.shape[0] < 2:
        raise ValueError(f"compactness_loss needs N >= 2 rows, got {features.shape[0]}")
    centred = features - features.mean(0)
    normed = centred / centred.pow(2).sum(0).sqrt().clamp_min(1e-8)
    corr = normed.T @ normed
    return corr.sum() - corr.diagonal().sum()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, hard: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between two views: a, b [N, Z], row i of a and of b are the same place.
    -> mean cross-entropy of identifying i among the N rows, by cosine similarity / temperature.
    hard [N, Z] (optional): one more negative per row, row i a corrupted copy of place i (its
    stained view), scored against both a_i and b_i."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    if hard is None:
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    hard = F.normalize(hard, dim=1)
    a_side = torch.cat([logits, (a * hard).sum(1, keepdim=True) / temperature], 1)
    b_side = torch.cat([logits.T, (b * hard).sum(1, keepdim=True) / temperature], 1)
    return 0.5 * (F.cross_entropy(a_side, target) + F.cross_entropy(b_side, target))
