"""The ReportData of an evaluation (`fastad eval --report`): the scored test split in memory,
with its ROC and PRO curves and the metrics of each defect type against the normal images."""
from __future__ import annotations

from pathlib import Path

import torch

from fastad.engine.batch_scoring import ScoredImages
from fastad.engine.decision import CALIBRATION_KEY, verdicts
from fastad.engine.evaluation import compute_metrics
from fastad.engine.results import output_name
from fastad.engine.run_folder import state_digest
from fastad.metrics.aupro import region_labels, pro_curve
from fastad.report.charts import thin
from fastad.report.page import write_report
from fastad.report.run_data import ReportData, ReportRow
from fastad.version import __version__

PRO_LIMIT = 0.3


def evaluation_data(scored: ScoredImages, dataset, record: dict, facts: list[tuple[str, str]],
                    threshold: float | None, overlays=None) -> ReportData:
    """scored: the ScoredImages (with maps) of `dataset`; record: its results.json object;
    facts: the run table; threshold: the calibrated image-score threshold (None: no verdicts);
    overlays: the folder holding overlays/<name>.png for the full-size view (None: thumbnails only)."""
    judged = verdicts(scored.image_scores, threshold) or [None] * len(scored.paths)
    maps = scored.maps if scored.maps.numel() else None
    masks = scored.masks if scored.masks.numel() else None
    rows = []
    for i, path in enumerate(scored.paths):
        index = scored.indices[i] if scored.indices else i
        name = output_name(path, index)
        full = None if overlays is None else Path(overlays) / "overlays" / f"{name}.png"
        rows.append(ReportRow(name, path, lambda index=index: dataset[index].image, float(scored.image_scores[i]),
                              judged[i], int(scored.labels[i]), scored.defects[i],
                              None if maps is None else maps[i], None if masks is None else masks[i],
                              str(full) if full is not None and full.is_file() else None))
    skipped = [(s["path"], s["reason"]) for s in record.get("skipped_files", [])]
    return ReportData("eval", f"fastad evaluation report: {record['model']} on {record['data']}", facts, rows,
                      skipped, threshold, metrics=record, curves=curves(scored, record), per_defect=per_defect(scored))


def curves(scored: ScoredImages, record: dict) -> dict:
    """{roc: (fpr, tpr, label), pro: (fpr, pro, label)} of the labelled images, each thinned for
    drawing and labelled with the record's exact area; a curve is left out when it is undefined
    (no normal or no defective images / pixels)."""
    from sklearn.metrics import roc_curve

    result = {}
    labelled = scored.labels >= 0
    labels, scores = scored.labels[labelled].numpy(), scored.image_scores[labelled].double().numpy()
    if 0 < labels.sum() < len(labels):
        fpr, tpr, _ = roc_curve(labels, scores)
        result["roc"] = (*thin(fpr, tpr), f"image AUROC {record['image_auroc']:.3f}")
    if scored.maps.numel():
        masks = scored.masks[labelled]
        if 0 < int(masks.sum()) < masks.numel():
            regions, n_regions = region_labels(masks)
            fpr, pro = pro_curve(scored.maps[labelled], regions, n_regions)
            result["pro"] = (*thin(fpr.numpy(), pro.numpy(), PRO_LIMIT), f"AUPRO@0.3 {record['aupro']:.3f}")
    return result


def subset(scored: ScoredImages, keep: torch.Tensor) -> ScoredImages:
    """The images of scored where keep [N] bool is true."""
    where = keep.nonzero().flatten().tolist()
    maps = scored.maps[keep] if scored.maps.numel() else scored.maps
    masks = scored.masks[keep] if scored.masks.numel() else scored.masks
    return ScoredImages(scored.image_scores[keep], maps, masks, scored.labels[keep], [scored.paths[i] for i in where],
                        [scored.defects[i] for i in where])


def per_defect(scored: ScoredImages) -> list[dict]:
    """[{defect, n_images, image_auroc, pixel_auroc, aupro}] of each defect type (its images and
    every normal image), then "all"; empty without both normal and defective images."""
    labels = scored.labels
    normal = labels == 0
    types = sorted({d for d, label in zip(scored.defects, labels.tolist()) if label == 1})
    if not types or not bool(normal.any()):
        return []
    rows = []
    for defect in types + ["all"]:
        chosen = torch.tensor([label == 1 and (defect == "all" or d == defect)
                               for d, label in zip(scored.defects, labels.tolist())])
        metrics = compute_metrics(subset(scored, chosen | normal))
        rows.append({"defect": defect, "n_images": int(chosen.sum()),
                     **{k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro")}})
    return rows


def evaluation_facts(scorer, record: dict, seconds: float | None) -> list[tuple[str, str]]:
    """The run table of an evaluation by `scorer` (a fastad.Scorer) that took `seconds` to score."""
    calibration = scorer.header.get(CALIBRATION_KEY)
    threshold = ("none (uncalibrated)" if calibration is None else
                 f"{calibration['threshold']:.6g} (false-reject rate {calibration['false_reject']:g} on "
                 f"{calibration['n_images']} normal images)")
    n = record["n_images"]
    return [("model", record["model"]), ("checkpoint", scorer.source),
            ("weights sha256", state_digest(scorer.model)[:16]),
            ("image-score rule", str(scorer.model.config.get("image_score", "unknown"))),
            ("threshold", threshold), ("data", f"{record['data']}: {n} test images"),
            ("device", f"{scorer.device}, {scorer.precision}, batch {scorer.batch_size}"),
            ("speed", f"{n / seconds:.1f} images/s ({n} images in {seconds:.1f} s)" if seconds else "not recorded"),
            ("fastad", __version__)]


def write_evaluation_report(scorer, scored: ScoredImages, dataset, record: dict, out, seconds: float | None = None,
                            overlays=None) -> Path:
    """Writes the report of an evaluation at `out` (an .html path); returns it."""
    facts = evaluation_facts(scorer, record, seconds)
    return write_report(evaluation_data(scored, dataset, record, facts, scorer.threshold, overlays), out)


def reporter(out, overlays=None):
    """An on_scored callback for fastad.engine.pipeline.evaluate / evaluate_run that writes the
    report of the evaluation at `out` (an .html path); overlays: the folder whose overlays/ the
    full-size view links (None: the thumbnails only)."""
    def write(scorer, scored, dataset, record, seconds):
        write_evaluation_report(scorer, scored, dataset, record, out, seconds, overlays)
    return write
