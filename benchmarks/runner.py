"""The benchmark runner: quality runs through fastad's own engine, stamped rows, generated tables.

    python benchmarks/runner.py quality --model patchcore,rawpixel --data wide --seeds 0,1,2
    python benchmarks/runner.py quality --model fcdd --data wide:brick,wide:moon --set loss=fcdd --steps 20
    python benchmarks/runner.py render                      # rewrite every generated table

`quality` trains each model on each dataset spec's train split with `fastad.engine.pipeline.fit_run`
(what `fastad train` runs), then scores the val and test splits with `fastad.Scorer` and
`fastad.engine.evaluation.compute_metrics` (what `fastad eval` runs), and appends one row per
model x data x seed x split to the rows file (benchmarks/rows/quality.jsonl), flushed and synced
as each run finishes: an interrupted run resumes with the next missing row. `--data wide` stands
for every `wide:<texture>`. Every row is stamped with the fastad version, git commit, CPU model and
vector extensions, torch threads and the load average at start and end.

`render` rewrites each generated table in the Markdown files that hold one, between
`<!-- table: quality KEY=VALUE ... -->` and `<!-- end table -->`: rows are filtered by the keys
(model, label, data, split, steps), averaged over seeds, and laid out model x dataset with the
raw-pixel baseline beside them and the stamps' range under the table. Numbers in README.md,
benchmarks/RESULTS.md and the model READMEs come from here, never typed.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch

import fastad
from fastad.data import open_dataset
from fastad.data.builtin import WIDE_TEXTURES
from fastad.engine.evaluation import compute_metrics
from fastad.engine.pipeline import fit_run
from fastad.engine.scorer import Scorer
from fastad.files import atomic_write
from fastad.info import describe_cpu
from fastad.models.registry import MODELS

ROOT = Path(__file__).resolve().parent.parent
ROWS = ROOT / "benchmarks" / "rows" / "quality.jsonl"
BASELINE = "rawpixel"
SPLITS = ("val", "test")
#: (row key, column label) of the metrics a quality cell shows, in order
CELL = (("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3"), ("image_auroc", "image AUROC"))
#: the files render looks into for generated tables
TABLE_FILES = ("README.md", "benchmarks/RESULTS.md", "fastad/models/*/README.md")
MARKER = re.compile(r"(<!-- table: quality(?P<filters>[^>]*?)-->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def git_commit() -> str:
    """HEAD's short hash, with "+dirty" when the tree has uncommitted changes; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def stamp(load_start: float) -> dict:
    return {"fastad": fastad.__version__, "commit": git_commit(), "machine": describe_cpu(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "date": time.strftime("%Y-%m-%d")}


def run_key(row: dict) -> tuple:
    return (row["model"], row["label"], row["data"], row["seed"], row["steps"], row["split"])


def read_rows(path: Path) -> list[dict]:
    """The rows of a rows file (JSON lines); a torn last line (an interrupted append) is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    """Appends rows in one write, flushed and synced, so a run's rows are on disk together."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def splits_of(data: str) -> tuple[str, ...]:
    """The evaluation splits a dataset spec has: val and test for `wide:` specs, test for the rest."""
    return SPLITS if data.startswith("wide:") else ("test",)


def quality_run(model: str, data: str, seed: int, steps: int | None, config: dict, label: str) -> list[dict]:
    """Trains `model` on data's train split as `fastad train` does and scores val and test as
    `fastad eval` does -> one row per split."""
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the random-weights warnings of baseline configurations
        start = time.perf_counter()
        trained, _ = fit_run(model, data, Path(folder) / "run", steps=steps, seed=seed, config=config, progress=False)
        fit_s = time.perf_counter() - start
        scorer = Scorer(Path(folder) / "run")
        rows = []
        for split in splits_of(data):
            dataset = open_dataset(data, split, size=scorer.image_size)
            start = time.perf_counter()
            scored = scorer.score_dataset(dataset, num_workers=0, progress=False)
            score_s = time.perf_counter() - start
            metrics = {k: None if v is None else round(v, 4) for k, v in compute_metrics(scored).items()}
            rows.append({"task": "quality", "model": model, "label": label, "data": data, "seed": seed,
                         "steps": steps, "split": split, "config": trained.config,
                         "backbone": trained.config.get("backbone"), **metrics,
                         "fit_s": round(fit_s, 2), "score_s": round(score_s, 2), "images": len(scored.paths),
                         "stamp": stamp(load_start)})
    return rows


def parse_config(pairs: list[str]) -> dict:
    """--set KEY=VALUE items -> {key: JSON value, or the string as given}."""
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def parse_data(text: str) -> list[str]:
    specs = []
    for item in filter(None, text.split(",")):
        specs += [f"wide:{t}" for t in WIDE_TEXTURES] if item == "wide" else [item]
    if not specs:
        raise SystemExit("--data must name at least one dataset spec (or 'wide')")
    return specs


def quality(args) -> None:
    models = [m for m in args.model.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise SystemExit(f"--model must be a comma-separated list of {', '.join(sorted(MODELS))}; got {args.model!r}")
    config = parse_config(args.set)
    label = args.label or ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"
    torch.set_num_threads(args.threads)
    rows_file = Path(args.rows)
    done = {run_key(r) for r in read_rows(rows_file)}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for model in models:
            for data in parse_data(args.data):
                keys = [(model, label, data, seed, args.steps, split) for split in splits_of(data)]
                if all(key in done for key in keys):
                    continue
                rows = quality_run(model, data, seed, args.steps, config, label)
                append_rows(rows_file, rows)
                done.update(run_key(r) for r in rows)
                print(" ".join(f"{r['split']} {r['pixel_auroc']}/{r['aupro']}/{r['image_auroc']}" for r in rows),
                      f"{model} {data} seed {seed} fit {rows[0]['fit_s']} s", flush=True)


def mean_of(groups: list[list[dict]], key: str) -> float | None:
    """The mean over groups of each group's mean of `key` (groups without a value left out)."""
    means = [statistics.mean(v) for v in ([r[key] for r in g if r.get(key) is not None] for g in groups) if v]
    return statistics.mean(means) if means else None


def cell(groups: list[list[dict]]) -> str:
    """pixel AUROC / AUPRO / image AUROC as ".981/.923/.870": per group (a dataset's seeds) the
    mean, then the mean over groups."""
    values = [mean_of(groups, key) for key, _ in CELL]
    return "/".join("n/a" if v is None else f"{v:.3f}".removeprefix("0") for v in values)


def matches(row: dict, filters: dict, keys) -> bool:
    return all(fnmatch.fnmatchcase(str(row.get(k)), v) for k, v in filters.items() if k in keys)


def column(data: str) -> str:
    return data.removeprefix("wide:")


def quality_table(rows: list[dict], filters: dict) -> str:
    """Markdown: one line per model (with its backbone and configuration label) x split, one
    column per dataset and the mean over datasets; cells pixel AUROC / AUPRO / image AUROC
    averaged over seeds; the raw-pixel baseline's lines (same data and split filter) first. Filters are
    KEY=GLOB pairs on the rows' model, label, data, split and steps."""
    rows = [r for r in rows if r.get("task") == "quality"]
    selected = [r for r in rows if matches(r, filters, ("data", "split", "steps"))]
    wanted = [r for r in selected if matches(r, filters, ("model", "label"))]
    if not wanted:
        return "(no rows yet: run `python benchmarks/runner.py quality` with these settings)\n"
    # the baseline trains no steps: a steps filter picks the models' rows, not the baseline's
    baseline = [r for r in rows if matches(r, filters, ("data", "split")) and r["model"] == BASELINE
                and r not in wanted]
    order = {f"wide:{t}": i for i, t in enumerate(WIDE_TEXTURES)}
    datasets = sorted({r["data"] for r in wanted}, key=lambda d: (order.get(d, len(order)), d))
    lines = ["| model (backbone) | split | seeds | " + " | ".join(map(column, datasets)) + " | mean |",
             "|---" * (len(datasets) + 4) + "|"]
    groups: dict[tuple, list[dict]] = {}
    for row in baseline + wanted:
        network = row.get("backbone") or row.get("config", {}).get("teacher")   # GlanceNet names a teacher
        key = (row["model"] != BASELINE, row["model"], row["label"], network or "-")
        groups.setdefault(key, []).append(row)
    for (_, model, label, backbone), runs in sorted(groups.items()):
        for split in SPLITS:
            per_data = [[r for r in runs if r["split"] == split and r["data"] == d] for d in datasets]
            if not any(per_data):
                continue
            seeds = len({r["seed"] for g in per_data for r in g})
            name = f"{model}{'' if label == 'defaults' else ' [' + label + ']'} ({backbone})"
            lines.append(f"| {name} | {split} | {seeds} | " + " | ".join(cell([g]) if g else "" for g in per_data)
                         + f" | {cell([g for g in per_data if g])} |")
    stamps = [r["stamp"] for r in baseline + wanted]
    loads = [x for s in stamps for x in s["load"]]
    lines += ["", f"Cells: {' / '.join(label for _, label in CELL)}, mean over seeds. Generated by "
              f"`python benchmarks/runner.py render` from {len(stamps)} rows: fastad "
              f"{', '.join(sorted({s['fastad'] for s in stamps}))}, commit {', '.join(sorted({s['commit'] for s in stamps}))}, "
              f"{stamps[0]['machine']}, {stamps[0]['threads']} threads, load {min(loads):.1f}–{max(loads):.1f}, "
              f"{min(s['date'] for s in stamps)}."]
    return "\n".join(lines) + "\n"


def render(args) -> None:
    rows = read_rows(Path(args.rows))
    for pattern in TABLE_FILES:
        for path in sorted(ROOT.glob(pattern)):
            text = path.read_text()
            new = MARKER.sub(lambda m: m.group(1) + quality_table(rows, dict(
                item.split("=", 1) for item in m.group("filters").split())) + m.group(4), text)
            if new != text:
                with atomic_write(path, "w") as f:
                    f.write(new)
                print(f"rewrote the tables of {path.relative_to(ROOT)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=str(ROWS), help="the rows file (JSON lines)")
    sub = parser.add_subparsers(dest="task", required=True)
    q = sub.add_parser("quality", help="train, then evaluate val and test, through the engine")
    q.add_argument("--model", required=True, help="comma-separated registered model names")
    q.add_argument("--data", default="wide", help="comma-separated dataset specs; 'wide' = every wide:<texture>")
    q.add_argument("--seeds", default="0", help="comma-separated training seeds")
    q.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default: each model's)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model config key")
    q.add_argument("--label", default=None, help="the configuration's name in tables (default: the --set pairs)")
    q.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    sub.add_parser("render", help="rewrite the generated tables from the rows file")
    args = parser.parse_args(argv)
    {"quality": quality, "render": render}[args.task](args)


if __name__ == "__main__":
    main()
