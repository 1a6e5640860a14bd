"""Image AUROC of every image-score rule (fastad.metrics.image_score) on the maps that
benchmarks/quality.py saved, per model x texture, on the val and the test split; then pixel and
image AUROC per defect family.

    python benchmarks/image_score_study.py --maps results/quality/maps [--out study.md]

The norm_* rules normalise by the maps of the model's own training images. A memory bank scoring
its own patches gives ~0 there (float error only): where the training maps' spread is under
DEGENERATE times the split's own, or zero, they cannot calibrate anything and the rule is n/a.
Choose a rule on the val columns; the test columns only report how the choice holds. A model's
`image_score` setting can take only the MODEL_RULES (no reference maps); "choice" names the one
with the best val mean when it beats `max` (today's rule) by at least CHOICE_MARGIN there, else
keeps max: 12 + 12 val images per texture leave a few hundredths of noise on each mean.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from fastad.metrics import image_auroc, pixel_auroc
from fastad.metrics.image_score import IMAGE_SCORE_RULES, MODEL_RULES, NORMALISED_RULES, image_score

SPLITS = ("val", "test")
DEGENERATE = 1e-3
CHOICE_MARGIN = 0.02


def rule_aurocs(saved: dict, split: str) -> dict[str, float | None]:
    """{rule: image AUROC on `split`, None where the rule cannot be applied (the norm_* rules
    without training maps: a quality.py run with --no-train-maps)}."""
    maps, labels = saved[split]["maps"].float(), saved[split]["labels"]
    reference = saved["train"]["maps"].float() if "train" in saved else None
    usable = reference is not None and float((reference - reference.mean(0)).std()) > DEGENERATE * float(maps.std())
    return {rule: image_auroc(image_score(maps, rule, reference=reference if rule in NORMALISED_RULES else None), labels)
            if usable or rule not in NORMALISED_RULES else None for rule in IMAGE_SCORE_RULES}


def family_aurocs(saved: dict, split: str) -> dict[str, tuple[float, float]]:
    """{defect family: (pixel AUROC, image AUROC by the map maximum)} over that family's images
    plus every normal image of `split`: which defects a model misses."""
    data = saved[split]
    maps, masks, labels, defects = data["maps"].float(), data["masks"], data["labels"], data["defects"]
    normal = [i for i, d in enumerate(defects) if d == "good"]
    out = {}
    for family in dict.fromkeys(d for d in defects if d != "good"):
        index = [i for i, d in enumerate(defects) if d == family] + normal
        out[family] = (pixel_auroc(maps[index], masks[index]), image_auroc(image_score(maps[index]), labels[index]))
    return out


def family_table(per_family: dict) -> list[str]:
    """Markdown rows: model x family, mean over textures of pixel / image AUROC, val and test."""
    lines = ["", "Per defect family (that family's images + the normal ones), mean over textures: "
             "pixel AUROC / image AUROC (max).", "", "| model | family | val | test |", "|---|---|---|---|"]
    for model in sorted({m for m, _, _ in per_family}):
        families = dict.fromkeys(f for (m, _, _), v in per_family.items() if m == model for s in v for f in v[s])
        for family in families:
            cells = []
            for split in SPLITS:
                pairs = [v[split][family] for (m, _, _), v in per_family.items()
                         if m == model and family in v.get(split, {})]
                cells.append(" / ".join(f"{statistics.mean(p[k] for p in pairs):.2f}" for k in (0, 1)) if pairs else "n/a")
            lines.append(f"| {model} | {family} | {cells[0]} | {cells[1]} |")
    return lines


def cell(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", default="results/quality/maps", help="the maps/ folder of a quality.py run")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args()
    files = sorted(Path(args.maps).glob("*.pt"))
    if not files:
        raise SystemExit(f"--maps {args.maps}: no <model>_<texture>_s<seed>.pt files (run benchmarks/quality.py first)")
    results: dict[tuple[str, str, int], dict] = {}
    per_family: dict[tuple[str, str, int], dict] = {}
    for path in files:
        saved = torch.load(path, weights_only=False)
        key = (saved["row"]["model"], saved["row"]["texture"], saved["row"]["seed"])
        results[key] = {s: rule_aurocs(saved, s) for s in SPLITS if s in saved}
        per_family[key] = {s: family_aurocs(saved, s) for s in SPLITS if s in saved}
    header = "| model | texture | seed | split | " + " | ".join(IMAGE_SCORE_RULES) + " |"
    lines = ["Image AUROC per rule (rows: one trained model on one texture; val and test labelled).", "",
             header, "|---" * (4 + len(IMAGE_SCORE_RULES)) + "|"]
    for (model, texture, seed), by_split in sorted(results.items()):
        for split, aurocs in by_split.items():
            cells = " | ".join(cell(aurocs[r]) for r in IMAGE_SCORE_RULES)
            lines.append(f"| {model} | {texture} | {seed} | {split} | {cells} |")
    lines += ["", "Mean over textures (and seeds); best = the rule with the highest val mean; choice = the "
              f"model rule (one of {', '.join(MODEL_RULES)}) to default to: the best of them on val if it beats "
              f"max by >= {CHOICE_MARGIN}, else max.", "",
              "| model | split | " + " | ".join(IMAGE_SCORE_RULES) + " | best on val | choice |",
              "|---" * (4 + len(IMAGE_SCORE_RULES)) + "|"]
    for model in sorted({m for m, _, _ in results}):
        means = {}
        for split in SPLITS:
            runs = [v[split] for (m, _, _), v in results.items() if m == model and split in v]
            means[split] = {r: statistics.mean(a[r] for a in runs) if runs and all(a[r] is not None for a in runs)
                            else None for r in IMAGE_SCORE_RULES}
        valid = {r: v for r, v in means["val"].items() if v is not None}
        best = max(valid, key=valid.get) if valid else None
        choice = max(MODEL_RULES, key=lambda r: means["val"][r])
        choice = choice if means["val"][choice] >= means["val"]["max"] + CHOICE_MARGIN else "max"
        for split in SPLITS:
            chosen = f"{best} ({cell(means[split][best])})" if best else "n/a"
            cells = " | ".join(cell(means[split][r]) for r in IMAGE_SCORE_RULES)
            lines.append(f"| {model} | {split} | {cells} | {chosen} | {choice} ({cell(means[split][choice])}) |")
    text = "\n".join(lines + family_table(per_family)) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
