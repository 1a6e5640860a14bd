"""GlanceNet's networks.

    LocalNet    patches [N, 3, K, K] -> Z_l [N, Z]                     (eq. 4)
    GlobalNet   images [N, 3, H, W], hole [N, 1, H, W] -> Z_g [N, Z]     (eq. 6, partial convolutions)
    DADHead     Z*, Z_g [N, Z] -> p [N], probability that Z* is the normal patch's feature (eq. 8)
    PooledTaps  patches [N, 3, K, K] -> R(p) [N, D], a zoo teacher's taps averaged over the patch (eq. 1)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastad.models.glance.boxes import BoxPlan, box_plan, crops, paste
from fastad.nn.partial_conv import PartialConv2d
from fastad.ops.partial_conv import Coverage, partial_conv2d


class LocalNet(nn.Module):
    """A light patch encoder, [N, C, K, K] -> Z_l [N, Z], K a multiple of 8.

    Three 4x4 stride-2 convs after a 3x3 one (`widths` filters, default 16, 32, 64, 64; LeakyReLU 0.1), a
    (K/8)x(K/8) conv to Z channels, then a BatchNorm1d without affine parameters: Z_l is
    standardised per dimension (running statistics in eval mode), so that the IAD score of eq. 11
    has the same scale on every texture and can be mixed with the DAD probability (eq. 13).
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 32, feature_dim: int = 64,
                 widths: tuple[int, int, int, int] = (16, 32, 64, 64)):
        super().__init__()
        if patch_size % 8 or patch_size < 8:
            raise ValueError(f"patch_size must be a positive multiple of 8, got {patch_size}")
        if len(widths) != 4:
            raise ValueError(f"widths must give the 4 hidden conv widths, got {widths}")
        self.patch_size = patch_size
        w = widths
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(w[0], w[1], 4, 2, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(w[1], w[2], 4, 2, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(w[2], w[3], 4, 2, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(w[3], feature_dim, patch_size // 8))
        self.standardize = nn.BatchNorm1d(feature_dim, affine=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [N, C, K, K] (standardised pixels) -> Z_l [N, Z]."""
        if patches.shape[-2:] != (self.patch_size, self.patch_size):
            raise ValueError(f"LocalNet takes {self.patch_size}x{self.patch_size} patches, got "
                             f"{tuple(patches.shape[-2:])}")
        return self.standardize(self.body(patches).flatten(1))


class GlobalNet(nn.Module):
    """Global-Net (eqs. 5, 6): the image outside the patch -> Z_g [N, Z], never reading the patch.

    Every convolution is a fastad.nn.PartialConv2d (3x3, padding 1) fed the current mask
    (1 = visible, 0 = hole), followed by ReLU; after each of the first len(widths) convs a 2x2
    max pooling halves the features and the mask is refreshed with the binarised pooling of the
    mask (a pooled cell is visible when any of its four cells is, i.e. mask avg-pool > 0). One
    more partial conv runs at the lowest resolution (stride 2**len(widths)), where the hole of a
    patch up to 2**len(widths)*2 pixels wide has closed.

    Why the patch cannot leak: a partial conv multiplies its input by the mask before convolving
    and sets every output whose window holds no visible input to exactly 0 (update mask 0); ReLU
    keeps that 0 and max pooling only mixes it with values computed from visible pixels. So at
    every layer the features are functions of the visible pixels alone (tests check this
    bit for bit).

    Readout (the paper leaves it open): the final features are averaged twice over the visible
    cells, once weighted by each cell's share of the patch (the patch's own footprint, so Z_g
    knows where the patch is) and once uniformly (image-wide context); the two [W] vectors are
    concatenated and mapped to Z by a 2-layer MLP.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 64), feature_dim: int = 64):
        super().__init__()
        if len(widths) < 1:
            raise ValueError(f"widths must name at least one conv width, got {widths}")
        chans = (in_channels, *widths)
        self.convs = nn.ModuleList(PartialConv2d(a, b, 3, padding=1, return_mask=True) for a, b in zip(chans, chans[1:]))
        self.last = PartialConv2d(widths[-1], widths[-1], 3, padding=1, return_mask=True)
        self.readout = nn.Sequential(nn.Linear(2 * widths[-1], 2 * widths[-1]), nn.ReLU(),
                                     nn.Linear(2 * widths[-1], feature_dim))
        self.stride = 2 ** len(widths)
        self._plans: dict[tuple, BoxPlan] = {}

    def forward(self, images: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] (standardised pixels), hole [N, 1, H, W] (1 on the patch, 0 elsewhere;
        the paper's M0 = 1 - hole), H, W multiples of self.stride -> Z_g [N, Z]."""
        self._check_size(images.shape[-2:])
        mask = 1.0 - hole.to(images.dtype)
        x = images
        for conv in self.convs:
            x, mask = conv(x, mask)
            x = F.max_pool2d(F.relu(x), 2)
            mask = F.max_pool2d(mask, 2)
        x, mask = self.last(x, mask)
        return self._read_out(F.relu(x), mask, F.avg_pool2d(hole.to(x.dtype), self.stride))

    def forward_shared(self, images: torch.Tensor, corners: torch.Tensor, patch_size: int) -> torch.Tensor:
        """Z_g of the same P square patches in each of B images, sharing what the patches have in common.

        Equal (up to float rounding) to forward(image.expand(P, ...), holes of the patches) per image,
        but cheaper: a hole changes a layer's output only within a box around it (the box grows by
        the 3x3 window at each conv and halves at each pooling), so one unmasked pass over the
        images gives every feature outside the boxes, and each patch recomputes only its box, from
        a crop of the shared input with the patch's own values pasted in. Crops are zero-padded
        like the full convolution's border, so the renormalisation is the same. The boxes are
        kept one size per layer (shifted inward at the image border) so all B * P crops form one
        batch; each box is cut from (and pasted into) all B images with one slice. Where the
        boxes lie and their masks depend on the patch geometry alone: they are built once per
        grid (fastad.models.glance.boxes) and reused for every image.

        Args:
            images: [B, C, H, H] standardised pixels (square), H a multiple of self.stride.
            corners: [P, 2] long, the patches' top-left (row, col).
            patch_size: the patches' side K.
        Returns:
            Z_g [B, P, Z].
        """
        if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be square images [B, C, H, H], got {tuple(images.shape)}")
        self._check_size(images.shape[-2:])
        b, p = images.shape[0], corners.shape[0]
        plan = self._box_plan(corners, patch_size, images.shape[-1], images.device, images.dtype)
        values = crops(images, corners.cpu(), patch_size)                          # [B * P, C, K, K]
        shared = images
        for conv, level in zip([*self.convs, self.last], plan.levels):
            # the conv's input window around the out box, at start - 1, is at start in the 1-padded map
            x = crops(F.pad(shared, (1, 1, 1, 1)), level.start, level.size + 2)
            paste(x, values, level.offset.repeat(b, 1))
            mask, coverage = level.mask, level.coverage
            if b > 1:
                mask = mask.repeat(b, 1, 1, 1)
                coverage = Coverage(coverage.counts.repeat(b, 1, 1, 1), coverage.slide_winsize)
            values = F.relu(partial_conv2d(x, mask, conv.weight, conv.bias, 1, 0, coverage=coverage)[0])
            shared = F.relu(conv(shared, None)[0])
            if conv is not self.last:
                values, shared = F.max_pool2d(values, 2), F.max_pool2d(shared, 2)
        x = shared.repeat_interleave(p, 0)
        paste(x, values, plan.start.repeat(b, 1))
        return self._read_out(x, plan.mask.repeat(b, 1, 1, 1), plan.footprint.repeat(b, 1, 1, 1)).view(b, p, -1)

    def _box_plan(self, corners: torch.Tensor, patch_size: int, side: int, device, dtype) -> BoxPlan:
        """box_plan() of these patches, built once per geometry and kept (a few MB per grid)."""
        key = (corners.cpu().numpy().tobytes(), patch_size, side, str(device), dtype)
        if key not in self._plans:
            if len(self._plans) >= 8:
                self._plans.clear()
            self._plans[key] = box_plan(corners, patch_size, side, [True] * len(self.convs) + [False],
                                        self.last.kernel_size[0], device, dtype)
        return self._plans[key]

    def _check_size(self, size) -> None:
        if size[0] % self.stride or size[1] % self.stride:
            raise ValueError(f"images must have H, W multiples of {self.stride}, got {tuple(size)}")

    def _read_out(self, x: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
        """final features x [N, W, h, w], final mask [N, 1, h, w], footprint [N, 1, h, w] (each
        final cell's share of the patch: the hole average-pooled by the stride) -> Z_g [N, Z]."""
        share = footprint * mask
        local = (x * share).sum((2, 3)) / share.sum((2, 3)).clamp_min(1e-6)
        context = (x * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1e-6)
        return self.readout(torch.cat([local, context], 1))


class DADHead(nn.Module):
    """The DAD head's classifier C (eq. 8): [Z*, Z_g] -> p [N] = P(Z* is the normal patch's feature).

    Three fully connected layers (2Z -> 128 -> 64 -> 1, ReLU) and a sigmoid. The paper's label
    convention is self-contradictory (p is "a positive probability", yet y = 0 for the positive
    patch, and eq. 12 scores 1 - p); we read p as the probability of the normal (positive) patch,
    train it with y = 1 for the normal and y = 0 for the stained patch, and score s_DAD = 1 - p.
    """

    def __init__(self, feature_dim: int = 64, hidden: tuple[int, int] = (128, 64)):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * feature_dim, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]),
                                 nn.ReLU(), nn.Linear(hidden[1], 1))

    def logits(self, z_star: torch.Tensor, z_global: torch.Tensor) -> torch.Tensor:
        """z_star, z_global [N, Z] -> logits [N] of p."""
        return self.net(torch.cat([z_star, z_global], 1)).squeeze(1)

    def forward(self, z_star: torch.Tensor, z_global: torch.Tensor) -> torch.Tensor:
        """z_star, z_global [N, Z] -> p [N] in (0, 1)."""
        return torch.sigmoid(self.logits(z_star, z_global))


class PooledTaps(nn.Module):
    """A frozen zoo backbone as GlanceNet's teacher: patches [N, 3, K, K] in [0, 1] -> R(p)
    [N, D], each tap's map averaged over its cells and the taps concatenated in order (D = the
    taps' channels summed). Stays in eval mode (frozen BatchNorm statistics)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return torch.cat([tap.mean((2, 3)) for tap in self.net(patches).values()], 1)
