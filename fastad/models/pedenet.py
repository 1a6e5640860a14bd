"""PEDENet (Zhang et al., "PEDENet: Image anomaly localization via patch embedding and density
estimation"): a patch-embedding (PE) network trained with a GMM density-estimation (DE) head and
a neighbour-location-prediction (LP) head; anomalies are scored by the distance of each patch's
embedding to the nearest normal one (eq. 12), averaged over the patches covering each pixel.

    model = PEDENet()
    fastad.engine.train(model, train_images, steps=2000)   # train_images [N, 3, 256, 256]; fills the bank
    result = model.score(test_images)                      # AnomalyResult(image_scores [B], maps [B, H, W])
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastad.models.base import AnomalyModel
from fastad.models.memory_bank import MemoryBank
from fastad.models.registry import register_model
from fastad.models.result import AnomalyResult
from fastad.nn.gaussian_mixture_head import GaussianMixtureHead
from fastad.ops.upsample import PatchGrid, patch_average

#: (row, col) direction of the neighbour p' relative to p for each LP label, raster order
#: around the centre: 0 1 2 / 3 . 4 / 5 6 7.
POSITIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

#: The paper's PE filter counts (sec. 4.1): eight 3x3 conv layers and a 3x3 output layer.
PE_FILTERS = (32, 64, 128, 128, 64, 64, 32, 32, 64)


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride), nn.LeakyReLU(0.1)]


class PatchEncoder(nn.Module):
    """The PE network (eq. 1): a hierarchical encoder of 64x64 patches, [N, C, 64, 64] -> [N, Z].

    The patch is split into 2x2 sub-patches of 32x32; a shared small encoder maps each to a
    [128, 9, 9] feature map (convs 1-4: 32, 64, 128, 128 filters; conv 1 at stride 2); the four
    maps are placed by their position into one [128, 18, 18] map; a larger encoder (convs 5-8:
    64, 64, 32, 32 filters; conv 6 at stride 2) reduces it to [32, 3, 3] and the 3x3 output layer
    (Z filters, tanh) to [Z, 1, 1]. All convs are 3x3 without padding, LeakyReLU(0.1) between,
    He-initialised (with torch's default the embeddings start out nearly constant, std ~1e-5).

    Args:
        in_channels: C.
        embedding_dim: Z, the paper's last filter count (64).
        filters: the nine filter counts, the paper's (32, 64, 128, 128, 64, 64, 32, 32, Z).
    """

    patch_size = 64

    def __init__(self, in_channels: int = 3, embedding_dim: int = 64, filters: tuple[int, ...] = PE_FILTERS[:8]):
        super().__init__()
        if len(filters) != 8:
            raise ValueError(f"filters must give the 8 hidden conv layers' widths, got {filters}")
        f = filters
        self.small = nn.Sequential(*_conv(in_channels, f[0], 2), *_conv(f[0], f[1]), *_conv(f[1], f[2]),
                                   *_conv(f[2], f[3]))
        self.large = nn.Sequential(*_conv(f[3], f[4]), *_conv(f[4], f[5], 2), *_conv(f[5], f[6]),
                                   *_conv(f[6], f[7]), nn.Conv2d(f[7], embedding_dim, 3), nn.Tanh())
        self.embedding_dim = embedding_dim
        for module in self.modules():  # He init: torch's default shrinks the signal ~10x per layer
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [N, C, 64, 64] -> embeddings z [N, Z] in [-1, 1]."""
        n, c, h, w = patches.shape
        if (h, w) != (self.patch_size, self.patch_size):
            raise ValueError(f"PatchEncoder takes {self.patch_size}x{self.patch_size} patches, got {h}x{w}")
        s = self.patch_size // 2
        # [N, C, 2, s, 2, s] -> [N, 2, 2, C, s, s]: sub-patch (i, j) of every patch
        subs = patches.reshape(n, c, 2, s, 2, s).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, c, s, s)
        feats = self.small(subs)                                         # [4N, F, q, q]
        f, q = feats.shape[1], feats.shape[2]
        # aggregation by position: sub-map (i, j) goes to block (i, j) of a [F, 2q, 2q] map
        grid = feats.reshape(n, 2, 2, f, q, q).permute(0, 3, 1, 4, 2, 5).reshape(n, f, 2 * q, 2 * q)
        return self.large(grid).flatten(1)

    def forward_dense(self, images: torch.Tensor, stride: int) -> torch.Tensor:
        """Embeddings of all 64x64 patches of images [B, C, H, W] at an even `stride`, computed
        fully convolutionally -> [B, P, Z], raster order, equal (up to float rounding) to
        forward() on the cropped patches.

        The small encoder (valid 3x3 convs, the first at stride 2) runs once over each whole
        image: the [F, q, q] map of the sub-patch whose corner is pixel (r, c), r and c even, is
        the window at (r/2, c/2) of that dense map. Each patch's [F, 2q, 2q] grid is gathered from
        its four sub-patch windows, and only the larger encoder runs per patch. Overlapping
        patches (and sub-patches shared by up to four patches) no longer recompute the small
        encoder, which holds most of the FLOPs.
        """
        if stride % 2:
            raise ValueError(f"stride must be even for the dense path, got {stride}")
        b, _, h, w = images.shape
        k, s = self.patch_size, self.patch_size // 2
        feats = self.small(images)                                        # [B, F, (H-3)//2-5, ...]
        q = (s - 3) // 2 + 1 - 6                                          # a sub-patch's map side (9)
        offsets = torch.cat([torch.arange(q), s // 2 + torch.arange(q)]).to(images.device)  # [2q]

        def windows(size: int) -> torch.Tensor:                           # [n_patches, 2q] feature rows
            starts = torch.arange(0, size - k + 1, stride, device=images.device) // 2
            return starts[:, None] + offsets

        rows, cols = windows(h), windows(w)
        # gathered channels-last: each index copies one whole F-vector (a free view when feats is
        # channels_last), and the patches' grids come out as a channels_last batch without a copy
        grid = feats.permute(0, 2, 3, 1)[:, rows[:, None, :, None], cols[None, :, None, :]]  # [B, Ph, Pw, 2q, 2q, F]
        ph, pw, f = rows.shape[0], cols.shape[0], feats.shape[1]
        grid = grid.reshape(b * ph * pw, 2 * q, 2 * q, f).permute(0, 3, 1, 2)  # [N, F, 2q, 2q]
        return self.large(grid).reshape(b, ph * pw, -1)


class TrainingBatch(NamedTuple):
    """patches [n_patches, C, K, K] for the DE loss; centre, neighbour [n_pairs, C, K, K] and
    position [n_pairs] (long, index into POSITIONS) for the LP loss."""

    patches: torch.Tensor
    centre: torch.Tensor
    neighbour: torch.Tensor
    position: torch.Tensor


def sample_training_batch(images: torch.Tensor, generator: torch.Generator | None = None, n_patches: int = 128,
                          n_pairs: int = 36, patch_size: int = 64, min_shift: int | None = None) -> TrainingBatch:
    """Random patches and neighbour pairs from images [N, C, H, W] (on any device).

    A pair is a patch p and a patch p' displaced from it by `shift` pixels along each axis its
    position's direction moves (shift drawn per axis in [min_shift, min(patch_size, H - K)], so
    p' is next to p, overlapping it by at most patch_size - min_shift pixels), with p placed so
    that p and p' are both inside the image: the label is exact (no clipping). Needs
    H, W >= patch_size + min_shift; the default min_shift = 3 * patch_size // 4 (as Patch-SVDD).

    Args:
        generator: a CPU torch.Generator for reproducibility (None: torch's global one).
        n_patches, n_pairs: the paper's batch sizes (128 patches for the DE loss, 36 pairs).

    Returns:
        TrainingBatch(patches [n_patches, C, K, K], centre, neighbour [n_pairs, C, K, K],
        position [n_pairs]) on the images' device; position indexes POSITIONS.
    """
    n, _, h, w = images.shape
    k = patch_size
    min_shift = 3 * k // 4 if min_shift is None else min_shift
    if not 1 <= min_shift <= k:
        raise ValueError(f"min_shift must be in [1, patch_size], got {min_shift}")
    if h < k + min_shift or w < k + min_shift:
        raise ValueError(f"images of {h}x{w} are too small for pairs of {k}x{k} patches shifted by {min_shift}")

    def randint(low, high):  # [low, high] inclusive, per element of tensors low/high
        u = torch.rand(low.shape, generator=generator)
        return low + (u * (high - low + 1)).long().clamp_max(high - low)

    def crop(idx, rows, cols):
        return torch.stack([images[i, :, r:r + k, c:c + k] for i, r, c in zip(idx.tolist(), rows.tolist(), cols.tolist())])

    idx = torch.randint(n, (n_patches,), generator=generator)
    rows = torch.randint(h - k + 1, (n_patches,), generator=generator)
    cols = torch.randint(w - k + 1, (n_patches,), generator=generator)
    patches = crop(idx, rows, cols)

    position = torch.randint(len(POSITIONS), (n_pairs,), generator=generator)
    direction = torch.tensor(POSITIONS)[position]                                   # [n_pairs, 2]
    size = torch.tensor([h, w])
    max_shift = torch.minimum(torch.full((2,), k), size - k)                         # keep p' inside
    shift = randint(torch.full((n_pairs, 2), min_shift), max_shift.expand(n_pairs, 2)) * direction
    # p's top-left corner so that both p and p + shift lie in [0, size - k]
    low, high = (-shift).clamp_min(0), (size - k) - shift.clamp_min(0)
    corner = randint(low, high)
    pair_idx = torch.randint(n, (n_pairs,), generator=generator)
    centre = crop(pair_idx, corner[:, 0], corner[:, 1])
    neighbour = crop(pair_idx, corner[:, 0] + shift[:, 0], corner[:, 1] + shift[:, 1])
    return TrainingBatch(patches, centre, neighbour, position.to(images.device))


def extract_patches(images: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """images [B, C, H, W] -> all patches at stride [B * P, C, K, K], P = PatchGrid(K, stride, (H, W))
    .num_patches, raster order per image."""
    c = images.shape[1]
    cols = F.unfold(images, patch_size, stride=stride)                              # [B, C*K*K, P]
    return cols.transpose(1, 2).reshape(-1, c, patch_size, patch_size)


@register_model
class PEDENet(AnomalyModel):
    """PE, DE and LP networks, the joint loss of eq. 8, training, memory bank and scoring.

    Args:
        in_channels: image channels C.
        embedding_dim: Z (the paper: the last PE filter count, 64).
        n_components: K, the GMM components of the DE net (the paper leaves it open; 4).
        lambda_den, lambda_lpn, lambda_reg: λ1, λ2, λ3 of eq. 8 (open in the paper): DAGMM's 0.1
            for the energy, 1 for the LP cross-entropy, and 3e-4 for the covariance penalty. With
            Z = 64 and K = 4, eq. 11 sums 256 inverse variances (~1e4 at initialisation): DAGMM's
            0.005 makes it dominate the loss and drive the tanh embeddings into saturation, which
            wrecks nearest-neighbour scoring (pixel AUROC 0.38 / 0.50 on builtin grass / gravel),
            while 0 lets the energy collapse them; 3e-4 was the best of {0, 1e-4, 3e-4, 1e-3,
            5e-3} over brick, grass and gravel (README).
        gmm_eps: added to each batch covariance's diagonal (a batch of 128 patches under-determines
            K covariances of size Z x Z; the eq. 11 penalty alone does not make them definite).
        stride: S, the default patch stride of build_memory_bank and score.
        lr: Adam's learning rate (the paper's 1e-4).
        n_patches, n_pairs: patches for the DE loss and neighbour pairs for the LP loss per batch
            (the paper's 128 and 36).
        coreset: keep a k-center coreset of the memory bank (a fraction or a row count); None keeps all.
        dense_embedding: embed all patches of an image fully convolutionally (PatchEncoder.
            forward_dense, the same numbers ~3x faster) when the stride is even; False crops them.
    """

    name = "pedenet"
    image_size = 256
    default_steps = 60
    patch_size = PatchEncoder.patch_size

    def __init__(self, in_channels: int = 3, embedding_dim: int = 64, n_components: int = 4,
                 lambda_den: float = 0.1, lambda_lpn: float = 1.0, lambda_reg: float = 3e-4,
                 gmm_eps: float = 1e-3, stride: int = 16, lr: float = 1e-4, n_patches: int = 128,
                 n_pairs: int = 36, coreset: float | int | None = None, dense_embedding: bool = True):
        super().__init__(in_channels=in_channels, embedding_dim=embedding_dim, n_components=n_components,
                         lambda_den=lambda_den, lambda_lpn=lambda_lpn, lambda_reg=lambda_reg, gmm_eps=gmm_eps,
                         stride=stride, lr=lr, n_patches=n_patches, n_pairs=n_pairs, coreset=coreset,
                         dense_embedding=dense_embedding)
        self.pe = PatchEncoder(in_channels, embedding_dim)
        self.de = GaussianMixtureHead(embedding_dim, n_components, hidden=(128, 64, 32), eps=gmm_eps)
        self.lp = nn.Sequential(nn.Linear(embedding_dim, 128), nn.LeakyReLU(0.1), nn.Linear(128, 128),
                                nn.LeakyReLU(0.1), nn.Linear(128, len(POSITIONS)))
        self.lambdas = (lambda_den, lambda_lpn, lambda_reg)
        self.stride = stride
        self.memory_bank = MemoryBank(embedding_dim)
        # per-channel input standardisation, set from the training images by fit()
        self.register_buffer("pixel_mean", torch.zeros(in_channels))
        self.register_buffer("pixel_std", torch.ones(in_channels))

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [N, C, 64, 64] -> z [N, Z] (the PE network, on standardised pixels)."""
        return self.pe((patches - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None])

    @torch.no_grad()
    def set_normalization(self, images: torch.Tensor) -> None:
        """pixel_mean, pixel_std [C] := the per-channel statistics of images [N, C, H, W]."""
        self.pixel_mean.copy_(images.mean((0, 2, 3)))
        self.pixel_std.copy_(images.std((0, 2, 3)).clamp_min(1e-6))

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
            normalized = (images - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]
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
        return AnomalyResult(image_scores=maps.flatten(1).amax(1), maps=maps)
