"""What a report shows, read from a scoring folder (scores.csv, run.json, maps/) or taken from an
evaluation held in memory.

    data = read_scores_dir("line/today-scores")   # FileNotFoundError / ValueError: one line naming the file

A half-finished folder (run.json says complete: false, or scores.csv ends in a half-written
line) gives a report of the rows that are there, marked partial; a folder written by another
fastad version is read when its scores.csv has a header this version writes (the page says
which version wrote it), and refused naming both versions otherwise.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from fastad.version import __version__
from fastad.engine.decision import CALIBRATION_KEY, VERDICTS
from fastad.engine.checkpoint import read_header
from fastad.engine.run_folder import read_manifest
from fastad.engine.scores_folder import MAPS_DIR, OVERLAYS_DIR, SCORES_FILE, score_header


@dataclass
class ReportRow:
    """One scored image: name (its output file stem, as maps/<name>.npy), path (as in scores.csv),
    image (the file to show, or None when it cannot be found), score, verdict ("ok" / "defect", or
    None without a threshold), label (1 anomalous, 0 normal, -1 unknown), defect type, and the
    anomaly map (a maps/*.npy path, an array [H, W], or None) and mask ([H, W] bool or None)."""

    name: str
    path: str
    image: object
    score: float
    verdict: str | None = None
    label: int = -1
    defect: str = "unknown"
    map: object = None
    mask: object = None
    full: str | None = None  # the overlay PNG beside the map, when there is one


@dataclass
class ReportData:
    """Everything a page shows: the kind ("score" or "eval"), a title, the run's facts [(name,
    value)], rows (in scoring order), skipped [(path, reason)] (None when not recorded),
    threshold, notices (partial run, other version: shown at the top), partial, and for an
    evaluation its metrics record, curves {roc: (fpr, tpr, auc), pro: (fpr, pro, aupro)} and
    per-defect rows [{defect, n_images, image_auroc, pixel_auroc, aupro}]."""

    kind: str
    title: str
    facts: list[tuple[str, str]]
    rows: list[ReportRow]
    skipped: list[tuple[str, str]] | None = None
    threshold: float | None = None
    notices: list[str] = field(default_factory=list)
    partial: bool = False
    metrics: dict | None = None
    curves: dict = field(default_factory=dict)
    per_defect: list[dict] = field(default_factory=list)


def read_scores_dir(folder) -> ReportData:
    """The ReportData of a `fastad score` output folder (module docstring for what is refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"scores folder {folder} does not exist or is not a folder")
    scores = folder / SCORES_FILE
    if not scores.is_file():
        raise FileNotFoundError(f"{folder} has no {SCORES_FILE}: expected the --out folder of fastad score")
    manifest = read_manifest(folder) or {}
    version = manifest.get("fastad")
    notices = [] if version in (None, __version__) else [
        f"written by fastad {version}; read by fastad {__version__}"]
    threshold = manifest.get("settings", {}).get("threshold")
    rows, cut = read_rows(scores, version)
    attach_files(folder, rows, manifest.get("images"))
    partial = cut or not manifest.get("complete", False)
    if partial:
        expected = manifest.get("inputs", {}).get("count")
        of = f" of {expected}" if expected is not None else ""
        notices.insert(0, f"partial: this run did not finish; {len(rows)}{of} images scored so far")
    skipped = manifest.get("skipped") if manifest.get("complete") else None
    return ReportData("score", f"fastad inspection report: {manifest.get('images', folder)}",
                      run_facts(manifest, len(rows)), rows,
                      None if skipped is None else [(s["path"], s["reason"]) for s in skipped],
                      threshold, notices, partial)


def read_rows(scores: Path, version: str | None) -> tuple[list[ReportRow], bool]:
    """The rows of scores.csv and whether a half-written last line was left out; ValueError
    naming the file (and the version that wrote it) when its header or a row is not one
    fastad score writes."""
    raw = scores.read_bytes()
    complete = raw[:raw.rfind(b"\n") + 1]
    lines = complete.decode(errors="replace").splitlines()
    headers = {score_header(None).rstrip(), score_header(0.0).rstrip()}
    if not lines or lines[0] not in headers:
        wrote = f" (written by fastad {version})" if version else ""
        raise ValueError(f"{scores} has the header {lines[0] if lines else ''!r}{wrote}; fastad "
                         f"{__version__} reads {' or '.join(sorted(map(repr, headers)))}")
    rows = []
    for number, row in enumerate(csv.reader(lines[1:]), start=2):
        if len(row) != lines[0].count(",") + 1 or (len(row) == 3 and row[2] not in VERDICTS):
            raise ValueError(f"{scores} line {number} is not a row of path,score[,verdict]: {row!r}")
        try:
            score = float(row[1])
        except ValueError:
            raise ValueError(f"{scores} line {number} has the score {row[1]!r}, expected a number") from None
        verdict = row[2] if len(row) == 3 else None
        rows.append(ReportRow(f"{len(rows):05d}_{Path(row[0]).stem}", row[0], None, score, verdict))
    return rows, len(complete) != len(raw)


def attach_files(folder: Path, rows: list[ReportRow], images: str | None) -> None:
    """Sets each row's image file, map (maps/<name>.npy) and full-size overlay (overlays/<name>.png).
    Map files are named <position>_<parent>_<stem>; both lists are in scoring order, so they are
    matched by walking them together."""
    maps = sorted((folder / MAPS_DIR).glob("*.npy")) if (folder / MAPS_DIR).is_dir() else []
    at = 0
    for row in rows:
        suffix = "_" + "_".join(p.replace(" ", "_") for p in Path(row.path).with_suffix("").parts[-2:])
        while at < len(maps) and not maps[at].stem.endswith(suffix):
            at += 1
        if at < len(maps):
            row.name, row.map = maps[at].stem, maps[at]
            overlay = folder / OVERLAYS_DIR / f"{row.name}.png"
            row.full = str(overlay) if overlay.is_file() else None
            at += 1
        row.image = image_file(row.path, images)


def image_file(path: str, images: str | None) -> str | None:
    """The image file of a scores.csv path: the path itself when it exists, else the file of that
    name in the run's images folder; None when neither exists."""
    for candidate in (Path(path), Path(images or "") / Path(path).name):
        if candidate.is_file():
            return str(candidate.resolve())
    return None


def run_facts(manifest: dict, n_rows: int) -> list[tuple[str, str]]:
    """[(name, value)] of the run table: model, checkpoint and weights digest, image-score rule,
    threshold and its false-reject rate, fastad versions, device, precision, images/s."""
    settings = manifest.get("settings", {})
    header, unread = checkpoint_header(manifest.get("checkpoint"))
    calibration = header.get(CALIBRATION_KEY) or {}
    rule = header.get("config", {}).get("image_score", f"unknown ({unread})")
    timing = manifest.get("timing") or {}
    speed = (f"{timing['images'] / timing['seconds']:.1f} images/s ({timing['images']} images in "
             f"{timing['seconds']:.1f} s)" if timing.get("seconds") else "not recorded")
    threshold = settings.get("threshold")
    rate = (f" (false-reject rate {calibration['false_reject']:g} on {calibration['n_images']} normal images)"
            if calibration else "")
    return [("model", manifest.get("model", "unknown (no run.json)")),
            ("checkpoint", str(manifest.get("checkpoint", "unknown"))),
            ("weights sha256", str(manifest.get("weights_sha256", "unknown"))[:16]),
            ("image-score rule", rule),
            ("threshold", "none (uncalibrated)" if threshold is None else f"{threshold:.6g}{rate}"),
            ("images", f"{n_rows} scored of {manifest.get('inputs', {}).get('count', '?')} in "
                       f"{manifest.get('images', 'unknown')}"),
            ("device", f"{settings.get('device', 'unknown')}, {settings.get('precision', '?')}, batch "
                       f"{settings.get('batch_size', '?')}, {settings.get('engine', 'local')} engine"),
            ("speed", speed),
            ("fastad", f"{manifest.get('fastad', 'unknown')} (report: {__version__})")]


def checkpoint_header(checkpoint) -> tuple[dict, str]:
    """(the header of the checkpoint at `checkpoint`, "") or ({}, why it could not be read)."""
    if not checkpoint:
        return {}, "run.json names no checkpoint"
    try:
        return read_header(checkpoint), ""
    except (OSError, ValueError) as error:
        return {}, f"checkpoint not readable: {error}"
