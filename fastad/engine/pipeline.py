"""What the CLI does, as functions: train a model on a dataset spec, calibrate a checkpoint's
pass/fail threshold, evaluate a model or a checkpoint on a dataset's test split.

    fit_run("pedenet", "builtin:brick", "runs/brick")              # -> model, history
    calibrate_run("runs/brick", "line/normals", false_reject=0.01) # -> the stored calibration record
    record = evaluate_run("runs/brick", "builtin:brick")           # -> the results.json object
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from fastad.files import remove_temp_files, write_json
from fastad.checks import check_choice, check_int
from fastad.data import open_dataset
from fastad.data.folder import open_folder
from fastad.data.images import UnreadableImageError
from fastad.data.report import report_skipped, warnings_to_stderr
from fastad.engine.decision import CALIBRATION_KEY, DEFAULT_FALSE_REJECT, MIN_IMAGES, calibration_record, check_rate
from fastad.engine.checkpoint import CHECKPOINT_FILE, checkpoint_path, read_header, update_header
from fastad.engine.evaluation import evaluation_record
from fastad.engine.results import write_overlays
from fastad.engine.run_folder import locked
from fastad.engine.scorer import SCORING_PRECISIONS, Scorer
from fastad.engine.trainer import resume, train
from fastad.models.base import AnomalyModel
from fastad.models.registry import create_model

RESULTS_FILE = "results.json"


def load_normal_images(data: str, size: int, seed: int = 0) -> tuple[torch.Tensor, list]:
    """The train split of dataset spec `data` at size x size -> (images [N, 3, size, size], skipped
    [(path, reason)]). Files that cannot be read or decoded are reported on stderr by path and
    skipped; ValueError when none is left."""
    with warnings_to_stderr():
        dataset = open_dataset(data, "train", size=size, seed=seed)
        images = []
        for i in range(len(dataset)):
            try:
                images.append(dataset[i].image)
            except UnreadableImageError as error:
                report_skipped(dataset.skipped, error.path, error.reason)
    if not images:
        raise ValueError(f"data {data!r} has no readable training images ({len(dataset.skipped)} skipped)")
    return torch.stack(images), list(dataset.skipped)


def fit_run(model_name: str, data: str, out, steps=None, seed: int = 0, device="cpu", config: dict | None = None,
            resume_run: bool = False, checkpoint_every: int = 50, progress: bool = True,
            calibration_holdout: float = 0.0, false_reject: float = DEFAULT_FALSE_REJECT) -> tuple[AnomalyModel, list]:
    """Trains model `model_name` (constructor kwargs `config`) on the normal images of `data`,
    checkpointing into folder `out`; with resume_run, continues the run saved in `out` instead.

    calibration_holdout: the fraction of the normal images (a seeded draw) kept out of training
    and scored afterwards to store the image-score threshold at `false_reject` in the checkpoint
    (fastad.engine.decision); 0 (the default) trains on every image and stores no threshold.
    A resumed run keeps the split it started with.

    The run holds `out`'s lock (fastad.engine.run_folder) from start to end, so a second train
    (or score) into the same folder fails at once with RunFolderBusy; a new run is refused
    (FileExistsError) over a folder that already holds a checkpoint (use resume_run or another
    folder). Checking and claiming happen under the lock, so two concurrent runs cannot both start."""
    check_int("checkpoint_every", checkpoint_every, 1)
    out = Path(out)
    with locked(out):
        if resume_run:
            if not (out / CHECKPOINT_FILE).is_file():
                raise FileNotFoundError(f"--resume needs a checkpoint in {out}, found none")
            header = read_header(out)
            images, _ = load_normal_images(header["data"], header["image_size"], header["training"]["seed"])
            holdout = header.get("calibration_holdout")
            images, held = split_holdout(images, holdout["fraction"], holdout["seed"]) if holdout else (images, None)
            model, history = resume(out, images, device, progress, checkpoint_every)
            if held is not None and "calibration" not in read_header(out):
                calibrate_scorer(Scorer(out, device), out, images=held, false_reject=holdout["false_reject"],
                                 progress=progress)
            return model, history
        if (out / CHECKPOINT_FILE).exists():
            raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or choose "
                                  "another --out")
        remove_temp_files(out)
        check_rate("false_reject", false_reject)
        torch.manual_seed(seed)
        model = create_model(model_name, **(config or {})).to(device)
        images, _ = load_normal_images(data, model.image_size, seed)
        header, held = None, None
        if calibration_holdout:
            images, held = split_holdout(images, calibration_holdout, seed)
            header = {"calibration_holdout": {"fraction": calibration_holdout, "seed": seed,
                                              "false_reject": false_reject}}
        history = train(model, images.to(device), steps, seed, out, data, checkpoint_every, progress, header=header)
        if held is not None:
            calibrate_scorer(Scorer(out, device), out, images=held, false_reject=false_reject, progress=progress)
    return model, history


def split_holdout(images: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images [N, ...] -> (training images, held-out images): round(fraction * N) of them drawn by
    a generator seeded with `seed`, each part in its original order. ValueError when fraction is
    not in (0, 1), or the held-out part would have fewer than calibration.MIN_IMAGES images or
    nothing would be left to train on."""
    fraction = check_rate("calibration_holdout", fraction)
    n = images.shape[0]
    held = round(fraction * n)
    if held < MIN_IMAGES or held >= n:
        raise ValueError(f"calibration_holdout {fraction:g} of {n} normal images holds out {held}: it must hold "
                         f"out at least {MIN_IMAGES} and leave at least one to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[held:]] = True
    return images[keep], images[~keep]


def evaluate(scorer: Scorer, data: str, overlays_dir=None, progress: bool = True, seed: int = 0,
             on_scored=None) -> dict:
    """Scores the test split of `data` with scorer (a fastad.Scorer) and returns its results.json
    record; writes overlays into overlays_dir/overlays when given. on_scored, when given, is
    called with (scorer, ScoredImages, dataset, record, scoring seconds) before the record is
    returned (fastad.report.evaluation.reporter writes the HTML report that way)."""
    started = time.perf_counter()
    with warnings_to_stderr():
        dataset = open_dataset(data, "test", size=scorer.image_size, seed=seed)
        scored = scorer.score_dataset(dataset, progress=progress)
    seconds = time.perf_counter() - started
    if overlays_dir is not None:
        write_overlays(overlays_dir, scored, dataset, threshold=scorer.threshold)
    record = evaluation_record(scored, scorer.model.name, data, scorer.model.segmentation_threshold(),
                               scorer.threshold)
    if on_scored is not None:
        on_scored(scorer, scored, dataset, record, seconds)
    return record


def evaluate_run(run, data: str | None = None, device="cpu", batch_size: int = 8, precision: str = "fp32",
                 overlays: bool = False, progress: bool = True, on_scored=None) -> dict:
    """Evaluates the checkpoint in folder `run` on `data` (default: the data it was trained on)
    and writes run/results.json; on_scored as in evaluate."""
    scorer = Scorer(run, device, batch_size, precision)
    data = data or scorer.header.get("data")
    if not data:
        raise ValueError("data must be given: the checkpoint does not say what it was trained on")
    record = evaluate(scorer, data, run if overlays else None, progress, on_scored=on_scored)
    write_json(record, Path(run) / RESULTS_FILE)
    return record


def calibrate_scorer(scorer, run, images: torch.Tensor | None = None, folder=None,
                     false_reject: float = DEFAULT_FALSE_REJECT, progress: bool = True) -> dict:
    """Scores normal images with `scorer` (a fastad.Scorer of the checkpoint in `run`) — a tensor
    [n, 3, H, W] or every image file in `folder` — and stores their threshold in run's checkpoint
    (atomically; the caller holds the run folder's lock). Returns the record."""
    check_rate("false_reject", false_reject)
    if (images is None) == (folder is None):
        raise ValueError("calibrate needs either images or folder, not both")
    if folder is not None:
        with warnings_to_stderr():
            scores = scorer.score_dataset(open_folder(folder, scorer.image_size), keep_maps=False,
                                          progress=progress).image_scores
        source = str(folder)
    else:
        scores = torch.cat([scorer.score(batch).image_scores.cpu() for batch in images.split(scorer.batch_size)])
        source = f"{len(scores)} held-out training images"
    record = calibration_record(scores, false_reject, scorer.model.config["image_score"], scorer.precision, source)
    update_header(run, {CALIBRATION_KEY: record})
    return record


def calibrate_run(run, folder, false_reject: float = DEFAULT_FALSE_REJECT, device="cpu", batch_size: int = 8,
                  precision: str = "fp32", progress: bool = True) -> dict:
    """`fastad calibrate`: the threshold of the checkpoint in `run` at `false_reject`, set on the
    normal images in `folder` and stored in the checkpoint; returns the record."""
    check_choice("precision", precision, SCORING_PRECISIONS)
    check_rate("false_reject", false_reject)
    read_header(run)  # FileNotFoundError / ValueError naming the file before the folder is locked
    with locked(checkpoint_path(run).parent):
        scorer = Scorer(run, device, batch_size, precision)
        return calibrate_scorer(scorer, run, folder=folder, false_reject=false_reject, progress=progress)
