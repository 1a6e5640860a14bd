"""Batch scoring of a dataset: decoding in DataLoader workers, pinned memory, AMP on CUDA.

    scored = score_dataset(model, fastad.data.open_dataset("builtin:brick", "test"), batch_size=8)
    scored.image_scores [N], scored.maps [N, H, W], scored.masks [N, H, W], scored.labels [N]
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fastad.data.sample import Sample
from fastad.models.base import AnomalyModel
from fastad.models.result import AnomalyResult


@dataclass
class SampleBatch:
    """images [B, 3, H, W], masks [B, H, W] bool, labels [B] long, paths and defects (B strings)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    defects: list[str]

    def pin_memory(self) -> "SampleBatch":
        self.images = self.images.pin_memory()
        return self


def collate_samples(samples: list[Sample]) -> SampleBatch:
    """A list of fastad.data.Sample -> one SampleBatch."""
    return SampleBatch(torch.stack([s.image for s in samples]), torch.stack([s.mask for s in samples]),
                       torch.tensor([s.label for s in samples], dtype=torch.long), [s.path for s in samples],
                       [s.defect for s in samples])


@dataclass
class ScoredImages:
    """Scores of a whole dataset: image_scores [N], maps [N, H, W] (float32, CPU; empty [0] when
    keep_maps=False), masks [N, H, W] bool, labels [N] (1 anomalous, 0 normal, -1 unknown),
    paths, defects (N strings) and the files the dataset skipped [(path, reason)]."""

    image_scores: torch.Tensor
    maps: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    defects: list[str]
    skipped: list = field(default_factory=list)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def default_workers() -> int:
    """DataLoader workers for decoding: the cores left after the main process, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def data_loader(dataset, batch_size: int, device: torch.device, num_workers: int | None = None) -> DataLoader:
    """Ordered, batched SampleBatches of dataset; pinned when scoring on CUDA."""
    workers = default_workers() if num_workers is None else num_workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_samples, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def score_batch(model: AnomalyModel, images: torch.Tensor, device: torch.device, amp: bool) -> AnomalyResult:
    """images [B, 3, H, W] (host) -> AnomalyResult on the CPU, float32."""
    images = images.to(device, non_blocking=True)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        result = model.score(images)
    return AnomalyResult(result.image_scores.float().cpu(), result.maps.float().cpu())


def score_dataset(model: AnomalyModel, dataset, batch_size: int = 8, device=None, num_workers: int | None = None,
                  amp: bool = False, keep_maps: bool = True, progress: bool = True,
                  on_batch: Callable[[SampleBatch, AnomalyResult], None] | None = None) -> ScoredImages:
    """Scores every sample of dataset (fastad.data Samples at the model's image size).

    Args:
        device: where the model runs (default: the model's parameters' device).
        amp: bfloat16 autocast (CUDA and CPU).
        keep_maps: collect the maps in memory (for metrics); False keeps only image scores.
        on_batch: called with each (SampleBatch, AnomalyResult) as it is scored (for writing
            results as they come, e.g. per-image maps of a large folder).
    """
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device).eval()
    scores, maps, masks, labels, paths, defects = [], [], [], [], [], []
    loader = data_loader(dataset, batch_size, device, num_workers)
    for batch in tqdm(loader, desc=f"scoring {model.name}", unit="batch", disable=not progress, dynamic_ncols=True):
        result = score_batch(model, batch.images, device, amp)
        if on_batch is not None:
            on_batch(batch, result)
        scores.append(result.image_scores)
        if keep_maps:
            maps.append(result.maps)
            masks.append(batch.masks)
        labels.append(batch.labels)
        paths += batch.paths
        defects += batch.defects

    def cat(parts, empty):
        return torch.cat(parts) if parts else empty

    return ScoredImages(cat(scores, torch.zeros(0)), cat(maps, torch.zeros(0)), cat(masks, torch.zeros(0, dtype=torch.bool)),
                        cat(labels, torch.zeros(0, dtype=torch.long)), paths, defects, list(getattr(dataset, "skipped", [])))
