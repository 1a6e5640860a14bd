"""GlanceNet quality on a builtin texture: train with fastad.engine.train at the native size,
score the test split, print one JSON line of pixel AUROC, AUPRO, pixel AP, image AUROC and the
wall times; --lambda-s picks eq. 13's λs, --ablation re-scores the same model at λs = 0, 0.2, ..., 1.

    python benchmarks/quality_glance.py --texture brick --steps 150 [--lambda-s 0.8] [--ablation]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fastad
from fastad.models import GlanceNet


def metrics(result, masks, labels) -> dict[str, float]:
    return {"pixel_auroc": fastad.metrics.pixel_auroc(result.maps, masks),
            "aupro": fastad.metrics.aupro(result.maps, masks),
            "pixel_ap": fastad.metrics.pixel_ap(result.maps, masks),
            "image_auroc": fastad.metrics.image_auroc(result.image_scores, labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texture", default="brick", choices=("brick", "grass", "gravel"))
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (default: the model's)")
    parser.add_argument("--lambda-s", type=float, default=0.8, help="λs of eq. 13")
    parser.add_argument("--ablation", action="store_true", help="also score at λs = 0, 0.2, ..., 1.0")
    parser.add_argument("--config", default="{}", help="GlanceNet keyword arguments as JSON, e.g. '{\"view_jitter\": 0}'")
    parser.add_argument("--blur", default="", help="also score the maps Gaussian-blurred at these sigmas, e.g. 2,4")
    parser.add_argument("--zmix", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on 2 cores shared with other jobs, 2 threads ran ~15x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    size = GlanceNet.image_size
    train = fastad.data.open_dataset(f"builtin:{args.texture}", "train", size=size)
    test = fastad.data.open_dataset(f"builtin:{args.texture}", "test", size=size)
    train_images = torch.stack([s.image for s in train])
    samples = [test[i] for i in range(len(test))]
    images = torch.stack([s.image for s in samples])
    masks = torch.stack([s.mask for s in samples])
    labels = torch.tensor([s.label for s in samples])

    torch.manual_seed(args.seed)
    model = GlanceNet(**{"lambda_s": args.lambda_s, **json.loads(args.config)})
    start = time.perf_counter()
    fastad.engine.train(model, train_images, steps=args.steps, seed=args.seed, progress=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    s_iad, s_dad = model.patch_scores(images)
    result = model.combine(s_iad, s_dad, (size, size))
    score_s = time.perf_counter() - start
    row = {"texture": args.texture, "size": size, "steps": args.steps or model.default_steps,
           "lambda_s": args.lambda_s, **metrics(result, masks, labels), "train_s": round(train_s, 1),
           "score_s": round(score_s, 1), "test_images": len(samples),
           "threads": args.threads, "config": json.loads(args.config)}
    if args.ablation:
        row["ablation"] = {f"{lam:.1f}": metrics(model.combine(s_iad, s_dad, (size, size), lam), masks, labels)
                           for lam in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)}
    for sigma in [float(x) for x in args.blur.split(",") if x]:
        for lam in ((0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if args.ablation else (args.lambda_s,)):
            res = model.combine(s_iad, s_dad, (size, size), lam)
            maps = fastad.ops.gaussian_blur(res.maps[:, None], sigma)[:, 0]
            res = fastad.models.AnomalyResult(maps.flatten(1).amax(1), maps)
            row[f"blur{sigma:g}_ls{lam:g}"] = metrics(res, masks, labels)
    if args.zmix:   # exploratory: both heads standardised by their test-patch median / std, then mixed
        zi = (s_iad - s_iad.median()) / s_iad.std()
        zd = (s_dad - s_dad.median()) / s_dad.std()
        for lam in (0.2, 0.35, 0.5):
            maps = model.combine(lam * zi + (1 - lam) * zd, zd, (size, size), 1.0).maps
            for sigma in [0.0] + [float(x) for x in args.blur.split(",") if x]:
                m = fastad.ops.gaussian_blur(maps[:, None], sigma)[:, 0] if sigma else maps
                row[f"zmix{lam:g}_blur{sigma:g}"] = metrics(fastad.models.AnomalyResult(m.flatten(1).amax(1), m),
                                                           masks, labels)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
