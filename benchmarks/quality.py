"""Quality of every registered model on the wider builtin benchmark (wide:<texture>).

Trains each model (fastad.models.registry) at its default settings on the train split of each
texture, scores the val and test splits (and the training images, for image-score
normalisation), and writes per run: results.jsonl (one line per model x texture x seed, appended
as each finishes, so an interrupted run resumes where it stopped), maps/<model>_<texture>_s<seed>.pt
(the maps, masks, labels and defects of every split, float16 maps, for
benchmarks/image_score_study.py) and quality.md (the tables below, rewritten after every run).

    python benchmarks/quality.py                                   # everything: hours on 2 cores
    python benchmarks/quality.py --models rawpixel,fcdd --textures moon,tissue --steps 20
    python benchmarks/quality.py --models patchcore --split val --set image_size=320 --set backbone=efficientnet_lite1

--set KEY=VALUE overrides a setting of every model run (VALUE read as JSON, else as a string);
the rows of such a run are labelled `model{KEY=VALUE,...}` so the tables keep recipes apart.

Seeds vary the model's initialisation and training batches; the data (seed 0) stays the same,
so differences between seeds are the recipe's, not the data's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import fastad.models  # noqa: F401  (registers every model)
from fastad import metrics
from fastad.data import open_dataset
from fastad.data.builtin import WIDE_TEXTURES
from fastad.engine import train
from fastad.engine.batch_scoring import score_dataset
from fastad.models.registry import MODELS, create_model

SPLITS = ("val", "test")
METRICS = (("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3"), ("image_auroc", "image AUROC"))
BASELINE = "rawpixel"


def split_metrics(scored) -> dict:
    return {"pixel_auroc": metrics.pixel_auroc(scored.maps, scored.masks), "aupro": metrics.aupro(scored.maps, scored.masks),
            "image_auroc": metrics.image_auroc(scored.image_scores, scored.labels)}


def packed(scored) -> dict:
    return {"maps": scored.maps.half(), "image_scores": scored.image_scores, "masks": scored.masks,
            "labels": scored.labels, "defects": scored.defects}


def run_one(name: str, texture: str, seed: int, steps: int | None, splits, batch: int, maps_dir: Path,
            settings: dict, score_train: bool = True) -> dict:
    """Trains `name` (with `settings` overridden) on wide:<texture>, scores train + splits, saves the
    maps; -> the result row."""
    spec = f"wide:{texture}"
    torch.manual_seed(seed)
    model = create_model(name, **settings)
    size = model.image_size
    train_set = open_dataset(spec, "train", size=size)
    train_images = torch.stack([train_set[i].image for i in range(len(train_set))])
    start = time.perf_counter()
    history = train(model, train_images, steps=steps, seed=seed, data=spec, progress=False)
    train_s = time.perf_counter() - start
    row = {"model": label(name, settings), "texture": texture, "seed": seed, "steps": steps, "trained_steps": len(history),
           "train_s": round(train_s, 1), "size": size}
    saved = {}
    with torch.no_grad():
        for split in ("train", *splits) if score_train else splits:
            scored = score_dataset(model.score, open_dataset(spec, split, size=size), batch, num_workers=0,
                                   progress=False)
            saved[split] = packed(scored)
            if split != "train":
                row.update({f"{split}_{k}": round(v, 4) for k, v in split_metrics(scored).items()})
    maps_dir.mkdir(parents=True, exist_ok=True)
    target = maps_dir / f"{label(name, settings)}_{texture}_s{seed}.pt"
    torch.save({"row": row, **saved}, target.with_suffix(".tmp"))
    os.replace(target.with_suffix(".tmp"), target)
    return row


def label(name: str, settings: dict) -> str:
    """The model's name in rows and tables: `name`, or `name{KEY=VALUE,...}` with overrides."""
    return name + ("{" + ",".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) + "}" if settings else "")


def parse_set(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set must be KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def fmt(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def tables(rows: list[dict], splits) -> str:
    """Markdown: model x texture x split x metric (mean ± std over seeds), then per model the mean
    and the worst texture of each metric, beside the baseline's mean over the same textures."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["texture"]), []).append(row)
    cols = [f"{s} {label}" for s in splits for _, label in METRICS]
    lines = ["| model | texture | " + " | ".join(cols) + " | train s | seeds |", "|---" * (len(cols) + 4) + "|"]
    for (model, texture), runs in sorted(groups.items()):
        cells = [fmt([r.get(f"{s}_{k}") for r in runs]) for s in splits for k, _ in METRICS]
        train_s = statistics.mean(r["train_s"] for r in runs)
        lines.append(f"| {model} | {texture} | " + " | ".join(cells) + f" | {train_s:.0f} | {len(runs)} |")
    lines += ["", "| model | split | textures | " + " | ".join(f"mean {l} | worst {l} | {BASELINE} {l}"
                                                           for _, l in METRICS) + " |",
              "|---" * (3 + 3 * len(METRICS)) + "|"]
    for model in sorted({m for m, _ in groups}):
        for split in splits:
            cells = []
            for key, _ in METRICS:
                per_texture = {t: statistics.mean(r[f"{split}_{key}"] for r in runs)
                               for (m, t), runs in groups.items() if m == model}
                baseline = [statistics.mean(r[f"{split}_{key}"] for r in groups[(BASELINE, t)])
                            for t in per_texture if (BASELINE, t) in groups]
                worst = min(per_texture, key=per_texture.get)
                cells += [f"{statistics.mean(per_texture.values()):.3f}", f"{per_texture[worst]:.3f} ({worst})",
                          f"{statistics.mean(baseline):.3f}" if len(baseline) == len(per_texture) else "n/a"]
            lines.append(f"| {model} | {split} | {len(per_texture)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_list(text: str, choices, what: str) -> list[str]:
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in choices]
    if bad or not items:
        raise SystemExit(f"--{what} must be a comma-separated list of {', '.join(choices)}; got {text!r}")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([BASELINE] + sorted(set(MODELS) - {BASELINE})))
    parser.add_argument("--textures", default=",".join(WIDE_TEXTURES))
    parser.add_argument("--split", default="both", choices=("val", "test", "both"))
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default: each model's)")
    parser.add_argument("--out", default="results/quality", help="folder for results.jsonl, maps/ and quality.md")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-train-maps", action="store_true",
                        help="do not score the training images (only image_score_study's norm_* rules use them)")
    parser.add_argument("--set", action="append", default=[], type=parse_set, metavar="KEY=VALUE",
                        help="override a model setting (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = parse_list(args.models, sorted(MODELS), "models")
    textures = parse_list(args.textures, WIDE_TEXTURES, "textures")
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = SPLITS if args.split == "both" else (args.split,)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    settings = dict(args.set)
    for seed in seeds:
        for name in models:
            for texture in textures:
                key = (label(name, settings if name != BASELINE else {}), texture, seed, args.steps)
                if any((r["model"], r["texture"], r["seed"], r["steps"]) == key and all(f"{s}_aupro" in r for s in splits)
                       for r in rows):
                    continue
                row = run_one(name, texture, seed, args.steps, splits, args.batch, out / "maps",
                              settings if name != BASELINE else {}, not args.no_train_maps)
                print(json.dumps(row), flush=True)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    labels = {label(n, settings if n != BASELINE else {}) for n in models}
    wanted = [r for r in rows if r["model"] in labels and r["texture"] in textures and r["seed"] in seeds
              and r["steps"] == args.steps]
    text = tables(wanted, splits)
    (out / "quality.md.tmp").write_text(text)
    os.replace(out / "quality.md.tmp", out / "quality.md")
    print(text)


if __name__ == "__main__":
    main()
