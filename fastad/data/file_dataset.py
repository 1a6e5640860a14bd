"""The part the MVTec and folder readers share: a list of checked (image, mask) files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from fastad.data.images import UnreadableImageError, check_image, load_image, load_mask, normalize_size
from fastad.data.report import report_skipped
from fastad.files import file_fingerprint


class ImageFile(NamedTuple):
    """One kept sample of a file reader, before decoding: the image file, its mask file (None:
    no mask), its label (fastad.data.sample: NORMAL, ANOMALOUS, UNLABELLED) and defect name."""

    path: str
    mask_path: str | None
    label: int
    defect: str


class ImageFileDataset(Dataset):
    """Base of the file readers. Attributes: size (H, W) or None (the file's size), items
    [ImageFile] of every kept sample, skipped [(path, reason)] of every file left out, ignored
    [(path, reason)] of every folder entry that is no image file
    (fastad.data.images.list_entries)."""

    def __init__(self, size):
        self.size = normalize_size(size)
        self.items: list[ImageFile] = []
        self.skipped: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []

    def _add(self, path: Path, mask: Path | None, label: int, defect: str) -> None:
        """Keeps the sample if its image (and mask, when it has one) can be read; otherwise
        reports the file by path and leaves the sample out."""
        try:
            check_image(path)
        except UnreadableImageError as error:
            return report_skipped(self.skipped, path, error.reason)
        if mask is not None:
            if not mask.is_file():
                return report_skipped(self.skipped, path, f"its mask {mask} is missing")
            try:
                check_image(mask)
            except UnreadableImageError as error:
                return report_skipped(self.skipped, mask, error.reason)
        self.items.append(ImageFile(str(path), None if mask is None else str(mask), label, defect))

    def paths(self) -> list[str]:
        """The image file of every kept sample, in dataset order."""
        return [item.path for item in self.items]

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image [3, H, W] float32 in [0, 1], mask [H, W] bool or None) of items[index]."""
        path, mask_path = self.items[index].path, self.items[index].mask_path
        image = load_image(path, self.size)
        if mask_path is None:
            return image, None
        mask = load_mask(mask_path, self.size)
        if mask.shape != image.shape[1:]:
            raise UnreadableImageError(path, f"its mask {mask_path} is {tuple(mask.shape)} but the image is "
                                             f"{tuple(image.shape[1:])}")
        return image, mask

    def _read_fingerprinted(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """_read(index) and the fingerprint of the image file it decoded (fastad.files.
        file_fingerprint); UnreadableImageError naming the file when it changed while read."""
        path = self.items[index].path
        try:
            fingerprint = file_fingerprint(path)
        except OSError as error:
            raise UnreadableImageError(path, error.strerror or str(error)) from None
        image, mask = self._read(index)
        stat = os.stat(path)
        if fingerprint.split(" ")[:2] != [str(stat.st_size), str(stat.st_mtime_ns)]:
            raise UnreadableImageError(path, "it changed while it was read")
        return image, mask, fingerprint

    def __len__(self) -> int:
        return len(self.items)
