"""UTAD quality on a builtin texture: trains both stages with fastad.engine.train on the train split
at the native size (128), scores the test split and prints one JSON line.

    python benchmarks/quality_utad.py --texture brick --steps 60 [--vgg-weights vgg19.pth]

IoU is the paper's metric at the model's own threshold (the threshold_quantile quantile of the
normal training maps, set in prepare_scoring), not at a threshold chosen on the test masks;
"iou_best" (the best IoU over thresholds, an oracle) is printed alongside only for reference.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

import fastad
from fastad.models import UTAD
from benchlib import load_builtin


def best_iou(maps: torch.Tensor, masks: torch.Tensor, n: int = 50) -> float:
    """Oracle: the highest dataset IoU over n quantile thresholds of the maps."""
    quantiles = torch.linspace(0.5, 0.999, n)
    values = maps.flatten()[torch.randperm(maps.numel(), generator=torch.Generator().manual_seed(0))[:100_000]]
    return max(fastad.metrics.iou(maps, masks, float(t)) for t in torch.quantile(values, quantiles))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texture", default="brick", choices=["brick", "grass", "gravel"])
    parser.add_argument("--steps", type=int, default=UTAD.default_steps, help="optimizer steps per stage")
    parser.add_argument("--vgg-weights", default=None, help="local VGG-19 weights file (torchvision layout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    size = UTAD.image_size
    train_images, images, masks, labels = load_builtin(args.texture, size)

    torch.manual_seed(args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if args.vgg_weights is None else "default")
        model = UTAD(vgg_weights=args.vgg_weights)
    history = fastad.engine.train(model, train_images, steps=args.steps, seed=args.seed, progress=False)
    train_s = time.perf_counter() - start
    result = model.score(images)
    total_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    maps = result.maps
    last = {stage: {k: round(v, 5) for k, v in row.items() if k not in ("stage", "stage_index", "step")}
            for stage in model.stages for row in history if row["stage"] == stage}
    print(json.dumps({
        "model": "utad", "texture": args.texture, "size": size, "steps": args.steps,
        "vgg": args.vgg_weights or "random-init",
        "pixel_auroc": round(fastad.metrics.pixel_auroc(maps, masks), 4),
        "iou": round(fastad.metrics.iou(maps, masks, float(model.threshold)), 4),
        "iou_best": round(best_iou(maps, masks), 4),
        "aupro": round(fastad.metrics.aupro(maps, masks), 4),
        "pixel_ap": round(fastad.metrics.pixel_ap(maps, masks), 4),
        "image_auroc": round(fastad.metrics.image_auroc(result.image_scores, labels), 4),
        "threshold": round(float(model.threshold), 4), "final_losses": last,
        "train_s": round(train_s, 1), "wall_s": round(total_s, 1),
        "cpu_s": round(cpu_s, 1),
    }))


if __name__ == "__main__":
    main()
