"""Exact ROC AUC and average precision, for image-level scores and for pixel score maps.

Ties are handled like scikit-learn's roc_auc_score (one curve point per distinct score,
trapezoid rule) and average_precision_score (step-wise sum of precision × recall increment, no
interpolation). Ground truth is anomalous where it is > 0.5."""
from __future__ import annotations

import torch

from fastad.metrics._inputs import scores_and_truth
from fastad.metrics._sweep import positive_counts


def _auroc(scores: torch.Tensor, positive: torch.Tensor, what: str, truth_name: str) -> float:
    scores, positive = scores.flatten(), positive.flatten()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        missing = "anomalous" if n_pos == 0 else "normal"
        raise ValueError(
            f"{what} AUROC is undefined: {truth_name} has no {missing} {what} (needs both classes)")
    tp, fp = positive_counts(scores, positive)
    zero = torch.zeros(1, dtype=torch.int64)
    tp, fp = torch.cat([zero, tp]), torch.cat([zero, fp])
    # 2 * area * n_pos * n_neg as an exact integer: sum of (fp step) * (tp_i + tp_{i-1})
    twice_area = int(((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])).sum())
    return twice_area / (2.0 * n_pos * n_neg)


def image_auroc(scores, labels) -> float:
    """Area under the ROC curve of image scores [N] against image labels [N] (anomalous where
    > 0.5). Higher score = more anomalous. ValueError if only one class is present, on NaN
    scores or mismatched shapes."""
    scores, labels = scores_and_truth("scores", "labels", scores, labels, 1, "[N]")
    return _auroc(scores, labels, "image", "labels")


def pixel_auroc(maps, masks) -> float:
    """Area under the ROC curve of all pixels of score maps [N, H, W] against ground-truth masks
    [N, H, W] (anomalous where > 0.5), pooled over the whole set. ValueError if the masks hold
    only one class, on NaN scores or mismatched shapes."""
    maps, masks = scores_and_truth("maps", "masks", maps, masks, 3, "[N, H, W]")
    return _auroc(maps, masks, "pixel", "masks")


def pixel_ap(maps, masks) -> float:
    """Average precision of all pixels of score maps [N, H, W] against masks [N, H, W]
    (anomalous where > 0.5): sum over distinct thresholds of precision × recall increment, as
    sklearn.metrics.average_precision_score. Defined (1.0 for any scores) when every pixel is
    anomalous; ValueError if no pixel is anomalous."""
    maps, masks = scores_and_truth("maps", "masks", maps, masks, 3, "[N, H, W]")
    maps, masks = maps.flatten(), masks.flatten()
    n_pos = int(masks.sum())
    if n_pos == 0:
        raise ValueError("pixel average precision is undefined: masks has no anomalous pixel")
    tp, fp = positive_counts(maps, masks)
    tp_prev = torch.cat([torch.zeros(1, dtype=torch.int64), tp[:-1]])
    precision = tp.double() / (tp + fp).double()
    return float(((tp - tp_prev).double() * precision).sum()) / n_pos
