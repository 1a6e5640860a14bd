"""Writes any dataset in the MVTec-AD layout, so every consumer reads data the same way.

    <out>/<name>/train/good/000.png ...
    <out>/<name>/test/good/000.png, test/<defect>/000.png ...
    <out>/<name>/ground_truth/<defect>/000_mask.png ...      (8-bit, 0 / 255)

Images are 8-bit RGB PNGs; each file is written to a temporary file in its folder and moved into
place (os.replace), so an interrupted export leaves no half-written PNG. An existing non-empty
<out>/<name> is refused rather than mixed with.
"""
from __future__ import annotations

from pathlib import Path

from fastad.data.images import save_image, save_mask
from fastad.data.spec import open_dataset, spec_name


def export_mvtec(spec: str, out_dir, name: str | None = None, size=256, seed: int = 0) -> dict:
    """Exports the train and test splits of spec (see fastad.data.spec) to out_dir/name (name
    defaults to the texture, category or test folder name). Returns counts and the skipped
    files: {"path", "train", "test", "anomalous", "defects": {defect: n}, "skipped": [(path, reason)]}."""
    name = name or spec_name(spec)
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"name must be a plain folder name, got {name!r}")
    target = Path(out_dir) / name
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} already exists and is not empty; export to a new folder")
    train, test = open_dataset(spec, "train", size, seed), open_dataset(spec, "test", size, seed)
    if any(label == -1 for label in test.labels()):
        raise ValueError(f"{spec} has unlabelled test images (give masks=DIR) and cannot be written as MVTec")
    for i in range(len(train)):
        save_image(train[i].image, target / "train" / "good" / f"{i:03d}.png")
    counts: dict[str, int] = {}
    for i in range(len(test)):
        sample = test[i]
        number = counts.get(sample.defect, 0)
        counts[sample.defect] = number + 1
        save_image(sample.image, target / "test" / sample.defect / f"{number:03d}.png")
        if sample.defect != "good":
            save_mask(sample.mask, target / "ground_truth" / sample.defect / f"{number:03d}_mask.png")
    return {
        "path": str(target),
        "train": len(train),
        "test": len(test),
        "anomalous": sum(n for d, n in counts.items() if d != "good"),
        "defects": dict(sorted(counts.items())),
        "skipped": list(train.skipped) + list(test.skipped),
    }
