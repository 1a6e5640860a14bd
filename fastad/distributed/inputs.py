"""The images a distributed run scores: a folder (like `fastad score --images`) or a list of paths,
checked on the driver the way the local path checks them, then cut into the local path's batches."""
from __future__ import annotations

import sys
from pathlib import Path

from fastad.data.images import UnreadableImageError, check_image
from fastad.data.folder import open_folder


def list_inputs(paths_or_folder, size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """A folder (str or Path: every image file directly in it, sorted by name) or a list of image
    paths (kept in the given order) -> (readable paths, [(path, reason)] of the unreadable ones,
    each reported on stderr). A path's position among the readable ones is its index in
    output_name, as in the local path."""
    if isinstance(paths_or_folder, (str, Path)):
        if not Path(paths_or_folder).is_dir():
            raise FileNotFoundError(f"paths_or_folder {paths_or_folder} is not a directory (pass a folder or a list "
                                    "of image paths)")
        dataset = open_folder(paths_or_folder, size)
        return dataset.paths(), list(dataset.skipped)
    if not isinstance(paths_or_folder, (list, tuple)) or not all(isinstance(p, (str, Path)) for p in paths_or_folder):
        raise TypeError(f"paths_or_folder must be a folder or a list of paths, got {type(paths_or_folder).__name__}")
    readable, skipped = [], []
    for path in map(str, paths_or_folder):
        try:
            check_image(path)
        except UnreadableImageError as error:
            skipped.append((path, error.reason))
            print(f"warning: skipping {path}: {error.reason}", file=sys.stderr)
            continue
        readable.append(path)
    return readable, skipped


def batches(indices: list[int], paths: list[str], batch_size: int) -> list[dict]:
    """Consecutive runs of batch_size (index, path) pairs -> rows {"indices": [...], "paths":
    [...]}, one per scoring batch. On a fresh run these are exactly the local path's batches (same
    composition, same order), so the scores come out bit-identical."""
    return [{"indices": indices[i:i + batch_size], "paths": paths[i:i + batch_size]}
            for i in range(0, len(paths), batch_size)]
