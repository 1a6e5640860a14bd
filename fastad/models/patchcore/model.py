"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection"): locally aware
patch features of a frozen ImageNet backbone, a greedy k-center coreset of the normal ones as
memory bank, and the distance to the nearest bank row as patch score.

    model = PatchCore()                                    # pretrained efficientnet_lite0 (packaged weights)
    model = PatchCore(backbone="resnet18", weights="resnet18-f37072fd.pth")   # a local torchvision file
    fastad.engine.train(model, train_images)               # no gradient steps: fills the memory bank
    result = model.score(test_images)                      # AnomalyResult(image_scores [B], maps [B, H, W])

Recipe (sec. 3.1-3.3 of the paper): the backbone's stride-8 and stride-16 maps (layer2 and
layer3 of a ResNet), each averaged over its 3x3 neighbourhood (the "local aggregation"), the
coarser one upsampled bilinearly to the finer one's grid and concatenated; memory bank = fastad.ops.kcenter_coreset of every training patch feature
(optionally searched on a sparse random projection); patch score = fastad.ops.knn distance to
the nearest bank row; map = the patch-score grid upsampled bilinearly to the image and blurred
by fastad.ops.gaussian_blur (sigma 4); image score = the map's maximum, re-weighted by eq. 7
when neighbours > 1.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastad.checks import check_int, check_real
from fastad.models.base import AnomalyModel, AnomalyResult, ModelConfig
from fastad.models.components.zoo import BACKBONES, PRETRAINED, RANDOM, backbone_spec, build_backbone, check_taps
from fastad.models.components.memory_bank import MemoryBank
from fastad.models.registry import register_model
from fastad.nn.nearest_neighbor import NearestNeighborScorer
from fastad.ops import gaussian_blur
from fastad.ops.knn import CUDA_MAX_K, knn_prepared

#: training images per backbone pass while the memory bank is filled (bounds activation memory)
EMBED_BATCH = 16


@dataclass(frozen=True)
class Config(ModelConfig):
    """PatchCore's settings (the `fastad train --set KEY=VALUE` keys).

    Args:
        backbone: a name of the backbone zoo (components.zoo.BACKBONES): efficientnet_lite0|1|2
            (ImageNet weights from their PyPI packages), resnet18 or wide_resnet50_2 (the
            paper's; a local torchvision file).
        weights: "pretrained" (the file the zoo finds for the backbone), the path of a local
            weights file (.pth or .safetensors), read when training starts, or "random" (None
            alike): the network's initialisation drawn from `seed`, with a UserWarning.
        layers: the backbone taps whose locally averaged maps are concatenated, in order; the
            later ones are upsampled bilinearly to the first one's grid. None: the backbone's
            default taps (stride 8 and 16: stride8, stride16 / layer2, layer3).
        coreset_ratio: the fraction in (0, 1] of the training patch features kept in the bank
            (1: all of them, no coreset).
        projection_dim: run the coreset search on a sparse random projection to this many
            dimensions (the paper's speed-up); None: on the features themselves.
        neighbours: b of eq. 7; 1 leaves the image score the map's maximum, b > 1 re-weights it
            by the b nearest bank rows of the worst patch's nearest neighbour (at most 64).
        sigma: the standard deviation in pixels of the map's Gaussian blur.
        image_size: the square input side (320 px: chosen on val over 256 and 384, README "Measured").
        seed: draws the random initialisation, the coreset's first row and the projection.
    """

    backbone: str = "efficientnet_lite0"
    weights: str | None = PRETRAINED
    layers: tuple[str, ...] | None = None
    coreset_ratio: float = 0.1
    projection_dim: int | None = None
    neighbours: int = 1
    sigma: float = 4.0
    image_size: int = 320
    seed: int = 0

    def __post_init__(self):
        spec = backbone_spec(self.backbone)
        if self.weights is not None and not isinstance(self.weights, (str, os.PathLike)):
            raise TypeError(f"weights must be {PRETRAINED!r}, {RANDOM!r} or a file path, got {type(self.weights).__name__}")
        layers = spec.default_taps if self.layers is None else check_taps(spec, self.layers)
        weights = None if self.weights is None else os.fspath(self.weights)  # None (as saved before the zoo): random
        if weights == PRETRAINED and spec.package is None:
            raise ValueError(f"weights: {spec.name} has no packaged weights; give weights=PATH (a local torchvision "
                             f"file) or weights={RANDOM!r}")
        normalised = {"weights": weights, "layers": layers,
                      "coreset_ratio": check_real("coreset_ratio", self.coreset_ratio, 0.0, strict=True, high=1.0),
                      "sigma": check_real("sigma", self.sigma, 0.0, strict=True)}
        if self.projection_dim is not None:
            check_int("projection_dim", self.projection_dim, 1)
        check_int("neighbours", self.neighbours, 1, CUDA_MAX_K)
        check_int("image_size", self.image_size, 32)
        check_int("seed", self.seed, 0)
        if int(4 * normalised["sigma"] + 0.5) >= self.image_size:
            raise ValueError(f"sigma must leave the blur's radius int(4 sigma + 0.5) below image_size "
                             f"{self.image_size}, got {self.sigma}")
        for key, value in normalised.items():
            object.__setattr__(self, key, value)


