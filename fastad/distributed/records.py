"""Per-image result records of a distributed scoring run: what makes it resumable.

    out/maps/<name>.npy    the anomaly map [H, W] float32 (as the local path writes it)
    out/parts/<name>.json  {"path", "index", "score", "map", "input"}: written atomically after
                           the map, so a record on disk means that image is finished; "input"
                           is the fastad.files.file_fingerprint of the bytes it was scored
                           from, so a file replaced since is not finished
    out/scores.csv         assembled from the records at the end, in input order

<name> is fastad.engine.results.output_name(path, index), the local path's file stem.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fastad.files import changed_since, write_json
from fastad.engine.results import output_name, write_scores_csv

PARTS = "parts"
MAPS = "maps"


def record_path(out, path: str, index: int) -> Path:
    """out/parts/<output_name>.json of the image `path` at input position `index`."""
    return Path(out) / PARTS / f"{output_name(path, index)}.json"


def map_path(out, path: str, index: int) -> Path:
    """out/maps/<output_name>.npy of the image `path` at input position `index`."""
    return Path(out) / MAPS / f"{output_name(path, index)}.npy"


def write_record(out, path: str, index: int, score: float, has_map: bool, fingerprint: str | None = None) -> None:
    """Marks image `path` (input position `index`) finished with image score `score`, computed
    from the file whose file_fingerprint is `fingerprint`; call it after its map (if any) is
    written."""
    write_json({"path": path, "index": index, "score": score, "map": has_map, "input": fingerprint},
               record_path(out, path, index))


def read_record(out, path: str, index: int) -> dict | None:
    """The record of `path` at `index`, or None when there is none or it belongs to another image
    (a record of an earlier run over a different folder that happens to share the file name)."""
    try:
        record = json.loads(record_path(out, path, index).read_text())
    except FileNotFoundError:
        return None
    return record if record.get("path") == path and record.get("index") == index else None


def changed_input(out, path: str, index: int) -> str | None:
    """Why the record of `path` at `index` is stale (its file changed since it was scored), or
    None when it has no record or its file still holds the bytes it was scored from."""
    record = read_record(out, path, index)
    return None if record is None else changed_since(path, record.get("input"))


def is_finished(out, path: str, index: int, save_maps: bool) -> bool:
    """True when `path` at `index` has a record of the bytes its file holds now (and, with
    save_maps, its map file on disk)."""
    record = read_record(out, path, index)
    if record is None or changed_since(path, record.get("input")) is not None:
        return False
    return not save_maps or (record["map"] and map_path(out, path, index).is_file())


def assemble_scores(out, paths: list[str]) -> tuple[list[str], torch.Tensor]:
    """Writes out/scores.csv (header `path,score`, rows in input order, like the local path) from
    the records of `paths` (position = index); images without a record are left out. Returns
    (paths written, image_scores [N] float32)."""
    kept, scores = [], []
    for index, path in enumerate(paths):
        record = read_record(out, path, index)
        if record is not None:
            kept.append(path)
            scores.append(record["score"])
    image_scores = torch.tensor(scores, dtype=torch.float32)
    write_scores_csv(Path(out) / "scores.csv", kept, image_scores)
    return kept, image_scores
