"""Batch scoring of a dataset: decoding in DataLoader workers, pinned memory.

    scored = score_dataset(fastad.Scorer("runs/brick"), fastad.data.open_dataset("builtin:brick", "test"), 8)
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


def default_workers() -> int:
    """DataLoader workers for decoding: the cores left after the main process, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def data_loader(dataset, batch_size: int, device: torch.device, num_workers: int | None = None) -> DataLoader:
    """Ordered, batched SampleBatches of dataset; pinned when scoring on CUDA."""
    workers = default_workers() if num_workers is None else num_workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_samples, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def score_dataset(score: Callable[[torch.Tensor], AnomalyResult], dataset, batch_size: int = 8, device="cpu",
                  num_workers: int | None = None, keep_maps: bool = True, progress: bool = True,
                  on_batch: Callable[[SampleBatch, AnomalyResult], None] | None = None,
                  desc: str = "scoring") -> ScoredImages:
    """Scores every sample of dataset (fastad.data Samples) with score(images [B, 3, H, W]) ->
    AnomalyResult (usually a fastad.Scorer).

    Args:
        device: where score() runs: batches are pinned for it when it is CUDA.
        keep_maps: collect the maps on the CPU (for metrics); False keeps only image scores.
        on_batch: called with each (SampleBatch, AnomalyResult on the CPU) as it is scored (for
            writing results as they come, e.g. per-image maps of a large folder).
    """
    scores, maps, masks, labels, paths, defects = [], [], [], [], [], []
    loader = data_loader(dataset, batch_size, torch.device(device), num_workers)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
        result = score(batch.images)
        result = AnomalyResult(result.image_scores.float().cpu(), result.maps.float().cpu())
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