@register_model
class PatchCore(AnomalyModel):
    """PatchCore on fastad's kernels; the settings are Config's fields, given as keyword arguments.

    No gradient training (stages = ()): setup() reads the backbone weights (or draws them),
    prepare_scoring() fills the memory bank; both are parameters/buffers, so a checkpoint holds
    the whole model and rebuilding one needs neither the weights file nor a warning.
    """

    name = "patchcore"
    stages = ()
    default_steps = 0
    networks = ("backbone",)
    Config = Config

    def __init__(self, read_weight_files: bool = True, **config):
        super().__init__(read_weight_files, **config)
        settings = self.settings
        self.image_size = settings.image_size
        self.backbone = build_backbone(settings.backbone, settings.layers, weights=None)
        taps = BACKBONES[settings.backbone].taps
        self.memory_bank = MemoryBank(sum(taps[layer][1] for layer in settings.layers))

    def train(self, mode: bool = True):
        """The backbone stays in eval mode (frozen BatchNorm statistics) whatever `mode`."""
        super().train(mode)
        self.backbone.eval()
        return self

    def setup(self, train_images: torch.Tensor) -> None:
        settings = self.settings
        weights = RANDOM if settings.weights is None else settings.weights
        if weights == RANDOM:
            warnings.warn(f"PatchCore: no backbone weights (weights={RANDOM!r}); the {settings.backbone} "
                          f"features come from a random initialisation (seed {settings.seed}), not ImageNet",
                          UserWarning, stacklevel=2)
        loaded = build_backbone(settings.backbone, settings.layers, weights, settings.seed)
        self.backbone.load_state_dict(loaded.state_dict())

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> locally aware patch features [B, D, h, w] on the first
        tap's grid (h = H/8 for a stride-8 tap), D = the taps' channels summed."""
        maps = self.backbone(images)
        first = maps[self.settings.layers[0]]
        parts = []
        for layer in self.settings.layers:
            part = F.avg_pool2d(maps[layer], 3, 1, 1)
            if part.shape[-2:] != first.shape[-2:]:
                part = F.interpolate(part, size=first.shape[-2:], mode="bilinear", align_corners=False)
            parts.append(part)
        return torch.cat(parts, 1)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> every patch feature [N * h * w, D] float32, row-major per image,
        computed EMBED_BATCH images at a time."""
        rows = [self.embed(chunk).float().permute(0, 2, 3, 1).flatten(0, 2) for chunk in images.split(EMBED_BATCH)]
        return torch.cat(rows).contiguous()

    @torch.no_grad()
    def prepare_scoring(self, train_images: torch.Tensor) -> None:
        """Memory bank := the greedy k-center coreset (coreset_ratio) of every training patch feature."""
        features = self.patch_features(train_images)
        if self.settings.coreset_ratio < 1.0:
            scorer = NearestNeighborScorer(features)
            scorer.subsample(self.settings.coreset_ratio, self.settings.seed, self.settings.projection_dim)
            features = scorer.memory_bank.contiguous()
        self.memory_bank.fill(features)

    @torch.no_grad()
    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints written before the backbone zoo hold the torchvision ResNet's parameters as
        backbone.<name>; the zoo wraps that network, so they are backbone.net.<name> now."""
        if any(key.startswith("backbone.net.") for key in state):
            return state
        return {f"backbone.net.{key[len('backbone.'):]}" if key.startswith("backbone.") else key: value
                for key, value in state.items()}

    def score(self, images: torch.Tensor) -> AnomalyResult:
        features = self.embed(images)
        b, d, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(b * h * w, d)
        dist, index = self.memory_bank.scorer().knn(queries)
        patch_scores = dist.reshape(b, 1, h, w)
        maps = F.interpolate(patch_scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps, self.settings.sigma)[:, 0]
        image_scores = self.image_scores(maps)
        if self.settings.neighbours > 1:
            image_scores = image_scores * self.reweighting(queries.reshape(b, h * w, d), dist.reshape(b, h * w),
                                                           index.reshape(b, h * w))
        return AnomalyResult(image_scores, maps)

    def reweighting(self, queries: torch.Tensor, dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Eq. 7's factor per image: 1 - exp(|m_test - m*|) / sum over m in N_b(m*) of exp(|m_test - m|),
        where m_test is the image's patch farthest from the bank, m* its nearest bank row and
        N_b(m*) the b = neighbours nearest bank rows of m* (m* itself among them).

        queries [B, P, D], dist [B, P] and index [B, P] (the nearest bank row of each patch) -> [B]."""
        scorer = self.memory_bank.scorer()
        bank = self.memory_bank.bank
        with torch.autocast(queries.device.type, enabled=False):
            worst = dist.argmax(1)
            rows = torch.arange(queries.shape[0], device=queries.device)
            m_test, m_star = queries[rows, worst].float(), bank[index[rows, worst]]
            b = min(self.settings.neighbours, bank.shape[0])
            _, support = knn_prepared(m_star - scorer.centre, scorer.centred_bank, b, scorer.bank_sq_norms)
            to_support = torch.linalg.vector_norm(m_test[:, None, :] - bank[support], dim=2)
            to_star = dist[rows, worst].float()
            return 1.0 - torch.exp(to_star - torch.logsumexp(to_support, 1))
