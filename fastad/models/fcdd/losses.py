"""FCDD's two hypersphere losses on anomaly scores A >= 0 and masks Y (1/True: anomalous).

    loss = fcdd_loss(A, masks)          # eq. 4 of FCDD
    loss = hsc_pixel_loss(A, masks)     # eq. 5, the pixel-wise, imbalance-weighted loss
"""
from __future__ import annotations

import torch

#: Added inside the push function's log, so p(0) = -log(eps) stays finite (and its slope -1/eps).
PUSH_EPS = 1e-6


def push(x: torch.Tensor, eps: float = PUSH_EPS) -> torch.Tensor:
    """p(x) = -log(1 - exp(-x) + eps), elementwise for x >= 0 (eq. 2 with eps inside the log, so
    that p and its gradient are finite at x = 0; expm1 keeps 1 - exp(-x) exact for small x)."""
    return -torch.log(-torch.expm1(-x) + eps)


def _check_scores(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if scores.ndim < 2:
        raise ValueError(f"scores must be [n, ...pixels], got shape {tuple(scores.shape)}")
    if masks.shape != scores.shape:
        raise ValueError(f"masks must have the scores' shape {tuple(scores.shape)}, got {tuple(masks.shape)}")
    return masks.to(scores.dtype)


def fcdd_loss(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """FCDD's loss (eq. 4) on anomaly scores A [n, ...] (>= 0) with masks Y [n, ...] (1/True:
    anomalous): mean over images of [ (1/m) Σ_j (1 - Y_ij) A_ij + p((1/m) Σ_j Y_ij A_ij) ], m the
    pixels per image. An image without anomalous pixels contributes only its first term (p of an
    empty sum would be p(0), the push of a non-existent anomaly). -> scalar."""
    y = _check_scores(scores, masks)
    a, y = scores.flatten(1), y.flatten(1)
    normal = ((1 - y) * a).mean(1)
    anomalous_mean = (y * a).mean(1)
    has_anomaly = y.sum(1) > 0
    pushed = torch.where(has_anomaly, push(anomalous_mean), torch.zeros_like(anomalous_mean))
    return (normal + pushed).mean()


def hsc_pixel_loss(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The pixel-wise HSC loss (eq. 5) on anomaly scores A [n, ...] (>= 0) with masks Y [n, ...]:
    (1/nm) Σ_ij [ (1 - Y_ij) A_ij + (|J0| / |J1|) Y_ij p(A_ij) ], |J0|, |J1| the numbers of
    normal and anomalous pixels in the batch. A batch without anomalous pixels has no second
    term; one without normal pixels has |J0| / |J1| = 0, as the formula says. -> scalar."""
    y = _check_scores(scores, masks)
    n_anomalous = y.sum()
    weight = (y.numel() - n_anomalous) / n_anomalous.clamp_min(1)
    pushed = torch.where(y > 0, push(scores), torch.zeros_like(scores))
    return ((1 - y) * scores + weight * pushed).mean()


#: the `loss` config values and their functions
LOSSES = {"fcdd": fcdd_loss, "hsc-pixel": hsc_pixel_loss}
