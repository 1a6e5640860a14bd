"""UTAD's perceptual measurement (eq. 8) and segmentation (eq. 9), apart from any network.

    distances = layer_distances(features_a, features_b, size)   # [B, L, H, W]
    maps = (distances * weights[None, :, None, None]).sum(1)    # eq. 8 with layer weights
    segmentation = segment(maps, threshold)                     # eq. 9

A layer's distance at a location is the mean over channels of the squared feature difference;
each layer's [B, h_l, w_l] map is upsampled bilinearly (align_corners=False) to the image size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_distances(features_a, features_b, size: tuple[int, int]) -> torch.Tensor:
    """Two sequences of L feature maps [B, C_l, h_l, w_l] -> [B, L, H, W]: per layer
    mean_c (a - b)^2, upsampled to `size` = (H, W)."""
    if len(features_a) != len(features_b):
        raise ValueError(f"features_a and features_b must hold the same layers, got {len(features_a)} and "
                         f"{len(features_b)}")
    maps = []
    for a, b in zip(features_a, features_b):
        if a.shape != b.shape:
            raise ValueError(f"features must match layer by layer, got {tuple(a.shape)} and {tuple(b.shape)}")
        d = (a - b).pow(2).mean(1, keepdim=True)
        maps.append(F.interpolate(d, size=size, mode="bilinear", align_corners=False))
    return torch.cat(maps, 1)


def segment(maps: torch.Tensor, threshold) -> torch.Tensor:
    """Eq. 9: anomaly maps [B, H, W] -> bool segmentation [B, H, W], True where map >= threshold
    (>= as fastad.metrics.iou, so the two agree)."""
    return maps >= threshold
