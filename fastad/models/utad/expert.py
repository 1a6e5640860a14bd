"""UTAD's second stage, the Expert-Net (sec. 3.2, after MUNIT): it learns the invertible mapping
between an image x and its impression h.

    x_hat = G_x(E_h(h), d(x))     the high-fidelity, anomaly-free reconstruction
    h_tilde = G_h(E_x(x), d(h))   the naive impression (mimics IE-Net directly from x)

with d the detail extractor and G_* decoders whose AdaIN parameters (eq. 7) an MLP predicts from
the detail vector.

    expert = ExpertNet()
    out = expert(x, h)            # ExpertOutput(reconstruction, naive_impression, detail)
    losses = expert.loss(x, h)    # {"total", "rec", "naive", "detail"}

Decisions where the paper is vague:
- The naive-impression decoder is guided by the impression's own detail vector d(h) (the mapping
  is symmetric: each decoder gets the details of the image it draws).
- Losses: rec = |x_hat - x|_1, naive = |h_tilde - h|_1 (means over pixels), and the detail
  consistency detail = |d(x_hat) - d(x)|_1 (mean over the vector) with d(x) held fixed as the
  target; total = rec + naive + lambda_detail * detail.
- Encoders: a 7x7 conv then three 4x4 stride-2 convs (4 conv blocks, instance-normalised, ReLU)
  and 2 residual blocks; decoders: 2 AdaIN residual blocks, three (2x nearest upsampling, 3x3
  conv, layer norm, ReLU) blocks and a 7x7 conv with sigmoid (4 conv blocks), as MUNIT but with
  outputs in (0, 1) like the images.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_instance_norm(a: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Eq. 7: a [B, C, H, W], gamma and beta [B, C] -> gamma * (a - mu(a)) / sigma(a) + beta, with
    mu, sigma the per-sample, per-channel mean and standard deviation over H, W
    (sigma = sqrt(biased variance + eps))."""
    mean = a.mean((2, 3), keepdim=True)
    std = (a.var((2, 3), unbiased=False, keepdim=True) + eps).sqrt()
    return gamma[:, :, None, None] * (a - mean) / std + beta[:, :, None, None]


