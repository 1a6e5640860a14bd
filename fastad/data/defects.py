"""Synthetic defects painted into a clean image, each returning its exact pixel mask.

Every function takes image [3, H, W] float32 in [0, 1] and a numpy Generator, and returns
(defective [3, H, W], mask [H, W] bool): pixels outside the mask are bit-identical to the input;
the mask is the painted region (a pixel inside it may, rarely, keep its value by coincidence).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")


def _ellipse(h: int, w: int, rng: np.random.Generator, low: float, high: float) -> torch.Tensor:
    """A rotated ellipse with semi-axes in [low, high] * min(h, w), centred inside the image."""
    yy, xx = _grid(h, w)
    s = min(h, w)
    ry, rx = rng.uniform(low, high, 2) * s
    cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
    angle = rng.uniform(0, math.pi)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def scratch(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A straight thin line (2 to 4 px wide, 25-50 % of the side long), very dark or very bright."""
    _, h, w = image.shape
    yy, xx = _grid(h, w)
    cy, cx = rng.uniform(0.25, 0.75, 2) * (h, w)
    angle = rng.uniform(0, math.pi)
    half_length = rng.uniform(0.125, 0.25) * min(h, w)
    half_width = rng.uniform(1.0, 2.0)
    along = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    across = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    mask = (across.abs() <= half_width) & (along.abs() <= half_length)
    out = image.clone()
    out[:, mask] = 0.02 if rng.random() < 0.7 else 0.98
    return out, mask


def stain(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A translucent brownish blot: the texture shows through, blended half with a stain colour."""
    _, h, w = image.shape
    mask = _ellipse(h, w, rng, 0.05, 0.12)
    colour = torch.tensor(rng.uniform((0.35, 0.2, 0.05), (0.6, 0.4, 0.2)), dtype=torch.float32)[:, None]
    out = image.clone()
    out[:, mask] = 0.5 * out[:, mask] + 0.5 * colour
    return out, mask


def cut_paste(image: torch.Tensor, rng: np.random.Generator, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A rectangle of another texture (source [3, Hs, Ws], Hs >= H/3, Ws >= W/3) pasted in."""
    _, h, w = image.shape
    ph, pw = (rng.uniform(0.12, 0.3, 2) * (h, w)).astype(int) + 4
    top, left = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    sy, sx = rng.integers(0, source.shape[1] - ph + 1), rng.integers(0, source.shape[2] - pw + 1)
    out = image.clone()
    out[:, top:top + ph, left:left + pw] = source[:, sy:sy + ph, sx:sx + pw]
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top:top + ph, left:left + pw] = True
    return out, mask


