"""The scores folder: the one format a scoring run writes, local or on Ray, and its resume.

    out/scores.csv       `path,score` (and `verdict`, ok / defect, when the checkpoint holds a
                         calibrated threshold), one row per scored image in input order; each
                         batch's rows are appended (and fsynced) once its maps are on disk
    out/maps/<name>.npy  the anomaly map [H, W] float32 of each image (<name>: output_name)
    out/overlays/*.png   heat-map overlays (local engine only: they share one colour range)
    out/inputs.csv       `position,size,mtime_ns,sha256`: what each scored image was decoded
                         from (fastad.files.file_fingerprint), appended with its batch, before
                         its rows in scores.csv
    out/run.json         the manifest (run_manifest; fastad.engine.run_folder locks and claims)

Both engines cut the images into the same batches (batch i holds input positions [i*B,
(i+1)*B)) and append them here in that order through BatchWriter, so the same run gives the
same bytes whichever engine scored it. A rerun resumes through resume_point: the rows scores.csv
already holds are kept (a half-written last row is cut off), up to the batch of the first whose
file no longer holds the bytes it was scored from (named on stderr) or whose batch was cut short;
scoring goes on from the batch after them, so the final scores.csv is byte-identical to an
uninterrupted run's. Any file name round-trips (scores.csv is UTF-8, undecodable name bytes kept
as they were: ENCODING).
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from fastad.engine.decision import verdicts
from fastad.engine.run_folder import digest, state_digest
from fastad.files import atomic_write, changed_since, write_error
from fastad.version import __version__

SCORES_FILE = "scores.csv"
MAPS_DIR = "maps"
OVERLAYS_DIR = "overlays"
INPUTS_FILE = "inputs.csv"
REPORT_FILE, REPORT_ASSETS = "report.html", "report_files"  # fastad.report's page and its thumbnails
LEGACY_PARTS_DIR = "parts"  # per-image records the Ray engine once wrote (an old folder's, removed by --overwrite)
OWNED = (SCORES_FILE, MAPS_DIR, OVERLAYS_DIR, LEGACY_PARTS_DIR, INPUTS_FILE, REPORT_FILE, REPORT_ASSETS)
COLUMNS = ("path", "score")
VERDICT_COLUMN = "verdict"  # with a calibrated threshold
INPUTS_HEADER = "position,size,mtime_ns,sha256\r\n"
ENCODING = ("utf-8", "surrogateescape")  # file-name bytes that are no UTF-8 kept as they are


class FinishedRow(NamedTuple):
    """A row of scores.csv read back: the image's input position, its path and its score."""

    position: int
    path: str
    score: float


def output_name(path: str, index: int) -> str:
    """A file stem for image `path` at input position `index` that stays unique across
    sub-folders (test/crack/000 -> 00007_crack_000): the name of its map and overlay."""
    parts = Path(path.split(":", 1)[-1]).with_suffix("").parts[-2:]
    return f"{index:05d}_" + "_".join(p.replace(" ", "_") for p in parts)


def map_file(out, path: str, index: int) -> Path:
    """out/maps/<output_name>.npy of image `path` at input position `index`."""
    return Path(out) / MAPS_DIR / f"{output_name(path, index)}.npy"


def owned_entries(save_maps: bool, overlays: bool) -> tuple[str, ...]:
    """The folder entries a scoring run writes (what its manifest records as its own)."""
    return (SCORES_FILE, INPUTS_FILE, REPORT_FILE, REPORT_ASSETS) + ((MAPS_DIR,) if save_maps else ()) + \
        ((OVERLAYS_DIR,) if overlays else ())


def run_manifest(source: str, model, images: str, paths: list[str], settings: dict) -> dict:
    """What identifies a scoring run: the images (`images` says where from, `paths` are the
    readable files in order), the checkpoint (`source`, and the model's weights), settings
    (fastad.engine.scorer.scoring_settings and the engine's own)."""
    return {"fastad": __version__, "kind": "score", "images": images,
            "inputs": {"count": len(paths), "sha256": digest(paths)},
            "checkpoint": source, "model": model.name, "weights_sha256": state_digest(model), "settings": settings}


