"""What a line engineer would run: PatchCore at its default settings (the registry's defaults:
backbone, taps, image size, coreset ratio; fitted on builtin:brick's training crops) scored on
the CPU by each deployment path, side by side in one run, alternating rounds.

    python benchmarks/deploy_throughput.py --threads 2 --rounds 5 --latency-runs 30
    python benchmarks/deploy_throughput.py --no-anomalib          # fastad's paths only

Contenders: fastad's Scorer (fp32, bf16), fastad's ONNX artefact on ONNX Runtime and its OpenVINO
IR on OpenVINO (fastad.deploy), and anomalib 2.7's PatchCore on the same backbone, weights,
input normalisation and memory bank (Engine-free: `to_openvino` + OpenVINOInferencer at its
default configuration and with the inference precision pinned to f32, `to_torch` +
TorchInferencer). OpenVINO's default inference precision depends on the CPU (bf16 where the CPU
computes it natively): each OpenVINO contender's row names the precision it ran at.
Reports images/s at --batch-size (median of --rounds passes over the test crops, repeated to a
full batch), p50/p99 single-image latency, fastad's per-stage split (network, search, maps) and
the deviation of every fastad contender's maps from the fp32 Scorer's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import load_builtin
from runner import ROWS_DIR, append_rows, git_commit, stamp
from fastad.deploy import export, load
from fastad.deploy.export import relative_deviation
from fastad.engine import Scorer, train
from fastad.models import create_model
from fastad.models.components.backbones import read_state_dict
from fastad.models.components.zoo import BACKBONES, lite_state, packaged_weights
from fastad.ops import gaussian_blur

ROWS = ROWS_DIR / "deploy_throughput.jsonl"


def build_patchcore():
    """The default PatchCore fitted on builtin:brick -> (model, test crops at its image size)."""
    torch.manual_seed(0)
    model = create_model("patchcore")
    train_images, test_images, _, _ = load_builtin("brick", model.settings.image_size)
    train(model, train_images, steps=0, progress=False)
    return model.eval(), test_images


def anomalib_patchcore(model):
    """anomalib's Patchcore on timm's tf_<backbone> at the same taps, with fastad's backbone
    weights, input normalisation and memory bank."""
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms import v2

    settings = model.settings
    spec = BACKBONES[settings.backbone]
    size = settings.image_size
    transform = v2.Compose([v2.Resize((size, size), antialias=True), v2.Normalize(spec.mean, spec.std)])
    order = list(spec.taps)
    theirs = Patchcore(backbone=f"tf_{settings.backbone}", pre_trained=False,
                       layers=[order.index(t) for t in settings.layers], coreset_sampling_ratio=settings.coreset_ratio,
                       pre_processor=PreProcessor(transform=transform), evaluator=False, visualizer=False)
    net = theirs.model.feature_extractor.feature_extractor
    path = packaged_weights(spec)   # the whole network's weights: timm's features_only keeps the later blocks
    state = lite_state(read_state_dict(path, "weights", settings.backbone), path, settings.backbone)
    net.load_state_dict({key: state[key] for key in net.state_dict()})
    ours = model.backbone.state_dict()
    if any(not torch.equal(value, state[key.removeprefix("net.")]) for key, value in ours.items()):
        raise RuntimeError("fastad's backbone does not hold the packaged weights: the comparison needs the same ones")
    theirs.model.memory_bank = model.memory_bank.bank.clone()
    return theirs.eval()


def anomalib_contenders(model, root: Path) -> dict:
    """anomalib's deployment paths over its PatchCore on fastad's weights and bank."""
    from anomalib.deploy import OpenVINOInferencer, TorchInferencer

    theirs = anomalib_patchcore(model)
    size = model.settings.image_size
    xml = theirs.to_openvino(root / "anomalib-ov", input_size=(size, size))
    pt = theirs.to_torch(root / "anomalib-torch")
    os.environ["TRUST_REMOTE_CODE"] = "1"  # TorchInferencer unpickles: the file is the one written just above
    here = os.getcwd()
    os.chdir(root)  # OpenVINOInferencer writes ./openvino_cache: into the run's temporary folder
    try:
        default = OpenVINOInferencer(path=xml, device="CPU")
        pinned = OpenVINOInferencer(path=xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
        torch_inferencer = TorchInferencer(path=pt, device="cpu")
    finally:
        os.chdir(here)
    contenders = {f"anomalib OpenVINOInferencer ({openvino_precision(default.model)}, default)": chunked(default),
                  f"anomalib OpenVINOInferencer ({openvino_precision(pinned.model)})": chunked(pinned),
                  "anomalib TorchInferencer": lambda images: torch_inferencer.predict(images)}
    return contenders


def openvino_precision(compiled) -> str:
    """The inference precision an OpenVINO compiled model runs at (bf16, f32, f16)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def chunked(inferencer):
    """predict() over a batch; anomalib 2.7's export fixes the batch at its example's: chunks of it."""
    fixed = inferencer.model.inputs[0].get_partial_shape()[0]
    batch = fixed.get_length() if fixed.is_static else None

    def predict(images):
        if batch is None:
            return inferencer.predict(images)
        if len(images) < batch:
            images = images.repeat(batch, 1, 1, 1)[:batch]
        return [inferencer.predict(chunk) for chunk in images.split(batch)]
    return predict


