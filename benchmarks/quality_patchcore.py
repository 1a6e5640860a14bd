"""PatchCore quality and fit time on the builtin textures, next to the raw-pixel baseline: what
`fastad train --model M --data builtin:T` then `fastad eval` give, one JSON line per model and texture.

    python benchmarks/quality_patchcore.py --textures brick grass gravel --threads 2 [--backbone resnet18 --weights resnet18.pth]
    python benchmarks/quality_patchcore.py --textures brick --breakdown     # backbone and coreset timed alone

fit_s is the whole `fastad train` (data loading, backbone over every training crop, coreset,
checkpoint). --breakdown re-runs the two halves of prepare_scoring on their own: the backbone over
the training crops, and the coreset selection on the resulting patch features.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fastad.engine.pipeline import evaluate_run, fit_run, load_normal_images
from fastad.models import create_model
from fastad.nn.nearest_neighbor import NearestNeighborScorer


def run(model: str, texture: str, out: Path, config: dict) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_run(model, f"builtin:{texture}", out / f"{model}-{texture}", config=config, progress=False)
    fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    record = evaluate_run(out / f"{model}-{texture}", progress=False)
    keys = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
    return {"model": model, "texture": texture, "config": config, **{k: round(record[k], 4) for k in keys},
            "fit_s": round(fit_s, 1), "fit_cpu_s": round(fit_cpu_s, 1)}


def breakdown(texture: str, config: dict) -> dict:
    """Seconds of the backbone over the training crops and of the coreset selection alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model("patchcore", **config)
        images, _ = load_normal_images(f"builtin:{texture}", model.image_size)
        model.setup(images)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        features = model.patch_features(images)
    backbone = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    scorer = NearestNeighborScorer(features)
    kept = scorer.subsample(model.settings.coreset_ratio, model.settings.seed, model.settings.projection_dim)
    coreset = time.perf_counter() - start, time.process_time() - cpu
    return {"texture": texture, "config": config, "crops": images.shape[0], "features": list(features.shape),
            "kept": kept.numel(), "backbone_s": round(backbone[0], 2), "backbone_cpu_s": round(backbone[1], 2),
            "coreset_s": round(coreset[0], 2), "coreset_cpu_s": round(coreset[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", nargs="+", default=["brick", "grass", "gravel"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="pretrained",
                        help="'pretrained' (the zoo's packaged file), 'random', or a local weights file of the backbone")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="a name of the backbone zoo")
    parser.add_argument("--projection-dim", type=int, default=None)
    parser.add_argument("--breakdown", action="store_true", help="time the backbone and the coreset alone")
    parser.add_argument("--no-baseline", action="store_true", help="skip the raw-pixel baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = {"backbone": args.backbone, "weights": args.weights, "projection_dim": args.projection_dim}
    with tempfile.TemporaryDirectory() as folder:
        for texture in args.textures:
            if args.breakdown:
                print(json.dumps(breakdown(texture, config)), flush=True)
                continue
            print(json.dumps(run("patchcore", texture, Path(folder), config)), flush=True)
            if not args.no_baseline:
                print(json.dumps(run("rawpixel", texture, Path(folder), {})), flush=True)


if __name__ == "__main__":
    main()
