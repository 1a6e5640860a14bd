"""MVTec-AD layout reader.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect>/*.png              (defect "good" = normal)
    <root>/<category>/ground_truth/<defect>/<name>_mask.png

Labels come from the folder (good -> 0, anything else -> 1). Good images have all-zero masks.
Every file is checked when the dataset is built (PIL verify: cheap, no decoding); an unreadable
image, an unreadable mask, or a defective image without a mask is reported by path (a
SkippedImageWarning), recorded in `dataset.skipped` as (path, reason) and left out; the rest
loads. Pixels are decoded lazily in __getitem__.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastad.data.file_dataset import ImageFileDataset
from fastad.data.sample import ANOMALOUS, NORMAL, Sample

SPLITS = ("train", "test")


class MVTecDataset(ImageFileDataset):
    """MVTecDataset(root, category, split="train"|"test", size=256)[i] -> Sample with image
    [3, H, W] float32 in [0, 1] and mask [H, W] bool, (H, W) = size (None keeps the file's size).

    Attributes: items [ImageFile] (path, mask path or None, label, defect) of every kept sample, skipped
    [(path, reason)] of every file left out.
    """

    def __init__(self, root, category: str, split: str = "train", size=256):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        super().__init__(size)
        self.root, self.category, self.split = Path(root), category, split
        base = self.root / category
        if not (base / split).is_dir():
            raise FileNotFoundError(f"no MVTec {split} folder {base / split} "
                                    f"(expected <root>/<category>/train/good and test/<defect>)")
        defects = ["good"] if split == "train" else sorted(d.name for d in (base / split).iterdir() if d.is_dir())
        for defect in defects:
            for path in sorted((base / split / defect).glob("*.png")):
                mask = None if defect == "good" else base / "ground_truth" / defect / f"{path.stem}_mask.png"
                self._add(path, mask, NORMAL if defect == "good" else ANOMALOUS, defect)

    def labels(self) -> list[int]:
        return [item.label for item in self.items]

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        image, mask = self._read(index)
        if mask is None:
            mask = torch.zeros(image.shape[1:], dtype=torch.bool)
        return Sample(image, mask, item.label, item.path, item.defect)
