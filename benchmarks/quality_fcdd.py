"""FCDD quality on a builtin texture: trains with fastad.engine.train on builtin:<texture>
(train split, 224 x 224) and prints one JSON line with pixel AUROC, pixel AP, AUPRO, image
AUROC, the loss and the wall time.

    python benchmarks/quality_fcdd.py --texture brick --loss hsc-pixel --steps 150
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fastad
from fastad.models import FCDD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texture", default="brick", choices=("brick", "grass", "gravel"))
    parser.add_argument("--loss", default="hsc-pixel", choices=("fcdd", "hsc-pixel"))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: FCDD.default_steps)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train this many passes over the training images instead of --steps")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    parser.add_argument("--width", type=float, default=None, help="CNN filter-count multiplier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--semi-supervised", action="store_true",
                        help="move the first test image of each defect type into training as a real anomaly "
                             "(the paper's semi-supervised setting) and evaluate on the rest")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a busy shared machine two threads mostly wait on each other)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    size = FCDD.image_size
    train = fastad.data.open_dataset(f"builtin:{args.texture}", "train", size=size)
    test = fastad.data.open_dataset(f"builtin:{args.texture}", "test", size=size)
    train_images = torch.stack([train[i].image for i in range(len(train))])
    real = []
    if args.semi_supervised:
        first = {}
        for i, defect in enumerate(test.defect_of):
            if defect != "good":
                first.setdefault(defect, i)
        real = sorted(first.values())
    samples = [test[i] for i in range(len(test)) if i not in real]
    images = torch.stack([s.image for s in samples])
    masks = torch.stack([s.mask for s in samples])
    labels = torch.tensor([s.label for s in samples])

    torch.manual_seed(args.seed)
    config = {"loss": args.loss}
    if args.width is not None:
        config["width"] = args.width
    if args.lr is not None:
        config["lr"] = args.lr
    model = FCDD(**config)
    if real:
        model.set_real_anomalies(torch.stack([test[i].image for i in real]), torch.stack([test[i].mask for i in real]))
    steps = args.steps
    if args.epochs is not None:
        steps = FCDD.steps_for_epochs(args.epochs, len(train_images), model.config["batch_size"])
    start = time.perf_counter()
    history = fastad.engine.train(model, train_images, steps=steps, seed=args.seed, progress=False)
    train_s = time.perf_counter() - start
    result = model.score(images)
    wall_s = time.perf_counter() - start
    print(json.dumps({
        "model": "fcdd", "texture": args.texture, "loss": args.loss, "steps": len(history),
        "semi_supervised": len(real), "config": model.config,
        "pixel_auroc": round(fastad.metrics.pixel_auroc(result.maps, masks), 4),
        "pixel_ap": round(fastad.metrics.pixel_ap(result.maps, masks), 4),
        "aupro": round(fastad.metrics.aupro(result.maps, masks), 4),
        "image_auroc": round(fastad.metrics.image_auroc(result.image_scores, labels), 4),
        "final_loss": round(history[-1]["total"], 4) if history else None,
        "train_s": round(train_s, 1), "wall_s": round(wall_s, 1)}))


if __name__ == "__main__":
    main()
