"""Score-map upsampling operators: FCDD's Gaussian receptive-field upsampling, patch averaging
(PEDENet, Patch-SVDD), inverse-distance weighting (GlanceNet) and a separable Gaussian blur.

Each op is linear in its tensor input and differentiable: its backward is the adjoint, run by
its own compiled op (fastad::<op>_backward, CPU and CUDA), which is differentiable in turn.

Pixel coordinates: pixel (y, x) sits at (y, x); a patch grid's patch (r, c) covers pixels
[r*stride, r*stride + patch) x [c*stride, c*stride + patch) and is centred at
(r*stride + (patch-1)/2, c*stride + (patch-1)/2). Patches are numbered in raster order,
p = r * cols + c. NaN and Inf are not checked (these ops run in training loops): they spread
to every output they touch, as in any linear map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastad.ops.autocast import float32_under_autocast, register_float32_autocast
from fastad.ops import fake
from fastad import extension
from fastad.backend import use_reference
from fastad.ops import reference
from fastad.checks import check_float, check_int, check_pair, check_real, check_tensor


@dataclass(frozen=True)
class PatchGrid:
    """The raster grid of patches a patch-scoring method scores.

    patch_size, stride, image_size: an int or an (height, width) pair each, normalised to pairs.
    rows = (image_h - patch_h) // stride_h + 1 patches per column, cols likewise; P = rows * cols
    in raster order. Patches at stride > patch leave gaps; a grid that does not reach the last
    pixels leaves them uncovered (see patch_average and idw_upsample for what those get).
    """

    patch_size: tuple[int, int]
    stride: tuple[int, int]
    image_size: tuple[int, int]

    def __init__(self, patch_size, stride, image_size):
        patch, step, image = check_pair("patch_size", patch_size), check_pair("stride", stride), check_pair("image_size", image_size)
        if patch[0] > image[0] or patch[1] > image[1]:
            raise ValueError(f"patch_size {patch} must fit in image_size {image}")
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "stride", step)
        object.__setattr__(self, "image_size", image)

    @property
    def rows(self) -> int:
        return (self.image_size[0] - self.patch_size[0]) // self.stride[0] + 1

    @property
    def cols(self) -> int:
        return (self.image_size[1] - self.patch_size[1]) // self.stride[1] + 1

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    def centres(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """[P, 2] patch centres (y, x) in pixel coordinates, raster order."""
        cy = torch.arange(self.rows, dtype=dtype, device=device) * self.stride[0] + (self.patch_size[0] - 1) / 2
        cx = torch.arange(self.cols, dtype=dtype, device=device) * self.stride[1] + (self.patch_size[1] - 1) / 2
        return torch.stack(torch.meshgrid(cy, cx, indexing="ij"), -1).reshape(-1, 2)


@float32_under_autocast
def gaussian_upsample(heatmap: torch.Tensor, out_size, receptive_field: int, stride: int, start: float,
                      sigma: float = 12.0) -> torch.Tensor:
    """FCDD's receptive-field upsampling (Liznerski et al., ICLR 2021).

    Args:
        heatmap: [B, C, h, w] float32/float64 low-resolution scores (C is 1 for FCDD).
        out_size: int or (H, W), the output (network input) size.
        receptive_field: the receptive-field extent r of one low-resolution unit, in pixels.
        stride: the network's total stride j.
        start: the receptive-field centre of unit 0, in pixels (may be a half-integer).
        sigma: standard deviation of the Gaussian, in pixels (FCDD uses 12 on MVTec-AD).

    Returns:
        [B, C, H, W]: out[y, x] = Σ_{i,j} heatmap[i, j] g(y - c_i) g(x - c_j), c_i = stride*i + start,
        g(d) = exp(-d² / 2σ²) for |d| <= (r - 1)/2, else 0 (unnormalised: a lone 1 peaks at 1 when
        its centre is a pixel). A unit thus covers r pixels when start - (r - 1)/2 is an integer
        (always so for the geometry from_network derives), r - 1 otherwise. This is a transposed convolution with a Gaussian kernel, cropped to
        (H, W); it runs as two 1-D passes. Use ScoreMapUpsampler.from_network to get r, j, start.
    """
    check_tensor("heatmap", heatmap, 4, "[B, C, h, w]")
    check_float("heatmap", heatmap, cuda_float64=True)
    if heatmap.shape[2] < 1 or heatmap.shape[3] < 1:
        raise ValueError(f"heatmap must have h, w >= 1, got {tuple(heatmap.shape)}")
    size = check_pair("out_size", out_size)
    check_int("receptive_field", receptive_field, 1)
    check_int("stride", stride, 1)
    start = check_real("start", start)
    sigma = check_real("sigma", sigma, 0.0, strict=True)
    if use_reference():
        return reference.gaussian_upsample(heatmap, size, receptive_field, stride, start, sigma)
    extension.require("gaussian_upsample")
    return torch.ops.fastad.gaussian_upsample(heatmap, list(size), receptive_field, stride, start, sigma)


@float32_under_autocast
def patch_average(patch_scores: torch.Tensor, grid: PatchGrid, out_size=None) -> torch.Tensor:
    """Pixel score = mean score of the patches covering the pixel (PEDENet sec. 3.3, Patch-SVDD).

    Args:
        patch_scores: [B, P] float32/float64, P = grid.num_patches in raster order.
        grid: the PatchGrid the scores belong to.
        out_size: int or (H, W), default grid.image_size. The map covers pixels [0, H) x [0, W)
            of the grid's pixel coordinates (no rescaling).

    Returns:
        [B, H, W]. A pixel no patch covers (in a gap at stride > patch, past the grid's last patch,
        or beyond the image) takes the value of its nearest covered pixel of the map (Euclidean;
        the covered pixels form a product set, so per axis; ties to the lower coordinate). A pixel
        in no gap on either axis is therefore exactly the score of its nearest patch.
    """
    size = _check_patch_scores("patch_scores", patch_scores, grid, out_size)
    if use_reference():
        return reference.patch_average(patch_scores, grid, size)
    extension.require("patch_average")
    return torch.ops.fastad.patch_average(patch_scores, *_grid_args(grid), list(size))


@float32_under_autocast
def idw_upsample(patch_scores: torch.Tensor, grid: PatchGrid, out_size=None, power: float = 2.0,
                 radius: float | None = None) -> torch.Tensor:
    """Inverse-distance-weighted score map ("Glancing at the Patch", sec. 3.3).

    Args:
        patch_scores: [B, P] float32/float64, P = grid.num_patches in raster order.
        grid: the PatchGrid the scores belong to.
        out_size: int or (H, W), default grid.image_size; pixels [0, H) x [0, W) of the grid's
            pixel coordinates (no rescaling).
        power: the distance exponent, >= 0.
        radius: centres within this Euclidean distance (pixels, >= 0) contribute; None (default):
            the centres of the patches covering the pixel.

    Returns:
        [B, H, W], pixel value Σ w_p s_p / Σ w_p with w_p = 1/|x - c_p|^power over the contributing
        centres. A pixel on a contributing centre takes that centre's score exactly; a pixel with
        no contributing centre takes its nearest centre's score (ties to the lower patch index).
        The kernels find the contributing centres arithmetically from the grid (per-axis ranges),
        never by scanning all P. Differentiable in patch_scores (the weights depend only on
        geometry); on CUDA the backward sums with atomics, so its last bits can vary between runs
        (it raises under torch.use_deterministic_algorithms(True)).
    """
    size = _check_patch_scores("patch_scores", patch_scores, grid, out_size)
    power = check_real("power", power, 0.0)
    if radius is not None:
        radius = check_real("radius", radius, 0.0)
    if use_reference():
        return reference.idw_upsample(patch_scores, grid, size, power, radius)
    extension.require("idw_upsample")
    return torch.ops.fastad.idw_upsample(patch_scores, *_grid_args(grid), list(size), power, radius)


@float32_under_autocast
def gaussian_blur(maps: torch.Tensor, sigma: float, kernel_size: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (what anomalib applies to its maps, σ = 4).

    Args:
        maps: [B, C, H, W] float32/float64.
        sigma: standard deviation in pixels, > 0.
        kernel_size: odd, default 2*int(4σ + 0.5) + 1; kernel_size // 2 must be below H and W
            (reflect padding mirrors without repeating the edge pixel, like torch's "reflect").

    Returns:
        [B, C, H, W], the 2-D convolution with the normalised kernel g ⊗ g.
    """
    check_tensor("maps", maps, 4, "[B, C, H, W]")
    check_float("maps", maps, cuda_float64=True)
    sigma = check_real("sigma", sigma, 0.0, strict=True)
    if kernel_size is None:
        kernel_size = 2 * int(4 * sigma + 0.5) + 1
    check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if kernel_size // 2 >= min(maps.shape[2], maps.shape[3]):
        raise ValueError(f"kernel_size // 2 = {kernel_size // 2} must be below H and W for reflect padding, "
                         f"got maps of shape {tuple(maps.shape)}")
    if use_reference():
        return reference.gaussian_blur(maps, sigma, kernel_size)
    extension.require("gaussian_blur")
    return torch.ops.fastad.gaussian_blur(maps, sigma, kernel_size)


