"""`fastad demo`: fit the best model at its defaults (DEFAULT_MODEL: PatchCore on the packaged
ImageNet efficientnet_lite0) on builtin:brick, localise the synthetic defects in the test crops,
print the metrics next to the raw-pixel nearest-neighbour baseline, write overlays.

Sized for 2 CPU cores and offline (the weights ship in a pip package); it prints its own train
and total seconds, and records them in results.json. The baseline is scored at its own 256 px
geometry whatever the model.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from fastad.files import write_json
from fastad.engine.evaluation import format_table
from fastad.engine.pipeline import RESULTS_FILE, evaluate, fit_run, load_normal_images
from fastad.engine.scores_folder import REPORT_FILE
from fastad.engine.scorer import Scorer
from fastad.report.evaluation import reporter
from fastad.engine.trainer import train
from fastad.models.registry import create_model

#: the model `fastad demo` runs unless told otherwise: the best on the wide benchmark's test split
#: (models/patchcore/README.md, Measured)
DEFAULT_MODEL = "patchcore"


def run(data: str = "builtin:brick", out=None, model: str = DEFAULT_MODEL, steps: int | None = None, seed: int = 0,
        device="cpu", progress: bool = True) -> dict:
    """Trains `model` on `data` into out/run, evaluates it and the raw-pixel baseline on the test
    split, writes out/overlays/*.png, out/report.html and out/results.json; returns the
    results.json object (the model's metrics, model, data, n_images, skipped, and `baseline`
    with the same keys) with out and report added."""
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="fastad-demo-"))
    started = time.perf_counter()
    trained, _ = fit_run(model, data, out / "run", steps, seed, device, progress=progress)
    train_seconds = time.perf_counter() - started
    record = evaluate(Scorer(trained, device), data, overlays_dir=out, progress=progress,
                      on_scored=reporter(out / REPORT_FILE, out))

    baseline = create_model("rawpixel").to(device)
    images, _ = load_normal_images(data, baseline.image_size, seed)
    train(baseline, images.to(device), progress=False)
    record["baseline"] = evaluate(Scorer(baseline, device), data, progress=progress)
    record["train_seconds"] = round(train_seconds, 1)
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(record, out / RESULTS_FILE)
    return record | {"out": str(out), "report": str(out / REPORT_FILE)}


def main(data: str, out, model: str, steps: int | None, seed: int) -> int:
    torch.manual_seed(seed)
    record = run(data, out, model, steps, seed)
    print()
    print(f"{record['model']} on {record['data']} ({record['n_images']} test images, "
          f"{record['skipped']} skipped), trained in {record['train_seconds']:.0f} s:")
    print(format_table({record["model"]: record, "raw-pixel kNN baseline": record["baseline"]}))
    print()
    print(f"heat-map overlays (image | map | map over image, defect outlined in green): {record['out']}/overlays")
    print(f"metrics: {record['out']}/{RESULTS_FILE}; checkpoint: {record['out']}/run")
    print(f"inspection report (open in a browser): {record['report']}")
    return 0
