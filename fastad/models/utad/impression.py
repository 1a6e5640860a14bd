"""UTAD's first stage, the Impression Extractor (IE-Net, sec. 3.1): an inception encoder with a
global Gaussian latent, a mutual-information discriminator and an inception decoder whose output,
the impression h = D(mu(x)), is an anomaly-free reconstruction of x.

    ie = ImpressionExtractor(image_size=128)
    losses = ie.loss(images, generator)      # {"total", "mi", "kl", "rec"} (eq. 6)
    h = ie.impression(images)                # [B, 3, H, W] in (0, 1)

Decisions where the paper is vague:
- Inception block: four branches (1x1; 1x1-3x3; 1x1-3x3-3x3 for the 5x5; 3x3 max-pool-1x1),
  each out/4 channels, concatenated, LeakyReLU(0.2); no normalisation layers, so the impression
  of an image does not depend on the rest of its batch.
- The latent is one vector per image (as a VAE): the encoder's last map [C, H/16, W/16] is
  flattened into the 3-layer MLP that gives mu and log sigma^2.
- The discriminator T(x, z) (a 4-layer MLP ending in a sigmoid) sees x through the encoder's
  global-average-pooled last map (a raw image is too large for an MLP), concatenated with z.
- Eq. 4 is the Jensen-Shannon (f-GAN) estimator: L_MI = -E log T(x, z) - E log(1 - T(x, z~)),
  z~ the batch-shuffled codes (a random cyclic shift of the batch, so no code stays with its own
  image); encoder and discriminator both minimise it (maximising the MI bound).
- Eq. 2: KL(N(mu, sigma^2) || N(0, I)) summed over latent dims, averaged over the batch.
- Eq. 5: mean squared error between x and D(z), z = mu + sigma * eps drawn with the generator.
- Eq. 6: total = alpha * L_MI + beta * L_KL + gamma * L_rec.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mu, logvar [B, Z] -> mean over the batch of KL(N(mu, exp(logvar)) || N(0, I))."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()


def mutual_information_loss(positive: torch.Tensor, negative: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 4: discriminator outputs in (0, 1) on matched pairs [B] and shuffled pairs [B] ->
    -mean log T(x, z) - mean log(1 - T(x, z~))."""
    return -(positive.clamp_min(eps).log().mean() + (1.0 - negative).clamp_min(eps).log().mean())