def _check_patch_scores(name: str, scores, grid, out_size) -> tuple[int, int]:
    check_tensor(name, scores, 2, "[B, P]")
    check_float(name, scores, cuda_float64=True)
    if not isinstance(grid, PatchGrid):
        raise TypeError(f"grid must be a fastad.ops.PatchGrid, got {type(grid).__name__}")
    if scores.shape[1] != grid.num_patches:
        raise ValueError(f"{name} must have P = {grid.num_patches} ({grid.rows} x {grid.cols} patches), "
                         f"got P = {scores.shape[1]}")
    return grid.image_size if out_size is None else check_pair("out_size", out_size)


def _grid_args(grid: PatchGrid) -> tuple[list[int], list[int], list[int]]:
    return list(grid.patch_size), list(grid.stride), list(grid.image_size)


# --- fake kernels and autograd ----------------------------------------------------------------

def _check_gaussian_fake(op, t, name, plane, size_name, size, receptive_field, stride, start, sigma):
    fake.check_float(op, name, t, 4, f"[B, C, {plane}]")
    fake.check_size(op, size_name, size)
    fake.check(receptive_field >= 1, f"{op}: receptive_field must be >= 1, got {receptive_field}")
    fake.check(stride >= 1, f"{op}: stride must be >= 1, got {stride}")
    fake.check(math.isfinite(start), f"{op}: start must be finite, got {start:g}")
    fake.check_sigma(op, sigma)
    fake.check(t.shape[2] >= 1 and t.shape[3] >= 1, f"{op}: {name} must have {plane} >= 1")


