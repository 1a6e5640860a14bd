"""Evaluation metrics for anomaly detection and localization, exact and vectorised.

    image_auroc(scores [N], labels [N])      ROC AUC of image scores
    pixel_auroc(maps [N,H,W], masks [N,H,W]) ROC AUC of all pixels, pooled
    pixel_ap(maps, masks)                    average precision of all pixels, pooled
    aupro(maps, masks, fpr_limit=0.3)        normalised area under the PRO curve up to fpr_limit
    iou(maps, masks, threshold)              dataset IoU of maps >= threshold

Inputs may be torch tensors (any device; computed on the CPU) or numpy arrays. Higher scores
mean more anomalous; labels and masks are anomalous where > 0.5 (so bool, {0, 1} and {0, 255}
all work). Every metric returns a Python float.
"""
from fastad.metrics.aupro import aupro
from fastad.metrics.iou import iou
from fastad.metrics.roc import image_auroc, pixel_ap, pixel_auroc

__all__ = ["image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iou"]
