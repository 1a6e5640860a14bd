"""Scoring throughput and latency of each model at its native size: fastad's ops against the
same pipeline on fastad's pure-PyTorch reference ops (fastad.set_backend("reference")).

    python benchmarks/throughput.py                          # every model, CPU
    python benchmarks/throughput.py --models pedenet --device cuda --batch-size 32 --precision bf16
    python benchmarks/throughput.py --device cuda --batch-size 32 --precision bf16 --cuda-graphs

For each model: images/s scoring batches of --batch-size builtin:brick test images (median of
--rounds passes), the latency of one image (p50, p99 over --latency-runs single-image calls), and
the per-round ratios to fastad's time of: the reference ops, fastad with the network in NCHW
instead of channels_last, and (PEDENet) the plain port that crops every patch on reference ops.
Scores come from a model set up without training steps (speed does not depend on the weights);
both backends score the same images with the same weights, and the script checks their maps agree.
With --cuda-graphs every contender's Scorer captures its batches as CUDA graphs (each contender
has its own Scorer, so the reference contender's graphs hold the reference ops).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import fastad
from fastad.engine import Scorer, train
from fastad.models import MODELS, create_model
from benchlib import load_builtin

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


def batch_seconds(scorer: Scorer, batches: list[torch.Tensor]) -> float:
    """Seconds to score every batch once."""
    synchronize(scorer.device)
    start = time.perf_counter()
    for batch in batches:
        scorer.score(batch)
    synchronize(scorer.device)
    return time.perf_counter() - start


def one_image_seconds(scorer: Scorer, image: torch.Tensor) -> float:
    synchronize(scorer.device)
    start = time.perf_counter()
    scorer.score(image)
    synchronize(scorer.device)
    return time.perf_counter() - start


def measure(contenders: dict, images: torch.Tensor, batch_size: int, rounds: int, latency_runs: int) -> dict:
    """contenders {name: (scorer, ops backend)} -> {name: images/s (median over rounds), p50/p99
    single-image latency ms}, plus the per-round ratios of the first contender to each other one.

    Rounds alternate the contenders (A B C A B C ...), so a slow spell of a shared machine lands
    on all of them instead of on whichever ran during it."""
    device = next(iter(contenders.values()))[0].device
    batches = [b.to(device) for b in images.split(batch_size)]
    seconds = {name: [] for name in contenders}
    latencies = {name: [] for name in contenders}
    for name, (scorer, backend) in contenders.items():
        with fastad.use_backend(backend):
            scorer.score(batches[0])                                            # warm-up
    for _ in range(rounds):
        for name, (scorer, backend) in contenders.items():
            with fastad.use_backend(backend):
                seconds[name].append(batch_seconds(scorer, batches))
    for i in range(latency_runs):
        one = images[i % images.shape[0]][None].to(device)
        for name, (scorer, backend) in contenders.items():
            with fastad.use_backend(backend):
                latencies[name].append(one_image_seconds(scorer, one))
    first = next(iter(contenders))
    out = {}
    for name in contenders:
        lat = torch.tensor(latencies[name])
        out[name] = {"images_per_s": images.shape[0] / statistics.median(seconds[name]),
                     "p50_ms": 1e3 * float(lat.quantile(0.5)), "p99_ms": 1e3 * float(lat.quantile(0.99))}
        if name != first:
            ratios = [other / mine for mine, other in zip(seconds[first], seconds[name])]
            out[name]["ratio_" + first] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--cuda-graphs", action="store_true", help="Scorer(cuda_graphs=True) for every contender")
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in args.models or sorted(MODELS):
        model, images = build(name, device)
        settings = dict(batch_size=args.batch_size, precision=args.precision, cuda_graphs=args.cuda_graphs)
        fast = Scorer(model, device, **settings)
        on_reference = Scorer(model, device, **settings)
        fast_maps = fast.score(images[:2].to(device)).maps
        with fastad.use_backend("reference"):
            reference_maps = on_reference.score(images[:2].to(device)).maps
        tolerance = 1e-3 if args.precision == "fp32" else 2e-2
        agree = torch.allclose(fast_maps, reference_maps, rtol=tolerance, atol=tolerance * fast_maps.abs().max().item())
        contenders = {"fastad": (fast, "native"), "reference_ops": (on_reference, "reference")}
        nchw_model, _ = build(name, device)
        contenders["fastad_nchw"] = (Scorer(nchw_model, device, memory_format="contiguous", **settings), "native")
        if name in PLAIN_PYTORCH:
            plain_model, _ = build(name, device, PLAIN_PYTORCH[name])
            contenders["plain_pytorch"] = (Scorer(plain_model, device, memory_format="contiguous", **settings),
                                           "reference")
        row = {"model": name, "device": str(device), "batch_size": args.batch_size, "precision": args.precision,
               "cuda_graphs": args.cuda_graphs, "rounds": args.rounds, **measure(contenders, images, args.batch_size, args.rounds, args.latency_runs),
               "reference_agrees": bool(agree)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
