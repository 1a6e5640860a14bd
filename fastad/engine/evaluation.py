"""Metrics of a scored dataset as one JSON-able record, and the table the CLI prints."""
from __future__ import annotations

import math

from fastad import metrics
from fastad.engine.batch_scoring import ScoredImages
from fastad.engine.decision import decision_rates

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")


def compute_metrics(scored: ScoredImages, pixel_threshold: float | None = None) -> dict[str, float | None]:
    """{image_auroc, pixel_auroc, pixel_ap, aupro} over the labelled images, plus iou (of maps >=
    pixel_threshold) when a model's segmentation threshold is given; a metric is None when it is
    undefined (no anomalous or no normal images / pixels among them)."""
    labelled = scored.labels >= 0
    labels = scored.labels[labelled]
    result: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if labels.numel() and 0 < int(labels.sum()) < labels.numel():
        result["image_auroc"] = metrics.image_auroc(scored.image_scores[labelled], labels)
    if scored.maps.numel():
        maps, masks = scored.maps[labelled], scored.masks[labelled]
        if masks.numel() and 0 < int(masks.sum()) < masks.numel():
            result["pixel_auroc"] = metrics.pixel_auroc(maps, masks)
            result["pixel_ap"] = metrics.pixel_ap(maps, masks)
            result["aupro"] = metrics.aupro(maps, masks)
    if pixel_threshold is not None:
        result["iou"] = metrics.iou(maps, masks, pixel_threshold) if scored.maps.numel() and masks.numel() else None
    return result


def evaluation_record(scored: ScoredImages, model: str, data: str, pixel_threshold: float | None = None,
                      decision_threshold: float | None = None) -> dict:
    """The results.json object: the four metrics (and iou at `pixel_threshold`, the model's
    segmentation threshold, for models that segment), model, data, n_images (scored), skipped
    (count of unreadable files) and
    skipped_files [{path, reason}]; with the calibrated image-score `decision_threshold`, also
    "decision": {threshold, false_reject, miss_rate} (fastad.engine.decision.decision_rates)."""
    record = {**compute_metrics(scored, pixel_threshold), "model": model, "data": data, "n_images": len(scored.paths),
              "skipped": len(scored.skipped), "skipped_files": [{"path": p, "reason": r} for p, r in scored.skipped]}
    if decision_threshold is not None:
        record["decision"] = decision_rates(scored.image_scores, scored.labels, decision_threshold)
    return record


def format_table(records: dict[str, dict]) -> str:
    """{row name: record} -> an aligned text table of the four metrics (n/a where undefined)."""
    keys = METRIC_KEYS + (("iou",) if any("iou" in r for r in records.values()) else ())
    header = ["", "image AUROC", "pixel AUROC", "pixel AP", "AUPRO@0.3", "IoU"][:len(keys) + 1]
    rows = [[name] + ["n/a" if r.get(k) is None or (isinstance(r[k], float) and math.isnan(r[k])) else f"{r[k]:.3f}"
                      for k in keys] for name, r in records.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return "\n".join(lines)


def format_decision(decision: dict) -> str:
    """One line: the false-reject and miss rates at the calibrated threshold (n/a when undefined)."""
    def rate(value):
        return "n/a" if value is None else f"{100 * value:.1f} %"
    return (f"at the calibrated threshold {decision['threshold']:.6g}: false-reject {rate(decision['false_reject'])}, "
            f"miss {rate(decision['miss_rate'])}")

