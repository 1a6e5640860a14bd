"""Patch cropping and extraction, and per-channel pixel standardisation, shared by the patch models.

    patches = crop_patches(images, index, rows, cols, size)    # patches at given corners
    patches = extract_patches(images, size, stride)            # every patch of a raster grid
    mean, std = channel_statistics(train_images)               # [C] each
    x = standardize(images, mean, std)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_patches(images: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 size: int) -> torch.Tensor:
    """images [B, C, H, W], index/rows/cols [N] long (top-left corners) -> patches [N, C, size, size]."""
    return torch.stack([images[i, :, r:r + size, c:c + size]
                        for i, r, c in zip(index.tolist(), rows.tolist(), cols.tolist())])


def extract_patches(images: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """images [B, C, H, W] -> all patches at stride [B * P, C, K, K], P = PatchGrid(K, stride, (H, W))
    .num_patches, raster order per image."""
    c = images.shape[1]
    cols = F.unfold(images, patch_size, stride=stride)                              # [B, C*K*K, P]
    return cols.transpose(1, 2).reshape(-1, c, patch_size, patch_size)


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images [N, C, H, W] -> (mean [C], std [C] floored at 1e-6): the per-channel statistics."""
    return images.mean((0, 2, 3)), images.std((0, 2, 3)).clamp_min(1e-6)


def standardize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """images [N, C, H, W], mean, std [C] -> (images - mean) / std per channel."""
    return (images - mean[:, None, None]) / std[:, None, None]