class ResidualBlock(nn.Module):
    """[B, C, H, W] -> x + conv-IN-ReLU-conv-IN(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AdaINResidualBlock(nn.Module):
    """[B, C, H, W], AdaIN parameters [B, 4C] (gamma1, beta1, gamma2, beta2) -> [B, C, H, W]:
    x + AdaIN(conv(ReLU(AdaIN(conv(x)))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = params.split(self.channels, 1)
        y = F.relu(adaptive_instance_norm(self.conv1(x), g1, b1))
        return x + adaptive_instance_norm(self.conv2(y), g2, b2)


class ContentEncoder(nn.Module):
    """[B, 3, H, W] -> [B, 4w, H/8, W/8]: 4 conv blocks (7x7 to w, then 4x4 stride 2 to 2w, 4w, 4w)
    with instance norm and ReLU, then 2 residual blocks."""

    def __init__(self, width: int = 16, n_residual: int = 2):
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for cin, cout, k, s, p in ((3, w, 7, 1, 3), (w, 2 * w, 4, 2, 1), (2 * w, 4 * w, 4, 2, 1), (4 * w, 4 * w, 4, 2, 1)):
            layers += [nn.Conv2d(cin, cout, k, s, p), nn.InstanceNorm2d(cout), nn.ReLU()]
        layers += [ResidualBlock(4 * w) for _ in range(n_residual)]
        self.net = nn.Sequential(*layers)
        self.out_channels = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DetailExtractor(nn.Module):
    """[B, 3, H, W] -> detail vector [B, D]: three 4x4 stride-2 convs (w, 2w, D channels, ReLU
    between) and adaptive average pooling to 1x1."""

    def __init__(self, width: int = 16, detail_dim: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(),
                                 nn.Conv2d(2 * width, detail_dim, 4, 2, 1), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class AdaINDecoder(nn.Module):
    """(content [B, C, h, w], detail [B, D]) -> image [B, 3, 8h, 8w] in (0, 1): 2 AdaIN residual
    blocks (parameters from a 3-layer MLP on the detail vector; gamma = 1 + MLP output), three
    (2x nearest upsample, 3x3 conv, layer norm, ReLU) blocks halving the channels, 7x7 conv, sigmoid."""

    def __init__(self, channels: int = 64, detail_dim: int = 16, mlp_hidden: int = 64, n_residual: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(AdaINResidualBlock(channels) for _ in range(n_residual))
        self.mlp = nn.Sequential(nn.Linear(detail_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU(),
                                 nn.Linear(mlp_hidden, 4 * channels * n_residual))
        layers: list[nn.Module] = []
        c = channels
        for _ in range(3):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c, c // 2, 3, padding=1), nn.GroupNorm(1, c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.Conv2d(c, 3, 7, padding=3), nn.Sigmoid()]
        self.up = nn.Sequential(*layers)
        self.channels = channels

    def adain_parameters(self, detail: torch.Tensor) -> list[torch.Tensor]:
        """detail [B, D] -> one [B, 4C] (gamma1, beta1, gamma2, beta2) per AdaIN residual block."""
        params = self.mlp(detail).split(4 * self.channels, 1)
        c = self.channels
        # the MLP predicts gamma - 1 so that an untrained decoder starts near plain instance norm
        offset = torch.cat([torch.ones(c), torch.zeros(c), torch.ones(c), torch.zeros(c)]).to(detail)
        return [p + offset for p in params]

    def forward(self, content: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        x = content
        for block, params in zip(self.blocks, self.adain_parameters(detail)):
            x = block(x, params)
        return self.up(x)


class ExpertOutput(NamedTuple):
    """reconstruction x_hat, naive_impression h_tilde [B, 3, H, W]; detail d(x) [B, D]."""

    reconstruction: torch.Tensor
    naive_impression: torch.Tensor
    detail: torch.Tensor


class ExpertNet(nn.Module):
    """Expert-Net: detail extractor d, encoders E_h (impression) and E_x (image), decoders G_x and G_h.

    Args:
        width: w, the encoders' first width (content maps have 4w channels); decoders mirror it.
        detail_dim: D, the detail vector's length.
        detail_width: the detail extractor's first width (it is smaller than the encoders).
        mlp_hidden: hidden width of the AdaIN-parameter MLPs.
        n_residual: residual blocks per encoder and decoder (the paper: 2).
        lambda_detail: weight of the detail-consistency loss.
    """

    def __init__(self, width: int = 16, detail_dim: int = 16, detail_width: int = 16, mlp_hidden: int = 64,
                 n_residual: int = 2, lambda_detail: float = 1.0):
        super().__init__()
        self.detail = DetailExtractor(detail_width, detail_dim)
        self.encode_impression = ContentEncoder(width, n_residual)
        self.encode_image = ContentEncoder(width, n_residual)
        channels = self.encode_impression.out_channels
        self.decode_image = AdaINDecoder(channels, detail_dim, mlp_hidden, n_residual)
        self.decode_impression = AdaINDecoder(channels, detail_dim, mlp_hidden, n_residual)
        self.lambda_detail = lambda_detail

    def forward(self, images: torch.Tensor, impressions: torch.Tensor) -> ExpertOutput:
        """images x, impressions h [B, 3, H, W] (H, W divisible by 8) -> ExpertOutput."""
        if images.shape != impressions.shape or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images and impressions must both be [B, 3, H, W], got {tuple(images.shape)} and "
                             f"{tuple(impressions.shape)}")
        if images.shape[2] % 8 or images.shape[3] % 8:
            raise ValueError(f"images' height and width must be divisible by 8, got {tuple(images.shape[2:])}")
        detail = self.detail(images)
        reconstruction = self.decode_image(self.encode_impression(impressions), detail)
        naive = self.decode_impression(self.encode_image(images), self.detail(impressions))
        return ExpertOutput(reconstruction, naive, detail)

    def loss(self, images: torch.Tensor, impressions: torch.Tensor) -> dict[str, torch.Tensor]:
        """images x, impressions h [B, 3, H, W] -> {"total", "rec" |x_hat - x|_1, "naive"
        |h_tilde - h|_1, "detail" |d(x_hat) - d(x)|_1} (means)."""
        out = self(images, impressions)
        rec = (out.reconstruction - images).abs().mean()
        naive = (out.naive_impression - impressions).abs().mean()
        detail = (self.detail(out.reconstruction) - out.detail.detach()).abs().mean()
        return {"total": rec + naive + self.lambda_detail * detail, "rec": rec, "naive": naive, "detail": detail}