def hole(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Missing material: an irregular blob (two or three overlapping ellipses) of near-black
    background with faint noise."""
    _, h, w = image.shape
    mask = torch.zeros(h, w, dtype=torch.bool)
    first = _ellipse(h, w, rng, 0.04, 0.09)
    mask |= first
    cy, cx = [float(c.float().mean()) for c in torch.nonzero(first, as_tuple=True)] if first.any() else (h / 2, w / 2)
    yy, xx = _grid(h, w)
    for _ in range(int(rng.integers(1, 3))):
        r = rng.uniform(0.03, 0.06) * min(h, w)
        oy, ox = rng.uniform(-0.06, 0.06, 2) * (h, w)
        mask |= (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 <= r * r
    noise = torch.from_numpy(rng.uniform(0.0, 0.04, (h, w)).astype(np.float32))
    out = image.clone()
    out[:, mask] = noise[mask]
    return out, mask


def color_shift(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A discoloured patch: one channel raised and another lowered by 0.15-0.3 inside an ellipse."""
    _, h, w = image.shape
    mask = _ellipse(h, w, rng, 0.08, 0.18)
    up, down = rng.choice(3, 2, replace=False)
    shift = torch.zeros(3, 1)
    shift[up], shift[down] = rng.uniform(0.15, 0.3), -rng.uniform(0.15, 0.3)
    out = image.clone()
    out[:, mask] = (out[:, mask] + shift).clamp(0, 1)
    return out, mask


DEFECTS = ("scratch", "stain", "cut_paste", "hole", "color_shift")


# The wider benchmark's subtle families (fastad.data.builtin, wide:<texture>): they change
# structure or sharpness rather than colour. Same contract as above.

def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """[C, H, W] -> the image blurred by a separable Gaussian of std `sigma` px (reflect padding)."""
    radius = max(1, min(int(math.ceil(3 * sigma)), min(image.shape[1:]) - 1))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    out = torch.nn.functional.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    return out[0]


def _composite(image: torch.Tensor, changed: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image with `changed` pasted where mask is set (clamped to [0, 1]); (out, mask)."""
    out = image.clone()
    out[:, mask] = changed[:, mask].clamp(0, 1)
    return out, mask


def _warp(image: torch.Tensor, source_y: torch.Tensor, source_x: torch.Tensor) -> torch.Tensor:
    """[C, H, W] sampled bilinearly at pixel coordinates (source_y, source_x) [H, W] (border clamped)."""
    _, h, w = image.shape
    grid = torch.stack([source_x / max(w - 1, 1) * 2 - 1, source_y / max(h - 1, 1) * 2 - 1], -1)[None]
    return torch.nn.functional.grid_sample(image[None], grid, mode="bilinear", padding_mode="border",
                                           align_corners=True)[0]


def local_blur(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An out-of-focus patch: the texture inside an ellipse blurred by a Gaussian of std 1.5-3 px."""
    _, h, w = image.shape
    mask = _ellipse(h, w, rng, 0.08, 0.16)
    return _composite(image, _blur(image, float(rng.uniform(1.5, 3.0))), mask)


def shuffle(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Scrambled structure: a square of 3x3 or 4x4 tiles (tiles 6-12 px) permuted among themselves."""
    _, h, w = image.shape
    n, tile = int(rng.integers(3, 5)), int(rng.integers(6, 13))
    side = n * tile
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    block = image[:, top:top + side, left:left + side]
    tiles = block.reshape(-1, n, tile, n, tile).permute(1, 3, 0, 2, 4).reshape(n * n, -1, tile, tile)
    order = rng.permutation(n * n)
    while n * n > 1 and (order == np.arange(n * n)).any():  # every tile moves
        order = rng.permutation(n * n)
    moved = tiles[torch.from_numpy(order)].reshape(n, n, -1, tile, tile).permute(2, 0, 3, 1, 4).reshape(-1, side, side)
    changed = image.clone()
    changed[:, top:top + side, left:left + side] = moved
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return _composite(image, changed, mask)


def _rotate_disc(image: torch.Tensor, rng: np.random.Generator, twist: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The texture inside a disc (radius 8-15 % of the side) rotated about the disc's centre:
    by a twist that fades from 1.5-3 rad at the centre to 0 at the rim, or rigidly by 30-150 degrees."""
    _, h, w = image.shape
    yy, xx = _grid(h, w)
    r = rng.uniform(0.08, 0.15) * min(h, w)
    cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
    dy, dx = yy - cy, xx - cx
    d = torch.sqrt(dy * dy + dx * dx)
    if twist:
        angle = rng.uniform(1.5, 3.0) * (1 if rng.random() < 0.5 else -1) * (1 - (d / r).clamp(max=1)) ** 2
    else:
        angle = torch.full_like(d, math.radians(rng.uniform(30, 150)) * (1 if rng.random() < 0.5 else -1))
    sy = cy + dy * torch.cos(angle) - dx * torch.sin(angle)
    sx = cx + dy * torch.sin(angle) + dx * torch.cos(angle)
    return _composite(image, _warp(image, sy, sx), d < r)


def swirl(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A local twist: inside a disc the texture is rotated by up to 1.5-3 rad at the centre, fading
    to no rotation at the rim (continuous with the surroundings)."""
    return _rotate_disc(image, rng, twist=True)


def smooth_fill(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Missing structure, as if repaired: an ellipse filled with the smooth average of its
    surroundings (normalised Gaussian of std 8 px over the pixels outside it), so the local
    brightness stays and the texture is gone."""
    _, h, w = image.shape
    mask = _ellipse(h, w, rng, 0.05, 0.12)
    keep = (~mask).float()[None]
    fill = _blur(image * keep, 8.0) / _blur(keep, 8.0).clamp_min(1e-6)
    return _composite(image, fill, mask)


def faint_scratch(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A fine (1-2 px), gently curved line only 0.06-0.12 brighter or darker than the texture under it."""
    _, h, w = image.shape
    yy, xx = _grid(h, w)
    cy, cx = rng.uniform(0.25, 0.75, 2) * (h, w)
    angle = rng.uniform(0, math.pi)
    half_length = rng.uniform(0.15, 0.3) * min(h, w)
    bend = rng.uniform(-1.0, 1.0) / max(half_length, 1.0)
    along = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    across = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle) - bend * along ** 2 / 2
    mask = (across.abs() <= rng.uniform(0.5, 1.0)) & (along.abs() <= half_length)
    delta = rng.uniform(0.06, 0.12) * (1 if rng.random() < 0.5 else -1)
    return _composite(image, image + delta, mask)


def contrast_loss(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A washed-out patch: inside an ellipse the deviation from the local mean (Gaussian, std 6 px)
    is scaled by 0.2-0.5, so brightness stays and contrast drops."""
    _, h, w = image.shape
    mask = _ellipse(h, w, rng, 0.08, 0.16)
    mean = _blur(image, 6.0)
    return _composite(image, mean + (image - mean) * float(rng.uniform(0.2, 0.5)), mask)


def rotate_patch(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A misprinted / misplaced part: a disc of the texture rotated about its centre by 30-150 degrees."""
    return _rotate_disc(image, rng, twist=False)


SUBTLE_DEFECTS = ("local_blur", "shuffle", "swirl", "smooth_fill", "faint_scratch", "contrast_loss", "rotate_patch")
WIDE_DEFECTS = DEFECTS + SUBTLE_DEFECTS
