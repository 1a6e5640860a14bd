"""How each fastad op becomes standard ONNX: a pure-PyTorch lowering of the op, made only of
operators every ONNX runtime has (MatMul, TopK, Conv, ConvTranspose, Pad, Gather, ...), that
replaces the op in the exported program before the ONNX conversion (run_decompositions).

    op                          lowering (exact up to float32 rounding of a different summation order)
    knn                         bank chunks of KNN_BANK_CHUNK rows: |b|² − 2 q·b by MatMul, TopK of
                                the best k + KNN_RERANK_EXTRA per chunk, TopK across chunks, then the
                                survivors' distances recomputed directly, Σ (q − b)², and TopK k; the
                                N x M matrix never exists, the direct re-rank keeps the distances exact
    gaussian_blur               two 1-D convolutions (rows, then columns) with reflect padding
    patch_average               ConvTranspose of the score grid with a ones kernel (the sums) times a
                                constant 1 / coverage table; uncovered pixels by a constant Gather
    idw_upsample                MatMul with the constant [P, H·W] weight table (the op is linear)
    gaussian_upsample           ConvTranspose with the Gaussian kernel g ⊗ g, then crop / zero-pad
    gmm_log_prob                forward substitution unrolled over D (Mahalanobis), then LogSumExp
    partial_conv_coverage       Conv of the mask with a ones kernel
    partial_conv_renormalize    the elementwise formula (ratio, clamp, bias)

kcenter_coreset and the *_backward ops belong to training and have no lowering: a graph holding
one is refused (UnsupportedOpError), as is any other op of the fastad namespace without a row here.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from fastad import extension
from fastad.ops import PatchGrid, reference

#: bank rows per MatMul chunk of the knn lowering (bounds the [N, chunk] block held at once)
KNN_BANK_CHUNK = 4096
#: candidates kept per chunk beyond k, re-ranked by direct distances (absorbs the expansion's rounding)
KNN_RERANK_EXTRA = 7
#: largest constant weight table (entries) idw_upsample may lower to
MAX_TABLE_ENTRIES = 1 << 26


class UnsupportedOpError(RuntimeError):
    """A graph op (or setting) that has no standard-ONNX lowering; the message names it."""


def knn(query, bank, k, bank_sq_norms=None, precision="auto"):
    """[N, D], [M, D] -> (dist [N, k] ascending, index [N, k] int64), as fastad::knn."""
    if bank_sq_norms is None:
        centre = bank.mean(0)
        query, bank = query - centre, bank - centre
        bank_sq_norms = bank.pow(2).sum(1)
    m = bank.shape[0]
    keep = min(m, k + KNN_RERANK_EXTRA)
    values, indices = [], []
    for start in range(0, m, KNN_BANK_CHUNK):
        block = bank[start:start + KNN_BANK_CHUNK]
        partial = bank_sq_norms[start:start + KNN_BANK_CHUNK] - 2.0 * (query @ block.T)  # |q-b|² - |q|²
        value, index = torch.topk(partial, min(keep, block.shape[0]), dim=1, largest=False)
        values.append(value)
        indices.append(index + start)
    value, index = torch.cat(values, 1), torch.cat(indices, 1)
    if value.shape[1] > keep:
        value, pick = torch.topk(value, keep, dim=1, largest=False)
        index = torch.gather(index, 1, pick)
    direct = (query[:, None, :] - bank[index]).pow(2).sum(2)  # [N, keep]
    direct, pick = torch.topk(direct, k, dim=1, largest=False)
    return direct.sqrt(), torch.gather(index, 1, pick)


def gaussian_blur(maps, sigma, kernel_size):
    """[B, C, H, W] -> [B, C, H, W], as fastad::gaussian_blur (normalised taps, reflect padding)."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma).pow(2))
    taps = (taps / taps.sum()).to(maps.dtype).to(maps.device)
    b, c, h, w = maps.shape
    x = F.pad(maps.reshape(b * c, 1, h, w), (radius,) * 4, mode="reflect")
    x = F.conv2d(F.conv2d(x, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w)


@functools.lru_cache(maxsize=32)
def _grid_tables(patch_size, stride, image_size, out_size):
    """(inverse counts [H, W] float64, source [H·W] int64: each pixel itself when a patch covers it,
    else its nearest covered pixel by squared distance, ties to the first in raster order) of
    patch_average's grid, computed once at export time."""
    (ph, pw), (sh, sw) = patch_size, stride
    grid = PatchGrid(patch_size, stride, image_size)
    counts = torch.zeros(tuple(out_size), dtype=torch.float64)
    for r in range(grid.rows):
        for c in range(grid.cols):
            counts[r * sh:r * sh + ph, c * sw:c * sw + pw] += 1
    known = (counts > 0).reshape(-1)
    source = torch.arange(known.numel())
    if not bool(known.all()):
        yy, xx = torch.meshgrid(torch.arange(out_size[0]), torch.arange(out_size[1]), indexing="ij")
        pixels = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
        sq = (pixels[~known, None, :] - pixels[None, known, :]).pow(2).sum(-1)
        source[~known] = known.nonzero()[:, 0][sq.argmin(1)]
    identity = bool((source == torch.arange(source.numel())).all())
    return 1.0 / counts.clamp_min(1), None if identity else source


def _key(*pairs) -> tuple:
    return tuple(tuple(int(v) for v in pair) for pair in pairs)


def patch_average(scores, patch_size, stride, image_size, out_size):
    """[B, P] -> [B, H, W], as fastad::patch_average."""
    (ph, pw), (sh, sw), (ih, iw) = patch_size, stride, image_size
    rows, cols = (ih - ph) // sh + 1, (iw - pw) // sw + 1
    inverse, source = _grid_tables(*_key(patch_size, stride, image_size, out_size))
    b = scores.shape[0]
    sums = F.conv_transpose2d(scores.reshape(b, 1, rows, cols), scores.new_ones((1, 1, ph, pw)), stride=(sh, sw))
    sums = sums[:, 0, :out_size[0], :out_size[1]]
    sums = F.pad(sums, (0, out_size[1] - sums.shape[2], 0, out_size[0] - sums.shape[1]))
    mean = sums * inverse.to(scores.dtype).to(scores.device)
    if source is None:
        return mean
    return mean.reshape(b, -1)[:, source.to(scores.device)].reshape(b, *out_size)


@functools.lru_cache(maxsize=32)
def _idw_table(patch_size, stride, image_size, out_size, power, radius) -> torch.Tensor:
    """[P, H·W] float64: column j holds pixel j's weights over the patches (the op applied to I_P)."""
    grid = PatchGrid(patch_size, stride, image_size)
    p = grid.num_patches
    if p * out_size[0] * out_size[1] > MAX_TABLE_ENTRIES:
        raise UnsupportedOpError(f"fastad::idw_upsample: its {p} x {out_size[0]}x{out_size[1]} weight table exceeds "
                                 f"{MAX_TABLE_ENTRIES} entries; export at a smaller image_size or a larger stride")
    return reference.idw_upsample(torch.eye(p, dtype=torch.float64), grid, out_size, power, radius).reshape(p, -1)


def idw_upsample(scores, patch_size, stride, image_size, out_size, power, radius):
    """[B, P] -> [B, H, W], as fastad::idw_upsample: one MatMul with the op's weight table."""
    table = _idw_table(*_key(patch_size, stride, image_size, out_size), float(power),
                       None if radius is None else float(radius))
    return (scores @ table.to(scores.dtype).to(scores.device)).reshape(-1, out_size[0], out_size[1])


def gaussian_upsample(heatmap, out_size, receptive_field, stride, start, sigma):
    """[B, C, h, w] -> [B, C, H, W], as fastad::gaussian_upsample: ConvTranspose with g ⊗ g, then
    the output shifted to unit 0's first tap and cropped or zero-extended to out_size."""
    first = math.ceil(start - (receptive_field - 1) / 2)  # pixel of unit 0's first tap
    last = math.floor(start + (receptive_field - 1) / 2)
    offsets = torch.arange(first, last + 1, dtype=torch.float64) - start
    taps = torch.exp(-0.5 * (offsets / sigma).pow(2)).to(heatmap.dtype).to(heatmap.device)
    b, c, h, w = heatmap.shape
    full = F.conv_transpose2d(heatmap.reshape(b * c, 1, h, w), torch.outer(taps, taps)[None, None], stride=stride)
    full = full[:, :, max(0, -first):, max(0, -first):]          # out[y] = full[y - first]
    full = F.pad(full, (max(0, first), 0, max(0, first), 0))
    full = full[:, :, :out_size[0], :out_size[1]]
    full = F.pad(full, (0, out_size[1] - full.shape[3], 0, out_size[0] - full.shape[2]))
    return full.reshape(b, c, out_size[0], out_size[1])


def gmm_log_prob(z, log_phi, mu, scale_tril, per_component=False):
    """[N, D] -> [N] (or [N, K]), as fastad::gmm_log_prob, by forward substitution over D."""
    factor = torch.tril(scale_tril)
    diff = z.t().unsqueeze(0) - mu.unsqueeze(2)  # [K, D, N]
    solved = []
    for i in range(z.shape[1]):
        row = diff[:, i]
        for j, y in enumerate(solved):
            row = row - factor[:, i, j, None] * y
        solved.append(row / factor[:, i, i, None])
    mahalanobis = torch.stack(solved, 1).pow(2).sum(1).t()  # [N, K]
    log_det = factor.diagonal(dim1=1, dim2=2).log().sum(1)
    per_term = log_phi - 0.5 * mahalanobis - log_det - 0.5 * z.shape[1] * math.log(2 * math.pi)
    return per_term if per_component else torch.logsumexp(per_term, dim=1)


def partial_conv_coverage(mask, kernel_size, stride, padding, dilation, groups):
    return reference.partial_conv_coverage(mask, tuple(kernel_size), tuple(stride), tuple(padding),
                                           tuple(dilation), groups)


def partial_conv_renormalize(raw, coverage, bias, slide_winsize):
    return reference.partial_conv_renormalize(raw, coverage, bias, slide_winsize)


LOWERINGS = {
    "knn": knn, "gaussian_blur": gaussian_blur, "patch_average": patch_average, "idw_upsample": idw_upsample,
    "gaussian_upsample": gaussian_upsample, "gmm_log_prob": gmm_log_prob,
    "partial_conv_coverage": partial_conv_coverage, "partial_conv_renormalize": partial_conv_renormalize,
}


def decomposition_table() -> dict:
    """{torch.ops.fastad.<op>.default: lowering} for run_decompositions."""
    if not extension.loaded():  # no fastad op can be in a graph (the reference backend's are plain torch)
        return {}
    return {getattr(torch.ops.fastad, name).default: fn for name, fn in LOWERINGS.items()}


def build_tables(program) -> None:
    """Computes the constant tables of the program's patch_average / idw_upsample nodes now, on
    real tensors (run_decompositions traces the lowerings on fake ones, which cannot compute them)."""
    for node in program.graph.nodes:
        name = str(node.target)
        if name == "fastad.patch_average.default":
            _grid_tables(*_key(*node.args[1:5]))
        elif name == "fastad.idw_upsample.default":
            power, radius = node.args[5], node.args[6] if len(node.args) > 6 else None
            _idw_table(*_key(*node.args[1:5]), float(power), None if radius is None else float(radius))


def remaining_fastad_ops(program) -> list[str]:
    """Names of the fastad:: ops still in an exported program's graph (those without a lowering)."""
    return sorted({str(node.target) for node in program.graph.nodes
                   if node.op == "call_function" and str(node.target).startswith("fastad.")})
