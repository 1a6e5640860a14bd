"""Backbone images/s at PatchCore's default size, and the backbone's share of PatchCore's scoring
time next to the k-NN search's, on the CPU. One JSON line per measurement.

    python benchmarks/backbone_speed.py --threads 2 [--size 256] [--batch 8] [--rounds 5]

Each backbone runs its default taps (components.zoo.BACKBONES) with random weights (the speed does
not depend on the values), contenders alternating round by round; the median round is reported.
The scoring breakdown fits PatchCore at its defaults on wide:brick and times, per batch of test
crops, embed (backbone + local aggregation), the k-NN search against the bank, and the rest
(upsampling, blur, image score) as the whole score() minus those two.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastad.data import open_dataset
from fastad.engine import train
from fastad.models import create_model
from fastad.models.components.zoo import BACKBONES, build_backbone


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def backbone_rates(size: int, batch: int, rounds: int) -> list[dict]:
    nets = {name: build_backbone(name, weights="random") for name in BACKBONES}
    images = torch.rand(batch, 3, size, size)
    for net in nets.values():
        net(images)                                       # warm-up
    times = {name: [] for name in nets}
    for _ in range(rounds):
        for name, net in nets.items():
            times[name].append(seconds(lambda: net(images)))
    return [{"backbone": name, "taps": list(BACKBONES[name].default_taps), "size": size, "batch": batch,
             "images_per_s": round(batch / statistics.median(t), 1)} for name, t in times.items()]


@torch.no_grad()
def scoring_shares(size: int, batch: int, rounds: int) -> dict:
    model = create_model("patchcore", image_size=size)
    data = open_dataset("wide:brick", "train", size=size)
    train(model, torch.stack([data[i].image for i in range(len(data))]), progress=False)
    test = open_dataset("wide:brick", "test", size=size)
    images = torch.stack([test[i].image for i in range(batch)])
    model.score(images)
    features = model.embed(images)
    queries = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).contiguous()
    scorer = model.memory_bank.scorer()
    parts = {"score": [], "embed": [], "knn": []}
    for _ in range(rounds):
        parts["score"].append(seconds(lambda: model.score(images)))
        parts["embed"].append(seconds(lambda: model.embed(images)))
        parts["knn"].append(seconds(lambda: scorer.knn(queries)))
    median = {k: statistics.median(v) for k, v in parts.items()}
    return {"patchcore": model.settings.backbone, "bank": list(model.memory_bank.bank.shape),
            "queries": list(queries.shape), "score_s": round(median["score"], 3),
            "embed_share": round(median["embed"] / median["score"], 3),
            "knn_share": round(median["knn"] / median["score"], 3),
            "rest_share": round(1 - (median["embed"] + median["knn"]) / median["score"], 3),
            "images_per_s": round(batch / median["score"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for row in backbone_rates(args.size, args.batch, args.rounds):
        print(json.dumps(row), flush=True)
    print(json.dumps(scoring_shares(args.size, args.batch, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