def score_header(threshold: float | None) -> str:
    """The header line of scores.csv (csv.writer's line ending)."""
    return ",".join(COLUMNS + ((VERDICT_COLUMN,) if threshold is not None else ())) + "\r\n"


def score_rows(paths: list[str], image_scores: torch.Tensor, threshold: float | None = None) -> str:
    """CSV rows `path,score` (score to 9 significant digits: a float32 round-trips), plus the
    verdict (score > threshold: defect, else ok) when a threshold is given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    judged = verdicts(image_scores, threshold)
    for i, (name, score) in enumerate(zip(paths, image_scores.tolist())):
        writer.writerow([name, f"{score:.9g}"] + ([judged[i]] if judged else []))
    return buffer.getvalue()


def input_rows(indices: list[int], fingerprints: list) -> str:
    """inputs.csv rows `position,size,mtime_ns,sha256` (`?` for an unknown fingerprint)."""
    return "".join(f"{i},{(f or '? ? ?').replace(' ', ',')}\r\n" for i, f in zip(indices, fingerprints))


class AppendStream:
    """A file opened for appending (a new file starts with `header`). write(text) appends with
    one write, then fsyncs; if the write fails part-way (a full disk) the file is cut back to
    where it began, so the file only ever holds whole batches and a resume starts at the next."""

    def __init__(self, path: Path, header: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if os.fstat(self.fd).st_size == 0:
            self.write(header)

    def write(self, text: str) -> None:
        data, start = text.encode(*ENCODING), os.fstat(self.fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
            os.fsync(self.fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)
            raise write_error(error, self.path) from error

    def close(self) -> None:
        os.close(self.fd)


class BatchWriter:
    """out/inputs.csv and out/scores.csv open for appending scored batches, in input order:
    append(indices, paths, fingerprints, image_scores) writes a batch's fingerprints, then its
    rows (with verdicts when `threshold` is given). A context manager that closes both."""

    def __init__(self, out, threshold: float | None):
        self.threshold = threshold
        self.inputs = AppendStream(Path(out) / INPUTS_FILE, INPUTS_HEADER)
        try:
            self.scores = AppendStream(Path(out) / SCORES_FILE, score_header(threshold))
        except BaseException:
            self.inputs.close()
            raise

    def append(self, indices: list[int], paths: list[str], fingerprints: list, image_scores: torch.Tensor) -> None:
        self.inputs.write(input_rows(indices, fingerprints))
        self.scores.write(score_rows(paths, image_scores, self.threshold))

    def close(self) -> None:
        self.inputs.close()
        self.scores.close()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _csv_line(record: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(record)
    return buffer.getvalue()


def _records(text: str):
    """The CSV records of text, up to the first one the csv module cannot parse (a cut-off quote)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            yield next(reader)
        except (StopIteration, csv.Error):
            return


def _whole_records(path: Path) -> list[list[str]]:
    """The CSV records of path; a half-written last record (a kill mid-write) is cut off the
    file. ValueError naming the file when a record before the last is not as fastad writes it."""
    text = path.read_bytes().decode(*ENCODING)
    records, offset, cut = [], 0, None
    for record in _records(text):
        line = _csv_line(record)
        if cut is not None:
            raise ValueError(f"{path} holds a row fastad did not write ({cut!r}); pass --overwrite to score the "
                             "folder again")
        if text.startswith(line, offset):
            records.append(record)
            offset += len(line)
        else:
            cut = record
    if offset != len(text):
        os.truncate(path, len(text[:offset].encode(*ENCODING)))
    return records


