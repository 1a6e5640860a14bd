"""The HTML inspection report of a scoring or evaluation run: one self-contained page that opens
from disk with no network, and a folder of thumbnails beside it.

    fastad report SCORES_DIR [--out FILE]                # or --report on fastad score / eval
    path = fastad.report.report_scores("line/today-scores")   # -> line/today-scores/report.html

The page shows the run (model, checkpoint digest, image-score rule, threshold and its
false-reject rate, versions, device, images/s), the ok / defect / skipped counts with each
skipped file and its reason, the score distribution with the threshold, and a gallery of every
image worst first (thumbnail, score, verdict, distance to the threshold), filterable by verdict
and searchable by file name, the full-size picture on click; for an evaluation also the ROC and
PRO curves and the metrics of each defect type. Needs the `report` extra (jinja2, matplotlib).
"""
from __future__ import annotations

from pathlib import Path

from fastad.report.page import REPORT_FILE, assets_folder, write_report
from fastad.report.run_data import ReportData, ReportRow, read_scores_dir


def report_scores(folder, out=None) -> Path:
    """Writes the report of the `fastad score` output `folder` at `out` (default
    folder/report.html); returns its path. FileNotFoundError / ValueError in one line naming
    the folder or file when it is not a scoring folder fastad can read."""
    data = read_scores_dir(folder)
    return write_report(data, Path(out) if out is not None else Path(folder) / REPORT_FILE)


__all__ = ["REPORT_FILE", "ReportData", "ReportRow", "assets_folder", "read_scores_dir", "report_scores",
           "write_report"]
