"""The three things the CLI does, as functions: train a model on a dataset spec, evaluate a
checkpoint on a dataset's test split, score a folder of images.

    fit_run("pedenet", "builtin:brick", "runs/brick")              # -> model, history
    record = evaluate_run("runs/brick", "builtin:brick")           # -> results.json object
    score_folder_run("runs/brick", "line/images", "line/scores")   # -> scores.csv, maps, overlays
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from fastad._files import write_json
from fastad.data import SkippedImageWarning, open_dataset
from fastad.data.folder import FolderDataset
from fastad.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fastad.engine.evaluation import evaluation_record, map_scale
from fastad.engine.results import output_name, save_map, save_overlay, write_scores_csv
from fastad.engine.scoring import ScoredImages, score_dataset
from fastad.engine.trainer import resume, train
from fastad.models.base import AnomalyModel
from fastad.models.registry import create_model

RESULTS_FILE = "results.json"


def load_normal_images(data: str, size: int, seed: int = 0) -> tuple[torch.Tensor, list]:
    """The train split of dataset spec `data` at size x size -> (images [N, 3, size, size], skipped
    [(path, reason)]). Unreadable files are skipped (and warned about by the dataset)."""
    dataset = open_dataset(data, "train", size=size, seed=seed)
    if len(dataset) == 0:
        raise ValueError(f"data {data!r} has no readable training images ({len(dataset.skipped)} skipped)")
    return torch.stack([dataset[i].image for i in range(len(dataset))]), list(dataset.skipped)


def fit_run(model_name: str, data: str, out, steps=None, seed: int = 0, device="cpu", config: dict | None = None,
            resume_run: bool = False, checkpoint_every: int = 50, progress: bool = True) -> tuple[AnomalyModel, list]:
    """Trains model `model_name` (constructor kwargs `config`) on the normal images of `data`,
    checkpointing into folder `out`; with resume_run, continues the run saved in `out` instead.
    Refuses to start a new run over an existing checkpoint (use resume_run or another folder)."""
    out = Path(out)
    if resume_run:
        if not (out / CHECKPOINT_FILE).is_file():
            raise FileNotFoundError(f"--resume needs a checkpoint in {out}, found none")
        header = load_checkpoint(out).header
        images, _ = load_normal_images(header["data"], header["image_size"], header["training"]["seed"])
        return resume(out, images, device, progress, checkpoint_every)
    if (out / CHECKPOINT_FILE).exists():
        raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    torch.manual_seed(seed)
    model = create_model(model_name, **(config or {})).to(device)
    images, _ = load_normal_images(data, model.image_size, seed)
    history = train(model, images.to(device), steps, seed, out, data, checkpoint_every, progress)
    return model, history


def _score_test_split(model: AnomalyModel, data: str, device, batch_size: int, amp: bool, progress: bool,
                      seed: int = 0) -> tuple[ScoredImages, object]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedImageWarning)
        dataset = open_dataset(data, "test", size=model.image_size, seed=seed)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return score_dataset(model, dataset, batch_size, device, amp=amp, progress=progress), dataset


def write_overlays(out, scored: ScoredImages, dataset, limit: int | None = None) -> Path:
    """Heat-map overlays of the scored images (the anomalous ones first) into out/overlays."""
    folder = Path(out) / "overlays"
    scale = map_scale(scored.maps)
    order = sorted(range(len(scored.paths)), key=lambda i: (-int(scored.labels[i]), i))[:limit]
    for i in order:
        save_overlay(folder / f"{output_name(scored.paths[i], i)}.png", dataset[i].image, scored.maps[i],
                     scored.masks[i] if scored.labels[i] == 1 else None, scale)
    return folder


def evaluate_model(model: AnomalyModel, data: str, device="cpu", batch_size: int = 8, amp: bool = False,
                   overlays_dir=None, progress: bool = True) -> dict:
    """Scores the test split of `data` and returns its results.json record; writes overlays into
    overlays_dir/overlays when given."""
    scored, dataset = _score_test_split(model, data, device, batch_size, amp, progress)
    if overlays_dir is not None:
        write_overlays(overlays_dir, scored, dataset)
    return evaluation_record(scored, model.name, data)


def evaluate_run(run, data: str | None = None, device="cpu", batch_size: int = 8, amp: bool = False,
                 overlays: bool = False, progress: bool = True) -> dict:
    """Evaluates the checkpoint in folder `run` on `data` (default: the data it was trained on)
    and writes run/results.json."""
    checkpoint = load_checkpoint(run, device)
    data = data or checkpoint.header.get("data")
    if not data:
        raise ValueError("data must be given: the checkpoint does not say what it was trained on")
    record = evaluate_model(checkpoint.model, data, device, batch_size, amp, run if overlays else None, progress)
    write_json(record, Path(run) / RESULTS_FILE)
    return record


def score_folder_run(run, images_dir, out, device="cpu", batch_size: int = 8, amp: bool = False,
                     save_maps: str | None = "npy", overlays: bool = True, progress: bool = True) -> ScoredImages:
    """Scores every image in images_dir (recursively not: the folder's own files) with the
    checkpoint in `run`; writes out/scores.csv, out/maps/<name>.npy (save_maps="npy"; None: no
    maps) and out/overlays/<name>.png. Unreadable files are reported and skipped."""
    checkpoint = load_checkpoint(run, device)
    model, out = checkpoint.model, Path(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedImageWarning)
        dataset = FolderDataset(normal_dir=images_dir, test_dir=images_dir, split="test", size=model.image_size)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    offset = [0]

    def write_batch(batch, result):
        if save_maps == "npy":
            for j, path in enumerate(batch.paths):
                save_map(out / "maps" / f"{output_name(path, offset[0] + j)}.npy", result.maps[j])
        offset[0] += len(batch.paths)

    scored = score_dataset(model, dataset, batch_size, device, amp=amp, keep_maps=overlays, progress=progress,
                           on_batch=write_batch)
    write_scores_csv(out / "scores.csv", scored.paths, scored.image_scores)
    if overlays and len(scored.paths):
        write_overlays(out, scored, dataset)
    return scored
