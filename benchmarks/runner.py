"""The benchmark runner: quality runs through fastad's own engine, timings, stamped rows, generated tables.

    python benchmarks/runner.py quality --model patchcore,rawpixel --data wide --seeds 0,1,2
    python benchmarks/runner.py quality --model fcdd --data wide:brick,wide:moon --set loss=fcdd --steps 20
    python benchmarks/runner.py quality --model patchcore --split val --save-maps /tmp/maps
    python benchmarks/runner.py image-score --maps /tmp/maps           # the image-score rules on saved maps
    python benchmarks/runner.py image-score --model rawpixel --data wide   # ... or on a fresh run
    python benchmarks/runner.py patchcore-fit --data builtin:brick     # fit seconds: whole, backbone, coreset
    python benchmarks/runner.py bench benchmarks/test_gmm_bench.py -k cpu  # pytest-benchmark suites -> rows
    python benchmarks/runner.py render                      # rewrite every generated table

`quality` trains each model on each dataset spec's train split with `fastad.engine.pipeline.fit_run`
(what `fastad train` runs), then scores the val and test splits (`--split val`: val only, for a
recipe search) with `fastad.Scorer` and `fastad.engine.evaluation.compute_metrics` (what `fastad
eval` runs), plus the image AUROC of every model image-score rule on the same maps
(`image_auroc_rules`), and appends one row per
model x data x seed x split to the rows file (benchmarks/rows/quality.jsonl), flushed and synced
as each run finishes: an interrupted run resumes with the next missing row. `--data wide` stands
for every `wide:<texture>`. `--save-maps DIR` also keeps each run's maps (float16), masks, labels
and defect families of the train split and the scored splits, for `image-score`.

`image-score` computes the image AUROC of every rule of fastad.metrics.image_score, and pixel and
image AUROC per defect family, on saved maps or on a fresh `quality` run (rows in
benchmarks/rows/image_score.jsonl). `patchcore-fit` times PatchCore's fit whole and its backbone
and coreset halves alone (benchmarks/rows/patchcore_fit.jsonl). `bench` runs pytest-benchmark suites (the arguments go to
pytest; default: every benchmarks/test_*_bench.py) and turns each benchmark into a row of
benchmarks/rows/bench.jsonl: group, contender, parameters, median, rounds and its ratio to the
"fastad" contender of the same group in the same run.

Every row is stamped with the fastad version, git commit, CPU model and vector extensions, torch
threads and the load average at start and end. `render` rewrites each generated table in the
Markdown files that hold one, between `<!-- table: KIND KEY=GLOB ... -->` and `<!-- end table -->`
(KIND: quality, image-score, families, patchcore-fit, anomalib-patchcore or bench; see each *_table
function for its keys; anomalib-patchcore rows come from benchmarks/anomalib_patchcore.py): numbers
in README.md, benchmarks/RESULTS.md and the model READMEs come from here, never typed.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import fastad
from fastad.data import open_dataset
from fastad.data.builtin import WIDE_TEXTURES
from fastad.engine.evaluation import compute_metrics
from fastad.engine.pipeline import fit_run, load_normal_images
from fastad.engine.scorer import Scorer
from fastad.files import atomic_write
from fastad.info import describe_cpu
from fastad.metrics import image_auroc, pixel_auroc
from fastad.metrics.image_score import IMAGE_SCORE_RULES, MODEL_RULES, NORMALISED_RULES, image_score
from fastad.models.registry import MODELS, create_model
from fastad.nn.nearest_neighbor import NearestNeighborScorer

ROOT = Path(__file__).resolve().parent.parent
ROWS_DIR = ROOT / "benchmarks" / "rows"
ROWS = ROWS_DIR / "quality.jsonl"
#: the rows file of each task (render reads them all)
TASK_ROWS = {"quality": ROWS, "image-score": ROWS_DIR / "image_score.jsonl", "bench": ROWS_DIR / "bench.jsonl",
             "patchcore-fit": ROWS_DIR / "patchcore_fit.jsonl",
             "anomalib-patchcore": ROWS_DIR / "anomalib_patchcore.jsonl"}   # written by anomalib_patchcore.py
BASELINE = "rawpixel"
SPLITS = ("val", "test")
#: the contender every other contender of a bench group is compared with
BENCH_PEER = "fastad"
#: the contenders a bench group's ratios divide by: fastad itself, or anomalib running on fastad's ops
BENCH_PEERS = (BENCH_PEER, "anomalib+fastad")
#: image-score: the training maps' spread under DEGENERATE times the split's own cannot normalise
#: (a memory bank scoring its own patches gives ~0 there); a model rule replaces max as the choice
#: only when its val mean beats max's by CHOICE_MARGIN (12 + 12 val images leave a few hundredths of noise)
DEGENERATE = 1e-3
CHOICE_MARGIN = 0.02
#: (row key, column label) of the metrics a quality cell shows, in order
CELL = (("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3"), ("image_auroc", "image AUROC"))
#: the files render looks into for generated tables
TABLE_FILES = ("README.md", "benchmarks/RESULTS.md", "fastad/models/*/README.md")
MARKER = re.compile(r"(<!-- table: (?P<kind>[\w-]+)(?P<filters>[^>]*?)-->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def git_commit() -> str:
    """HEAD's short hash, with "+dirty" when the tree has uncommitted changes outside the rows
