"""What every fastad model implements so that one engine trains, checkpoints and scores them all.

The engine (fastad.engine) drives a model through these calls, in this order:

    model = create_model("pedenet", **config)       # config: JSON-serialisable constructor kwargs
    model.setup(train_images)                       # statistics of the normal images [N, 3, H, W]
    for stage in model.stages:                      # e.g. ("train",), or UTAD's two stages
        optimizer, scheduler = model.configure_optimizer(stage, steps)
        for step in range(steps):
            losses = model.training_loss(stage, train_images, generator)   # {"total": scalar, ...}
            losses["total"].backward(); optimizer.step(); scheduler.step() if scheduler
    model.prepare_scoring(train_images)             # memory banks and the like
    result = model.score(test_images)               # AnomalyResult(image_scores [B], maps [B, H, W])

Everything a trained model needs for scoring must live in its parameters and buffers (so that a
safetensors checkpoint restores it); buffers whose size depends on the data (a memory bank) may
change shape: the checkpoint loader resizes them before load_state_dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn



@dataclass
class AnomalyResult:
    """What every model's score() returns. image_scores [B]: one anomaly score per image (higher =
    more anomalous); maps [B, H, W]: per-pixel anomaly scores at the input resolution."""

    image_scores: torch.Tensor
    maps: torch.Tensor


class AnomalyModel(nn.Module):
    """Base class of fastad's models.

    Class attributes:
        name: the registry key (`fastad train --model NAME`).
        image_size: the native square input side the model is trained and scored at.
        stages: the training stages, trained one after the other, each with its own optimizer.
        default_steps: optimizer steps per stage of a demo-sized run (the CLI's --steps overrides).
    """

    name: ClassVar[str] = ""
    image_size: ClassVar[int] = 256
    stages: ClassVar[tuple[str, ...]] = ("train",)
    default_steps: ClassVar[int] = 100

    def __init__(self, **config):
        super().__init__()
        self.config = dict(config)

    def setup(self, train_images: torch.Tensor) -> None:
        """Called once before training with the normal images [N, 3, H, W] (input statistics)."""

    def configure_optimizer(self, stage: str, steps: int):
        """-> (torch.optim.Optimizer, LR scheduler stepped once per step, or None) for `stage`."""
        raise NotImplementedError(f"{type(self).__name__} must define configure_optimizer")

    def training_loss(self, stage: str, train_images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One training batch drawn from train_images [N, 3, H, W] with `generator` (a CPU
        generator: the engine checkpoints its state) -> {"total": scalar to minimise, other
        scalars to log}."""
        raise NotImplementedError(f"{type(self).__name__} must define training_loss")

    def prepare_scoring(self, train_images: torch.Tensor) -> None:
        """Called after training with the normal images [N, 3, H, W] (memory banks, statistics)."""

    def score(self, images: torch.Tensor) -> AnomalyResult:
        """images [B, 3, H, W] in [0, 1] -> AnomalyResult(image_scores [B], maps [B, H, W])."""
        raise NotImplementedError(f"{type(self).__name__} must define score")