def fastad_scorers(model) -> dict:
    """fastad's in-process paths: the Scorer with its network on eager PyTorch or on OpenVINO."""
    return {"fastad Scorer fp32": Scorer(model, batch_size=32),
            "fastad Scorer bf16": Scorer(model, batch_size=32, precision="bf16"),
            "fastad Scorer fp32, OpenVINO network": Scorer(model, batch_size=32, network_engine="openvino"),
            "fastad Scorer bf16, OpenVINO network": Scorer(model, batch_size=32, precision="bf16",
                                                           network_engine="openvino")}


def fastad_contenders(scorers: dict, model, root: Path) -> dict:
    onnx, ir = (load(export(model, root / fmt, fmt), batch_size=32) for fmt in ("onnx", "openvino"))
    return {**{name: scorer.score for name, scorer in scorers.items()},
            "fastad ONNX Runtime": onnx.score, "fastad OpenVINO": ir.score}


def stage_split(scorer: Scorer, batch: torch.Tensor, rounds: int) -> dict:
    """Median seconds per batch of PatchCore's stages (network, search, maps) as `scorer` runs them."""
    model = scorer.scoring_model
    times = {"network": [], "search": [], "maps": []}
    batch = batch.contiguous(memory_format=scorer.memory_format)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=scorer.precision == "bf16"):
        for _ in range(rounds + 1):
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
    return {key: statistics.median(values[1:]) for key, values in times.items()}   # the first: warm-up


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
    parser.add_argument("--rows", default=str(ROWS), help="append one stamped row per contender here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start, commit = os.getloadavg()[0], git_commit()
    model, test_images = build_patchcore()
    batch = test_images.repeat((args.batch_size + len(test_images) - 1) // len(test_images), 1, 1, 1)[:args.batch_size]
    with tempfile.TemporaryDirectory() as root:
        scorers = fastad_scorers(model)
        contenders = fastad_contenders(scorers, model, Path(root))
        if not args.no_anomalib:
            contenders.update(anomalib_contenders(model, Path(root)))
        expected = contenders["fastad Scorer fp32"](batch).maps
        deviation = {name: relative_deviation(contenders[name](batch).maps, expected)
                     for name in contenders if name.startswith("fastad")}
        results = measure(contenders, batch, args.rounds, args.latency_runs)
    report = {"threads": args.threads, "batch_size": args.batch_size, "bank": list(model.memory_bank.bank.shape),
              "results": results, "map_deviation_from_scorer_fp32": deviation,
              "fastad_stage_seconds_per_batch": {name: stage_split(scorer, batch, args.rounds)
                                                 for name, scorer in scorers.items()}}
    print(json.dumps(report, indent=2))
    print("\n| contender | images/s (batch %d) | p50 ms | p99 ms | maps vs Scorer fp32 |" % args.batch_size)
    print("|---|---:|---:|---:|---:|")
    for name, row in results.items():
        dev = f"{deviation[name]:.1e}" if name in deviation else "-"
        print(f"| {name} | {row['images_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {dev} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    append_rows(Path(args.rows), rows_of(report, model, stamp(load_start, commit)))


def rows_of(report: dict, model, stamped: dict) -> list[dict]:
    """One row per contender: its throughput and latency, its maps' deviation, its stage split."""
    import openvino

    run = time.strftime("%Y-%m-%dT%H:%M:%S")
    versions = {"openvino": openvino.__version__}
    try:
        import anomalib
        versions["anomalib"] = anomalib.__version__
    except ImportError:
        pass
    setting = {"model": model.name, "backbone": model.settings.backbone, "image_size": model.settings.image_size,
               "bank": report["bank"], "batch_size": report["batch_size"]}
    return [{"task": "deploy-throughput", "run": run, "contender": name, **result, **setting,
             "map_deviation": report["map_deviation_from_scorer_fp32"].get(name),
             "stages": report["fastad_stage_seconds_per_batch"].get(name), "versions": versions, "stamp": stamped}
            for name, result in report["results"].items()]


if __name__ == "__main__":
    main()
