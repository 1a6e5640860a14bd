"""AUPRO: area under the per-region-overlap curve up to a false-positive-rate limit, as defined
for MVTec AD (Bergmann et al., IJCV 2021) and in anomalib >= 2.3.

Regions are the connected components (8-connectivity) of each ground-truth mask. For a threshold
t, a pixel is predicted anomalous when its score >= t; FPR(t) is the share of all normal pixels
(pooled over every image) predicted anomalous, PRO(t) the mean over all regions of the share of
the region's pixels predicted anomalous. The sweep is exact: one point per distinct score,
starting from (0, 0), cut at FPR = fpr_limit with the PRO linearly interpolated there,
integrated with the trapezoid rule and divided by fpr_limit (so a perfect map scores 1)."""
from __future__ import annotations

import numpy as np
import torch

from fastad.metrics._inputs import check_real, scores_and_truth
from fastad.metrics._sweep import descending_groups


def region_labels(masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(labels [N, H, W] int64, number of regions) for bool masks [N, H, W]: 0 for normal
    pixels, 1..R for the 8-connected components of each image, numbered across the set."""
    from skimage.measure import label as connected_components  # imported on first use: slow import

    out = np.zeros(tuple(masks.shape), dtype=np.int64)
    count = 0
    for i, mask in enumerate(masks.numpy()):
        if mask.any():
            labels, n = connected_components(mask, connectivity=2, return_num=True)
            out[i] = np.where(labels > 0, labels + count, 0)
            count += n
    return torch.from_numpy(out), count


def pro_curve(maps: torch.Tensor, regions: torch.Tensor, n_regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fpr [G + 1], pro [G + 1]) float64, starting at (0, 0), one point per distinct score from
    the highest down, for score maps and region labels of the same shape."""
    scores, regions = maps.flatten(), regions.flatten()
    normal = regions == 0
    sizes = torch.bincount(regions, minlength=n_regions + 1).double()
    # each region pixel moves PRO by 1 / (its region's size * number of regions)
    weight = torch.where(normal, 0.0, 1.0 / (sizes[regions] * n_regions))
    order, ends = descending_groups(scores)
    false_pos = torch.cumsum(normal[order], dim=0, dtype=torch.int64)[ends]
    pro = torch.cumsum(weight[order], dim=0)[ends].clamp_(max=1.0)
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = false_pos.double() / float(sizes[0])
    return torch.cat([zero, fpr]), torch.cat([zero, pro])


def area_to_limit(x: torch.Tensor, y: torch.Tensor, limit: float) -> float:
    """Trapezoid area under the curve (x nondecreasing from 0, ending >= limit) from 0 to
    `limit`, with y linearly interpolated at x = limit."""
    k = int(torch.searchsorted(x, torch.tensor([limit], dtype=x.dtype), right=True))  # points <= limit
    area = float(((x[1:k] - x[: k - 1]) * (y[1:k] + y[: k - 1])).sum()) / 2.0
    if k < x.numel():
        x0, x1, y0, y1 = float(x[k - 1]), float(x[k]), float(y[k - 1]), float(y[k])
        y_limit = y0 + (limit - x0) / (x1 - x0) * (y1 - y0)
        area += (limit - x0) * (y0 + y_limit) / 2.0
    return area


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve from FPR 0 to `fpr_limit` (0 < fpr_limit <= 1) of
    score maps [N, H, W] against ground-truth masks [N, H, W] (anomalous where > 0.5). Images
    without anomaly contribute only normal pixels. ValueError if there is no anomalous region or
    no normal pixel, on NaN scores or mismatched shapes."""
    fpr_limit = check_real("fpr_limit", fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    maps, masks = scores_and_truth("maps", "masks", maps, masks, 3, "[N, H, W]")
    if not bool(masks.any()):
        raise ValueError("AUPRO is undefined: masks has no anomalous region")
    if bool(masks.all()):
        raise ValueError("AUPRO is undefined: masks has no normal pixel")
    regions, n_regions = region_labels(masks)
    fpr, pro = pro_curve(maps, regions, n_regions)
    return area_to_limit(fpr, pro, fpr_limit) / fpr_limit
