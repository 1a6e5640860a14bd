"""What every fastad model implements so that one engine trains, checkpoints and scores them all.

The engine (fastad.engine) drives a model through these calls, in this order:

    model = create_model("pedenet", **config)       # config: the keys of PEDENet.Config
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

Each model declares its configuration once, as a frozen dataclass `Config` (a ModelConfig) whose
fields are the constructor's keyword arguments, validated in __post_init__. The constructor, the
checkpoint header (model.config, the JSON dict of those fields) and the CLI's --set all read it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from fastad.checks import check_bool, check_choice
from fastad.nn.score_rules import MODEL_RULES, apply_rule


@dataclass
class AnomalyResult:
    """What every model's score() returns. image_scores [B]: one anomaly score per image (higher =
    more anomalous); maps [B, H, W]: per-pixel anomaly scores at the input resolution; verdict:
    "ok" or "defect" per image (score above the calibrated threshold) when the scorer holds a
    threshold (fastad.Scorer of a calibrated checkpoint), else None."""

    image_scores: torch.Tensor
    maps: torch.Tensor
    verdict: list[str] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model's Config: a frozen dataclass of JSON values whose subclasses declare the
    keys with their defaults and check them in __post_init__ (TypeError / ValueError naming the
    key and what was expected). image_score: the image-score rule of every model (checked by
    AnomalyModel, so that a subclass's __post_init__ need not call this one's); a model may
    redeclare it with another default. RENAMED: {old key: new key} of keys renamed since
    checkpoints were first written; from_dict reads an old key as its new one."""

    RENAMED: ClassVar[dict[str, str]] = {}
    image_score: str = "max"

    @classmethod
    def from_dict(cls, values: dict, model: str) -> ModelConfig:
        """The Config of `values` (missing keys take their defaults; RENAMED keys read under their
        new names); TypeError naming an unknown key, ValueError when a key is given under both names."""
        for old, new in cls.RENAMED.items():
            if old in values:
                if new in values:
                    raise ValueError(f"{model}: {old!r} is the old name of {new!r}; give only {new!r}")
                values = {new if key == old else key: value for key, value in values.items()}
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"{model} has no config key {unknown[0]!r}; its keys are {', '.join(known)}")
        return cls(**values)

    def as_dict(self) -> dict:
        """{key: value} with tuples as lists: what a checkpoint's JSON header holds."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


def _json_value(value):
    return list(value) if isinstance(value, tuple) else value


class AnomalyModel(nn.Module):
    """Base class of fastad's models.

    Class attributes:
        name: the registry key (`fastad train --model NAME`).
        image_size: the native square input side the model is trained and scored at.
        stages: the training stages, trained one after the other, each with its own optimizer.
        default_steps: optimizer steps per stage of a demo-sized run (the CLI's --steps overrides).
        Config: the model's configuration dataclass (see ModelConfig).
        networks: the submodules a Scorer may run on another engine (fastad.engine.network_engines):
            each maps an image-like batch to a tensor, a tuple or a dict of tensors, holds no
            fastad op and changes no state while scoring.

    Args:
        read_weight_files: True (the default) reads the pretrained weights files the config names
            (e.g. vgg_weights) and warns when a pretrained part starts from random values; False
            builds the same architecture without opening any file or initialising those parts,
            for a state_dict that holds their tensors (a checkpoint). Parts only training needs
            (GlanceNet's teacher) are then read when training first uses them.
        **config: the Config's keys.

    Attributes:
        settings: the validated Config.
        config: settings as a JSON dict (what checkpoints store); methods read their run-time
            options (scoring stride, blur, ...) from it.
    """

    name: ClassVar[str] = ""
    image_size: ClassVar[int] = 256
    stages: ClassVar[tuple[str, ...]] = ("train",)
    default_steps: ClassVar[int] = 100
    networks: ClassVar[tuple[str, ...]] = ()

    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, read_weight_files: bool = True, **config):
        super().__init__()
        self.read_weight_files = check_bool("read_weight_files", read_weight_files)
        self.settings = self.Config.from_dict(config, self.name or type(self).__name__)
        check_choice("image_score", self.settings.image_score, MODEL_RULES)
        self.config = self.settings.as_dict()

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """maps [B, H, W] -> image scores [B] by the config's `image_score` rule (one of
        fastad.nn.score_rules.MODEL_RULES, on the maps' device; "max" is the map's maximum)."""
        return apply_rule(maps, self.settings.image_score)

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

    def segmentation_threshold(self) -> float | None:
        """The map value at and above which a pixel counts as anomalous, for a model that segments
        by a threshold of its own (UTAD, eq. 9); None (the default) for a model that does not. It
        is a pixel threshold, unrelated to the image verdict's calibrated threshold (the Scorer's)."""
        return None

    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved state_dict in this model's current parameter names (the checkpoint loader calls
        it before checking the state): the state itself here; a model whose names changed since a
        released fastad maps an older checkpoint's names onto the new ones."""
        return state
