"""Score-map upsampling ops against their pure-PyTorch references (fastad.ops.reference): random
and edge-case geometries, gradients, opcheck and bad input."""
import pytest
import torch
from torch import nn

import fastad
from fastad.nn.score_map_upsampler import receptive_field
from fastad.ops import PatchGrid, reference
from conftest import DEVICES


def random(shape, seed, device="cpu", dtype=torch.float64, non_contiguous=False):
    g = torch.Generator().manual_seed(seed)
    if non_contiguous:  # same values, transposed storage
        x = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g, dtype=torch.float64).transpose(-1, -2)
    else:
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.to(device, dtype)


def assert_close_to(got, want, dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.cpu().double(), want.cpu().double(), **tol)


def dtypes_for(device):
    return [torch.float64, torch.float32] if device == "cpu" else [torch.float32, torch.float64]


# --- gaussian_upsample ------------------------------------------------------------------------

# (h, w, out_size, receptive_field, stride, start, sigma)
GAUSSIAN_CASES = [
    (7, 7, (56, 56), 18, 8, 3.5, 4.0),        # even field, half-integer centres
    (5, 6, (37, 45), 11, 4, 1.0, 2.0),        # out_size not a multiple of the stride
    (1, 1, (9, 9), 9, 1, 4.0, 3.0),           # one unit
    (3, 3, (20, 20), 5, 8, 2.0, 1.5),         # stride > receptive field: gaps
    (4, 5, (16, 16), 40, 4, -3.0, 12.0),      # field larger than the output, negative start
    (2, 3, (10, 10), 4, 3, 0.25, 1.0),        # fractional centre
    (6, 6, (30, 30), 1, 5, 2.0, 1.0),         # field 1: nearest-pixel spikes
    (28, 28, (224, 224), 62, 8, 3.5, 12.0),   # FCDD-like
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GAUSSIAN_CASES)
def test_gaussian_upsample_matches_transposed_convolution(device, case):
    h, w, size, field, stride, start, sigma = case
    for dtype in dtypes_for(device):
        heatmap = random((2, 1, h, w), seed=h * w + field, device=device, dtype=dtype)
        got = fastad.ops.gaussian_upsample(heatmap, size, field, stride, start, sigma)
        want = reference.gaussian_upsample(heatmap.cpu().double(), size, field, stride, start, sigma)
        assert got.shape == (2, 1, *size) and got.dtype == dtype and got.device == heatmap.device
        assert_close_to(got, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_upsample_single_unit_is_a_unit_peak_gaussian(device):
    heatmap = torch.zeros(1, 1, 4, 4, device=device, dtype=torch.float64)
    heatmap[0, 0, 2, 1] = 1.0
    out = fastad.ops.gaussian_upsample(heatmap, (40, 40), 9, 8, 3.0, 2.0)[0, 0].cpu()
    ys, xs = torch.arange(40.0, dtype=torch.float64), torch.arange(40.0, dtype=torch.float64)
    gy = torch.where((ys - 19).abs() <= 4, torch.exp(-(ys - 19) ** 2 / 8), 0.0)
    gx = torch.where((xs - 11).abs() <= 4, torch.exp(-(xs - 11) ** 2 / 8), 0.0)
    torch.testing.assert_close(out, torch.outer(gy, gx))
    assert out[19, 11] == 1.0 and (out > 0).sum() == 81


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_upsample_channels_and_non_contiguous(device):
    heatmap = random((3, 2, 9, 7), seed=5, device=device, non_contiguous=True)
    assert not heatmap.is_contiguous()
    got = fastad.ops.gaussian_upsample(heatmap, (33, 29), 13, 4, 6.0, 3.0)
    assert_close_to(got, reference.gaussian_upsample(heatmap.cpu().contiguous(), (33, 29), 13, 4, 6.0, 3.0),
                    torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_upsample_gradients(device):
    heatmap = random((2, 1, 4, 3), seed=6, device=device).requires_grad_()
    args = ((21, 17), 9, 4, 3.5, 2.5)
    assert torch.autograd.gradcheck(lambda x: fastad.ops.gaussian_upsample(x, *args), (heatmap,))
    assert torch.autograd.gradgradcheck(lambda x: fastad.ops.gaussian_upsample(x, *args), (heatmap,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_gaussian_upsample(device):
    heatmap = random((2, 1, 5, 4), seed=7, device=device, dtype=torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastad.gaussian_upsample.default, (heatmap, [23, 19], 11, 4, 2.5, 3.0))
    grad = random((2, 1, 23, 19), seed=8, device=device, dtype=torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastad.gaussian_upsample_backward.default, (grad, [5, 4], 11, 4, 2.5, 3.0))


def small_fcdd_like_net(pool=nn.AvgPool2d):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), pool(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.LeakyReLU(0.1), pool(2, 2),
        nn.Conv2d(4, 4, 5, padding=0, dilation=2), nn.Conv2d(4, 1, 1),
    )


def test_receptive_field_matches_the_gradient_footprint():
    """The pixels that influence one interior unit span `extent` pixels centred on stride*i + start
    (average pools: max pools would route the gradient to one pixel per window)."""
    net = small_fcdd_like_net()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()  # no cancellations: every pixel in the field gets a nonzero gradient
    field = receptive_field(net)
    assert (field.extent, field.stride, field.start) == (42, 4, 17.5)
    assert receptive_field(small_fcdd_like_net(nn.MaxPool2d)) == field
    image = torch.rand(1, 1, 96, 96, requires_grad=True)
    out = net(image)
    i = 4
    out[0, 0, i, i].backward()
    rows = image.grad[0, 0].abs().sum(1).nonzero().squeeze(1)
    assert rows.numel() == field.extent == rows[-1] - rows[0] + 1
    assert (rows[0] + rows[-1]) / 2 == field.stride * i + field.start


def test_score_map_upsampler_from_network():
    net = small_fcdd_like_net()
    upsampler = fastad.nn.ScoreMapUpsampler.from_network(net, 96, sigma=6.0)
    heatmap = net(torch.rand(2, 1, 96, 96)).detach()
    out = upsampler(heatmap)
    field = receptive_field(net)
    assert out.shape == (2, 1, 96, 96)
    torch.testing.assert_close(out, fastad.ops.gaussian_upsample(heatmap, 96, field.extent, 4, field.start, 6.0))
    assert "receptive_field=42" in repr(upsampler)


def test_receptive_field_of_same_padding_and_upsampler_without_size():
    field = receptive_field(nn.Sequential(nn.Conv2d(1, 2, 5, padding="same"), nn.Conv2d(2, 1, 3, stride=2)))
    assert (field.extent, field.stride, field.start) == (7, 2, 1.0)
    upsampler = fastad.nn.ScoreMapUpsampler(field.extent, field.stride, field.start, sigma=2.0)
    with pytest.raises(ValueError, match="out_size must be given"):
        upsampler(torch.zeros(1, 1, 3, 3))
    assert upsampler(torch.zeros(1, 1, 3, 3), out_size=(8, 6)).shape == (1, 1, 8, 6)

@pytest.mark.parametrize("layer", [nn.ConvTranspose2d(1, 1, 2, stride=2), nn.Upsample(scale_factor=2),
                                   nn.Conv2d(1, 1, (3, 5)), nn.AdaptiveAvgPool2d(4)])
def test_receptive_field_rejects_resampling_and_non_square_layers(layer):
    with pytest.raises(ValueError, match="net layer"):
        receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3), layer))


