"""PEDENet (Zhang et al., "PEDENet: Image anomaly localization via patch embedding and density
estimation"): a patch-embedding (PE) network trained with a GMM density-estimation (DE) head and
a neighbour-location-prediction (LP) head; anomalies are scored by the distance of each patch's
embedding to the nearest normal one (eq. 12), averaged over the patches covering each pixel.

    model = PEDENet()
    fastad.engine.train(model, train_images, steps=2000)   # train_images [N, 3, 256, 256]; fills the bank
    result = model.score(test_images)                      # AnomalyResult(image_scores [B], maps [B, H, W])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastad.checks import check_bool, check_fraction_or_count, check_int, check_real
from fastad.models.base import AnomalyModel, AnomalyResult, ModelConfig
from fastad.models.components.memory_bank import MemoryBank
from fastad.models.components.patches import channel_statistics, extract_patches, standardize
from fastad.models.pedenet.networks import PatchEncoder
from fastad.models.pedenet.sampling import POSITIONS, sample_training_batch
from fastad.models.registry import register_model
from fastad.nn.gaussian_mixture_head import GaussianMixtureHead
from fastad.ops.upsample import PatchGrid, patch_average


@register_model
class PEDENet(AnomalyModel):
    """PE, DE and LP networks, the joint loss of eq. 8, training, memory bank and scoring.

    Config (PEDENet.Config; the choices and their measurements: models/pedenet/README.md):
        in_channels: image channels C.
        embedding_dim: Z (the paper: the last PE filter count, 64).
        n_components: K, the GMM components of the DE net (the paper leaves it open; 4).
        lambda_den, lambda_lpn, lambda_reg: λ1, λ2, λ3 of eq. 8 (>= 0): the weights of the
            energy, the LP cross-entropy and the covariance penalty of eq. 11.
        gmm_eps: added to each batch covariance's diagonal (>= 0; a batch of 128 patches
            under-determines K covariances of size Z x Z).
        stride: S, the default patch stride of build_memory_bank and score.
        lr: Adam's learning rate (the paper's 1e-4).
        n_patches, n_pairs: patches for the DE loss and neighbour pairs for the LP loss per batch
            (the paper's 128 and 36).
        coreset: keep a k-center coreset of the memory bank (a fraction in (0, 1] or a row
            count); None keeps all.
        dense_embedding: embed all patches of an image fully convolutionally (PatchEncoder.
            forward_dense, the same numbers up to float rounding) when the stride is even; False
            crops them.
    """

    @dataclass(frozen=True)
    class Config(ModelConfig):
        in_channels: int = 3
        embedding_dim: int = 64
        n_components: int = 4
        lambda_den: float = 0.1
        lambda_lpn: float = 1.0
        lambda_reg: float = 3e-4
        gmm_eps: float = 1e-3
        stride: int = 16
        lr: float = 1e-4
        n_patches: int = 128
        n_pairs: int = 36
        coreset: float | int | None = None
        dense_embedding: bool = True

        def __post_init__(self):
            for key in ("in_channels", "embedding_dim", "n_components", "stride", "n_patches", "n_pairs"):
                check_int(key, getattr(self, key), 1)
            for key in ("lambda_den", "lambda_lpn", "lambda_reg", "gmm_eps"):
                check_real(key, getattr(self, key), 0.0)
            check_real("lr", self.lr, 0.0, strict=True)
            check_fraction_or_count("coreset", self.coreset)
            check_bool("dense_embedding", self.dense_embedding)

    name = "pedenet"
    image_size = 256
    default_steps = 60
    patch_size = PatchEncoder.patch_size

    def __init__(self, **config):
        super().__init__(**config)
        c = self.settings
        self.pe = PatchEncoder(c.in_channels, c.embedding_dim)
        self.de = GaussianMixtureHead(c.embedding_dim, c.n_components, hidden=(128, 64, 32), eps=c.gmm_eps)
        self.lp = nn.Sequential(nn.Linear(c.embedding_dim, 128), nn.LeakyReLU(0.1), nn.Linear(128, 128),
                                nn.LeakyReLU(0.1), nn.Linear(128, len(POSITIONS)))
        self.lambdas = (c.lambda_den, c.lambda_lpn, c.lambda_reg)
        self.stride = c.stride
        self.memory_bank = MemoryBank(c.embedding_dim)
        # per-channel input standardisation, set from the training images by setup()
        self.register_buffer("pixel_mean", torch.zeros(c.in_channels))
        self.register_buffer("pixel_std", torch.ones(c.in_channels))

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [N, C, 64, 64] -> z [N, Z] (the PE network, on standardised pixels)."""
        return self.pe(standardize(patches, self.pixel_mean, self.pixel_std))

    @torch.no_grad()
    def set_normalization(self, images: torch.Tensor) -> None:
        """pixel_mean, pixel_std [C] := the per-channel statistics of images [N, C, H, W]."""
        mean, std = channel_statistics(images)
        self.pixel_mean.copy_(mean)
        self.pixel_std.copy_(std)

    def locate(self, z: torch.Tensor, z_neighbour: torch.Tensor) -> torch.Tensor:
        """z, z' [N, Z] -> LP logits [N, 8] of the position of p' relative to p (eq. 7)."""
        return self.lp(z - z_neighbour)

    def loss(self, patches: torch.Tensor, neighbour_pairs) -> dict[str, torch.Tensor]:
        """Eq. 8 on one batch.

        Args:
            patches: [N, C, 64, 64] for the DE loss.
            neighbour_pairs: (centre [M, C, 64, 64], neighbour [M, C, 64, 64], position [M] long).

        Returns:
            dict of scalars: total = λ1 den + λ2 lpn + λ3 reg; den = mean energy −log P(z) (eq. 9,
            read as DAGMM's sample energy); lpn = cross-entropy (eq. 10); reg = Σ_k Σ_j 1/Σ_k,jj (eq. 11).
        """
        centre, neighbour, position = neighbour_pairs
        n, m = patches.shape[0], centre.shape[0]
        z = self.embed(torch.cat([patches, centre, neighbour]))
        energy, reg, _ = self.de.energy(z[:n])
        den = energy.mean()
        lpn = F.cross_entropy(self.locate(z[n:n + m], z[n + m:]), position)
        l1, l2, l3 = self.lambdas
        return {"total": l1 * den + l2 * lpn + l3 * reg, "den": den, "lpn": lpn, "reg": reg}

    def setup(self, train_images: torch.Tensor) -> None:
        self.set_normalization(train_images)

    def configure_optimizer(self, stage: str, steps: int):
        return torch.optim.Adam(self.parameters(), lr=self.config["lr"]), None

    def training_loss(self, stage: str, train_images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = sample_training_batch(train_images, generator, self.config["n_patches"], self.config["n_pairs"],
                                      self.patch_size)
        return self.loss(batch.patches, batch[1:])

    def prepare_scoring(self, train_images: torch.Tensor) -> None:
        self.build_memory_bank(train_images, coreset=self.config["coreset"])

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, stride: int | None = None, dense: bool | None = None,
                     batch_size: int = 512) -> torch.Tensor:
        """images [B, C, H, W] -> embeddings [B, P, Z] of all 64x64 patches at stride S (raster order).

        dense (default: config dense_embedding and S even): the fully convolutional
        PatchEncoder.forward_dense; False crops every patch and encodes the crops in chunks."""
        stride = self.stride if stride is None else stride
        dense = self.config["dense_embedding"] and stride % 2 == 0 if dense is None else dense
        if dense:
            normalized = standardize(images, self.pixel_mean, self.pixel_std)
            if torch.compiler.is_compiling():  # one graph for any batch size
                return self.pe.forward_dense(normalized, stride)
            return torch.cat([self.pe.forward_dense(chunk, stride) for chunk in normalized.split(8)])
        patches = extract_patches(images, self.patch_size, stride)
        z = torch.cat([self.embed(chunk) for chunk in patches.split(batch_size)])
        return z.reshape(images.shape[0], -1, z.shape[1])

    @torch.no_grad()
    def build_memory_bank(self, train_images: torch.Tensor, stride: int | None = None,
                          coreset: float | int | None = None, seed: int = 0) -> torch.Tensor:
        """Embeds all patches of train_images [N, C, H, W] at stride S into the memory bank
        [N * P, Z]; coreset (a fraction or a row count) keeps a k-center coreset of it.
        Returns the bank."""
        was_training = self.training
        self.eval()
        z = self.embed_images(train_images, stride)
        self.train(was_training)
        self.memory_bank.fill(z.reshape(-1, z.shape[2]), coreset, seed)
        return self.memory_bank.bank

    @torch.no_grad()
    def score(self, images: torch.Tensor, stride: int | None = None) -> AnomalyResult:
        """images [B, C, H, W] -> AnomalyResult(image_scores [B], maps [B, H, W]): patch score =
        distance to the nearest bank embedding (eq. 12), pixel score = mean over the covering
        patches, image score = max pixel score."""
        stride = self.stride if stride is None else stride
        was_training = self.training
        self.eval()
        z = self.embed_images(images, stride)
        self.train(was_training)
        b, p, d = z.shape
        patch_scores = self.memory_bank.score(z.reshape(b * p, d)).reshape(b, p)
        grid = PatchGrid(self.patch_size, stride, tuple(images.shape[-2:]))
        maps = patch_average(patch_scores.contiguous(), grid)
        return AnomalyResult(image_scores=self.image_scores(maps), maps=maps)
