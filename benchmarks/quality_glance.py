"""GlanceNet quality on a builtin texture: train with fastad.engine.train at the native size,
score the test split, print one JSON line of pixel AUROC, AUPRO, pixel AP, image AUROC and the
wall times; --lambda-s picks eq. 13's λs, --ablation re-scores the same model at λs = 0, 0.2, ..., 1.

    python benchmarks/quality_glance.py --texture brick --steps 150 [--lambda-s 0.8] [--ablation]
    python benchmarks/quality_glance.py --texture brick --config '{"view_jitter": 0.2, "stains": "gray",
        "dad_negatives": 0, "ssl_stains": false, "blur_sigma": 0, "lambda_s": 0.8}'     # the first recipe
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fastad
from fastad.models import GlanceNet
from benchlib import load_builtin


def metrics(result, masks, labels) -> dict[str, float]:
    return {"pixel_auroc": fastad.metrics.pixel_auroc(result.maps, masks),
            "aupro": fastad.metrics.aupro(result.maps, masks),
            "pixel_ap": fastad.metrics.pixel_ap(result.maps, masks),
            "image_auroc": fastad.metrics.image_auroc(result.image_scores, labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texture", default="brick", choices=("brick", "grass", "gravel"))
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (default: the model's)")
    parser.add_argument("--lambda-s", type=float, default=None, help="λs of eq. 13 (default: the model's)")
    parser.add_argument("--ablation", action="store_true", help="also score at λs = 0, 0.2, ..., 1.0")
    parser.add_argument("--config", default="{}",
                        help="GlanceNet keyword arguments as JSON, e.g. '{\"view_jitter\": 0.2}'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on 2 cores shared with other jobs, 2 threads ran ~15x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    size = GlanceNet.image_size
    train_images, images, masks, labels = load_builtin(args.texture, size)

    torch.manual_seed(args.seed)
    config = json.loads(args.config)
    if args.lambda_s is not None:
        config["lambda_s"] = args.lambda_s
    model = GlanceNet(**config)
    start = time.perf_counter()
    fastad.engine.train(model, train_images, steps=args.steps, seed=args.seed, progress=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    s_iad, s_dad = model.patch_scores(images)
    result = model.combine(s_iad, s_dad, (size, size))
    score_s = time.perf_counter() - start
    row = {"texture": args.texture, "size": size, "steps": args.steps or model.default_steps,
           "lambda_s": model.config["lambda_s"], **metrics(result, masks, labels), "train_s": round(train_s, 1),
           "score_s": round(score_s, 1), "test_images": len(images),
           "threads": args.threads, "config": json.loads(args.config)}
    if args.ablation:
        row["ablation"] = {f"{lam:.1f}": metrics(model.combine(s_iad, s_dad, (size, size), lam), masks, labels)
                           for lam in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
