"""Scoring throughput and latency of each model at its native size: fastad's ops against the
same pipeline on fastad's pure-PyTorch reference ops (fastad.set_backend("reference")).

    python benchmarks/throughput.py                          # every model, CPU
    python benchmarks/throughput.py --models pedenet --device cuda --batch-size 32 --precision bf16

For each model: images/s scoring batches of --batch-size builtin:brick test images, and the
latency of one image (p50, p99 over --latency-runs single-image calls). Scores come from a model
set up without training steps (speed does not depend on the weights); both backends score the
same images with the same weights, and the script checks their maps agree.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fastad
from fastad.engine import Scorer, train
from fastad.models import MODELS, create_model
from builtin_split import load_builtin

PLAIN_PYTORCH = {"pedenet": {"dense_embedding": False}}  # what a straightforward port would do


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, device: torch.device, config: dict | None = None):
    """(model set up on builtin:brick without training steps, test images [20, 3, S, S])."""
    torch.manual_seed(0)
    model = create_model(name, **(config or {}))
    train_images, test_images, _, _ = load_builtin("brick", model.image_size)
    train(model.to(device), train_images.to(device), steps=0, progress=False)
    return model, test_images


def measure(scorer: Scorer, images: torch.Tensor, batch_size: int, rounds: int, latency_runs: int) -> dict:
    """images/s over `rounds` passes through images in batches, and single-image latency percentiles."""
    device = scorer.device
    batches = [b.to(device) for b in images.split(batch_size)]
    scorer.score(batches[0])
    synchronize(device)
    start = time.perf_counter()
    for _ in range(rounds):
        for batch in batches:
            scorer.score(batch)
    synchronize(device)
    throughput = rounds * images.shape[0] / (time.perf_counter() - start)
    latencies = []
    for i in range(latency_runs):
        one = images[i % images.shape[0]][None].to(device)
        synchronize(device)
        t = time.perf_counter()
        scorer.score(one)
        synchronize(device)
        latencies.append(time.perf_counter() - t)
    lat = torch.tensor(latencies)
    return {"images_per_s": throughput, "p50_ms": 1e3 * float(lat.quantile(0.5)), "p99_ms": 1e3 * float(lat.quantile(0.99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.models or sorted(MODELS):
        model, images = build(name, device)
        scorer = Scorer(model, device, args.batch_size, args.precision)
        fast = measure(scorer, images, args.batch_size, args.rounds, args.latency_runs)
        fast_maps = scorer.score(images[:2].to(device)).maps
        with fastad.use_backend("reference"):
            reference = measure(scorer, images, args.batch_size, args.rounds, args.latency_runs)
            reference_maps = scorer.score(images[:2].to(device)).maps
        tolerance = 1e-3 if args.precision == "fp32" else 2e-2
        agree = torch.allclose(fast_maps, reference_maps, rtol=tolerance, atol=tolerance * fast_maps.abs().max().item())
        row = {"model": name, "device": str(device), "batch_size": args.batch_size, "precision": args.precision,
               "fastad": fast, "reference_ops": reference, "ratio": fast["images_per_s"] / reference["images_per_s"]}
        if name in PLAIN_PYTORCH:
            plain_model, _ = build(name, device, PLAIN_PYTORCH[name])
            with fastad.use_backend("reference"):
                plain = measure(Scorer(plain_model, device, args.batch_size, args.precision), images, args.batch_size,
                                args.rounds, args.latency_runs)
            row["plain_pytorch"], row["ratio_plain"] = plain, fast["images_per_s"] / plain["images_per_s"]
        row["reference_agrees"] = bool(agree)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
