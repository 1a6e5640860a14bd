"""fastad's PatchCore next to anomalib's own PatchCore on the same pretrained weights and data:
quality from the raw outputs, fit and scoring wall time, in one run.

    python benchmarks/anomalib_patchcore.py --textures brick [--size 256] [--threads 2] [--rows FILE]
    python benchmarks/runner.py render      # the `anomalib-patchcore` tables from the rows

Both sides get the packaged ImageNet efficientnet_lite0 weights (fastad's zoo maps the file onto
timm's tf_efficientnet_lite0; the same state dict is loaded into anomalib's TimmFeatureExtractor,
which is timm's features_only network of that name), the same taps (stride 8 and 16: timm's
out_indices 2 and 3), the same input normalisation (mean = std = 0.5, what these weights expect),
the same coreset ratio and the same `wide:<texture>` train and test crops at `--size` px.
anomalib runs as its PatchcoreModel does inside its Lightning module (training forward passes
store the embeddings, subsample_embedding selects the coreset, the eval forward gives
pred_score and anomaly_map), without the Lightning loop: its in-loop AUROC passes the raw
distances through a sigmoid, so every metric here is fastad.metrics on the raw maps and scores.
anomalib keeps its own defaults elsewhere (sparse random projection before the coreset,
num_neighbors = 9 for the image score, sigma 4 blur); fastad runs its defaults with the size
and taps set. Per texture: fastad's fit, then anomalib's (one round each: anomalib's takes
minutes), then scoring the test crops, fastad and anomalib alternated over --rounds rounds.

Each texture appends one row (both implementations in it) to benchmarks/rows/anomalib_patchcore.jsonl
(or --rows), stamped as the runner's rows are (fastad version, git commit, machine, threads, load
at start and end, date), as it finishes; `runner.py render` turns the rows into the tables.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import time
from pathlib import Path

import torch

from fastad.data import open_dataset
from fastad.engine.pipeline import load_normal_images
from fastad.engine.trainer import train
from fastad.metrics import aupro, image_auroc, pixel_auroc
from fastad.models.components.backbones import read_state_dict
from fastad.models.components.zoo import BACKBONES, lite_state, packaged_weights
from fastad.models.patchcore import PatchCore
from runner import ROOT, TASK_ROWS, anomalib_patchcore_table, append_rows, git_commit, stamp

BACKBONE = "efficientnet_lite0"
TAPS = ("stride8", "stride16")
BATCH = 8


def lite_weights(name: str = BACKBONE) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of `name` in timm's tf_<name> naming."""
    path = packaged_weights(BACKBONES[name])
    return lite_state(read_state_dict(path, "weights", name), path, name)


def anomalib_model(ratio: float):
    """anomalib's PatchcoreModel on timm's tf_efficientnet_lite0 at TAPS, with the packaged weights."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    order = list(BACKBONES[BACKBONE].taps)
    model = PatchcoreModel(layers=[order.index(t) for t in TAPS], backbone=f"tf_{BACKBONE}", pre_trained=False)
    net = model.feature_extractor.feature_extractor
    state = lite_weights()
    net.load_state_dict({k: state[k] for k in net.state_dict()})
    model.ratio = ratio
    return model


def normalised(images: torch.Tensor) -> torch.Tensor:
    spec = BACKBONES[BACKBONE]
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def fit_anomalib(model, images: torch.Tensor) -> None:
    model.train()
    for batch in images.split(BATCH):
        model(normalised(batch))
    model.subsample_embedding(model.ratio)
    model.eval()


@torch.no_grad()
def score_anomalib(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = [model(normalised(batch)) for batch in images.split(BATCH)]
    return torch.cat([o.pred_score.reshape(-1) for o in outputs]), torch.cat([o.anomaly_map[:, 0] for o in outputs])


@torch.no_grad()
def score_fastad(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    results = [model.score(batch) for batch in images.split(BATCH)]
    return torch.cat([r.image_scores for r in results]), torch.cat([r.maps for r in results])


def test_split(texture: str, size: int):
    dataset = open_dataset(f"wide:{texture}", "test", size=size)
    samples = [dataset[i] for i in range(len(dataset))]
    return (torch.stack([s.image for s in samples]), torch.stack([s.mask for s in samples]),
            torch.tensor([s.label for s in samples]))


def quality(scores: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"pixel_auroc": round(pixel_auroc(maps, masks), 4), "aupro": round(aupro(maps, masks), 4),
            "image_auroc": round(image_auroc(scores, labels), 4)}


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def compare(texture: str, size: int, ratio: float, rounds: int, commit: str) -> dict:
    """One texture: both fits, then scoring alternated over `rounds` -> its stamped row
    (`commit`: git_commit() when the run started)."""
    images, _ = load_normal_images(f"wide:{texture}", size)
    test_images, masks, labels = test_split(texture, size)
    ours = PatchCore(backbone=BACKBONE, layers=TAPS, image_size=size, coreset_ratio=ratio)
    theirs = anomalib_model(ratio)
    load_start = os.getloadavg()[0]
    _, fit_ours = timed(lambda: train(ours, images, progress=False))
    _, fit_theirs = timed(fit_anomalib, theirs, images)
    ours.eval()
    times = {"fastad": [], "anomalib": []}
    for _ in range(rounds):
        out_ours, t = timed(score_fastad, ours, test_images)
        times["fastad"].append(t)
        out_theirs, t = timed(score_anomalib, theirs, test_images)
        times["anomalib"].append(t)
    return {"task": "anomalib-patchcore", "data": f"wide:{texture}", "texture": texture, "size": size,
            "backbone": BACKBONE, "taps": list(TAPS), "coreset_ratio": ratio, "rounds": rounds,
            "anomalib_version": importlib.metadata.version("anomalib"), "train_images": len(images),
            "test_images": len(test_images), "bank": [ours.memory_bank.bank.shape[0], theirs.memory_bank.shape[0]],
            "fastad": {**quality(*out_ours, masks, labels), "fit_s": round(fit_ours, 2),
                       "score_s": round(statistics.median(times["fastad"]), 3)},
            "anomalib": {**quality(*out_theirs, masks, labels), "fit_s": round(fit_theirs, 2),
                         "score_s": round(statistics.median(times["anomalib"]), 3)},
            "stamp": stamp(load_start, commit)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", nargs="+", default=["brick"], help="wide: textures")
    parser.add_argument("--size", type=int, default=256, help="square input side, px")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3, help="scoring rounds per implementation (median kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rows", default=None, help="the rows file (JSON lines) to append to; default: "
                        f"{TASK_ROWS['anomalib-patchcore'].relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    rows_file, commit, rows = Path(args.rows or TASK_ROWS["anomalib-patchcore"]), git_commit(), []
    for texture in args.textures:
        rows.append(compare(texture, args.size, args.coreset_ratio, args.rounds, commit))
        append_rows(rows_file, rows[-1:])
        print(f"wide:{texture}: row appended to {rows_file}", flush=True)
    print(anomalib_patchcore_table(rows, {}))


if __name__ == "__main__":
    main()