# --- patch_average ----------------------------------------------------------------------------

# (patch_size, stride, image_size, out_size)
GRID_CASES = [
    (4, 2, 10, None),                 # overlapping
    (3, 5, 14, None),                 # stride > patch: gaps between patches
    (8, 8, 8, None),                  # one patch = the image
    (5, (3, 2), (13, 11), None),      # odd sizes, grid not reaching the last pixels
    (4, 3, 11, (13, 12)),             # map larger than the image
    (4, 3, 11, (5, 6)),               # map smaller than the image
    (64, 16, 96, None),               # PEDENet-like
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRID_CASES)
def test_patch_average_matches_explicit_loop(device, case):
    patch, stride, image, out_size = case
    grid = PatchGrid(patch, stride, image)
    size = grid.image_size if out_size is None else out_size
    for dtype in dtypes_for(device):
        scores = random((3, grid.num_patches), seed=grid.num_patches, device=device, dtype=dtype)
        got = fastad.ops.patch_average(scores, grid, out_size)
        want = reference.patch_average(scores.cpu().double(), grid, size)
        assert got.shape == (3, *size) and got.dtype == dtype and got.device == scores.device
        assert_close_to(got, want, dtype)


def test_patch_average_small_example_by_hand():
    grid = PatchGrid((1, 2), (1, 1), (1, 4))  # three 1x2 patches over a 1x4 image
    out = fastad.ops.patch_average(torch.tensor([[1.0, 2.0, 4.0]]), grid, (2, 5))
    # pixel columns: [1], [1,2], [2,4], [4]; column 4 and row 1 are outside the grid
    want = torch.tensor([[1.0, 1.5, 3.0, 4.0, 4.0]]).expand(2, 5)
    torch.testing.assert_close(out[0], want)


