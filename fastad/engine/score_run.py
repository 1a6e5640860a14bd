"""One scoring run of a folder of production images into an output folder, streamed and resumable.

The files it writes, their format and the resume are fastad.engine.scores_folder's (the Ray
engine writes the same ones); out/overlays/*.png are written at the end (they share one colour
range), and run.json, complete once finished, then also holds `skipped` [{path, reason}] and
`timing` {seconds, images} of the last attempt (what fastad.report shows).

The images folder is identified by its resolved path (scores.csv lists the images by it), so
a relative and an absolute path to it are the same run. Running the same scoring again
resumes: the images scores.csv already holds are not scored again, the rest are scored in the
batches an uninterrupted run would have used, so the final scores.csv is byte-identical. A
finished image whose file no longer holds the bytes it was scored from (replaced under the same
name) is said so on stderr and scored again, with every image after it. A folder holding
another run's results is refused unless overwrite=True, and a folder another process is writing
is refused at once (run_folder).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastad.checks import check_bool, check_choice
from fastad.data.folder import NothingToScoreError, open_folder
from fastad.data.report import warnings_to_stderr
from fastad.engine.batch_scoring import ScoredImages
from fastad.engine.results import save_map, write_overlays
from fastad.engine.run_folder import claim, locked, mark_complete
from fastad.engine.scores_folder import (MAPS_DIR, OVERLAYS_DIR, REPORT_FILE, SCORES_FILE, BatchWriter, map_file,
                                         owned_entries, resume_point, run_manifest, score_header)


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
    manifest = run_manifest(scorer.source, scorer.model, str(path), dataset.paths(), settings)
    with locked(out):
        claim(out, manifest, overwrite, owned_entries(save_maps is not None, overlays))
        started = time.perf_counter()
        scored = _stream(scorer, dataset, out, save_maps, overlays, num_workers, progress)
        timing = {"seconds": round(time.perf_counter() - started, 3), "images": len(scored.paths) - scored.resumed}
        if overlays and scored.paths:
            write_overlays(out, scored, dataset, threshold=scorer.threshold)
        mark_complete(out, skipped=[{"path": p, "reason": r} for p, r in scored.skipped], timing=timing)
    return scored


def _stream(scorer, dataset, out: Path, save_maps, overlays: bool, num_workers, progress) -> ScoredImages:
    """Scores the images scores.csv does not hold yet, appending their rows batch by batch."""
    finished, start = resume_point(out, dataset.paths(), scorer.batch_size, scorer.threshold)

    with BatchWriter(out, scorer.threshold) as writer:
        def write_batch(samples, result):
            if save_maps == "npy":
                for j, (index, image_path) in enumerate(zip(samples.indices, samples.paths)):
                    save_map(map_file(out, image_path, index), result.maps[j])
            writer.append(samples.indices, samples.paths, samples.fingerprints, result.image_scores)

        with warnings_to_stderr():
            scored = scorer.score_dataset(dataset, keep_maps=overlays, num_workers=num_workers, progress=progress,
                                          on_batch=write_batch, positions=range(start, len(dataset)))
    return _with_finished(scored, finished, dataset, out if save_maps == "npy" else None, overlays)


def _with_finished(scored: ScoredImages, finished, dataset, out_dir, keep_maps: bool) -> ScoredImages:
    """scored with the images an earlier attempt finished (FinishedRows) put in front (their maps
    read back from out_dir/maps when kept; without saved maps (out_dir None) the result is this
    attempt's only)."""
    if not finished:
        return scored
    indices = [row.position for row in finished]
    scores = torch.tensor([row.score for row in finished], dtype=torch.float32)
    labels = torch.tensor([dataset.items[i].label for i in indices], dtype=torch.long)
    maps, masks = scored.maps, scored.masks
    if keep_maps and out_dir is not None:
        old = torch.stack([torch.from_numpy(np.load(map_file(out_dir, row.path, row.position))) for row in finished])
        maps = torch.cat([old, maps]) if maps.numel() else old
        masks = torch.zeros(maps.shape, dtype=torch.bool)
    elif keep_maps:
        print(f"warning: overlays cover only the {len(scored.paths)} images scored now: the maps of the "
              f"{len(finished)} finished before were not saved (--maps none)", file=sys.stderr)
        return scored
    return ScoredImages(torch.cat([scores, scored.image_scores]), maps, masks, torch.cat([labels, scored.labels]),
                        [row.path for row in finished] + scored.paths,
                        [dataset.items[i].defect for i in indices] + scored.defects, scored.skipped,
                        indices + scored.indices, resumed=len(finished), ignored=scored.ignored)


__all__ = ["NothingToScoreError", "open_folder", "score_folder"]
