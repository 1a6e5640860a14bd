"""What every fastad model's score() returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AnomalyResult:
    """image_scores [B]: one anomaly score per image (higher = more anomalous);
    maps [B, H, W]: per-pixel anomaly scores at the input resolution."""

    image_scores: torch.Tensor
    maps: torch.Tensor
