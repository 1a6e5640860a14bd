"""One scoring run of a folder of production images into an output folder, streamed and resumable.

    out/scores.csv       `path,score` (and `verdict`, ok / defect, when the checkpoint holds a
                         calibrated threshold), one row per scored image in file-name order;
                         each batch's rows are appended (flushed and fsynced) once its maps are
                         on disk
    out/maps/<name>.npy  the anomaly map [H, W] float32 of each image
    out/overlays/*.png   heat-map overlays (written at the end: they share one colour range)
    out/inputs.csv       `position,size,mtime_ns,sha256`: what each scored image was decoded
                         from (fastad.files.file_fingerprint), appended with its batch
    out/run.json         the manifest: images, checkpoint, settings, the entries it owns;
                         complete once finished, then also `skipped` [{path, reason}] and
                         `timing` {seconds, images} of the last attempt (what fastad.report shows)

The images folder is identified by its resolved path (scores.csv lists the images by it), so
a relative and an absolute path to it are the same run. Running the same scoring again
resumes: the images scores.csv already holds are not scored again, the rest are scored in the
batches an uninterrupted run would have used, so the final scores.csv is byte-identical. A
finished image whose file no longer holds the bytes it was scored from (replaced under the same
name) is said so on stderr and scored again, with every image after it. A folder holding
another run's results is refused unless overwrite=True, and a folder another process is writing
is refused at once (run_folder). Any file name the file system holds round-trips (scores.csv is
UTF-8 with undecodable name bytes kept as they were).
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastad.version import __version__
from fastad.files import atomic_write, changed_since, write_error
from fastad.checks import check_bool, check_choice
from fastad.data.folder import NothingToScoreError, open_folder
from fastad.data.report import warnings_to_stderr
from fastad.engine.batch_scoring import ScoredImages
from fastad.engine.decision import verdicts
from fastad.engine.results import output_name, save_map, write_overlays
from fastad.engine.run_folder import MANIFEST_FILE, claim, digest, locked, mark_complete, state_digest

SCORES_FILE = "scores.csv"
MAPS_DIR = "maps"
OVERLAYS_DIR = "overlays"
INPUTS_FILE = "inputs.csv"
REPORT_FILE, REPORT_ASSETS = "report.html", "report_files"  # fastad.report's page and its thumbnails
OWNED = (SCORES_FILE, MAPS_DIR, OVERLAYS_DIR, "parts", INPUTS_FILE, REPORT_FILE, REPORT_ASSETS)  # what a run may write
COLUMNS = ("path", "score")
VERDICT_COLUMN = "verdict"  # with a calibrated threshold
INPUTS_HEADER = "position,size,mtime_ns,sha256\r\n"
ENCODING = ("utf-8", "surrogateescape")  # scores.csv: file-name bytes that are no UTF-8 kept as they are


def score_header(threshold: float | None) -> str:
    """The header line of scores.csv (csv.writer's default line ending, as write_scores_csv's)."""
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


def run_manifest(source: str, model, images: str, paths: list[str], settings: dict) -> dict:
    """What identifies a scoring run: the images (`images` says where from, `paths` are the
    readable files in order), the checkpoint (`source`, and the model's weights), settings."""
    return {"fastad": __version__, "kind": "score", "images": images,
            "inputs": {"count": len(paths), "sha256": digest(paths)},
            "checkpoint": source, "model": model.name, "weights_sha256": state_digest(model), "settings": settings}


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


def read_finished(path: Path, dataset, threshold: float | None = None) -> list[tuple[int, str, float]]:
    """The rows an earlier attempt of this run appended to scores.csv -> [(dataset position, path,
    score)]; a half-written last row (a kill mid-write) is cut off the file. ValueError naming
    the file when its header is not score_header(threshold) or its rows are not this run's images
    in order."""
    if not path.is_file():
        return []
    records = _whole_records(path)
    header = score_header(threshold).rstrip()
    if records and ",".join(records[0]) != header:
        raise ValueError(f"{path} has the header {','.join(records[0])!r}, this run writes {header!r}; pass "
                         "--overwrite to score the folder again")
    position = {item[0]: i for i, item in enumerate(dataset.items)}
    finished = []
    for row in records[1:]:
        index = position.get(row[0]) if len(row) == header.count(",") + 1 else None
        if index is None or (finished and index <= finished[-1][0]):
            raise ValueError(f"{path} does not list this run's images in order (row {row!r}); pass --overwrite "
                             "to score the folder again")
        finished.append((index, row[0], float(row[1])))
    return finished


class ScoresStream:
    """out/scores.csv (or out/inputs.csv) opened for appending (a new file starts with `header`,
    default score_header(None)). write(text) appends a whole batch's rows with one
    write, then fsyncs; if the write fails part-way (a full disk) the file is cut back to where
    the batch began, so the file only ever holds whole batches and a resume starts at the next."""

    def __init__(self, path: Path, header: str | None = None):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if os.fstat(self.fd).st_size == 0:
            self.write(score_header(None) if header is None else header)

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


def score_folder(scorer, path, out=None, save_maps: str | None = "npy", overlays: bool = False,
                 num_workers: int | None = None, progress: bool = True, overwrite: bool = False) -> ScoredImages:
    """scorer: a fastad.Scorer. Scores every image file in folder `path`; with `out`, writes the
    files of the module docstring as it goes (resuming an interrupted run of the same scoring).
    Images that cannot be decoded are reported on stderr, listed in `skipped` and left out.
    Returns the ScoredImages (maps kept only for overlays; `resumed` of them were finished by
    an earlier attempt). NothingToScoreError when the folder holds no readable image file."""
    check_choice("save_maps", save_maps, ("npy", None))
    check_bool("overlays", overlays)
    check_bool("overwrite", overwrite)
    path = Path(path).resolve()
    dataset = open_folder(path, scorer.image_size)
    if out is None:
        with warnings_to_stderr():
            return scorer.score_dataset(dataset, keep_maps=overlays, num_workers=num_workers, progress=progress)
    out = Path(out)
    settings = {"engine": "local", **scorer.settings(), "maps": save_maps}
    manifest = run_manifest(scorer.source, scorer.model, str(path), [item[0] for item in dataset.items], settings)
    owned = (SCORES_FILE, INPUTS_FILE, REPORT_FILE, REPORT_ASSETS) + ((MAPS_DIR,) if save_maps else ()) + \
        ((OVERLAYS_DIR,) if overlays else ())
    with locked(out):
        claim(out, manifest, overwrite, owned)
        started = time.perf_counter()
        scored = _stream(scorer, dataset, out, save_maps, overlays, num_workers, progress)
        timing = {"seconds": round(time.perf_counter() - started, 3), "images": len(scored.paths) - scored.resumed}
        if overlays and scored.paths:
            write_overlays(out, scored, dataset, threshold=scorer.threshold)
        mark_complete(out, skipped=[{"path": p, "reason": r} for p, r in scored.skipped], timing=timing)
    return scored


def _stream(scorer, dataset, out: Path, save_maps, overlays: bool, num_workers, progress) -> ScoredImages:
    """Scores the images scores.csv does not hold yet, appending their rows batch by batch."""
    batch = scorer.batch_size
    finished = trusted_rows(out, read_finished(out / SCORES_FILE, dataset, scorer.threshold), batch,
                              scorer.threshold)
    start = (finished[-1][0] // batch + 1) * batch if finished else 0
    stream = ScoresStream(out / SCORES_FILE, score_header(scorer.threshold))
    inputs = ScoresStream(out / INPUTS_FILE, INPUTS_HEADER)

    def write_batch(samples, result):
        if save_maps == "npy":
            for j, (index, image_path) in enumerate(zip(samples.indices, samples.paths)):
                save_map(out / MAPS_DIR / f"{output_name(image_path, index)}.npy", result.maps[j])
        inputs.write("".join(f"{i},{(f or '? ? ?').replace(' ', ',')}\r\n"
                             for i, f in zip(samples.indices, samples.fingerprints)))
        stream.write(score_rows(samples.paths, result.image_scores, scorer.threshold))

    try:
        with warnings_to_stderr():
            scored = scorer.score_dataset(dataset, keep_maps=overlays, num_workers=num_workers, progress=progress,
                                          on_batch=write_batch, positions=range(start, len(dataset)))
    finally:
        stream.close()
        inputs.close()
    return _with_finished(scored, finished, dataset, out if save_maps == "npy" else None, overlays)


def read_fingerprints(path: Path) -> dict[int, str]:
    """out/inputs.csv -> {dataset position: the file_fingerprint it was scored from} (a position
    scored twice: the last); {} when there is none."""
    if not path.is_file():
        return {}
    recorded = {}
    for record in _whole_records(path)[1:]:
        if len(record) == 4 and record[0].isdigit():
            recorded[int(record[0])] = " ".join(record[1:])
    return recorded


def trusted_rows(out: Path, finished: list, batch: int, threshold: float | None) -> list:
    """The finished rows up to the batch of the first one that cannot be trusted (its file
    changed since it was scored, or its batch was cut short: fewer rows than inputs.csv recorded
    decoded), said so on stderr; scores.csv is cut back to them, so that batch and every one
    after it are scored again, as an uninterrupted run would."""
    untrusted = _first_untrusted(finished, read_fingerprints(out / INPUTS_FILE), batch)
    if untrusted is None:
        return finished
    index, why = untrusted
    kept = [row for row in finished if row[0] < index // batch * batch]
    print(f"warning: {why}; scoring again the {len(finished) - len(kept)} finished images from its batch on",
          file=sys.stderr, flush=True)
    with atomic_write(out / SCORES_FILE, "wb") as f:
        f.write((score_header(threshold) + score_rows([p for _, p, _ in kept], torch.tensor(
            [s for _, _, s in kept], dtype=torch.float32), threshold)).encode(*ENCODING))
    return kept


def _first_untrusted(finished: list, recorded: dict[int, str], batch: int) -> tuple[int, str] | None:
    """(dataset position, why) of the first finished row not to trust, or None."""
    for index, path, _ in finished:
        reason = changed_since(path, recorded.get(index))
        if reason is not None:
            return index, f"{path}: {reason}"
    if finished:
        last = finished[-1][0] // batch
        rows = [index for index, _, _ in finished if index // batch == last]
        if {position for position in recorded if position // batch == last} - set(rows):
            return rows[0], f"{SCORES_FILE} ends in a batch cut short"
    return None


def _with_finished(scored: ScoredImages, finished, dataset, out_dir, keep_maps: bool) -> ScoredImages:
    """scored with the images an earlier attempt finished put in front (their maps read back from
    out_dir/maps when kept; without saved maps (out_dir None) the result is this attempt's only)."""
    if not finished:
        return scored
    indices = [index for index, _, _ in finished]
    scores = torch.tensor([score for _, _, score in finished], dtype=torch.float32)
    labels = torch.tensor([dataset.items[i][2] for i in indices], dtype=torch.long)
    maps, masks = scored.maps, scored.masks
    if keep_maps and out_dir is not None:
        old = torch.stack([torch.from_numpy(np.load(out_dir / MAPS_DIR / f"{output_name(p, i)}.npy"))
                           for i, p, _ in finished])
        maps = torch.cat([old, maps]) if maps.numel() else old
        masks = torch.zeros(maps.shape, dtype=torch.bool)
    elif keep_maps:
        print(f"warning: overlays cover only the {len(scored.paths)} images scored now: the maps of the "
              f"{len(finished)} finished before were not saved (--maps none)", file=sys.stderr)
        return scored
    return ScoredImages(torch.cat([scores, scored.image_scores]), maps, masks, torch.cat([labels, scored.labels]),
                        [p for _, p, _ in finished] + scored.paths,
                        [dataset.items[i][3] for i in indices] + scored.defects, scored.skipped,
                        indices + scored.indices, resumed=len(finished), ignored=scored.ignored)


__all__ = ["MANIFEST_FILE", "OWNED", "REPORT_FILE", "SCORES_FILE", "NothingToScoreError", "open_folder",
           "read_finished", "score_folder"]
