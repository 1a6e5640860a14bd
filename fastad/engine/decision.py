"""The pass/fail decision rule: the image-score threshold at a chosen false-reject rate, and verdicts.

    threshold = threshold_at(normal_scores, false_reject=0.01)
    verdicts(image_scores, threshold)                 # ["ok", "defect", ...]

The rule alone (no model, no files): fastad.engine.pipeline.calibrate_run applies it to a
checkpoint (`fastad calibrate`), and the Scorer gives every result its verdict.

The threshold t is taken from the image scores s_1 <= ... <= s_n of n normal images as the
smallest value with at most floor(rate * n) of them strictly above it: t = s_(n - floor(rate * n))
(1-based). An image is a "defect" when its score is > t, else "ok". The false-reject rate on new
normal images is then about `rate`, but only resolvable to 1/n: with n < 1/rate, floor(rate * n)
is 0 and t is the largest normal score (a warning says so); fewer than MIN_IMAGES normal images
are refused. The threshold belongs to the model's image-score rule (its `image_score` setting)
and precision it was scored at; the record says both.

The checkpoint header gets {"calibration": record} with record = {threshold, false_reject,
n_images, observed_false_reject (the fraction of the calibration images above t), image_score,
precision, source}.
"""
from __future__ import annotations

import math
import warnings

import torch


CALIBRATION_KEY = "calibration"
DEFAULT_FALSE_REJECT = 0.01
MIN_IMAGES = 10
VERDICTS = ("ok", "defect")


def check_rate(name: str, rate) -> float:
    """rate as a float in (0, 1); ValueError naming `name` otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {rate!r}")
    return float(rate)


def threshold_at(scores: torch.Tensor, false_reject: float) -> float:
    """scores [n] of normal images -> the threshold of the module docstring (a float). ValueError
    when there are fewer than MIN_IMAGES scores or a score is not finite."""
    false_reject = check_rate("false_reject", false_reject)
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    n = scores.numel()
    if n < MIN_IMAGES:
        raise ValueError(f"calibration needs at least {MIN_IMAGES} normal images, got {n}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("calibration scores must be finite; a normal image scored NaN or inf")
    allowed = math.floor(false_reject * n + 1e-9)
    if allowed == 0:
        warnings.warn(f"{n} normal images cannot resolve a false-reject rate of {false_reject:g} (that needs "
                      f"{math.ceil(1 / false_reject)}); the threshold is their largest score", stacklevel=2)
    return float(scores.sort().values[n - 1 - allowed])


def calibrated_threshold(header: dict) -> float | None:
    """The threshold a checkpoint header stores (None when it was not calibrated); ValueError
    when its calibration record has no numeric threshold."""
    record = header.get(CALIBRATION_KEY)
    if record is None:
        return None
    threshold = record.get("threshold") if isinstance(record, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"the checkpoint's calibration must hold a finite number 'threshold', got {record!r}")
    return float(threshold)


def verdicts(image_scores: torch.Tensor, threshold: float | None) -> list[str] | None:
    """"defect" for each score > threshold, else "ok"; None without a threshold."""
    if threshold is None:
        return None
    return [VERDICTS[int(s > threshold)] for s in image_scores.tolist()]


def decision_rates(image_scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float | None]:
    """{false_reject: fraction of normal (label 0) images scored > threshold, miss_rate: fraction
    of anomalous (label 1) images scored <= threshold, threshold}; a rate is None without images
    of its kind. Unlabelled images (label < 0) are left out."""
    above = image_scores > threshold
    normal, anomalous = labels == 0, labels == 1
    return {"threshold": threshold,
            "false_reject": float(above[normal].float().mean()) if bool(normal.any()) else None,
            "miss_rate": float((~above[anomalous]).float().mean()) if bool(anomalous.any()) else None}


def calibration_record(image_scores: torch.Tensor, false_reject: float, image_score: str, precision: str,
                       source: str) -> dict:
    """The header record of the module docstring for the image scores [n] of normal images."""
    threshold = threshold_at(image_scores, false_reject)
    return {"threshold": threshold, "false_reject": float(false_reject), "n_images": int(image_scores.numel()),
            "observed_false_reject": float((image_scores.double() > threshold).double().mean()),
            "image_score": image_score, "precision": precision, "source": source}