def shuffle_codes(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z [B, Z] -> z rolled by a random shift in [1, B-1] along the batch (B >= 2): every row gets
    another image's code."""
    if z.shape[0] < 2:
        raise ValueError(f"the mutual-information loss needs a batch of at least 2 codes, got {z.shape[0]}")
    shift = int(torch.randint(1, z.shape[0], (1,), generator=generator))
    return z.roll(shift, 0)


class InceptionBlock(nn.Module):
    """[B, in, H, W] -> [B, out, H, W]: four parallel branches of out/4 channels (1x1; 1x1 then 3x3;
    1x1 then two 3x3 (a 5x5 field); 3x3 max-pool then 1x1) concatenated, then LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"out_channels must be divisible by 4 (four branches), got {out_channels}")
        b = out_channels // 4
        act = nn.LeakyReLU(0.2)
        self.branches = nn.ModuleList([
            nn.Conv2d(in_channels, b, 1),
            nn.Sequential(nn.Conv2d(in_channels, b, 1), act, nn.Conv2d(b, b, 3, padding=1)),
            nn.Sequential(nn.Conv2d(in_channels, b, 1), act, nn.Conv2d(b, b, 3, padding=1), act,
                          nn.Conv2d(b, b, 3, padding=1)),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(in_channels, b, 1)),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(torch.cat([branch(x) for branch in self.branches], 1), 0.2)


def _mlp(sizes: list[int], final: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class ImpressionExtractor(nn.Module):
    """IE-Net: encoder E (inception blocks, each followed by 2x2 max-pooling; MLP -> mu, logvar),
    discriminator T, decoder D (linear, then inception blocks each followed by 2x nearest
    upsampling, then a 3x3 conv with sigmoid).

    Args:
        image_size: H = W of the images (divisible by 2**len(widths)).
        widths: channels of the encoder's inception blocks (the paper: 4 blocks); the decoder
            uses them reversed.
        latent_dim: Z.
        hidden: width of the MLP's and the discriminator's hidden layers.
        alpha, beta, gamma: eq. 6 weights of the MI, KL and reconstruction terms.
    """

    def __init__(self, image_size: int = 128, widths: tuple[int, ...] = (16, 32, 64, 64), latent_dim: int = 64,
                 hidden: int = 256, alpha: float = 0.1, beta: float = 0.01, gamma: float = 1.0):
        super().__init__()
        factor = 2 ** len(widths)
        if image_size % factor:
            raise ValueError(f"image_size must be divisible by {factor} ({len(widths)} poolings), got {image_size}")
        self.image_size, self.latent_dim = image_size, latent_dim
        self.weights = (alpha, beta, gamma)
        self.bottom = image_size // factor
        flat = widths[-1] * self.bottom ** 2
        channels = [3, *widths]
        self.encoder = nn.Sequential(*[m for cin, cout in zip(channels[:-1], channels[1:])
                                       for m in (InceptionBlock(cin, cout), nn.MaxPool2d(2))])
        self.to_latent = _mlp([flat, hidden, hidden, 2 * latent_dim])
        self.discriminator = _mlp([widths[-1] + latent_dim, hidden, hidden, hidden, 1], nn.Sigmoid())
        self.from_latent = nn.Linear(latent_dim, flat)
        up = list(reversed(widths))
        self.decoder = nn.Sequential(*[m for cin, cout in zip(up, [*up[1:], up[-1]])
                                       for m in (InceptionBlock(cin, cout), nn.Upsample(scale_factor=2))])
        self.to_image = nn.Sequential(nn.Conv2d(up[-1], 3, 3, padding=1), nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] -> (mu [B, Z], logvar [B, Z], pooled encoder features [B, C])."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"images must be [B, 3, {self.image_size}, {self.image_size}], got {tuple(images.shape)}")
        features = self.encoder(images)
        mu, logvar = self.to_latent(features.flatten(1)).chunk(2, 1)
        return mu, logvar.clamp(-10.0, 10.0), features.mean((2, 3))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, Z] -> image [B, 3, H, W] in (0, 1)."""
        grid = self.from_latent(z).view(z.shape[0], -1, self.bottom, self.bottom)
        return self.to_image(self.decoder(F.leaky_relu(grid, 0.2)))

    def impression(self, images: torch.Tensor) -> torch.Tensor:
        """The impression h = D(mu(x)) [B, 3, H, W] (the latent mean: no sampling at inference)."""
        return self.decode(self.encode(images)[0])

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Eq. 6 on a batch images [B, 3, H, W] (B >= 2) -> {"total", "mi" (eq. 4), "kl" (eq. 2),
        "rec" (eq. 5)}; eps and the batch shuffle are drawn with `generator` (CPU)."""
        mu, logvar, pooled = self.encode(images)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + (0.5 * logvar).exp() * eps
        positive = self.discriminator(torch.cat([pooled, z], 1)).squeeze(1)
        negative = self.discriminator(torch.cat([pooled, shuffle_codes(z, generator)], 1)).squeeze(1)
        mi = mutual_information_loss(positive, negative)
        kl = kl_to_standard_normal(mu, logvar)
        rec = F.mse_loss(self.decode(z), images)
        alpha, beta, gamma = self.weights
        return {"total": alpha * mi + beta * kl + gamma * rec, "mi": mi, "kl": kl, "rec": rec}


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size], bilinear (antialiased when shrinking); as is if already that size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])
