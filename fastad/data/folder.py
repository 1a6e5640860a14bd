"""Generic folder reader: `--normal DIR --test DIR [--masks DIR]`.

split "train" reads every image in normal_dir (label 0). split "test" reads every image in
test_dir; with masks_dir, the mask of `<stem>.<ext>` is `<masks_dir>/<stem>.png` or
`<masks_dir>/<stem>_mask.png` (first found): an image with a mask that has a defective pixel is
anomalous (label 1, defect "defect"), one without a mask or with an empty mask is normal (label
0, "good"). Without masks_dir the test images are unlabelled (label -1, defect "unknown", mask
all False). Unreadable files are reported by path, recorded in `dataset.skipped` and left out;
folder entries that are not image files (fastad.data.images.list_entries) are listed in
`dataset.ignored`. Each Sample carries the fingerprint of the bytes its image was decoded from.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastad.data.file_dataset import ImageFile, ImageFileDataset
from fastad.data.images import list_entries, load_mask
from fastad.data.report import warnings_to_stderr
from fastad.data.sample import ANOMALOUS, NORMAL, UNLABELLED, Sample

SPLITS = ("train", "test")


def _directory(name: str, value) -> Path:
    if value is None:
        raise ValueError(f"{name} is required for this split")
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"{name} {path} is not a directory")
    return path


class FolderDataset(ImageFileDataset):
    """FolderDataset(normal_dir, test_dir, split, masks_dir=None, size=256)[i] -> Sample with
    image [3, H, W] float32 in [0, 1], mask [H, W] bool; (H, W) = size (None: the file's)."""

    def __init__(self, normal_dir=None, test_dir=None, split: str = "train", masks_dir=None, size=256):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        super().__init__(size)
        self.split = split
        if split == "train":
            for path in self._listed(_directory("normal_dir", normal_dir)):
                self._add(path, None, NORMAL, "good")
            return
        test = _directory("test_dir", test_dir)
        masks = None if masks_dir is None else _directory("masks_dir", masks_dir)
        for path in self._listed(test):
            if masks is None:
                self._add(path, None, UNLABELLED, "unknown")
                continue
            found = [m for m in (masks / f"{path.stem}.png", masks / f"{path.stem}_mask.png") if m.is_file()]
            self._add(path, found[0] if found else None, NORMAL, "good")

    def _listed(self, folder: Path) -> list[Path]:
        """The image files of folder; its other entries go to self.ignored."""
        images, ignored = list_entries(folder)
        self.ignored += ignored
        return images

    def labels(self) -> list[int]:
        """Labels without decoding pixels; a test image with a mask file counts as anomalous
        here only if the mask has a defective pixel, which needs the mask decoded."""
        return [self._label(item) for item in self.items]

    def _label(self, item: ImageFile) -> int:
        if item.mask_path is None:
            return item.label
        return ANOMALOUS if bool(load_mask(item.mask_path, self.size).any()) else NORMAL

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        image, mask, fingerprint = self._read_fingerprinted(index)
        if mask is None:
            return Sample(image, torch.zeros(image.shape[1:], dtype=torch.bool), item.label, item.path, item.defect,
                          fingerprint)
        anomalous = bool(mask.any())
        return Sample(image, mask, ANOMALOUS if anomalous else NORMAL, item.path, "defect" if anomalous else "good",
                      fingerprint)


class NothingToScoreError(ValueError):
    """An images folder without a single readable image file."""


def open_folder(path, size: int) -> FolderDataset:
    """Every image file in folder `path` at size x size; unreadable ones reported on stderr and
    skipped. FileNotFoundError naming the folder when it is none; NothingToScoreError naming it
    and saying why when it holds no readable image file."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"images folder {path} does not exist or is not a folder")
    with warnings_to_stderr():
        dataset = FolderDataset(normal_dir=path, test_dir=path, split="test", size=size)
    if not dataset.items:
        raise NothingToScoreError(f"no image to score in {path}: {nothing_because(dataset.ignored, dataset.skipped)}")
    return dataset


def nothing_because(ignored: list, skipped: list) -> str:
    """Why a folder gave no image: its ignored entries and unreadable files, counted, one of each named."""
    if not ignored and not skipped:
        return "the folder is empty"
    parts = [f"{len(found)} {what} (e.g. {found[0][0]}: {found[0][1]})"
             for found, what in ((ignored, "ignored as no image files"), (skipped, "unreadable")) if found]
    return " and ".join(parts)
