"""The image-score rules a model's `image_score` setting names: pixel maps [N, H, W] -> one
score per image. The one definition both fastad.models (AnomalyModel.image_scores) and
fastad.metrics.image_score (which adds the rules that need reference maps) apply.

    max           the map's maximum
    q0.99, q0.999 the 0.99 / 0.999 quantile of the map's pixels (linear interpolation)
    smooth_max    the maximum of smooth(map): a Gaussian of std SMOOTH_SIGMA px
    smooth_top1   the mean of the top TOP_FRACTION of smooth(map)'s pixels
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastad.ops import gaussian_blur

MODEL_RULES = ("max", "q0.99", "q0.999", "smooth_max", "smooth_top1")
SMOOTH_SIGMA = 4.0
TOP_FRACTION = 0.01
SMOOTH_TRUNCATE = 3.0  # the kernel reaches ceil(3 sigma) px (scipy.ndimage.gaussian_filter's truncate=3)


def smooth(maps: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """maps [N, H, W] float -> the same maps blurred by a Gaussian of std `sigma` px reaching
    ceil(3 sigma) px, with replicate padding (a flat map stays flat; the values of
    scipy.ndimage.gaussian_filter(mode="nearest", truncate=3)), on the maps' device and in their
    dtype. The blur is fastad.ops.gaussian_blur on the map padded by replicating its edge first,
    so the op's own reflect padding only touches the pixels cropped off again: any map size
    works, and the scores stay those of the rule as defined (and of thresholds calibrated on it)."""
    radius = max(1, int(math.ceil(SMOOTH_TRUNCATE * sigma)))
    work = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    padded = F.pad(work[:, None], (radius, radius, radius, radius), mode="replicate")
    blurred = gaussian_blur(padded, sigma, 2 * radius + 1)
    return blurred[:, 0, radius:-radius, radius:-radius].to(maps.dtype)


def apply_rule(maps: torch.Tensor, rule: str) -> torch.Tensor:
    """Image scores [N] of maps [N, H, W] by `rule`, one of MODEL_RULES (module docstring), on
    the maps' device, unchecked: "max" is exactly maps.flatten(1).amax(1); q<p> the p quantile;
    smooth_max / smooth_top1 the maximum / the mean of the top TOP_FRACTION pixels of smooth(maps)."""
    flat = maps.flatten(1)
    if rule == "max":
        return flat.amax(1)
    if rule.startswith("q"):
        return torch.quantile(flat, float(rule[1:]), dim=1)
    smoothed = smooth(maps).flatten(1)
    if rule == "smooth_max":
        return smoothed.amax(1)
    k = max(1, round(TOP_FRACTION * smoothed.shape[1]))
    return smoothed.topk(k, dim=1).values.mean(1)
