"""Writing the report: one self-contained HTML page (jinja2 template, inline CSS, script and SVG
charts; no network) and a folder of thumbnails beside it.

    out/report.html         the page
    out/report_files/thumbs one JPEG per image, loaded by the page as it scrolls into view

The thumbnails are written into a fresh temporary folder that replaces report_files/ when they
are all written, then the page is written atomically, so an interrupted run leaves the earlier
report as it was.
"""
from __future__ import annotations

import datetime
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np

from fastad.version import __version__
from fastad.engine.decision import VERDICTS
from fastad.engine.scores_folder import REPORT_FILE
from fastad.files import atomic_write
from fastad.report import charts
from fastad.report.run_data import ReportData
from fastad.report.thumbnails import shared_scale, write_thumbnails

TEMPLATE = "report.html.j2"
FIRST_RENDER = 120  # cards the page builds at once; more as the reader scrolls
# (ReportData.curves key, title, x label, y label, x limit)
CURVES = (("roc", "Image ROC", "false-positive rate (normal images)", "true-positive rate", 1.0),
          ("pro", "Per-region overlap up to FPR 0.3", "false-positive rate (normal pixels)", "per-region overlap", 0.3))


def assets_folder(out: Path) -> Path:
    """The folder beside the page `out` that holds its thumbnails: <stem>_files."""
    return out.parent / f"{out.stem}_files"


def write_report(data: ReportData, out) -> Path:
    """Writes the page for `data` at `out` (and its thumbnails beside it); returns out."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report file must end in .html, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    assets = assets_folder(out)
    fresh = out.parent / f".{assets.name}.{secrets.token_hex(4)}.tmp"
    try:
        scale = shared_scale(data.rows)
        written, failed = write_thumbnails(data.rows, fresh / "thumbs", scale)
        html = render(data, out, {i: f"{assets.name}/thumbs/{name}" for i, name in written.items()}, failed, scale)
        replace_folder(fresh, assets)
        with atomic_write(out, "w") as f:
            f.write(html)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh)
    return out


def replace_folder(fresh: Path, target: Path) -> None:
    """Puts folder `fresh` in place of `target` (removing the old one)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
        target.rename(old)
    fresh.rename(target)
    if old is not None:
        shutil.rmtree(old)


def link(target: str | None, page: Path) -> str:
    """A relative, URL-quoted link from the page's folder to the file `target` ("" for None)."""
    if target is None:
        return ""
    return quote(Path(os.path.relpath(target, page.parent)).as_posix())


def gallery_rows(data: ReportData, page: Path, thumbs: dict[int, str]) -> list[list]:
    """[name, score, verdict, label, defect, thumbnail, full-size picture, distance to the
    threshold] per image, worst (highest score) first."""
    order = sorted(range(len(data.rows)), key=lambda i: (-data.rows[i].score, i))
    rows = []
    for i in order:
        row = data.rows[i]
        full = row.full or (row.image if isinstance(row.image, str) else None)
        distance = None if data.threshold is None else round(row.score - data.threshold, 6)
        rows.append([Path(row.path).name, round(row.score, 6), row.verdict or "", row.label, row.defect,
                     thumbs.get(i, ""), link(full, page), distance])
    return rows


def counts(data: ReportData) -> dict[str, int | None]:
    """{ok, defect, unjudged, skipped (None when not recorded)} image counts."""
    verdicts = [row.verdict for row in data.rows]
    return {**{v: verdicts.count(v) for v in VERDICTS}, "unjudged": verdicts.count(None),
            "skipped": None if data.skipped is None else len(data.skipped)}


def render(data: ReportData, page: Path, thumbs: dict[int, str], failed: list, scale) -> str:
    """The page's HTML."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(loader=PackageLoader("fastad.report", "templates"), undefined=StrictUndefined,
                              autoescape=select_autoescape(enabled_extensions=("html", "j2")))
    scores = np.array([row.score for row in data.rows], dtype=np.float64)
    labels = np.array([row.label for row in data.rows], dtype=np.int64)
    histogram = charts.score_histogram(scores, labels, data.threshold) if len(scores) else ""
    curve_svgs = [(title, charts.curve(*data.curves[key], xlabel, ylabel, limit))
                  for key, title, xlabel, ylabel, limit in CURVES if key in data.curves]
    return environment.get_template(TEMPLATE).render(
        data=data, counts=counts(data), histogram=histogram, curve_svgs=curve_svgs, thumb_failures=failed, scale=scale,
        rows=gallery_rows(data, page, thumbs), verdicts=[v for v in VERDICTS if any(r.verdict == v for r in data.rows)],
        first_render=FIRST_RENDER, version=__version__,
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
