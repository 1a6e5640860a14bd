"""Dataset IoU of thresholded score maps: one intersection and one union pooled over all
images (the segmentation metric of UTAD and similar papers), not a mean of per-image IoUs."""
from __future__ import annotations

from fastad.metrics._inputs import check_real, scores_and_truth


def iou(maps, masks, threshold) -> float:
    """|pred ∩ gt| / |pred ∪ gt| over all pixels of score maps [N, H, W] and masks [N, H, W],
    with pred = maps >= threshold and gt = masks > 0.5. When the union is empty (no pixel
    predicted and no pixel anomalous) prediction and truth agree exactly and the result is 1.0.
    ValueError on NaN scores or threshold and mismatched shapes."""
    threshold = check_real("threshold", threshold)
    maps, masks = scores_and_truth("maps", "masks", maps, masks, 3, "[N, H, W]")
    pred = maps >= threshold
    union = int((pred | masks).sum())
    if union == 0:
        return 1.0
    return int((pred & masks).sum()) / union
