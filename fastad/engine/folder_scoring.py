"""Scoring a folder of production images: scores.csv, one .npy map per image, overlays."""
from __future__ import annotations

from pathlib import Path

from fastad.data.report import warnings_to_stderr
from fastad.data.folder import FolderDataset
from fastad.engine.results import output_name, save_map, write_overlays, write_scores_csv
from fastad.engine.scoring import ScoredImages


def open_folder(path, size: int) -> FolderDataset:
    """Every image file in folder `path` at size x size; unreadable ones reported on stderr and skipped."""
    with warnings_to_stderr():
        return FolderDataset(normal_dir=path, test_dir=path, split="test", size=size)


def score_folder(scorer, path, out=None, save_maps: str | None = "npy", overlays: bool = False,
                 num_workers: int | None = None, progress: bool = True) -> ScoredImages:
    """scorer: a fastad.Scorer. Writes, when `out` is given, out/scores.csv, out/maps/<name>.npy
    (as each batch is scored, so a huge folder never has to fit in memory unless overlays are
    asked for) and out/overlays/<name>.png. Returns the ScoredImages (maps kept only for overlays)."""
    if save_maps not in (None, "npy"):
        raise ValueError(f"save_maps must be 'npy' or None, got {save_maps!r}")
    dataset = open_folder(path, scorer.image_size)
    out = None if out is None else Path(out)
    written = [0]

    def write_batch(batch, result):
        if out is not None and save_maps == "npy":
            for j, image_path in enumerate(batch.paths):
                save_map(out / "maps" / f"{output_name(image_path, written[0] + j)}.npy", result.maps[j])
        written[0] += len(batch.paths)

    scored = scorer.score_dataset(dataset, keep_maps=overlays, num_workers=num_workers, progress=progress,
                                  on_batch=write_batch)
    if out is not None:
        write_scores_csv(out / "scores.csv", scored.paths, scored.image_scores)
        if overlays and scored.paths:
            write_overlays(out, scored, dataset)
    return scored
