"""Pure-PyTorch reference implementations of fastad's ops.

They define what each op computes: the tests compare the kernels against them, the benchmarks
time them as the baseline, and fastad.set_backend("reference") runs them instead of the
compiled kernels. Written for clarity and exactness, not speed.
"""
from __future__ import annotations

import torch

KNN_QUERY_CHUNK = 1024


def knn(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query [N, D], bank [M, D] -> (dist [N, k] ascending, index [N, k] int64), ties to the
    lower index. Distances are computed directly (no |q|² − 2q·b + |b|² expansion), a chunk of
    queries at a time."""
    dists, indices = [], []
    for chunk in query.split(KNN_QUERY_CHUNK):
        d = torch.cdist(chunk, bank, compute_mode="donot_use_mm_for_euclid_dist")
        d, i = torch.sort(d, dim=1, stable=True)
        dists.append(d[:, :k])
        indices.append(i[:, :k])
    if not dists:
        return query.new_empty((0, k)), torch.empty((0, k), dtype=torch.long, device=query.device)
    return torch.cat(dists), torch.cat(indices)


def kcenter_coreset(features: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """features [M, D] -> index [n]: greedy k-center from row `start`, ties to the lower index,
    chosen rows never chosen again."""
    chosen = torch.empty(n, dtype=torch.long, device=features.device)
    min_dist = torch.full((features.shape[0],), float("inf"), dtype=torch.float64, device=features.device)
    centre = start
    for step in range(n):
        chosen[step] = centre
        sq = (features - features[centre]).double().pow(2).sum(1)
        min_dist = torch.minimum(min_dist, sq)
        min_dist[chosen[: step + 1]] = -1.0
        centre = int(torch.argmax(min_dist))  # the first maximum
    return chosen


# --- partial convolution (fastad.ops.partial_conv): NVIDIA PartialConv2d semantics --------------
# Written from the formula of Liu et al. 2018 as NVIDIA's layer evaluates it: the coverage is a
# convolution of the mask with a ones kernel, the raw output a convolution of input ⊙ mask with
# the bias, then (raw − b)·ratio + b, masked by the clamped coverage.

PARTIAL_CONV_EPS = 1e-8


def partial_conv_coverage(mask: torch.Tensor, kernel_size, stride, padding, dilation, groups: int) -> torch.Tensor:
    """mask [B, C, H, W] -> coverage [B, groups, Ho, Wo]: conv2d of the mask with a ones kernel
    [groups, C / groups, kH, kW] (each group's channels summed over the kernel window)."""
    ones = mask.new_ones((groups, mask.shape[1] // groups, *kernel_size))
    return torch.nn.functional.conv2d(mask, ones, None, stride, padding, dilation, groups)


def partial_conv_renormalize(raw: torch.Tensor, coverage: torch.Tensor, bias: torch.Tensor | None, slide_winsize: float):
    """raw [B, Co, Ho, Wo] (conv of input ⊙ mask WITHOUT bias), coverage [B or 1, G, Ho, Wo]
    -> (out [B, Co, Ho, Wo], update_mask [B or 1, G, Ho, Wo]).

    ratio = slide_winsize / (coverage + 1e-8) · clamp(coverage, 0, 1);
    out = (raw · ratio + bias) · clamp(coverage, 0, 1), or raw · ratio without bias."""
    update = torch.clamp(coverage, 0, 1)
    ratio = slide_winsize / (coverage + PARTIAL_CONV_EPS) * update
    per_group = raw.shape[1] // coverage.shape[1]
    ratio_c = ratio.repeat_interleave(per_group, dim=1)
    if bias is None:
        return raw * ratio_c, update
    update_c = update.repeat_interleave(per_group, dim=1)
    return (raw * ratio_c + bias.view(1, -1, 1, 1)) * update_c, update


def partial_conv2d(input: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   stride=1, padding=0, dilation=1, groups: int = 1, multi_channel: bool = False):
    """NVIDIA's two-convolution partial convolution. input [B, Cin, H, W]; mask [B or 1, 1, H, W]
    (or [B or 1, Cin, H, W] when multi_channel), None for all ones; weight [Co, Cin/groups, kH, kW].

    Returns (out [B, Co, Ho, Wo], update_mask): update_mask is [B or 1, 1, Ho, Wo], or
    [B, Co, Ho, Wo] when multi_channel (all channels equal, as NVIDIA's layer returns it).
    Coverage is counted per group: slide_winsize = (Cin/groups if multi_channel else 1)·kH·kW;
    with groups=1 this is exactly NVIDIA's count.
    """
    pair = torch.nn.modules.utils._pair
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    kernel = tuple(weight.shape[2:])
    in_channels = input.shape[1]
    if mask is None:
        shape = (input.shape[0], in_channels, *input.shape[2:]) if multi_channel else (1, 1, *input.shape[2:])
        mask = input.new_ones(shape)
        masked = input
    else:
        mask = mask.to(input.dtype)
        masked = input * mask
    coverage_groups = groups if multi_channel else 1
    coverage = partial_conv_coverage(mask, kernel, stride, padding, dilation, coverage_groups)
    slide = (in_channels // groups if multi_channel else 1) * kernel[0] * kernel[1]
    raw = torch.nn.functional.conv2d(masked, weight, bias, stride, padding, dilation, groups)
    ratio = slide / (coverage + PARTIAL_CONV_EPS)
    update = torch.clamp(coverage, 0, 1)
    ratio = ratio * update
    per_group = weight.shape[0] // coverage_groups
    ratio_c, update_c = ratio.repeat_interleave(per_group, 1), update.repeat_interleave(per_group, 1)
    if bias is None:
        out = raw * ratio_c
    else:
        b = bias.view(1, -1, 1, 1)
        out = ((raw - b) * ratio_c + b) * update_c
    return out, (update_c if multi_channel else update)
