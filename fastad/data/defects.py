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
