"""One item of every fastad dataset: an image, its defect mask, its label and where it came from."""
from __future__ import annotations

from dataclasses import dataclass

import torch

NORMAL, ANOMALOUS, UNLABELLED = 0, 1, -1


@dataclass
class Sample:
    """image [C, H, W] float32 in [0, 1] (C = 3 always; gray photos are replicated);
    mask [H, W] bool, True on defective pixels (all False for normal and unlabelled images);
    label 0 normal, 1 anomalous, -1 unknown (a test folder given without masks);
    path: the file it was read from (or a builtin:... name); defect: "good", a defect type,
    or "unknown"; fingerprint: fastad.files.file_fingerprint of the bytes the image was decoded
    from (folder images; None for other datasets)."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    path: str
    defect: str
    fingerprint: str | None = None
