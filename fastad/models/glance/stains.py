"""GlanceNet's negative patches p⁻ (sec. 3.2): random stains painted on normal patches."""
from __future__ import annotations

import math

import torch


def add_stain(patches: torch.Tensor, generator: torch.Generator | None = None, min_radius: float = 0.08,
              max_radius: float = 0.25, varied: bool = False) -> torch.Tensor:
    """The negative patches p⁻ (sec. 3.2): one random small stain on each patch.

    A stain is a rotated ellipse with semi-axes in [min_radius, max_radius] * K, centred anywhere
    in the patch, with a soft one-pixel edge, blended at opacity in [0.5, 1] towards a random gray
    level in [0, 1] (one level for all channels, so gray images stay gray). With varied, half of
    the stains are instead thin lines (semi-axis 1-2 px across, 0.15-0.5 * K along: scratches),
    and half of all stains blend towards a random colour (one level per channel) instead of a
    gray. Everything is drawn on the CPU from `generator`.

    Args:
        patches: [N, C, K, K] in [0, 1].
    Returns:
        [N, C, K, K], the stained patches.
    """
    n, _, h, w = patches.shape
    u = torch.rand(n, 7, generator=generator, dtype=torch.float32).to(patches.device)
    if varied:
        v = torch.rand(n, 2 + patches.shape[1], generator=generator, dtype=torch.float32).to(patches.device)
    ry = (min_radius + (max_radius - min_radius) * u[:, 0]) * h
    if varied:   # half of the stains are thin lines (semi-axis 1-2 px across, up to half the patch along)
        line = v[:, 0] < 0.5
        ry = torch.where(line, 1.0 + u[:, 0], ry)
    rx = (min_radius + (max_radius - min_radius) * u[:, 1]) * w
    cy, cx = u[:, 2] * (h - 1), u[:, 3] * (w - 1)
    angle = u[:, 4] * math.pi
    if varied:   # half get a colour (one level per channel), the rest a gray level
        rx = torch.where(line, (0.15 + 0.35 * u[:, 1]) * w, rx)
        colour = v[:, 1] < 0.5
        level = torch.where(colour[:, None], v[:, 2:], u[:, 5:6].expand(-1, patches.shape[1]))[:, :, None, None]
    else:
        level = u[:, 5][:, None, None, None].expand(-1, patches.shape[1], -1, -1)
    opacity = 0.5 + 0.5 * u[:, 6]
    yy = torch.arange(h, device=patches.device, dtype=torch.float32)[None, :, None] - cy[:, None, None]
    xx = torch.arange(w, device=patches.device, dtype=torch.float32)[None, None, :] - cx[:, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    along = (xx * cos + yy * sin) / rx[:, None, None]
    across = (-xx * sin + yy * cos) / ry[:, None, None]
    radius = (along.pow(2) + across.pow(2)).sqrt()                               # 1 on the rim
    edge = (1.0 - (radius - 1.0) * torch.minimum(rx, ry)[:, None, None]).clamp(0, 1)   # ~1 px soft rim
    alpha = (edge * opacity[:, None, None]).unsqueeze(1).to(patches.dtype)
    return patches * (1 - alpha) + level.to(patches.dtype) * alpha