def _gaussian_upsample_fake(heatmap, out_size, receptive_field, stride, start, sigma):
    _check_gaussian_fake("gaussian_upsample", heatmap, "heatmap", "h, w", "out_size", out_size,
                         receptive_field, stride, start, sigma)
    return heatmap.new_empty((heatmap.shape[0], heatmap.shape[1], out_size[0], out_size[1]))


def _gaussian_upsample_backward_fake(grad, in_size, receptive_field, stride, start, sigma):
    _check_gaussian_fake("gaussian_upsample_backward", grad, "grad", "H, W", "in_size", in_size,
                         receptive_field, stride, start, sigma)
    return grad.new_empty((grad.shape[0], grad.shape[1], in_size[0], in_size[1]))


def _gaussian_upsample_setup(ctx, inputs, output):
    heatmap, _, ctx.receptive_field, ctx.stride, ctx.start, ctx.sigma = inputs
    ctx.in_size = [heatmap.shape[2], heatmap.shape[3]]


def _gaussian_upsample_grad(ctx, grad):
    g = torch.ops.fastad.gaussian_upsample_backward(grad, ctx.in_size, ctx.receptive_field, ctx.stride,
                                                    ctx.start, ctx.sigma)
    return g, None, None, None, None, None


def _gaussian_upsample_backward_setup(ctx, inputs, output):
    grad, _, ctx.receptive_field, ctx.stride, ctx.start, ctx.sigma = inputs
    ctx.out_size = [grad.shape[2], grad.shape[3]]


