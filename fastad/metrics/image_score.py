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
A model's `image_score` setting takes one of MODEL_RULES (the rules that need no reference maps;
they are defined, and applied on the model's device, in fastad.nn.score_rules).
Where, for the norm_* rules (NORMALISED_RULES), m [H, W] is the per-position mean of `reference`
maps of normal images (it removes border and position bias) and s the standard deviation of all
their pixels after subtracting m (one scale per model and dataset).
"""
from __future__ import annotations

import torch

from fastad.checks import check_choice
from fastad.metrics._inputs import as_cpu_tensor, check_no_nan
from fastad.nn.score_rules import MODEL_RULES, SMOOTH_SIGMA, TOP_FRACTION, apply_rule, smooth

__all__ = ["IMAGE_SCORE_RULES", "MODEL_RULES", "NORMALISED_RULES", "SMOOTH_SIGMA", "TOP_FRACTION", "image_score",
           "normalise", "smooth"]

NORMALISED_RULES = ("norm_max", "norm_smooth_top1")
IMAGE_SCORE_RULES = MODEL_RULES + NORMALISED_RULES


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
    return apply_rule(maps, rule.removeprefix("norm_"))

