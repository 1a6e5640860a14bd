"""Image scores from pixel anomaly maps: the rules a model's accept/reject decision can use.

    scores = image_score(maps, "smooth_top1")                    # [N]
    scores = image_score(maps, "norm_max", reference=train_maps)  # normalised by normal maps

Rules (IMAGE_SCORE_RULES):
    max               the map's maximum (what every model reports today)
    q0.99, q0.999     the 0.99 / 0.999 quantile of the map's pixels (linear interpolation)
    smooth_max        the maximum of the map smoothed by a Gaussian of std SMOOTH_SIGMA px
    smooth_top1       the mean of the top 1 % pixels of the smoothed map
    norm_max          the maximum of the normalised map z = (map - m) / s
    norm_smooth_top1  smooth_top1 of the normalised map
where, for the norm_* rules (NORMALISED_RULES), m [H, W] is the per-position mean of `reference`
maps of normal images (it removes border and position bias) and s the standard deviation of all
their pixels after subtracting m (one scale per model and dataset).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastad.checks import check_choice
from fastad.metrics._inputs import as_cpu_tensor, check_no_nan

IMAGE_SCORE_RULES = ("max", "q0.99", "q0.999", "smooth_max", "smooth_top1", "norm_max", "norm_smooth_top1")
NORMALISED_RULES = ("norm_max", "norm_smooth_top1")
SMOOTH_SIGMA = 4.0
TOP_FRACTION = 0.01


def smooth(maps: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """maps [N, H, W] float -> the same maps blurred by a separable Gaussian of std `sigma` px
    (replicate padding, so a flat map stays flat)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(F.conv2d(out, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def normalise(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """maps [N, H, W] -> (maps - m) / s with m [H, W] and s as in the module docstring, from
    reference [M, H, W] (M >= 1) maps of normal images. ValueError if the reference maps are
    constant (s = 0: nothing to scale by)."""
    mean = reference.mean(0)
    scale = float((reference - mean).std()) if reference.numel() > 1 else 0.0
    if not scale > 0:
        raise ValueError("reference maps are constant after removing their per-position mean: they cannot normalise")
    return (maps - mean) / scale


def image_score(maps, rule: str = "max", reference=None) -> torch.Tensor:
    """Image scores [N] float32 (higher = more anomalous) of maps [N, H, W] (torch or numpy) by
    `rule`, one of IMAGE_SCORE_RULES. reference [M, H, W]: maps of normal images, required by
    the NORMALISED_RULES and refused by the others. ValueError on a wrong rule, rank, NaN, maps
    without pixels, or a reference of another map size."""
    check_choice("rule", rule, IMAGE_SCORE_RULES)
    maps = as_cpu_tensor("maps", maps, 3, "[N, H, W]").float()
    check_no_nan("maps", maps)
    if maps.shape[1] * maps.shape[2] == 0:
        raise ValueError(f"maps must have at least one pixel, got shape {list(maps.shape)}")
    if (reference is None) == (rule in NORMALISED_RULES):
        need = "needs" if reference is None else "takes no"
        raise ValueError(f"rule {rule!r} {need} reference maps (reference [M, H, W] of normal images)")
    if reference is not None:
        reference = as_cpu_tensor("reference", reference, 3, "[M, H, W]").float()
        check_no_nan("reference", reference)
        if reference.shape[1:] != maps.shape[1:] or reference.shape[0] == 0:
            raise ValueError(f"reference must be [M >= 1, {maps.shape[1]}, {maps.shape[2]}] like maps, "
                             f"got {list(reference.shape)}")
        maps = normalise(maps, reference)
    flat = maps.flatten(1)
    if rule in ("max", "norm_max"):
        return flat.amax(1)
    if rule.startswith("q"):
        return torch.quantile(flat, float(rule[1:]), dim=1)
    smoothed = smooth(maps).flatten(1)
    if rule == "smooth_max":
        return smoothed.amax(1)
    k = max(1, round(TOP_FRACTION * smoothed.shape[1]))
    return smoothed.topk(k, dim=1).values.mean(1)