def _gaussian_upsample_backward_grad(ctx, grad):
    g = torch.ops.fastad.gaussian_upsample(grad, ctx.out_size, ctx.receptive_field, ctx.stride, ctx.start,
                                           ctx.sigma)
    return g, None, None, None, None, None


def _patch_average_fake(scores, patch_size, stride, image_size, out_size):
    op = "patch_average"
    fake.check_float(op, "scores", scores, 2, "[B, P]")
    fake.check_size(op, "out_size", out_size)
    rows, cols = fake.check_patch_grid(op, patch_size, stride, image_size)
    fake.check(scores.shape[1] == rows * cols,
               f"{op}: scores must have P = {rows * cols} ({rows} x {cols} patches), got {scores.shape[1]}")
    return scores.new_empty((scores.shape[0], out_size[0], out_size[1]))


def _patch_average_backward_fake(grad, patch_size, stride, image_size):
    op = "patch_average_backward"
    fake.check_float(op, "grad", grad, 3, "[B, H, W]")
    fake.check(grad.shape[1] >= 1 and grad.shape[2] >= 1, f"{op}: grad must have H, W >= 1")
    rows, cols = fake.check_patch_grid(op, patch_size, stride, image_size)
    return grad.new_empty((grad.shape[0], rows * cols))


def _patch_average_setup(ctx, inputs, output):
    _, ctx.patch_size, ctx.stride, ctx.image_size, _ = inputs


def _patch_average_grad(ctx, grad):
    g = torch.ops.fastad.patch_average_backward(grad, ctx.patch_size, ctx.stride, ctx.image_size)
    return g, None, None, None, None


def _patch_average_backward_setup(ctx, inputs, output):
    grad, ctx.patch_size, ctx.stride, ctx.image_size = inputs
    ctx.out_size = [grad.shape[1], grad.shape[2]]


def _patch_average_backward_grad(ctx, grad):
    g = torch.ops.fastad.patch_average(grad, ctx.patch_size, ctx.stride, ctx.image_size, ctx.out_size)
    return g, None, None, None


def _check_idw_grid_fake(op, patch_size, stride, image_size, power, radius) -> int:
    rows, cols = fake.check_patch_grid(op, patch_size, stride, image_size)
    fake.check(math.isfinite(power) and power >= 0, f"{op}: power must be >= 0, got {power:g}")
    fake.check(radius is None or (math.isfinite(radius) and radius >= 0),
               f"{op}: radius must be >= 0 or None, got {0.0 if radius is None else radius:g}")
    return rows * cols


def _idw_fake(scores, patch_size, stride, image_size, out_size, power, radius):
    op = "idw_upsample"
    fake.check_float(op, "scores", scores, 2, "[B, P]")
    patches = _check_idw_grid_fake(op, patch_size, stride, image_size, power, radius)
    fake.check_size(op, "out_size", out_size)
    fake.check(scores.shape[1] == patches, f"{op}: scores must have P = {patches}, got {scores.shape[1]}")
    return scores.new_empty((scores.shape[0], out_size[0], out_size[1]))


def _idw_backward_fake(grad, patch_size, stride, image_size, power, radius):
    op = "idw_upsample_backward"
    fake.check_float(op, "grad", grad, 3, "[B, H, W]")
    patches = _check_idw_grid_fake(op, patch_size, stride, image_size, power, radius)
    return grad.new_empty((grad.shape[0], patches))


def _idw_setup(ctx, inputs, output):
    _, ctx.patch_size, ctx.stride, ctx.image_size, _, ctx.power, ctx.radius = inputs


def _idw_grad(ctx, grad):
    g = torch.ops.fastad.idw_upsample_backward(grad, ctx.patch_size, ctx.stride, ctx.image_size, ctx.power,
                                               ctx.radius)
    return g, None, None, None, None, None, None


