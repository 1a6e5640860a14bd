"""Batch scoring of a dataset: decoding in DataLoader workers, pinned memory, per-image failures.

    scored = score_dataset(fastad.Scorer("runs/brick"), fastad.data.open_dataset("builtin:brick", "test"), 8)
    scored.image_scores [N], scored.maps [N, H, W], scored.masks [N, H, W], scored.labels [N]

Batches are cut on dataset positions (batch i holds positions [i*B, (i+1)*B)); an image that
fails to decode (fastad.data.UnreadableImageError) is dropped from its batch, reported by path
(a SkippedImageWarning) and added to dataset.skipped, and the run goes on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fastad.data.images import UnreadableImageError
from fastad.data.report import report_skipped
from fastad.data.sample import Sample
from fastad.models.base import AnomalyResult


@dataclass
class SampleBatch:
    """images [B, 3, H, W], masks [B, H, W] bool, labels [B] long, paths and defects (B strings),
    indices (B dataset positions), the positions of the batch that could not be decoded
    [(position, path, reason)], and fingerprints (B Sample.fingerprints: what each image was
    decoded from, or None). B may be 0 when every image of the batch failed."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    defects: list[str]
    indices: list[int] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    fingerprints: list = field(default_factory=list)

    def pin_memory(self) -> "SampleBatch":
        self.images = self.images.pin_memory()
        return self


@dataclass
class Undecodable:
    """What a dataset position gives instead of a Sample when its file cannot be decoded."""

    path: str
    reason: str


class PositionedSamples(Dataset):
    """dataset[i] -> (i, Sample or Undecodable): decode failures become values, so one bad file
    does not abort a DataLoader. positions: the dataset positions to read (default: all)."""

    def __init__(self, dataset, positions=None):
        self.dataset = dataset
        self.positions = list(range(len(dataset))) if positions is None else list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        position = self.positions[i]
        try:
            return position, self.dataset[position]
        except UnreadableImageError as error:
            return position, Undecodable(error.path, error.reason)


def collate_samples(items: list) -> SampleBatch:
    """[(position, Sample or Undecodable)] (or plain Samples) -> one SampleBatch of the decoded ones."""
    items = [item if isinstance(item, tuple) else (None, item) for item in items]
    samples = [(i, s) for i, s in items if isinstance(s, Sample)]
    failed = [(i, s.path, s.reason) for i, s in items if isinstance(s, Undecodable)]
    if not samples:
        return SampleBatch(torch.zeros(0, 3, 1, 1), torch.zeros(0, 1, 1, dtype=torch.bool),
                           torch.zeros(0, dtype=torch.long), [], [], [], failed)
    return SampleBatch(torch.stack([s.image for _, s in samples]), torch.stack([s.mask for _, s in samples]),
                       torch.tensor([s.label for _, s in samples], dtype=torch.long), [s.path for _, s in samples],
                       [s.defect for _, s in samples], [i for i, _ in samples], failed,
                       [s.fingerprint for _, s in samples])


@dataclass
class ScoredImages:
    """Scores of a whole dataset: image_scores [N], maps [N, H, W] (float32, CPU; empty [0] when
    keep_maps=False), masks [N, H, W] bool, labels [N] (1 anomalous, 0 normal, -1 unknown),
    paths, defects (N strings), the files the dataset skipped [(path, reason)], indices (the N
    dataset positions that were scored), resumed (how many of them an earlier, interrupted
    attempt of the same run had finished; their scores were read back, not recomputed) and the
    folder entries the dataset ignored as no image files [(path, reason)]."""

    image_scores: torch.Tensor
    maps: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    defects: list[str]
    skipped: list = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    resumed: int = 0
    ignored: list = field(default_factory=list)


def default_workers() -> int:
    """DataLoader workers for decoding: the cores left after the main process, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def data_loader(dataset, batch_size: int, device: torch.device, num_workers: int | None = None,
                positions=None) -> DataLoader:
    """Ordered SampleBatches of the dataset positions `positions` (default: all), batch_size at a
    time; pinned when scoring on CUDA; undecodable images listed in each batch's `failed`."""
    workers = default_workers() if num_workers is None else num_workers
    return DataLoader(PositionedSamples(dataset, positions), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate_samples, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def record_failures(dataset, batch: SampleBatch) -> None:
    """Reports each undecodable image of batch (SkippedImageWarning) and adds it to dataset.skipped."""
    skipped = getattr(dataset, "skipped", None)
    for _, path, reason in batch.failed:
        report_skipped(skipped if skipped is not None else [], path, reason)


def score_dataset(score: Callable[[torch.Tensor], AnomalyResult], dataset, batch_size: int = 8, device="cpu",
                  num_workers: int | None = None, keep_maps: bool = True, progress: bool = True,
                  on_batch: Callable[[SampleBatch, AnomalyResult], None] | None = None,
                  desc: str = "scoring", positions=None) -> ScoredImages:
    """Scores every sample of dataset (fastad.data Samples) with score(images [B, 3, H, W]) ->
    AnomalyResult (usually a fastad.Scorer).

    Args:
        device: where score() runs: batches are pinned for it when it is CUDA.
        keep_maps: collect the maps on the CPU (for metrics); False keeps only image scores.
        on_batch: called with each (SampleBatch, AnomalyResult on the CPU) as it is scored (for
            writing results as they come, e.g. per-image maps of a large folder); also for a
            batch whose every image failed (B = 0, result empty).
        positions: the dataset positions to score (default: all), in this order.
    """
    parts: dict[str, list] = {key: [] for key in ("scores", "maps", "masks", "labels")}
    paths, defects, indices = [], [], []
    loader = data_loader(dataset, batch_size, torch.device(device), num_workers, positions)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
        record_failures(dataset, batch)
        if batch.paths:
            result = score(batch.images)
            result = AnomalyResult(result.image_scores.float().cpu(), result.maps.float().cpu())
        else:
            result = AnomalyResult(torch.zeros(0), torch.zeros(0, 1, 1))
        if on_batch is not None:
            on_batch(batch, result)
        if not batch.paths:
            continue
        parts["scores"].append(result.image_scores)
        if keep_maps:
            parts["maps"].append(result.maps)
            parts["masks"].append(batch.masks)
        parts["labels"].append(batch.labels)
        paths += batch.paths
        defects += batch.defects
        indices += batch.indices

    def cat(key, empty):
        return torch.cat(parts[key]) if parts[key] else empty

    return ScoredImages(cat("scores", torch.zeros(0)), cat("maps", torch.zeros(0)),
                        cat("masks", torch.zeros(0, dtype=torch.bool)), cat("labels", torch.zeros(0, dtype=torch.long)),
                        paths, defects, list(getattr(dataset, "skipped", [])), indices,
                        ignored=list(getattr(dataset, "ignored", [])))