folder (which a sweep appends to as it goes); "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":!{ROWS_DIR.relative_to(ROOT)}"],   # the rows a run appends are not code
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def stamp(load_start: float, commit: str) -> dict:
    """The stamp of a row: `commit` (git_commit() taken when the run started), the load average
    then and now, and the versions, machine and threads."""
    return {"fastad": fastad.__version__, "commit": commit, "machine": describe_cpu(), "torch": torch.__version__,
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


def splits_of(data: str, split: str = "both") -> tuple[str, ...]:
    """The evaluation splits of a dataset spec that `split` (val, test or both) asks for: val and
    test for `wide:` specs, test for the rest. SystemExit when none is left."""
    have = SPLITS if data.startswith("wide:") else ("test",)
    wanted = tuple(s for s in have if split in ("both", s))
    if not wanted:
        raise SystemExit(f"--split {split}: {data} has only the {', '.join(have)} split")
    return wanted


def packed(scored) -> dict:
    """What image-score needs of a scored split: float16 maps, masks, labels, defect families."""
    return {"maps": scored.maps.half(), "masks": scored.masks, "labels": scored.labels, "defects": scored.defects}


def maps_file(folder: Path, key: dict) -> Path:
    """<folder>/<model>[-<label>]_<data>_s<seed>[_steps<N>].pt, with characters unsafe in a file name as '-'."""
    name = key["model"] + ("" if key["label"] == "defaults" else f"-{key['label']}")
    name += f"_{key['data']}_s{key['seed']}" + ("" if key["steps"] is None else f"_steps{key['steps']}")
    return folder / (re.sub(r"[^\w.=-]+", "-", name) + ".pt")


def quality_run(model: str, data: str, seed: int, steps: int | None, config: dict, label: str,
                splits: tuple[str, ...] | None = None, save_maps: Path | None = None) -> list[dict]:
    """Trains `model` on data's train split as `fastad train` does and scores `splits` (default:
    every split of `data`) as `fastad eval` does -> one row per split. With save_maps, the train
    split is scored too and everything image-score needs is saved under save_maps (maps_file)."""
    load_start, commit = os.getloadavg()[0], git_commit()
    key = {"model": model, "label": label, "data": data, "seed": seed, "steps": steps}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the random-weights warnings of baseline configurations
        start = time.perf_counter()
        trained, _ = fit_run(model, data, Path(folder) / "run", steps=steps, seed=seed, config=config, progress=False)
        fit_s = time.perf_counter() - start
        scorer = Scorer(Path(folder) / "run")
        rows, saved = [], {}
        for split in ("train",) * (save_maps is not None) + (splits or splits_of(data)):
            dataset = open_dataset(data, split, size=scorer.image_size)
            start = time.perf_counter()
            scored = scorer.score_dataset(dataset, num_workers=0, progress=False)
            score_s = time.perf_counter() - start
            saved[split] = packed(scored)
            if split == "train":
                continue
            metrics = {k: None if v is None else round(v, 4) for k, v in compute_metrics(scored).items()}
            metrics["image_auroc_rules"] = model_rule_aurocs(scored)
            rows.append({"task": "quality", **key, "split": split, "config": trained.config,
                         "backbone": trained.config.get("backbone"), **metrics,
                         "fit_s": round(fit_s, 2), "score_s": round(score_s, 2), "images": len(scored.paths),
                         "stamp": stamp(load_start, commit)})
    if save_maps is not None:
        with atomic_write(maps_file(save_maps, key), "wb") as f:
            torch.save({"key": key, "backbone": rows[0]["backbone"], "commit": commit, "splits": saved}, f)
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


def parse_models(text: str) -> list[str]:
    models = [m for m in text.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise SystemExit(f"--model must be a comma-separated list of {', '.join(sorted(MODELS))}; got {text!r}")
    return models


def runs_of(args):
    """(model, data, seed, config, label) of every run a quality-style command asks for, seeds outermost."""
    models, specs = parse_models(args.model), parse_data(args.data)
    config = parse_config(args.set)
    label = args.label or ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"
    for seed in [int(s) for s in args.seeds.split(",")]:
        for model in models:
            for data in specs:
                yield model, data, seed, config, label


def quality(args) -> None:
    torch.set_num_threads(args.threads)
    rows_file = Path(args.rows or TASK_ROWS["quality"])
    done = {run_key(r) for r in read_rows(rows_file)}
    save_maps = Path(args.save_maps) if args.save_maps else None
    for model, data, seed, config, label in runs_of(args):
        splits = splits_of(data, args.split)
        missing = tuple(s for s in splits if (model, label, data, seed, args.steps, s) not in done)
        if save_maps is None:
            splits = missing   # resume scores only the splits still missing
        if not missing and (save_maps is None or maps_file(save_maps, dict(
                model=model, label=label, data=data, seed=seed, steps=args.steps)).exists()):
            continue
        rows = quality_run(model, data, seed, args.steps, config, label, splits, save_maps)
        new = [r for r in rows if run_key(r) not in done]
        append_rows(rows_file, new)
        done.update(run_key(r) for r in new)
        print(" ".join(f"{r['split']} {r['pixel_auroc']}/{r['aupro']}/{r['image_auroc']}" for r in rows),
              f"{model} {data} seed {seed} fit {rows[0]['fit_s']} s", flush=True)


def model_rule_aurocs(scored) -> dict[str, float] | None:
    """{rule: image AUROC} of every image-score rule a model can take (MODEL_RULES) on a quality
    run's scored maps, so each row shows what the `image_score` setting would give; None without
    both labels."""
    known = scored.labels >= 0
    labels = scored.labels[known]
    if not scored.maps.numel() or not 0 < int(labels.sum()) < labels.numel():
        return None
    maps = scored.maps[known]
    return {rule: round(image_auroc(image_score(maps, rule), labels), 4) for rule in MODEL_RULES}


def rule_aurocs(splits: dict, split: str) -> dict[str, float | None]:
    """{rule: image AUROC on `split`} for every rule of fastad.metrics.image_score; the norm_* rules
    normalise by the train split's maps and are None where those cannot (spread under DEGENERATE
    times the split's own: a memory bank scoring its own patches)."""
    maps, labels = splits[split]["maps"].float(), splits[split]["labels"]
    reference = splits["train"]["maps"].float()
    usable = float((reference - reference.mean(0)).std()) > DEGENERATE * float(maps.std())
    return {rule: round(image_auroc(image_score(maps, rule, reference=reference if rule in NORMALISED_RULES
                                                else None), labels), 4)
            if usable or rule not in NORMALISED_RULES else None for rule in IMAGE_SCORE_RULES}


def family_aurocs(splits: dict, split: str) -> dict[str, list[float]]:
    """{defect family: [pixel AUROC, image AUROC by the map maximum]} over that family's images
    plus every normal image of `split`: which defects a model misses."""
    data = splits[split]
    maps, masks, labels, defects = data["maps"].float(), data["masks"], data["labels"], data["defects"]
    normal = [i for i, d in enumerate(defects) if d == "good"]
    out = {}
    for family in dict.fromkeys(d for d in defects if d != "good"):
        index = [i for i, d in enumerate(defects) if d == family] + normal
        out[family] = [round(pixel_auroc(maps[index], masks[index]), 4),
                       round(image_auroc(image_score(maps[index]), labels[index]), 4)]
    return out


def image_score_rows(path: Path, load_start: float) -> list[dict]:
    """The image-score rows (one per scored split) of one file that `quality --save-maps` wrote,
    stamped with the commit that trained the model."""
    saved = torch.load(path, weights_only=False)
    splits, commit = saved["splits"], saved["commit"]
    return [{"task": "image-score", **saved["key"], "split": split, "backbone": saved["backbone"],
             "rules": rule_aurocs(splits, split), "families": family_aurocs(splits, split), "maps": "float16",
             "stamp": stamp(load_start, commit)} for split in SPLITS if split in splits]


def study(files: list[Path], rows_file: Path) -> None:
    """Appends the image-score rows of the maps files not studied yet."""
    done = {run_key(r) for r in read_rows(rows_file)}
    for path in files:
        rows = [r for r in image_score_rows(path, os.getloadavg()[0]) if run_key(r) not in done]
        append_rows(rows_file, rows)
        done.update(run_key(r) for r in rows)
        for row in rows:
            print(f"{path.name} {row['split']}: " + " ".join(f"{k} {v}" for k, v in row["rules"].items()), flush=True)


def image_score_task(args) -> None:
    rows_file = Path(args.rows or TASK_ROWS["image-score"])
    if args.maps:
        files = sorted(Path(args.maps).glob("*.pt"))
        if not files:
            raise SystemExit(f"--maps {args.maps}: no .pt files (write them with `runner.py quality --save-maps DIR`)")
        return study(files, rows_file)
    if not args.model:
        raise SystemExit("image-score needs --maps DIR (saved maps) or --model (a fresh run)")
    torch.set_num_threads(args.threads)
    quality_file = TASK_ROWS["quality"]
    done = {run_key(r) for r in read_rows(rows_file)}
    with tempfile.TemporaryDirectory() as folder:
        for model, data, seed, config, label in runs_of(args):   # each run studied as it ends: resumable
            if all((model, label, data, seed, args.steps, s) in done for s in splits_of(data)):
                continue
            rows = quality_run(model, data, seed, args.steps, config, label, save_maps=Path(folder))
            known = {run_key(r) for r in read_rows(quality_file)}
            append_rows(quality_file, [r for r in rows if run_key(r) not in known])
            study([maps_file(Path(folder), dict(model=model, label=label, data=data, seed=seed, steps=args.steps))],
                  rows_file)


def patchcore_fit_row(data: str, config: dict, label: str, commit: str) -> dict:
    """PatchCore's fit on `data`'s train split, whole (`fit_run`, what `fastad train` runs) and in
    its two halves timed alone: the backbone over the training crops, and the coreset selection
    on their patch features. Wall and CPU seconds (CPU includes OpenMP threads spinning)."""
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the random-weights warnings of baseline configurations
        start, cpu = time.perf_counter(), time.process_time()
        fit_run("patchcore", data, Path(folder) / "run", config=config, progress=False)
        whole = time.perf_counter() - start, time.process_time() - cpu
        model = create_model("patchcore", **config)
        images, _ = load_normal_images(data, model.image_size)
        model.setup(images)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        features = model.patch_features(images)
    backbone = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    kept = NearestNeighborScorer(features).subsample(model.settings.coreset_ratio, model.settings.seed,
                                                     model.settings.projection_dim)
    coreset = time.perf_counter() - start, time.process_time() - cpu
    seconds = {"fit": whole, "backbone": backbone, "coreset": coreset}
    return {"task": "patchcore-fit", "model": "patchcore", "label": label, "data": data, "config": model.config,
            "backbone": model.config.get("backbone"), "crops": images.shape[0], "features": list(features.shape),
            "kept": kept.numel(), **{f"{k}_s": round(v[0], 2) for k, v in seconds.items()},
            **{f"{k}_cpu_s": round(v[1], 2) for k, v in seconds.items()}, "stamp": stamp(load_start, commit)}


def patchcore_fit(args) -> None:
    torch.set_num_threads(args.threads)
    config = parse_config(args.set)
    label = args.label or ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"
    commit = git_commit()
    for data in parse_data(args.data):
        row = patchcore_fit_row(data, config, label, commit)
        append_rows(Path(args.rows or TASK_ROWS["patchcore-fit"]), [row])
        print(f"{data}: fit {row['fit_s']} s ({row['fit_cpu_s']} CPU), backbone {row['backbone_s']} s, "
              f"coreset {row['coreset_s']} s", flush=True)


def contender_of(bench: dict) -> str:
    """The contender a pytest-benchmark entry times: extra_info["contender"], else its name."""
    return bench.get("extra_info", {}).get("contender") or bench["name"]


def bench_rows(data: dict, stamped: dict, run: str) -> list[dict]:
    """pytest-benchmark JSON -> one row per benchmark, with its ratio (median / the BENCH_PEERS
    contender's median in the same group of this run; None without one; above 1: fastad faster)."""
    peers = {b.get("group"): b["stats"]["median"] for b in data["benchmarks"] if contender_of(b) in BENCH_PEERS}
    rows = []
    for bench in data["benchmarks"]:
        group, median = bench.get("group") or "(no group)", bench["stats"]["median"]
        peer = peers.get(bench.get("group"))
        rows.append({"task": "bench", "run": run, "suite": bench["fullname"].split("::")[0].rsplit("/", 1)[-1],
                     "group": group, "name": contender_of(bench), "test": bench["fullname"],
                     "params": bench.get("params"), "median": median, "min": bench["stats"]["min"],
                     "rounds": bench["stats"]["rounds"], "ratio": round(median / peer, 4) if peer else None,
                     "extra_info": bench.get("extra_info") or {}, "stamp": stamped})
    return rows


def bench(args) -> None:
    """Runs pytest-benchmark (args.pytest, default every suite of benchmarks/) and appends its rows."""
    load_start, commit = os.getloadavg()[0], git_commit()
    run = time.strftime("%Y-%m-%dT%H:%M:%S")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "bench.json"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-group-by=group",
                   f"--benchmark-json={out}", *(args.pytest or ["benchmarks"])]
        with subprocess.Popen(command, cwd=ROOT) as pytest:
            peak = load_start
            while pytest.poll() is None:   # the load's peak while the suites run, for the stamp
                peak = max(peak, os.getloadavg()[0])
                time.sleep(5)
            code = pytest.returncode
        if not out.exists():
            raise SystemExit(f"pytest ({shlex.join(command[3:])}) wrote no benchmark results (exit code {code})")
        data = json.loads(out.read_text())
    stamped = stamp(load_start, commit)
    rows = bench_rows(data, {**stamped, "load_peak": round(max(peak, stamped["load"][1]), 2)}, run)
    append_rows(Path(args.rows or TASK_ROWS["bench"]), rows)
    print(f"{len(rows)} benchmark rows appended (run {run})")
    if code:
        raise SystemExit(f"pytest exited with code {code}: the rows of the benchmarks that ran were kept")


def mean_of(groups: list[list[dict]], key: str) -> float | None:
    """The mean over groups of each group's mean of `key` (groups without a value left out)."""
    means = [statistics.mean(v) for v in ([r[key] for r in g if r.get(key) is not None] for g in groups) if v]
    return statistics.mean(means) if means else None


def cell(groups: list[list[dict]]) -> str:
    """pixel AUROC / AUPRO / image AUROC as ".981/.923/.870": per group (a dataset's seeds) the
    mean, then the mean over groups."""
    values = [mean_of(groups, key) for key, _ in CELL]
    return "/".join("n/a" if v is None else f"{v:.3f}".removeprefix("0") for v in values)


#: the keys quality-style tables filter on
FILTER_KEYS = ("model", "label", "data", "split", "steps")


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


def stamp_line(rows: list[dict]) -> str:
    """The stamps' range: fastad versions, commits, machine, threads, load (start, end and, where
sampled, the peak in between) and dates of `rows`."""
    stamps = [r["stamp"] for r in rows]
    loads = [x for s in stamps for x in s["load"] + [s.get("load_peak", s["load"][0])]]
    dates = sorted({s["date"] for s in stamps})
    return (f"Generated by `python benchmarks/runner.py render` from {len(stamps)} rows: fastad "
            f"{', '.join(sorted({s['fastad'] for s in stamps}))}, commit {', '.join(sorted({s['commit'] for s in stamps}))}, "
            f"{stamps[0]['machine']}, {', '.join(str(t) for t in sorted({s['threads'] for s in stamps}))} threads, "
            f"load {min(loads):.1f}–{max(loads):.1f}, {dates[0]}{'' if len(dates) == 1 else '–' + dates[-1]}.")


def model_name(row: dict) -> str:
    return f"{row['model']}{'' if row['label'] == 'defaults' else ' [' + row['label'] + ']'} ({row.get('backbone') or '-'})"


def rule_means(rows: list[dict]) -> dict[str, float | None]:
    """{rule: mean over datasets of each dataset's mean over seeds}; None where a row lacks the rule."""
    by_data: dict[str, list[dict]] = {}
    for row in rows:
        by_data.setdefault(row["data"], []).append(row)
    return {rule: statistics.mean(statistics.mean(r["rules"][rule] for r in g) for g in by_data.values())
            if rows and all(r["rules"].get(rule) is not None for r in rows) else None for rule in IMAGE_SCORE_RULES}


def image_score_table(rows: list[dict], filters: dict) -> str:
    """Markdown: image AUROC of every image-score rule, one line per model (and label) x split,
    mean over datasets (each averaged over seeds); "choice" = the model rule (MODEL_RULES) to
    default to: the best on val if it beats max there by CHOICE_MARGIN, else max. Filters: KEY=GLOB
    on model, label, data, split, steps."""
    rows = [r for r in rows if r.get("task") == "image-score" and matches(r, filters, FILTER_KEYS)]
    if not rows:
        return "(no rows yet: run `python benchmarks/runner.py image-score` with these settings)\n"
    lines = ["| model (backbone) | split | datasets | " + " | ".join(IMAGE_SCORE_RULES) + " | choice |",
             "|---" * (len(IMAGE_SCORE_RULES) + 4) + "|"]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(model_name(row), []).append(row)
    for name, runs in sorted(groups.items()):
        means = {s: rule_means([r for r in runs if r["split"] == s]) for s in SPLITS}
        val = means["val"]
        choice = "n/a (no val rows)"
        if val["max"] is not None:
            best = max(MODEL_RULES, key=lambda r: val[r] if val[r] is not None else -1.0)
            choice = best if val[best] >= val["max"] + CHOICE_MARGIN else "max"
        for split in SPLITS:
            if not any(r["split"] == split for r in runs):
                continue
            data = len({r["data"] for r in runs if r["split"] == split})
            cells = " | ".join("n/a" if means[split][r] is None else f"{means[split][r]:.3f}" for r in IMAGE_SCORE_RULES)
            lines.append(f"| {name} | {split} | {data} | {cells} | {choice} |")
    return "\n".join(lines + ["", f"Image AUROC per rule (float16 maps). {stamp_line(rows)}"]) + "\n"


def families_table(rows: list[dict], filters: dict) -> str:
    """Markdown: per model and defect family, pixel AUROC / image AUROC (map maximum) over that
    family's images and the normal ones, mean over datasets and seeds, val and test. Filters as
    image_score_table's."""
    rows = [r for r in rows if r.get("task") == "image-score" and matches(r, filters, FILTER_KEYS)]
    if not rows:
        return "(no rows yet: run `python benchmarks/runner.py image-score` with these settings)\n"
    splits = [s for s in SPLITS if any(r["split"] == s for r in rows)]
    lines = ["| model (backbone) | family | " + " | ".join(splits) + " |", "|---" * (len(splits) + 2) + "|"]
    for name in sorted({model_name(r) for r in rows}):
        runs = [r for r in rows if model_name(r) == name]
        for family in dict.fromkeys(f for r in runs for f in r["families"]):
            cells = []
            for split in splits:
                pairs = [r["families"][family] for r in runs if r["split"] == split and family in r["families"]]
                cells.append(" / ".join(f"{statistics.mean(p[i] for p in pairs):.2f}" for i in (0, 1)) if pairs else "")
            lines.append(f"| {name} | {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"Cells: pixel AUROC / image AUROC. {stamp_line(rows)}"]) + "\n"


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def bench_table(rows: list[dict], filters: dict) -> str:
    """Markdown: per benchmark group (KEY=GLOB filters on group, suite, name), the rows of the
    latest run that has the group: each contender's median, its ratio to fastad's (above 1x:
    fastad faster) and its rounds; fastad first, then by median."""
    rows = [r for r in rows if r.get("task") == "bench" and matches(r, filters, ("group", "suite", "name"))]
    if not rows:
        return "(no rows yet: run `python benchmarks/runner.py bench` for these groups)\n"
    latest: dict[str, str] = {}
    for row in rows:
        latest[row["group"]] = max(latest.get(row["group"], ""), row["run"])
    shown = [r for r in rows if r["run"] == latest[r["group"]]]
    lines = [f"| group | contender | median | contender / {BENCH_PEER} | rounds |", "|---|---|---:|---:|---:|"]
    for group in dict.fromkeys(r["group"] for r in shown):
        members = sorted((r for r in shown if r["group"] == group), key=lambda r: (r["name"] not in BENCH_PEERS, r["median"]))
        for i, row in enumerate(members):
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            lines.append(f"| {f'`{group}`' if i == 0 else ''} | {row['name']} | {format_seconds(row['median'])} | "
                         f"{ratio} | {row['rounds']} |")
    return "\n".join(lines + ["", f"Medians of pytest-benchmark rounds, contenders in one run. {stamp_line(shown)}"]) + "\n"


def patchcore_fit_table(rows: list[dict], filters: dict) -> str:
    """Markdown: PatchCore's fit seconds, wall (CPU), whole and by half, the latest row of each
    data x label x threads (KEY=GLOB filters on data, label), with its load average."""
    rows = [r for r in rows if r.get("task") == "patchcore-fit" and matches(r, filters, ("data", "label"))]
    if not rows:
        return "(no rows yet: run `python benchmarks/runner.py patchcore-fit` with these settings)\n"
    latest = {(r["data"], r["label"], r["stamp"]["threads"]): r for r in rows}
    lines = ["| data | configuration (backbone) | threads | crops -> patch features -> kept | whole fit | "
             "backbone alone | coreset alone | load |", "|---|---|---:|---|---:|---:|---:|---|"]
    for (data, label, threads), row in latest.items():
        cells = [f"{row[f'{k}_s']:.1f} s ({row[f'{k}_cpu_s']:.1f} s)" for k in ("fit", "backbone", "coreset")]
        lines.append(f"| {data} | {label} ({row.get('backbone') or '-'}) | {threads} | {row['crops']} -> "
                     f"{row['features'][0]:,} -> {row['kept']:,} | " + " | ".join(cells)
                     + f" | {row['stamp']['load'][0]:.1f}–{row['stamp']['load'][1]:.1f} |")
    return "\n".join(lines + ["", f"Seconds wall (CPU). {stamp_line(list(latest.values()))}"]) + "\n"


KNN_ALTERNATING = "test_knn_alternating_with_faiss"


def knn_peak_table(rows: list[dict], filters: dict) -> str:
    """Markdown: the knn-against-faiss rounds (benchmarks/test_knn_bench.py's alternating test) of
    the latest run per CPU x kernel x case (KEY=GLOB filters on kernel, machine): fastad's, faiss's
    and chunked torch.cdist's medians, the per-round ratios (median, min-max), fastad's GFLOP/s
    and its fraction of the machine's peak for the kernel it ran, and faiss's fraction of the
    same peak (what 1.3x faiss would ask of fastad is 1.3 times that)."""
    rows = [r for r in rows if r.get("task") == "bench" and KNN_ALTERNATING in r["test"]
            and matches({**r["extra_info"], "machine": r["stamp"]["machine"]}, filters, ("kernel", "machine"))]
    if not rows:
        return "(no rows yet: run `python benchmarks/runner.py bench benchmarks/test_knn_bench.py -k alternating`)\n"
    latest: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r["run"]):
        latest[(row["stamp"]["machine"], row["extra_info"]["kernel"], row["group"])] = row
    lines = ["| D | k | kernel | fastad | faiss-flat | torch.cdist | faiss / fastad | cdist / fastad | fastad GFLOP/s "
             "| of peak | faiss of peak |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(latest.values(), key=lambda r: (r["params"]["d"], r["params"]["k"])):
        info, ms = row["extra_info"], row["extra_info"]["median_ms"]
        ratios = [info[key] for key in ("faiss_over_fastad", "cdist_over_fastad")]
        cells = [f"**{r['median']:.2f}x** ({r['min']:.2f}–{r['max']:.2f})" for r in ratios]
        lines.append(f"| {row['params']['d']} | {row['params']['k']} | {info['kernel']} | "
                     + " | ".join(format_seconds(ms[name] / 1e3) for name in ("fastad", "faiss-flat", "torch-cdist"))
                     + f" | {cells[0]} | {cells[1]} | {info['gflops']:.0f} | {info['fraction_of_peak']:.0%} | "
                     f"{info['fraction_of_peak'] * ms['fastad'] / ms['faiss-flat']:.0%} |")
    peak = next(iter(latest.values()))["extra_info"]
    return "\n".join(lines + ["", f"N = 4096 queries, M = 65,536 bank rows; medians of the rounds after a warm-up, "
                                  f"contenders alternated in each round, ratios per round. Peak: "
                                  f"{peak['peak_gflops']:.0f} GFLOP/s for the {peak['kernel']} kernel at "
                                  f"{peak['threads']} threads (clock measured: {peak['clock_ghz']:.2f} GHz). "
                                  f"{stamp_line(list(latest.values()))}"]) + "\n"


DEPLOY_PEER = "anomalib OpenVINOInferencer"


def deploy_throughput_table(rows: list[dict], filters: dict) -> str:
    """Markdown: the latest benchmarks/deploy_throughput.py run (KEY=GLOB filters on model,
    backbone): each contender's images/s at its batch size, the ratio to anomalib's
    OpenVINOInferencer at its default configuration, p50/p99 single-image latency, the maps'
    deviation from the fp32 Scorer's; then each fastad Scorer path's stage split."""
    rows = [r for r in rows if r.get("task") == "deploy-throughput" and matches(r, filters, ("model", "backbone"))]
    if not rows:
        return "(no rows yet: run `python benchmarks/deploy_throughput.py`)\n"
    last = max(r["run"] for r in rows)
    shown = [r for r in rows if r["run"] == last]
    peer = next((r for r in shown if r["contender"].startswith(DEPLOY_PEER) and "default" in r["contender"]), None)
    first = shown[0]
    lines = [f"| contender | images/s (batch {first['batch_size']}) | vs anomalib OpenVINO (default) | p50 ms | p99 ms "
             "| maps vs Scorer fp32 |", "|---|---:|---:|---:|---:|---:|"]
    for row in sorted(shown, key=lambda r: -r["images_per_s"]):
        ratio = f"{row['images_per_s'] / peer['images_per_s']:.2f}x" if peer else "n/a"
        deviation = "-" if row["map_deviation"] is None else f"{row['map_deviation']:.1e}"
        lines.append(f"| {row['contender']} | {row['images_per_s']:.1f} | {ratio} | {row['p50_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {deviation} |")
    lines += ["", "| fastad path: seconds per batch | network | search | maps |", "|---|---:|---:|---:|"]
    for row in shown:
        if row["stages"]:
            lines.append(f"| {row['contender']} | " + " | ".join(f"{row['stages'][k]:.3f}" for k in
                                                                  ("network", "search", "maps")) + " |")
    versions = ", ".join(f"{name} {version}" for name, version in sorted(first["versions"].items()))
    return "\n".join(lines + ["", f"{first['model']} ({first['backbone']}, {first['image_size']} px, bank "
                                  f"{first['bank'][0]:,} x {first['bank'][1]}), {versions}. {stamp_line(shown)}"]) + "\n"
#: (row key, column label) of the metrics an anomalib-patchcore line shows, in order
ANOMALIB_CELLS = (("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3"), ("image_auroc", "image AUROC"))
#: the implementations of an anomalib-patchcore row, the one the ratios divide by first
ANOMALIB_SIDES = ("fastad", "anomalib")


def anomalib_patchcore_table(rows: list[dict], filters: dict) -> str:
    """Markdown: fastad's PatchCore next to anomalib's on the same weights and crops, the latest
    row of each data x size x coreset ratio (KEY=GLOB filters on data, texture, size): per
    implementation its bank rows, pixel AUROC / AUPRO / image AUROC from the raw outputs, fit and
    scoring seconds (wall) and their ratios anomalib / fastad (above 1x: fastad faster)."""
    rows = [r for r in rows if r.get("task") == "anomalib-patchcore" and matches(r, filters, ("data", "texture", "size"))]
    if not rows:
        return "(no rows yet: run `python benchmarks/anomalib_patchcore.py` with these settings)\n"
    latest = {(r["data"], r["size"], r["coreset_ratio"]): r for r in rows}
    lines = ["| texture | size | bank | implementation | " + " | ".join(label for _, label in ANOMALIB_CELLS)
             + " | fit s | score s | fit anomalib / fastad | score anomalib / fastad | load |",
             "|---|---:|---:|---|" + "---:|" * (len(ANOMALIB_CELLS) + 4) + "---|"]
    for row in latest.values():
        peer = row[ANOMALIB_SIDES[0]]
        for i, side in enumerate(ANOMALIB_SIDES):
            result = row[side]
            name = side if side == "fastad" else f"{side} {row.get('anomalib_version', '')}".strip()
            cells = " | ".join("n/a" if result.get(k) is None else f"{result[k]:.3f}" for k, _ in ANOMALIB_CELLS)
            ratios = " | ".join(f"{result[k] / peer[k]:.2f}x" if peer[k] else "n/a" for k in ("fit_s", "score_s"))
            lines.append(f"| {column(row['data']) if i == 0 else ''} | {row['size']} | {row['bank'][i]:,} | {name} | "
                         f"{cells} | {result['fit_s']:.1f} | {result['score_s']:.2f} | {ratios} | "
                         f"{row['stamp']['load'][0]:.1f}–{row['stamp']['load'][1]:.1f} |")
    shown = list(latest.values())
    return "\n".join(lines + ["", f"Fit: one round each, fastad's first; score s: the median of "
                              f"{', '.join(str(n) for n in sorted({r['rounds'] for r in shown}))} rounds over the "
                              f"test crops, the implementations alternated. {stamp_line(shown)}"]) + "\n"


#: the generated-table kinds: marker KIND -> table function (rows, filters) -> Markdown
TABLES = {"quality": quality_table, "image-score": image_score_table, "families": families_table,
          "bench": bench_table, "patchcore-fit": patchcore_fit_table, "anomalib-patchcore": anomalib_patchcore_table,
          "knn-peak": knn_peak_table, "deploy-throughput": deploy_throughput_table}


def render_text(text: str, rows: list[dict]) -> str:
    """`text` with every generated table rewritten from `rows`; a marker of an unknown kind is refused."""
    def table(match) -> str:
        kind = match.group("kind")
        if kind not in TABLES:
            raise SystemExit(f"<!-- table: {kind} ... -->: unknown table kind, expected one of {', '.join(TABLES)}")
        filters = dict(item.split("=", 1) for item in shlex.split(match.group("filters")))
        return match.group(1) + TABLES[kind](rows, filters) + match.group(5)

    return MARKER.sub(table, text)


def render(args) -> None:
    rows = read_rows(Path(args.rows)) if args.rows else [r for p in sorted(ROWS_DIR.glob("*.jsonl")) for r in read_rows(p)]
    for pattern in args.files or TABLE_FILES:
        for path in sorted(ROOT.glob(pattern)) if not Path(pattern).is_absolute() else [Path(pattern)]:
            text = path.read_text()
            new = render_text(text, rows)
            if new != text:
                with atomic_write(path, "w") as f:
                    f.write(new)
                print(f"rewrote the tables of {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None, help="the rows file (JSON lines); default: the task's own in "
                        "benchmarks/rows/ (render: all of them)")
    sub = parser.add_subparsers(dest="task", required=True)
    q = sub.add_parser("quality", help="train, then evaluate val and test, through the engine")
    i = sub.add_parser("image-score", help="image AUROC of every image-score rule, per defect family too")
    for p in (q, i):
        p.add_argument("--model", required=p is q, help="comma-separated registered model names")
        p.add_argument("--data", default="wide", help="comma-separated dataset specs; 'wide' = every wide:<texture>")
        p.add_argument("--seeds", default="0", help="comma-separated training seeds")
        p.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default: each model's)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model config key")
        p.add_argument("--label", default=None, help="the configuration's name in tables (default: the --set pairs)")
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    q.add_argument("--split", default="both", choices=("val", "test", "both"), help="the splits to evaluate")
    q.add_argument("--save-maps", default=None, metavar="DIR", help="also save the maps for image-score here")
    i.add_argument("--maps", default=None, metavar="DIR", help="study the maps `quality --save-maps DIR` saved")
    f = sub.add_parser("patchcore-fit", help="PatchCore's fit seconds: whole, backbone alone, coreset alone")
    f.add_argument("--data", default="builtin:brick", help="comma-separated dataset specs; 'wide' = every wide:<texture>")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a PatchCore config key")
    f.add_argument("--label", default=None, help="the configuration's name in tables (default: the --set pairs)")
    f.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    sub.add_parser("bench", help="run pytest-benchmark suites, one row per benchmark; the arguments after "
                   "`bench` go to pytest (default: benchmarks)")
    r = sub.add_parser("render", help="rewrite the generated tables from the rows files")
    r.add_argument("files", nargs="*", help=f"Markdown files (default: {', '.join(TABLE_FILES)})")
    argv = sys.argv[1:] if argv is None else list(argv)
    task = next((i for i, a in enumerate(argv) if a == "bench" and (i == 0 or argv[i - 1] != "--rows")), None)
    pytest_args = argv[task + 1:] if task is not None else []   # all of it pytest's, -k and -m included
    args = parser.parse_args(argv if task is None else argv[:task + 1])
    args.pytest = pytest_args
    {"quality": quality, "image-score": image_score_task, "patchcore-fit": patchcore_fit, "bench": bench,
     "render": render}[args.task](args)


if __name__ == "__main__":
    main()
