"""PEDENet's patch-embedding (PE) network (eq. 1)."""
from __future__ import annotations

import torch
from torch import nn

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
