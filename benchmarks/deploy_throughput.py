"""What a line engineer would run: PatchCore at its default settings (resnet18, layers 2 + 3, 256 px,
coreset 0.1 of builtin:brick's 40 training crops) scored on the CPU by each deployment path, side by
side in one run, alternating rounds.

    python benchmarks/deploy_throughput.py --threads 2 --rounds 5 --latency-runs 30
    python benchmarks/deploy_throughput.py --no-anomalib          # fastad's paths only

Contenders: fastad's Scorer (fp32, bf16), fastad's ONNX artefact on ONNX Runtime and its OpenVINO
IR on OpenVINO (fastad.deploy), and anomalib 2.7's PatchCore on the same backbone weights and the
same memory bank (Engine-free: `to_openvino` + OpenVINOInferencer, `to_torch` + TorchInferencer).
Reports images/s at --batch-size (median of --rounds passes over the 20 test crops, repeated to a
full batch), p50/p99 single-image latency, fastad's per-stage split (network, search, maps) and
the deviation of every fastad contender's maps from the fp32 Scorer's. Backbone weights are random
(the speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import fastad
from benchlib import load_builtin
from fastad.deploy import export, load
from fastad.deploy.export import relative_deviation
from fastad.engine import Scorer, train
from fastad.models import create_model
from fastad.ops import gaussian_blur

SIZE = 256


def build_patchcore():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model("patchcore")
        train_images, test_images, _, _ = load_builtin("brick", SIZE)
        train(model, train_images, steps=0, progress=False)
    return model.eval(), test_images


def anomalib_contenders(model, root: Path) -> dict:
    """anomalib's PatchCore with fastad's backbone weights and memory bank, exported its own ways."""
    from anomalib.deploy import OpenVINOInferencer, TorchInferencer
    from anomalib.models import Patchcore

    theirs = Patchcore(backbone="resnet18", pre_trained=False, layers=("layer2", "layer3"), coreset_sampling_ratio=0.1,
                       num_neighbors=9, pre_processor=Patchcore.configure_pre_processor(image_size=(SIZE, SIZE)),
                       evaluator=False, visualizer=False)
    state = {k: v for k, v in model.backbone.state_dict().items()}
    missing = theirs.model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
    if missing.missing_keys:
        raise RuntimeError(f"anomalib's backbone lacks fastad's tensors: {missing.missing_keys[:3]}")
    theirs.model.memory_bank = model.memory_bank.bank.clone()
    theirs.eval()
    xml = theirs.to_openvino(root / "anomalib-ov", input_size=(SIZE, SIZE))
    pt = theirs.to_torch(root / "anomalib-torch")
    os.environ["TRUST_REMOTE_CODE"] = "1"  # TorchInferencer unpickles: the file is the one written just above
    here = os.getcwd()
    os.chdir(root)  # OpenVINOInferencer writes ./openvino_cache: into the run's temporary folder
    try:
        openvino, torch_inferencer = OpenVINOInferencer(path=xml, device="CPU"), TorchInferencer(path=pt, device="cpu")
    finally:
        os.chdir(here)
    fixed = openvino.model.inputs[0].get_partial_shape()[0]
    batch = fixed.get_length() if fixed.is_static else None

    def predict_openvino(images):  # anomalib 2.7's export fixes the batch at its example's (2): chunks of it
        if batch is None:
            return openvino.predict(images)
        if len(images) < batch:
            images = images.repeat(batch, 1, 1, 1)[:batch]
        return [openvino.predict(chunk) for chunk in images.split(batch)]

    return {"anomalib OpenVINOInferencer": predict_openvino,
            "anomalib TorchInferencer": lambda images: torch_inferencer.predict(images)}


def fastad_contenders(model, root: Path) -> dict:
    fp32, bf16 = Scorer(model, batch_size=32), Scorer(model, batch_size=32, precision="bf16")
    onnx, ir = (load(export(model, root / fmt, fmt), batch_size=32) for fmt in ("onnx", "openvino"))
    return {"fastad Scorer fp32": fp32.score, "fastad Scorer bf16": bf16.score,
            "fastad ONNX Runtime": onnx.score, "fastad OpenVINO": ir.score}


def stage_split(model, batch: torch.Tensor, rounds: int) -> dict:
    """Median seconds per batch of PatchCore's stages on the fp32 eager path."""
    times = {"network": [], "search": [], "maps": []}
    with torch.inference_mode():
        for _ in range(rounds):
            start = time.perf_counter()
            features = model.embed(batch)
            b, d, h, w = features.shape
            queries = features.permute(0, 2, 3, 1).reshape(b * h * w, d)
            after_network = time.perf_counter()
            dist, _ = model.memory_bank.scorer().knn(queries)
            after_search = time.perf_counter()
            maps = F.interpolate(dist.reshape(b, 1, h, w), size=batch.shape[-2:], mode="bilinear", align_corners=False)
            model.image_scores(gaussian_blur(maps, model.settings.sigma)[:, 0])
            end = time.perf_counter()
            for key, seconds in zip(times, (after_network - start, after_search - after_network, end - after_search)):
                times[key].append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def measure(contenders: dict, batch: torch.Tensor, rounds: int, latency_runs: int) -> dict:
    """{name: {images_per_s, p50_ms, p99_ms}}; rounds alternate the contenders (A B C A B C ...)."""
    seconds = {name: [] for name in contenders}
    latency = {name: [] for name in contenders}
    for score in contenders.values():
        score(batch)                                                          # warm-up
        score(batch[:1])
    for _ in range(rounds):
        for name, score in contenders.items():
            start = time.perf_counter()
            score(batch)
            seconds[name].append(time.perf_counter() - start)
    for _ in range(latency_runs):
        for name, score in contenders.items():
            start = time.perf_counter()
            score(batch[:1])
            latency[name].append(time.perf_counter() - start)
    return {name: {"images_per_s": len(batch) / statistics.median(seconds[name]),
                   "p50_ms": 1e3 * statistics.median(latency[name]),
                   "p99_ms": 1e3 * statistics.quantiles(latency[name], n=100, method="inclusive")[98]}
            for name in contenders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--no-anomalib", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, test_images = build_patchcore()
    batch = test_images.repeat((args.batch_size + len(test_images) - 1) // len(test_images), 1, 1, 1)[:args.batch_size]
    with tempfile.TemporaryDirectory() as root:
        contenders = fastad_contenders(model, Path(root))
        if not args.no_anomalib:
            contenders.update(anomalib_contenders(model, Path(root)))
        expected = contenders["fastad Scorer fp32"](batch).maps
        deviation = {name: relative_deviation(contenders[name](batch).maps, expected)
                     for name in contenders if name.startswith("fastad")}
        results = measure(contenders, batch, args.rounds, args.latency_runs)
    report = {"threads": args.threads, "batch_size": args.batch_size, "bank": list(model.memory_bank.bank.shape),
              "results": results, "map_deviation_from_scorer_fp32": deviation,
              "fastad_stage_seconds_per_batch": stage_split(model, batch, args.rounds)}
    print(json.dumps(report, indent=2))
    print("\n| contender | images/s (batch %d) | p50 ms | p99 ms | maps vs Scorer fp32 |" % args.batch_size)
    print("|---|---:|---:|---:|---:|")
    for name, row in results.items():
        dev = f"{deviation[name]:.1e}" if name in deviation else "-"
        print(f"| {name} | {row['images_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {dev} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