@pytest.mark.parametrize("device", DEVICES)
def test_patch_average_non_contiguous_and_gradients(device):
    grid = PatchGrid(3, 2, (9, 8))
    scores = random((grid.num_patches, 2), seed=9, device=device).T
    assert not scores.is_contiguous()
    assert_close_to(fastad.ops.patch_average(scores, grid, (10, 7)),
                    reference.patch_average(scores.cpu(), grid, (10, 7)), torch.float64)
    scores = scores.detach().contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: fastad.ops.patch_average(s, grid, (10, 7)), (scores,))
    assert torch.autograd.gradgradcheck(lambda s: fastad.ops.patch_average(s, grid, (10, 7)), (scores,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_patch_average(device):
    scores = random((2, 9), seed=10, device=device, dtype=torch.float32).requires_grad_()
    args = ([3, 4], [2, 3], [7, 12])
    torch.library.opcheck(torch.ops.fastad.patch_average.default, (scores, *args, [8, 13]))
    grad = random((2, 8, 13), seed=11, device=device, dtype=torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastad.patch_average_backward.default, (grad, *args))


# --- gaussian_blur ----------------------------------------------------------------------------

# (shape, sigma, kernel_size)
BLUR_CASES = [
    ((2, 1, 40, 40), 4.0, None),      # anomalib's sigma, 33 taps
    ((1, 3, 9, 14), 1.5, 5),
    ((2, 2, 17, 33), 2.0, 9),
    ((1, 1, 1, 5), 1.0, 1),           # kernel 1 is the identity
    ((1, 1, 5, 5), 0.7, 9),           # radius H - 1: the widest reflect pad
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", BLUR_CASES)
def test_gaussian_blur_matches_2d_convolution(device, case):
    shape, sigma, kernel_size = case
    for dtype in dtypes_for(device):
        maps = random(shape, seed=sum(shape), device=device, dtype=dtype)
        got = fastad.ops.gaussian_blur(maps, sigma, kernel_size)
        size = kernel_size if kernel_size is not None else 2 * int(4 * sigma + 0.5) + 1
        want = reference.gaussian_blur(maps.cpu().double(), sigma, size)
        assert got.shape == shape and got.dtype == dtype
        assert_close_to(got, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_blur_non_contiguous_and_gradients(device):
    maps = random((1, 2, 8, 9), seed=12, device=device, non_contiguous=True)
    assert_close_to(fastad.ops.gaussian_blur(maps, 1.2, 7), reference.gaussian_blur(maps.cpu(), 1.2, 7),
                    torch.float64)
    maps = maps.detach().contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda m: fastad.ops.gaussian_blur(m, 1.2, 7), (maps,))
    assert torch.autograd.gradgradcheck(lambda m: fastad.ops.gaussian_blur(m, 1.2, 7), (maps,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_gaussian_blur(device):
    maps = random((2, 1, 12, 10), seed=13, device=device, dtype=torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastad.gaussian_blur.default, (maps, 1.5, 7))
    torch.library.opcheck(torch.ops.fastad.gaussian_blur_backward.default, (maps, 1.5, 7))


# --- idw_upsample -----------------------------------------------------------------------------

IDW_SETTINGS = [(2.0, None), (1.0, None), (3.5, 4.0), (2.0, 0.0), (0.0, 6.5)]  # (power, radius)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRID_CASES)
def test_idw_upsample_matches_brute_force(device, case):
    patch, stride, image, out_size = case
    grid = PatchGrid(patch, stride, image)
    size = grid.image_size if out_size is None else out_size
    for power, radius in IDW_SETTINGS:
        for dtype in dtypes_for(device):
            scores = random((3, grid.num_patches), seed=grid.num_patches + 1, device=device, dtype=dtype)
            got = fastad.ops.idw_upsample(scores, grid, out_size, power, radius)
            want = reference.idw_upsample(scores.cpu().double(), grid, size, power, radius)
            assert got.shape == (3, *size) and got.dtype == dtype and got.device == scores.device
            assert_close_to(got, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_idw_pixels_on_centres_take_the_score_exactly(device):
    grid = PatchGrid(5, 2, 15)  # odd patches: centres on pixels 2, 4, ..., 12
    scores = random((2, grid.num_patches), seed=14, device=device, dtype=torch.float32)
    for radius in (None, 3.0):
        out = fastad.ops.idw_upsample(scores, grid, radius=radius)
        on_centres = out[:, 2:13:2, 2:13:2].reshape(2, -1)
        assert torch.equal(on_centres, scores)


@pytest.mark.parametrize("device", DEVICES)
def test_idw_non_contiguous_and_gradients(device):
    grid = PatchGrid(4, 3, (10, 9))
    scores = random((grid.num_patches, 2), seed=15, device=device).T
    assert not scores.is_contiguous()
    assert_close_to(fastad.ops.idw_upsample(scores, grid, (11, 9), 2.0, None),
                    reference.idw_upsample(scores.cpu(), grid, (11, 9), 2.0, None), torch.float64)
    scores = scores.detach().contiguous().requires_grad_()
    nondet_tol = 1e-12 if device == "cuda" else 0.0  # the CUDA adjoint sums with atomics
    for power, radius in [(2.0, None), (1.5, 3.0)]:
        fn = lambda s: fastad.ops.idw_upsample(s, grid, (11, 9), power, radius)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (scores,), nondet_tol=nondet_tol)
        assert torch.autograd.gradgradcheck(fn, (scores,), nondet_tol=nondet_tol)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_idw_upsample(device):
    scores = random((2, 9), seed=16, device=device, dtype=torch.float32).requires_grad_()
    grid_args = ([3, 4], [2, 3], [7, 12])
    torch.library.opcheck(torch.ops.fastad.idw_upsample.default, (scores, *grid_args, [8, 13], 2.0, None))
    torch.library.opcheck(torch.ops.fastad.idw_upsample.default, (scores, *grid_args, [7, 12], 1.0, 2.5))
    grad = random((2, 8, 13), seed=17, device=device, dtype=torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastad.idw_upsample_backward.default, (grad, *grid_args, 2.0, None))


# --- across ops -------------------------------------------------------------------------------

def test_reference_backend_runs_the_references():
    grid = PatchGrid(4, 2, 10)
    scores, heatmap = random((2, grid.num_patches), 18), random((1, 1, 3, 3), 19)
    calls = [
        lambda: fastad.ops.gaussian_upsample(heatmap, 12, 5, 4, 1.5, 2.0),
        lambda: fastad.ops.patch_average(scores, grid),
        lambda: fastad.ops.idw_upsample(scores, grid),
        lambda: fastad.ops.gaussian_blur(random((1, 2, 8, 7), 23), 0.8),
    ]
    for call in calls:
        native = call()
        with fastad.use_backend("reference"):
            ref = call()
        assert_close_to(native, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_gives_empty_maps_and_gradients(device):
    grid = PatchGrid(4, 2, 10)
    scores = torch.zeros(0, grid.num_patches, device=device, requires_grad=True)
    heatmap = torch.zeros(0, 1, 3, 3, device=device, requires_grad=True)
    outputs = [
        (fastad.ops.gaussian_upsample(heatmap, 12, 5, 4, 1.5, 2.0), (0, 1, 12, 12)),
        (fastad.ops.gaussian_blur(heatmap, 0.5, 3), (0, 1, 3, 3)),
        (fastad.ops.patch_average(scores, grid), (0, 10, 10)),
        (fastad.ops.idw_upsample(scores, grid), (0, 10, 10)),
    ]
    for out, shape in outputs:
        assert out.shape == shape
        out.sum().backward()
    assert heatmap.grad.shape == heatmap.shape and scores.grad.shape == scores.shape


@pytest.mark.parametrize("device", DEVICES)
def test_nan_spreads_only_over_its_receptive_field(device):
    heatmap = torch.zeros(1, 1, 5, 5, device=device)
    heatmap[0, 0, 1, 3] = float("nan")
    out = fastad.ops.gaussian_upsample(heatmap, 40, 9, 8, 3.0, 2.0)[0, 0].cpu()
    nan_rows, nan_cols = out.isnan().any(1).nonzero().squeeze(1), out.isnan().any(0).nonzero().squeeze(1)
    assert torch.equal(nan_rows, torch.arange(7, 16)) and torch.equal(nan_cols, torch.arange(23, 32))
    assert int(out.isnan().sum()) == 81


def test_torch_compile_fullgraph():
    grid = PatchGrid(4, 2, 10)
    scores, heatmap = random((2, grid.num_patches), 20), random((2, 1, 3, 3), 21)

    def pipeline(s, h):
        a = torch.ops.fastad.patch_average(s, [4, 4], [2, 2], [10, 10], [10, 10])
        b = torch.ops.fastad.idw_upsample(s, [4, 4], [2, 2], [10, 10], [10, 10], 2.0, None)
        c = torch.ops.fastad.gaussian_upsample(h, [10, 10], 5, 4, 1.5, 2.0)
        return torch.ops.fastad.gaussian_blur(c, 1.0, 5)[:, 0] + a + b

    compiled = torch.compile(pipeline, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(scores, heatmap), pipeline(scores, heatmap))


GOOD_HEATMAP, GOOD_GRID = torch.randn(2, 1, 4, 4), PatchGrid(4, 2, 10)
GOOD_SCORES = torch.randn(2, GOOD_GRID.num_patches)
BAD_INPUTS = [
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP[0], 16, 5, 4, 1.5), ValueError, "heatmap must have shape"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP.long(), 16, 5, 4, 1.5), TypeError, "heatmap must be float"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP, 0, 5, 4, 1.5), ValueError, "out_size must be in"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP, (16, 16, 1), 5, 4, 1.5), ValueError, "out_size must be an int or a pair"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP, 16, 0, 4, 1.5), ValueError, "receptive_field must be in"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP, 16, 5, 2.0, 1.5), TypeError, "stride must be an int"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP, 16, 5, 4, float("nan")), ValueError, "start must be finite"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP, 16, 5, 4, 1.5, 0.0), ValueError, "sigma must be > 0"),
    (lambda: fastad.ops.gaussian_upsample(GOOD_HEATMAP, 16, 5, 4, "1"), TypeError, "start must be a real"),
    (lambda: PatchGrid(11, 2, 10), ValueError, "patch_size .* must fit"),
    (lambda: PatchGrid(4, 0, 10), ValueError, "stride must be in"),
    (lambda: fastad.ops.patch_average(GOOD_SCORES[:, :-1], GOOD_GRID), ValueError, "patch_scores must have P = 16"),
    (lambda: fastad.ops.patch_average(GOOD_SCORES[0], GOOD_GRID), ValueError, "patch_scores must have shape"),
    (lambda: fastad.ops.patch_average(GOOD_SCORES, (4, 2, 10)), TypeError, "grid must be a fastad.ops.PatchGrid"),
    (lambda: fastad.ops.patch_average(GOOD_SCORES.int(), GOOD_GRID), TypeError, "patch_scores must be float"),
    (lambda: fastad.ops.idw_upsample(GOOD_SCORES, GOOD_GRID, power=-1.0), ValueError, "power must be >= 0"),
    (lambda: fastad.ops.idw_upsample(GOOD_SCORES, GOOD_GRID, radius=-2.0), ValueError, "radius must be >= 0"),
    (lambda: fastad.ops.idw_upsample(GOOD_SCORES, GOOD_GRID, (0, 5)), ValueError, "out_size must be in"),
    (lambda: fastad.ops.gaussian_blur(GOOD_HEATMAP, 1.0, 4), ValueError, "kernel_size must be odd"),
    (lambda: fastad.ops.gaussian_blur(GOOD_HEATMAP, 4.0), ValueError, "kernel_size // 2 = 16 must be below"),
    (lambda: fastad.ops.gaussian_blur(GOOD_HEATMAP, -1.0), ValueError, "sigma must be > 0"),
    (lambda: fastad.ops.gaussian_blur(GOOD_HEATMAP[0], 1.0), ValueError, "maps must have shape"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_cpp_checks_guard_direct_op_calls():
    with pytest.raises(RuntimeError, match="sigma must be > 0"):
        torch.ops.fastad.gaussian_upsample(GOOD_HEATMAP, [8, 8], 5, 4, 1.5, -1.0)
    with pytest.raises(RuntimeError, match="scores must have P = 16"):
        torch.ops.fastad.patch_average(GOOD_SCORES[:, :3], [4, 4], [2, 2], [10, 10], [10, 10])
    with pytest.raises(RuntimeError, match="scores must have P = 16"):
        torch.ops.fastad.idw_upsample(GOOD_SCORES[:, :3], [4, 4], [2, 2], [10, 10], [10, 10], 2.0, None)
    with pytest.raises(RuntimeError, match="reflect padding"):
        torch.ops.fastad.gaussian_blur(GOOD_HEATMAP, 1.0, 9)



# --- batch chunks, edge arguments (large IDW power, vanishing sigma) ---------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_idw_many_batch_chunks_forward_and_backward(device):
    """B = 29: the CUDA kernels' fourth 8-row batch chunk (a partial one) runs."""
    grid = PatchGrid(6, 4, 26)
    scores = random((29, grid.num_patches), seed=40, device=device, dtype=torch.float32).requires_grad_()
    out = fastad.ops.idw_upsample(scores, grid, power=1.5)
    want_scores = scores.detach().cpu().double().requires_grad_()
    want = reference.idw_upsample(want_scores, grid, grid.image_size, 1.5, None)
    assert_close_to(out, want, torch.float32)
    weights = random(tuple(out.shape), seed=41)
    (out * weights.to(device, out.dtype)).sum().backward()
    (want * weights).sum().backward()
    assert_close_to(scores.grad, want_scores.grad, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("power", [30.0, 60.0, 400.0])
@pytest.mark.parametrize("radius", [None, 9.0])
def test_idw_large_power_in_float32_matches_float64(device, power, radius):
    grid = PatchGrid(8, 4, 40)
    scores = random((2, grid.num_patches), seed=42, device=device, dtype=torch.float32)
    got = fastad.ops.idw_upsample(scores, grid, power=power, radius=radius)
    want = reference.idw_upsample(scores.cpu().double(), grid, grid.image_size, power, radius)
    assert torch.isfinite(got).all()
    assert_close_to(got, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vanishing_sigma_is_the_limit_not_nan(device, dtype):
    """sigma = 1e-300: weight 1 at distance 0 and 0 elsewhere (what sigma = 0.01 already gives in
    float64), never 0/0."""
    heatmap = random((2, 1, 6, 7), seed=43, device=device, dtype=dtype)
    for sigma_op, kwargs in ((1e-300, {}), (1e-300, {"start": 0.5})):
        start = kwargs.get("start", 1.0)
        got = fastad.ops.gaussian_upsample(heatmap, (16, 18), 5, 2, start, sigma=sigma_op)
        want = reference.gaussian_upsample(heatmap.cpu().double(), (16, 18), 5, 2, start, 0.01)
        assert torch.isfinite(got).all()
        assert_close_to(got, want, dtype)
    maps = random((2, 3, 9, 8), seed=44, device=device, dtype=dtype)
    assert torch.equal(fastad.ops.gaussian_blur(maps, 1e-300), maps)
    assert torch.equal(fastad.ops.gaussian_blur(maps, 1e-300, 5), maps)
    with fastad.use_backend("reference"):
        assert torch.equal(fastad.ops.gaussian_blur(maps, 1e-300, 5), maps)
