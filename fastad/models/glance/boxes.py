"""The patch geometry of GlobalNet.forward_shared: where each patch's changed box lies at every
layer, and the partial-convolution masks of those boxes.

None of it depends on the image, only on the patch corners, the patch size and the image side,
so box_plan() builds it once per grid and forward_shared reuses it for every image
(hole_masks gives the patches' holes at full resolution):

    plan = box_plan(corners, patch_size, side, pooled=[True, True, True, True, False], kernel_size=3)
    for level in plan.levels:   # crop at level.start, paste the previous box at level.offset, ...
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fastad.ops.partial_conv import Coverage, mask_coverage


class BoxLevel(NamedTuple):
    """One partial conv (+ optional 2x2 pooling) of the shared pass, for P boxes.

    offset [P, 2] (CPU): where the previous level's box sits inside this level's input crop.
    start [P, 2] (CPU): the top-left of this level's output box (before pooling).
    size: the output box side; the input crop is size + 2 (the 3x3 window).
    mask [P, 1, size + 2, size + 2]: the conv's input mask over the crop (0 on the hole).
    coverage: the mask's window sums, as partial_conv2d takes them.
    """

    offset: torch.Tensor
    start: torch.Tensor
    size: int
    mask: torch.Tensor
    coverage: Coverage


class BoxPlan(NamedTuple):
    """levels, then on the lowest-resolution map: start [P, 2] (CPU) and mask [P, 1, s, s] of the
    final boxes, and footprint [P, 1, h, w], each final cell's share of the patch."""

    levels: list[BoxLevel]
    start: torch.Tensor
    mask: torch.Tensor
    footprint: torch.Tensor


def box_plan(corners: torch.Tensor, patch_size: int, side: int, pooled: list[bool], kernel_size: int,
             device=None, dtype=torch.float32) -> BoxPlan:
    """The boxes of P square patches (top-left corners [P, 2]) on a side x side image through
    convs of kernel_size (padding kernel_size // 2), each followed by 2x2 pooling where pooled."""
    pad = kernel_size // 2
    start, size = corners.cpu(), patch_size
    mask = torch.zeros(len(corners), 1, size, size, device=device, dtype=dtype)  # the patch is all hole
    levels = []
    for pool in pooled:
        out_start, out_size = grown_box(start, size, side, even=pool)
        ones = F.pad(torch.ones(1, 1, side, side, device=device, dtype=dtype), (pad,) * 4)
        crop_mask = crops(ones, out_start, out_size + 2 * pad)
        offset = start - out_start + pad
        paste(crop_mask, mask, offset)
        coverage = mask_coverage(crop_mask.shape, crop_mask, (1, 1, kernel_size, kernel_size))
        levels.append(BoxLevel(offset, out_start, out_size, crop_mask, coverage))
        mask = coverage.counts.clamp(0, 1)
        start, size = out_start, out_size
        if pool:
            mask, start, size, side = F.max_pool2d(mask, 2), start // 2, size // 2, side // 2
    full_mask = torch.ones(len(corners), 1, side, side, device=device, dtype=dtype)
    paste(full_mask, mask, start)
    stride = 2 ** sum(pooled)
    hole = hole_masks(corners[:, 0], corners[:, 1], patch_size, (side * stride, side * stride), device).to(dtype)
    return BoxPlan(levels, start, full_mask, F.avg_pool2d(hole, stride))


def grown_box(start: torch.Tensor, size: int, side: int, even: bool) -> tuple[torch.Tensor, int]:
    """Square boxes [start, start + size) per row of start [P, 2] on a side x side map -> the
    boxes a 3x3 conv's changed outputs can reach (grown by 1, clipped to the map; with even, on
    even coordinates for a 2x2 pooling), as one size for all (shifted inward at the border)."""
    low = (start - 1).clamp_min(0)
    high = (start + size + 1).clamp_max(side)
    if even:
        low, high = low // 2 * 2, (high + 1) // 2 * 2
    out_size = min(int((high - low).max()), side)
    if even:
        out_size += out_size % 2
    return torch.minimum(low, torch.full_like(low, side - out_size)), out_size


def crops(maps: torch.Tensor, start: torch.Tensor, size: int) -> torch.Tensor:
    """maps [B, C, H, W], start [P, 2] (top-left, the same boxes in every map) -> the boxes
    [B * P, C, size, size], map-major, in maps' memory format."""
    corners = start.tolist()
    return torch.cat([maps[i:i + 1, :, r:r + size, c:c + size] for i in range(maps.shape[0]) for r, c in corners])


def paste(maps: torch.Tensor, values: torch.Tensor, start: torch.Tensor) -> None:
    """Writes values [Q, C, s, s] into maps [Q, C, H, W] at start [Q, 2], in place, one slice
    assignment per distinct start (most boxes sit at the same offset in their crop)."""
    s, values = values.shape[-1], values.to(maps.dtype)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (r, c) in enumerate(start.tolist()):
        groups.setdefault((r, c), []).append(i)
    for (r, c), rows in groups.items():
        if len(rows) == maps.shape[0]:
            maps[:, :, r:r + s, c:c + s] = values
        elif len(rows) == 1:
            maps[rows[0], :, r:r + s, c:c + s] = values[rows[0]]
        else:
            index = torch.tensor(rows, device=maps.device)
            maps[index, :, r:r + s, c:c + s] = values[index]


def hole_masks(rows: torch.Tensor, cols: torch.Tensor, size: int, image_size: tuple[int, int],
               device=None) -> torch.Tensor:
    """rows, cols [N] (top-left corners) -> hole [N, 1, H, W] float: 1 on each patch, 0 elsewhere."""
    h, w = image_size
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    rows, cols = rows.to(device)[:, None], cols.to(device)[:, None]
    in_y = (ys >= rows) & (ys < rows + size)                                  # [N, H]
    in_x = (xs >= cols) & (xs < cols + size)                                  # [N, W]
    return (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1).float()