def read_finished(path: Path, paths: list[str], threshold: float | None = None) -> list[FinishedRow]:
    """The rows an earlier attempt of this run appended to scores.csv at `path` (`paths`: the
    run's images in input order); a half-written last row (a kill mid-write) is cut off the file.
    ValueError naming the file when its header is not score_header(threshold) or its rows are
    not this run's images in order."""
    if not path.is_file():
        return []
    records = _whole_records(path)
    header = score_header(threshold).rstrip()
    if records and ",".join(records[0]) != header:
        raise ValueError(f"{path} has the header {','.join(records[0])!r}, this run writes {header!r}; pass "
                         "--overwrite to score the folder again")
    position = {name: i for i, name in enumerate(paths)}
    finished: list[FinishedRow] = []
    for row in records[1:]:
        index = position.get(row[0]) if len(row) == header.count(",") + 1 else None
        if index is None or (finished and index <= finished[-1].position):
            raise ValueError(f"{path} does not list this run's images in order (row {row!r}); pass --overwrite "
                             "to score the folder again")
        finished.append(FinishedRow(index, row[0], float(row[1])))
    return finished


def read_fingerprints(path: Path) -> dict[int, str]:
    """out/inputs.csv -> {input position: the file_fingerprint it was scored from} (a position
    scored twice: the last); {} when there is none."""
    if not path.is_file():
        return {}
    recorded = {}
    for record in _whole_records(path)[1:]:
        if len(record) == 4 and record[0].isdigit():
            recorded[int(record[0])] = " ".join(record[1:])
    return recorded


def resume_point(out, paths: list[str], batch_size: int, threshold: float | None) -> tuple[list[FinishedRow], int]:
    """(the rows of out/scores.csv to keep, the first input position to score): what a run over
    `paths` in batches of batch_size resumes from (see the module docstring)."""
    out = Path(out)
    finished = trusted_rows(out, read_finished(out / SCORES_FILE, paths, threshold), batch_size, threshold)
    return finished, (finished[-1].position // batch_size + 1) * batch_size if finished else 0


def discard(out) -> None:
    """Removes out/scores.csv and out/inputs.csv: the run starts over (maps are overwritten as rescored)."""
    for name in (SCORES_FILE, INPUTS_FILE):
        (Path(out) / name).unlink(missing_ok=True)


def trusted_rows(out: Path, finished: list[FinishedRow], batch: int, threshold: float | None) -> list[FinishedRow]:
    """The finished rows up to the batch of the first one that cannot be trusted (its file
    changed since it was scored, or its batch was cut short: fewer rows than inputs.csv recorded
    decoded), said so on stderr; scores.csv is cut back to them, so that batch and every one
    after it are scored again, as an uninterrupted run would."""
    untrusted = _first_untrusted(finished, read_fingerprints(out / INPUTS_FILE), batch)
    if untrusted is None:
        return finished
    index, why = untrusted
    kept = [row for row in finished if row.position < index // batch * batch]
    print(f"warning: {why}; scoring again the {len(finished) - len(kept)} finished images from its batch on",
          file=sys.stderr, flush=True)
    with atomic_write(out / SCORES_FILE, "wb") as f:
        f.write((score_header(threshold) + score_rows([row.path for row in kept], torch.tensor(
            [row.score for row in kept], dtype=torch.float32), threshold)).encode(*ENCODING))
    return kept


def _first_untrusted(finished: list[FinishedRow], recorded: dict[int, str], batch: int) -> tuple[int, str] | None:
    """(input position, why) of the first finished row not to trust, or None."""
    for row in finished:
        reason = changed_since(row.path, recorded.get(row.position))
        if reason is not None:
            return row.position, f"{row.path}: {reason}"
    if finished:
        last = finished[-1].position // batch
        rows = [row.position for row in finished if row.position // batch == last]
        if {position for position in recorded if position // batch == last} - set(rows):
            return rows[0], f"{SCORES_FILE} ends in a batch cut short"
    return None
