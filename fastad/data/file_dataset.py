"""The part the MVTec and folder readers share: a list of checked (image, mask) files."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from fastad.data.images import UnreadableImageError, check_image, load_image, load_mask, normalize_size
from fastad.data.report import report_skipped


class ImageFileDataset(Dataset):
    """Base of the file readers. Attributes: size (H, W) or None (the file's size), items
    [(path, mask path or None, label, defect)] of every kept sample, skipped [(path, reason)]
    of every file left out."""

    def __init__(self, size):
        self.size = normalize_size(size)
        self.items: list[tuple[str, str | None, int, str]] = []
        self.skipped: list[tuple[str, str]] = []

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
        self.items.append((str(path), None if mask is None else str(mask), label, defect))

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image [3, H, W] float32 in [0, 1], mask [H, W] bool or None) of items[index]."""
        path, mask_path, _, _ = self.items[index]
        image = load_image(path, self.size)
        if mask_path is None:
            return image, None
        mask = load_mask(mask_path, self.size)
        if mask.shape != image.shape[1:]:
            raise UnreadableImageError(path, f"its mask {mask_path} is {tuple(mask.shape)} but the image is "
                                             f"{tuple(image.shape[1:])}")
        return image, mask

    def __len__(self) -> int:
        return len(self.items)
