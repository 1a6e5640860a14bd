"""Pure-PyTorch reference implementations of fastad's ops.

They define what each op computes: the tests compare the kernels against them, the benchmarks
time them as the baseline, and fastad.set_backend("reference") runs them instead of the
compiled kernels. Written for clarity and exactness, not speed.
"""
from __future__ import annotations

import math

import torch

KNN_QUERY_CHUNK = 1024


def knn(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query [N, D], bank [M, D] -> (dist [N, k] ascending, index [N, k] int64): the k smallest
    float64 distances, ties to the lower index, NaN counting as +inf. Distances are computed
    directly (no |q|² − 2q·b + |b|² expansion), a chunk of queries at a time."""
    dists, indices = [], []
    bank64 = bank.double()
    for chunk in query.split(KNN_QUERY_CHUNK):
        d = torch.cdist(chunk.double(), bank64, compute_mode="donot_use_mm_for_euclid_dist")
        d, i = torch.sort(torch.nan_to_num(d, nan=math.inf, posinf=math.inf), dim=1, stable=True)
        dists.append(d[:, :k].to(query.dtype))
        indices.append(i[:, :k])
    if not dists:
        return query.new_empty((0, k)), torch.empty((0, k), dtype=torch.long, device=query.device)
    return torch.cat(dists), torch.cat(indices)


def kcenter_coreset(features: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """features [M, D] -> index [n]: greedy k-center from row `start` on float64 squared
    distances (NaN counting as +inf), ties to the lower index, chosen rows never chosen again."""
    chosen = torch.empty(n, dtype=torch.long, device=features.device)
    min_dist = torch.full((features.shape[0],), float("inf"), dtype=torch.float64, device=features.device)
    features64 = features.double()
    centre = start
    for step in range(n):
        chosen[step] = centre
        sq = torch.nan_to_num((features64 - features64[centre]).pow(2).sum(1), nan=math.inf, posinf=math.inf)
        min_dist = torch.minimum(min_dist, sq)
        min_dist[chosen[: step + 1]] = -1.0
        centre = int(torch.argmax(min_dist))  # the first maximum
    return chosen


# --- gmm: gmm_log_prob, gmm_params -------------------------------------------------------------


def gmm_log_prob(z: torch.Tensor, log_phi: torch.Tensor, mu: torch.Tensor, scale_tril: torch.Tensor,
                 per_component: bool = False) -> torch.Tensor:
    """z [N, D], log_phi [K], mu [K, D], scale_tril [K, D, D] (lower triangle read) -> [N]
    log Σ_k φ_k N(z | μ_k, L_k L_kᵀ), or [N, K] of the per-component terms. The straightforward
    batched formula: one [K, D, N] triangular solve, then a logsumexp."""
    factor = torch.tril(scale_tril)
    diff = (z.t().unsqueeze(0) - mu.unsqueeze(2))  # [K, D, N]
    y = torch.linalg.solve_triangular(factor, diff, upper=False)
    mahalanobis = y.pow(2).sum(1).t()  # [N, K]
    log_det = factor.diagonal(dim1=1, dim2=2).log().sum(1)
    half_d_log_2pi = 0.5 * z.shape[1] * math.log(2 * math.pi)
    per_term = log_phi - 0.5 * mahalanobis - log_det - half_d_log_2pi
    return per_term if per_component else torch.logsumexp(per_term, dim=1)


def gmm_params(z: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-6):
    """z [N, D], gamma [N, K] -> (phi [K], mu [K, D], sigma [K, D, D]) of eqs. 3–5 with eps·I
    added, through the [N, K, D] deviations z_n − μ_k."""
    weight = gamma.sum(0)
    denom = weight.clamp_min(torch.finfo(z.dtype).tiny)
    mu = torch.einsum("nk,nd->kd", gamma, z) / denom[:, None]
    diff = z[:, None, :] - mu[None]  # [N, K, D]
    sigma = torch.einsum("nk,nkd,nke->kde", gamma, diff, diff) / denom[:, None, None]
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return weight / z.shape[0], mu, sigma + eps * eye


# --- score-map upsampling: gaussian_upsample, patch_average, idw_upsample, gaussian_blur -------
# Grids are duck-typed: anything with (height, width) pairs patch_size, stride and image_size.


def gaussian_upsample(heatmap: torch.Tensor, out_size, receptive_field: int, stride: int, start: float,
                      sigma: float) -> torch.Tensor:
    """heatmap [B, C, h, w] -> [B, C, H, W]: the full 2-D transposed convolution with the Gaussian
    kernel g ⊗ g, placed so that unit i's taps land on the pixels within (r - 1)/2 of
    stride*i + start, then cropped (or zero-extended) to out_size."""
    b, c, h, w = heatmap.shape
    first = math.ceil(start - (receptive_field - 1) / 2)  # pixel of unit 0's first tap
    last = math.floor(start + (receptive_field - 1) / 2)
    offsets = torch.arange(first, last + 1, dtype=torch.float64) - start
    taps = torch.exp(-0.5 * (offsets / sigma).pow(2)).to(heatmap.dtype).to(heatmap.device)
    kernel = torch.outer(taps, taps)[None, None]
    full = torch.nn.functional.conv_transpose2d(heatmap.reshape(b * c, 1, h, w), kernel, stride=stride)
    out = heatmap.new_zeros((b * c, 1, out_size[0], out_size[1]))
    # out[y] = full[y - first] where both exist
    ys, yf = max(0, first), max(0, -first)
    xs, xf = ys, yf
    hn = min(out_size[0] - ys, full.shape[2] - yf)
    wn = min(out_size[1] - xs, full.shape[3] - xf)
    if hn > 0 and wn > 0:
        out[:, :, ys:ys + hn, xs:xs + wn] = full[:, :, yf:yf + hn, xf:xf + wn]
    return out.reshape(b, c, out_size[0], out_size[1])


def _patch_spans(grid) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) pixel spans of the grid's patches in raster order."""
    (ph, pw), (sh, sw), (ih, iw) = grid.patch_size, grid.stride, grid.image_size
    rows, cols = (ih - ph) // sh + 1, (iw - pw) // sw + 1
    return [(r * sh, r * sh + ph, c * sw, c * sw + pw) for r in range(rows) for c in range(cols)]


def _fill_from_nearest(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """values [B, H, W]; every pixel where known [H, W] is False takes the value of the nearest
    known pixel (squared Euclidean distance, ties to the first in raster order)."""
    if bool(known.all()):
        return values
    yy, xx = torch.meshgrid(torch.arange(known.shape[0]), torch.arange(known.shape[1]), indexing="ij")
    pixels = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    known_pixels = pixels[known.reshape(-1)]
    unknown = (~known).reshape(-1).nonzero().squeeze(1)
    sq = (pixels[unknown, None, :] - known_pixels[None, :, :]).pow(2).sum(-1)
    source = known_pixels[sq.argmin(1)]
    flat = values.reshape(values.shape[0], -1).clone()
    flat[:, unknown] = flat[:, source[:, 0] * known.shape[1] + source[:, 1]]
    return flat.reshape(values.shape)


def patch_average(patch_scores: torch.Tensor, grid, out_size) -> torch.Tensor:
    """patch_scores [B, P] -> [B, H, W]: an explicit loop over the patches accumulating sums and
    counts; uncovered pixels then take their nearest covered pixel's value."""
    b = patch_scores.shape[0]
    sums = patch_scores.new_zeros((b, out_size[0], out_size[1]))
    counts = torch.zeros(out_size, dtype=torch.long)
    for p, (y0, y1, x0, x1) in enumerate(_patch_spans(grid)):
        sums[:, y0:y1, x0:x1] += patch_scores[:, p, None, None]
        counts[y0:y1, x0:x1] += 1
    known = counts > 0
    mean = sums / counts.clamp_min(1).to(sums.device, sums.dtype)
    return _fill_from_nearest(mean, known)


def idw_upsample(patch_scores: torch.Tensor, grid, out_size, power: float, radius: float | None) -> torch.Tensor:
    """patch_scores [B, P] -> [B, H, W]: brute-force inverse-distance weighting over all P centres.
    Contributing centres: those whose patch covers the pixel (radius None) or within radius;
    w = 1/d^power; a pixel on a contributing centre takes its score; a pixel with no
    contributing centre takes its nearest centre's score (ties to the lower patch index)."""
    (ph, pw), (sh, sw), (ih, iw) = grid.patch_size, grid.stride, grid.image_size
    rows, cols = (ih - ph) // sh + 1, (iw - pw) // sw + 1
    dtype, device = patch_scores.dtype, patch_scores.device
    cy = torch.arange(rows, dtype=dtype, device=device) * sh + (ph - 1) / 2
    cx = torch.arange(cols, dtype=dtype, device=device) * sw + (pw - 1) / 2
    centres = torch.stack(torch.meshgrid(cy, cx, indexing="ij"), -1).reshape(-1, 2)  # [P, 2]
    yy, xx = torch.meshgrid(torch.arange(out_size[0], dtype=dtype, device=device),
                            torch.arange(out_size[1], dtype=dtype, device=device), indexing="ij")
    pixels = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)  # [N, 2]
    diff = pixels[:, None, :] - centres[None, :, :]
    sq = diff.pow(2).sum(-1)  # [N, P]
    if radius is None:
        half = torch.tensor([(ph - 1) / 2, (pw - 1) / 2], dtype=dtype, device=device)
        mask = (diff.abs() <= half).all(-1)
    else:
        mask = sq <= radius * radius
    # relative to the nearest contributing centre, so a large power neither overflows nor underflows
    closest = torch.where(mask, sq, torch.inf).amin(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    weights = torch.where(mask, (sq / closest).clamp_min(torch.finfo(dtype).tiny).pow(-power / 2), 0.0)
    hit = mask & (sq == 0)
    weights = torch.where(hit.any(1, keepdim=True), hit.to(dtype), weights)
    none = ~mask.any(1)
    nearest = torch.nn.functional.one_hot(sq.argmin(1), centres.shape[0]).to(dtype)
    weights = torch.where(none[:, None], nearest, weights)
    weights = weights / weights.sum(1, keepdim=True)
    return (patch_scores @ weights.T).reshape(-1, out_size[0], out_size[1])


def gaussian_blur(maps: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """maps [B, C, H, W] -> [B, C, H, W]: reflect padding, then one 2-D convolution with the
    normalised kernel_size x kernel_size Gaussian."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma).pow(2))
    kernel = torch.outer(taps, taps)
    kernel = (kernel / kernel.sum()).to(maps.dtype).to(maps.device)[None, None]
    b, c, h, w = maps.shape
    padded = torch.nn.functional.pad(maps.reshape(b * c, 1, h, w), (radius,) * 4, mode="reflect")
    return torch.nn.functional.conv2d(padded, kernel).reshape(b, c, h, w)


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