def _idw_backward_setup(ctx, inputs, output):
    grad, ctx.patch_size, ctx.stride, ctx.image_size, ctx.power, ctx.radius = inputs
    ctx.out_size = [grad.shape[1], grad.shape[2]]


def _idw_backward_grad(ctx, grad):
    g = torch.ops.fastad.idw_upsample(grad, ctx.patch_size, ctx.stride, ctx.image_size, ctx.out_size, ctx.power,
                                      ctx.radius)
    return g, None, None, None, None, None


def _check_blur_fake(op, maps, sigma, kernel_size):
    fake.check_float(op, "maps", maps, 4, "[B, C, H, W]")
    fake.check_sigma(op, sigma)
    fake.check(kernel_size >= 1 and kernel_size % 2 == 1, f"{op}: kernel_size must be odd and >= 1, got {kernel_size}")
    fake.check(kernel_size // 2 < maps.shape[2] and kernel_size // 2 < maps.shape[3],
               f"{op}: reflect padding needs kernel_size / 2 = {kernel_size // 2} below H and W, got maps of shape "
               f"{fake.shape(maps)}")


def _blur_fake(maps, sigma, kernel_size):
    _check_blur_fake("gaussian_blur", maps, sigma, kernel_size)
    return torch.empty_like(maps, memory_format=torch.contiguous_format)


def _blur_backward_fake(grad, sigma, kernel_size):
    _check_blur_fake("gaussian_blur_backward", grad, sigma, kernel_size)
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _blur_setup(ctx, inputs, output):
    _, ctx.sigma, ctx.kernel_size = inputs


def _blur_grad(ctx, grad):
    return torch.ops.fastad.gaussian_blur_backward(grad, ctx.sigma, ctx.kernel_size), None, None


def _blur_backward_grad(ctx, grad):
    return torch.ops.fastad.gaussian_blur(grad, ctx.sigma, ctx.kernel_size), None, None


if extension.loaded():
    register_float32_autocast("fastad::gaussian_upsample")
    register_float32_autocast("fastad::patch_average")
    register_float32_autocast("fastad::idw_upsample")
    register_float32_autocast("fastad::gaussian_blur")
    torch.library.register_fake("fastad::gaussian_upsample", _gaussian_upsample_fake)
    torch.library.register_fake("fastad::gaussian_upsample_backward", _gaussian_upsample_backward_fake)
    torch.library.register_autograd("fastad::gaussian_upsample", _gaussian_upsample_grad,
                                    setup_context=_gaussian_upsample_setup)
    torch.library.register_autograd("fastad::gaussian_upsample_backward", _gaussian_upsample_backward_grad,
                                    setup_context=_gaussian_upsample_backward_setup)
    torch.library.register_fake("fastad::patch_average", _patch_average_fake)
    torch.library.register_fake("fastad::patch_average_backward", _patch_average_backward_fake)
    torch.library.register_autograd("fastad::patch_average", _patch_average_grad, setup_context=_patch_average_setup)
    torch.library.register_autograd("fastad::patch_average_backward", _patch_average_backward_grad,
                                    setup_context=_patch_average_backward_setup)
    torch.library.register_fake("fastad::idw_upsample", _idw_fake)
    torch.library.register_fake("fastad::idw_upsample_backward", _idw_backward_fake)
    torch.library.register_autograd("fastad::idw_upsample", _idw_grad, setup_context=_idw_setup)
    torch.library.register_autograd("fastad::idw_upsample_backward", _idw_backward_grad,
                                    setup_context=_idw_backward_setup)
    torch.library.register_fake("fastad::gaussian_blur", _blur_fake)
    torch.library.register_fake("fastad::gaussian_blur_backward", _blur_backward_fake)
    torch.library.register_autograd("fastad::gaussian_blur", _blur_grad, setup_context=_blur_setup)
    torch.library.register_autograd("fastad::gaussian_blur_backward", _blur_backward_grad, setup_context=_blur_setup)
