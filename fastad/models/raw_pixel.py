"""The raw-pixel baseline: PEDENet's scoring (nearest normal patch, mean over covering patches)
on downsampled raw pixels instead of learned embeddings. Every model should beat it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastad.checks import check_fraction_or_count, check_int
from fastad.models.base import AnomalyModel, AnomalyResult, ModelConfig
from fastad.models.components.memory_bank import MemoryBank
from fastad.models.registry import register_model
from fastad.ops.upsample import PatchGrid, patch_average


@register_model
class RawPixelKNN(AnomalyModel):
    """Patches of patch_size x patch_size at `stride`, average-pooled by `pool` (64 -> 8x8x3 =
    192 values by default), scored by Euclidean distance to the nearest training patch.

    Config (RawPixelKNN.Config):
        patch_size, stride: the patch grid (PEDENet's 64 and 16).
        pool: average-pooling factor; must divide patch_size and stride.
        coreset: keep a k-center coreset of the memory bank (a fraction or a row count).
    """

    name = "rawpixel"
    image_size = 256
    stages = ()
    default_steps = 0

    @dataclass(frozen=True)
    class Config(ModelConfig):
        patch_size: int = 64
        stride: int = 16
        pool: int = 8
        coreset: float | int | None = None

        def __post_init__(self):
            for key in ("patch_size", "stride", "pool"):
                check_int(key, getattr(self, key), 1)
            check_fraction_or_count("coreset", self.coreset)
            if self.patch_size % self.pool or self.stride % self.pool:
                raise ValueError(f"pool must divide patch_size and stride, got pool={self.pool}, "
                                 f"patch_size={self.patch_size}, stride={self.stride}")

    def __init__(self, **config):
        super().__init__(**config)
        c = self.settings
        self.patch_size, self.stride, self.pool = c.patch_size, c.stride, c.pool
        self.memory_bank = MemoryBank(3 * (c.patch_size // c.pool) ** 2)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> [B, P, 3 * (K / pool)^2], patches in raster order."""
        pooled = F.avg_pool2d(images.float(), self.pool)
        cols = F.unfold(pooled, self.patch_size // self.pool, stride=self.stride // self.pool)
        return cols.transpose(1, 2).contiguous()

    @torch.no_grad()
    def prepare_scoring(self, train_images: torch.Tensor) -> None:
        z = self.embed_images(train_images)
        self.memory_bank.fill(z.reshape(-1, z.shape[2]), self.config["coreset"])

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> AnomalyResult:
        z = self.embed_images(images)
        b, p, d = z.shape
        patch_scores = self.memory_bank.score(z.reshape(b * p, d)).reshape(b, p)
        maps = patch_average(patch_scores.contiguous(), PatchGrid(self.patch_size, self.stride, tuple(images.shape[-2:])))
        return AnomalyResult(self.image_scores(maps), maps)
