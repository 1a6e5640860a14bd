"""fastad.ops.partial_conv2d / fastad.nn.PartialConv2d against the NVIDIA-formula reference."""
import pytest
import torch
import torch.nn.functional as F

import fastad
from fastad.ops import partial_conv as pc
from fastad.ops import reference
from conftest import DEVICES

F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-4, atol=1e-5)
# in float64 NVIDIA's ratio for a full window, slide / (slide + 1e-8), is 1 − 1e-8/slide, not 1
NEAR = dict(rtol=1e-8, atol=1e-8)


def tolerance(dtype):
    return F64 if dtype == torch.float64 else F32


def dtype_for(device):
    return torch.float64 if device == "cpu" else torch.float32


def random_case(seed, batch=2, cin=4, cout=6, size=(11, 13), kernel=(3, 3), groups=1, multi_channel=False,
                mask_batch=None, hole_fraction=0.3, device="cpu", dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, *size, generator=g, dtype=torch.float64)
    w = torch.randn(cout, cin // groups, *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    mask_channels = cin if multi_channel else 1
    mask = (torch.rand(mask_batch or batch, mask_channels, *size, generator=g) > hole_fraction).double()
    cast = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
    return cast(x), cast(mask), cast(w), cast(b)


CONFIGS = [
    dict(),
    dict(stride=2, padding=1),
    dict(dilation=2, padding=2),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 3), kernel=(3, 2)),
    dict(kernel=(5, 5), padding=3),
    dict(multi_channel=True, padding=1),
    dict(multi_channel=True, stride=2, dilation=2, padding=1),
    dict(groups=2, padding=1),
    dict(groups=2, multi_channel=True, padding=1),
    dict(bias=False, padding=1),
    dict(bias=False, multi_channel=True, stride=2),
    dict(mask_batch=1, padding=1),
    dict(mask_batch=1, multi_channel=True, padding=1, bias=False),
    dict(mask_none=True, padding=1, stride=2),
    dict(mask_none=True, multi_channel=True, groups=2, padding=1),
]


def split(config):
    conv = {k: config[k] for k in ("stride", "padding", "dilation") if k in config}
    conv["groups"] = config.get("groups", 1)
    conv["multi_channel"] = config.get("multi_channel", False)
    case = {k: v for k, v in config.items() if k not in ("stride", "padding", "dilation", "mask_none")}
    return case, conv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_matches_reference(device, config):
    case, conv = split(config)
    x, mask, w, b = random_case(len(str(config)), device=device, dtype=dtype_for(device), **case)
    if config.get("mask_none"):
        mask = None
    out, update = fastad.ops.partial_conv2d(x, mask, w, b, **conv)
    want_out, want_update = reference.partial_conv2d(x, mask, w, b, **conv)
    assert out.shape == want_out.shape and update.shape == want_update.shape
    assert out.dtype == x.dtype and out.device == x.device
    torch.testing.assert_close(out, want_out, **tolerance(x.dtype))
    assert torch.equal(update, want_update)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("multi_channel", [False, True])
def test_all_ones_mask_without_padding_equals_conv2d(device, multi_channel):
    x, _, w, b = random_case(1, device=device, dtype=dtype_for(device), multi_channel=multi_channel)
    ones = torch.ones(x.shape[0], x.shape[1] if multi_channel else 1, *x.shape[2:], device=device, dtype=x.dtype)
    plain = F.conv2d(x, w, b, stride=2, dilation=(1, 2))
    for mask in (None, ones):
        out, update = fastad.ops.partial_conv2d(x, mask, w, b, stride=2, dilation=(1, 2), multi_channel=multi_channel)
        torch.testing.assert_close(out, plain, **(NEAR if x.dtype == torch.float64 else F32))
        assert torch.all(update == 1)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_padding_renormalises_the_border_windows(device):
    x, _, w, b = random_case(2, device=device, dtype=dtype_for(device))
    out, update = fastad.ops.partial_conv2d(x, None, w, b, padding=1)
    plain = F.conv2d(x, w, b, padding=1)
    counts = F.conv2d(torch.ones_like(x[:, :1]), torch.ones(1, 1, 3, 3, device=device, dtype=x.dtype), padding=1)
    want = (plain - b.view(1, -1, 1, 1)) * (9 / (counts + 1e-8)) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(out, want, **tolerance(x.dtype))
    assert not torch.allclose(out[..., 0, 0], plain[..., 0, 0])  # the corner is rescaled by 9/4
    torch.testing.assert_close(out[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1], **NEAR)
    assert update.shape == (1, 1, *x.shape[2:]) and torch.all(update == 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("multi_channel", [False, True])
def test_windows_without_valid_pixels_are_exactly_zero(device, multi_channel):
    x, mask, w, b = random_case(3, size=(12, 12), device=device, dtype=dtype_for(device), multi_channel=multi_channel,
                                hole_fraction=0.0)
    mask[:, :, 2:9, 3:10] = 0  # 7x7 hole: 3x3 windows centred in [3:8, 4:9] see none of it
    x = x.clone().requires_grad_()
    out, update = fastad.ops.partial_conv2d(x, mask, w, b, padding=1, multi_channel=multi_channel)
    assert torch.all(out[:, :, 3:8, 4:9] == 0) and torch.all(update[:, :, 3:8, 4:9] == 0)
    assert torch.all(update[:, :, :2] == 1)
    out.sum().backward()
    assert torch.all(x.grad[:, :, 2:9, 3:10] == 0)  # the masked pixels never reach the output


@pytest.mark.parametrize("device", DEVICES)
def test_glance_patch_hole(device):
    """Global-Net's first layer: a 16x16 patch masked out of a 64x64 image, stride 1 and stride 2."""
    dtype = dtype_for(device)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64).to(device, dtype)
    w = torch.randn(8, 3, 3, 3, generator=g, dtype=torch.float64).to(device, dtype)
    b = torch.randn(8, generator=g, dtype=torch.float64).to(device, dtype)
    mask = torch.ones(2, 1, 64, 64, device=device, dtype=dtype)
    mask[0, :, 20:36, 24:40] = 0
    mask[1, :, 0:16, 48:64] = 0
    for stride in (1, 2):
        out, update = fastad.ops.partial_conv2d(x, mask, w, b, stride=stride, padding=1)
        want_out, want_update = reference.partial_conv2d(x, mask, w, b, stride=stride, padding=1)
        torch.testing.assert_close(out, want_out, **tolerance(dtype))
        assert torch.equal(update, want_update)
        # nothing inside the hole (so nothing of the patch) leaks into the output
        changed = x.clone()
        changed[0, :, 20:36, 24:40] += 100
        changed[1, :, 0:16, 48:64] -= 100
        torch.testing.assert_close(fastad.ops.partial_conv2d(changed, mask, w, b, stride=stride, padding=1)[0], out,
                                   **tolerance(dtype))
    hole = update[0, 0, 11:17, 13:19]  # stride-2 positions whose windows lie inside the hole
    assert torch.all(hole == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_non_binary_mask_keeps_nvidia_clamp_semantics(device, bias):
    dtype = dtype_for(device)
    x, _, w, b = random_case(5, device=device, dtype=dtype, bias=bias)
    mask = torch.rand(x.shape[0], 1, *x.shape[2:], generator=torch.Generator().manual_seed(5)).to(device, dtype) * 0.2
    out, update = fastad.ops.partial_conv2d(x, mask, w, b, padding=1)
    want_out, want_update = reference.partial_conv2d(x, mask, w, b, padding=1)
    assert ((update > 0) & (update < 1)).any()
    torch.testing.assert_close(update, want_update, **tolerance(dtype))
    torch.testing.assert_close(out, want_out, **tolerance(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_nvidia_bias_formula_exactly(device):
    """out = (conv(x⊙m) + b − b)·ratio + b, then ·update: fastad's raw·ratio + b agrees to rounding."""
    dtype = dtype_for(device)
    x, mask, w, b = random_case(6, device=device, dtype=dtype)
    raw_with_bias = F.conv2d(x * mask, w, b, padding=1)
    coverage = F.conv2d(mask, torch.ones(1, 1, 3, 3, device=device, dtype=dtype), padding=1)
    ratio = 9 / (coverage + 1e-8)
    update = torch.clamp(coverage, 0, 1)
    ratio = ratio * update
    want = ((raw_with_bias - b.view(1, -1, 1, 1)) * ratio + b.view(1, -1, 1, 1)) * update
    out, got_update = fastad.ops.partial_conv2d(x, mask, w, b, padding=1)
    torch.testing.assert_close(out, want, **tolerance(dtype))
    assert torch.equal(got_update, update)


@pytest.mark.parametrize("device", DEVICES)
def test_groups_count_coverage_per_group(device):
    """multi_channel with groups=2: holes in group 0's channels only touch group 0's outputs."""
    dtype = dtype_for(device)
    x, _, w, b = random_case(7, cin=4, cout=4, groups=2, device=device, dtype=dtype)
    mask = torch.ones(x.shape[0], 4, *x.shape[2:], device=device, dtype=dtype)
    mask[:, :2] = 0
    out, update = fastad.ops.partial_conv2d(x, mask, w, b, groups=2, multi_channel=True)
    assert torch.all(out[:, :2] == 0) and torch.all(update[:, :2] == 0)
    torch.testing.assert_close(out[:, 2:], F.conv2d(x, w, b, groups=2)[:, 2:], **(NEAR if dtype == torch.float64 else F32))
    # NVIDIA's all-channel count would rescale group 1 by 2: fastad documents the difference
    assert torch.all(update[:, 2:] == 1)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    dtype = dtype_for(device)
    x, mask, w, b = random_case(8, cin=4, size=(10, 24), multi_channel=True, device=device, dtype=dtype)
    x_nc, mask_nc = x[..., ::2], mask[..., ::2]
    w_nc = w.transpose(2, 3).contiguous().transpose(2, 3)
    x_cl = x_nc.contiguous(memory_format=torch.channels_last)
    assert not x_nc.is_contiguous() and not mask_nc.is_contiguous() and not w_nc.is_contiguous()
    want = reference.partial_conv2d(x_nc.contiguous(), mask_nc.contiguous(), w, b, padding=1, multi_channel=True)
    for xi in (x_nc, x_cl):
        out, update = fastad.ops.partial_conv2d(xi, mask_nc, w_nc, b, padding=1, multi_channel=True)
        torch.testing.assert_close(out, want[0], **tolerance(dtype))
        assert torch.equal(update, want[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [dict(padding=1), dict(stride=2, dilation=2, padding=2, multi_channel=True),
                                    dict(groups=2, padding=1, multi_channel=True), dict(bias=False, stride=2)],
                         ids=["plain", "strided-dilated-multi", "groups-multi", "no-bias"])
def test_gradients(device, config):
    case, conv = split(config)
    if device == "cpu":
        x, mask, w, b = random_case(9, batch=2, cin=2, cout=4, size=(6, 7), **case)
        mask[0, :, 1:4, 2:5] = 0
        params = [t.requires_grad_() for t in (x, w, b) if t is not None]
        fn = lambda *p: fastad.ops.partial_conv2d(p[0], mask, p[1], p[2] if len(p) > 2 else None, **conv)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, params, fast_mode=True)
    x, mask, w, b = random_case(9, batch=3, cin=4, cout=4, size=(17, 19), device=device, dtype=dtype_for(device), **case)
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    grad = torch.randn(fastad.ops.partial_conv2d(x, mask, w, b, **conv)[0].shape, dtype=torch.float64).to(device, x.dtype)
    got = torch.autograd.grad(fastad.ops.partial_conv2d(x, mask, w, b, **conv)[0], leaves, grad)
    ref = [t.detach().double().requires_grad_() for t in leaves]
    want = torch.autograd.grad(reference.partial_conv2d(ref[0], mask.double(), ref[1], ref[2] if len(ref) > 2 else None,
                                                        **conv)[0], ref, grad.double())
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, **(F64 if x.dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_leaves_the_callers_gradient_alone_and_partial_requires_grad(device):
    """The eager path writes in place only into tensors it owns (conv output, conv input gradient)."""
    dtype = dtype_for(device)
    x, mask, w, b = random_case(21, device=device, dtype=dtype)
    grad = torch.randn(reference.partial_conv2d(x, mask, w, b, padding=1)[0].shape, dtype=torch.float64).to(device, dtype)
    kept = grad.clone()
    xg = x.clone().requires_grad_()
    out, _ = fastad.ops.partial_conv2d(xg, mask, w, b, padding=1)
    out.backward(grad)
    assert torch.equal(grad, kept)
    xr = x.clone().requires_grad_()
    reference.partial_conv2d(xr, mask, w, b, padding=1)[0].backward(grad)
    torch.testing.assert_close(xg.grad, xr.grad, **tolerance(dtype))
    # only the bias trains (frozen weights, input without grad); and a no-grad forward
    bias = b.clone().requires_grad_()
    fastad.ops.partial_conv2d(x, mask, w, bias, padding=1)[0].backward(grad)
    torch.testing.assert_close(bias.grad, (grad * (reference.partial_conv2d(x, mask, w, b, padding=1)[1])).sum((0, 2, 3)),
                               **tolerance(dtype))
    with torch.no_grad():
        torch.testing.assert_close(fastad.ops.partial_conv2d(x, mask, w, b, padding=1)[0],
                                   reference.partial_conv2d(x, mask, w, b, padding=1)[0], **tolerance(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_renormalize_gradcheck_with_non_binary_coverage(device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    g = torch.Generator().manual_seed(10)
    raw = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    coverage = (torch.rand(2, 2, 5, 6, generator=g, dtype=torch.float64) * 3 - 0.5).to(device, dtype)
    coverage[0, 0, 0, :3] = torch.tensor([0.0, 0.5, 1.0])
    bias = torch.randn(4, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    for b in (bias, None):
        out, update = fastad.ops.partial_conv_renormalize(raw, coverage, b, 9.0)
        want_out, want_update = reference.partial_conv_renormalize(raw, coverage, b, 9.0)
        torch.testing.assert_close(out, want_out, **tolerance(dtype))
        torch.testing.assert_close(update, want_update)
        in_place = raw.detach().clone()
        assert torch.equal(torch.ops.fastad.partial_conv_renormalize_(in_place, coverage, b, 9.0), update)
        assert torch.equal(in_place, out.detach())
        if dtype == torch.float64:
            leaves = (raw, b) if b is not None else (raw,)
            fn = lambda r, *rest: fastad.ops.partial_conv_renormalize(r, coverage, rest[0] if rest else None, 9.0)[0]  # noqa: E731
            assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,kernel,stride,padding,dilation,groups", [
    ((9, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((9, 11), (3, 5), (2, 3), (2, 0), (2, 1), 2),
    ((4, 4), (5, 5), (1, 1), (3, 3), (1, 1), 4),  # kernel larger than the mask
    ((1, 1), (1, 1), (1, 1), (0, 0), (1, 1), 1),
    ((8, 20), (2, 2), (3, 3), (4, 1), (3, 4), 1),
])
def test_coverage_matches_conv_with_ones(device, size, kernel, stride, padding, dilation, groups):
    dtype = dtype_for(device)
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(3, 4, *size, generator=g, dtype=torch.float64).to(device, dtype)
    for m in (mask, (mask > 0.5).to(dtype)):
        got = fastad.ops.partial_conv_coverage(m, kernel, stride, padding, dilation, groups)
        want = reference.partial_conv_coverage(m, kernel, stride, padding, dilation, groups)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, **tolerance(dtype))
    binary = fastad.ops.partial_conv_coverage((mask > 0.5).to(dtype), kernel, stride, padding, dilation, groups)
    assert torch.equal(binary, binary.round())  # exact counts


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(12)
    mask = (torch.rand(2, 4, 9, 8, generator=g) > 0.3).float().to(device)
    torch.library.opcheck(torch.ops.fastad.partial_conv_coverage.default, (mask, [3, 3], [1, 2], [1, 0], [1, 2], 2))
    raw = torch.randn(2, 6, 7, 5, generator=g).to(device).requires_grad_()
    coverage = torch.randint(0, 10, (2, 3, 7, 5), generator=g).float().to(device)
    bias = torch.randn(6, generator=g).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize.default, (raw, coverage, bias, 9.0))
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize.default, (raw, coverage[:1], None, 9.0))
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize_.default, (raw.detach().clone(), coverage, bias.detach(), 9.0))
    grad = torch.randn(2, 6, 7, 5, generator=g).to(device)
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize_backward.default, (grad, coverage, 9.0, True))
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize_backward.default, (grad, coverage, 9.0, False))


def test_torch_compile_fullgraph():
    x, mask, w, b = random_case(13, dtype=torch.float32)
    fn = lambda x, m: fastad.ops.partial_conv2d(x, m, w, b, padding=1)[0] * 2  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, mask), fn(x, mask))


@pytest.mark.parametrize("device", DEVICES)
def test_reference_backend_agrees_with_native(device):
    x, mask, w, b = random_case(14, device=device, dtype=dtype_for(device), multi_channel=True)
    native = fastad.ops.partial_conv2d(x, mask, w, b, padding=1, multi_channel=True)
    with fastad.use_backend("reference"):
        ref = fastad.ops.partial_conv2d(x, mask, w, b, padding=1, multi_channel=True)
    torch.testing.assert_close(native[0], ref[0], **tolerance(x.dtype))
    assert torch.equal(native[1], ref[1])


# --- the module -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("multi_channel", [False, True])
def test_module_is_a_drop_in(device, multi_channel):
    torch.manual_seed(15)
    layer = fastad.nn.PartialConv2d(4, 6, 3, stride=2, padding=1, multi_channel=multi_channel, return_mask=True).to(device)
    assert isinstance(layer, torch.nn.Conv2d)
    plain = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1).to(device)
    plain.load_state_dict(layer.state_dict())  # same parameters, same names
    x, mask, _, _ = random_case(15, device=device, dtype=torch.float32, multi_channel=multi_channel)
    out, update = layer(x, mask)
    want_out, want_update = reference.partial_conv2d(x, mask, layer.weight, layer.bias, 2, 1, multi_channel=multi_channel)
    torch.testing.assert_close(out, want_out, **F32)
    assert torch.equal(update, want_update)
    assert update.shape == ((2, 6, 6, 7) if multi_channel else (2, 1, 6, 7))
    layer.return_mask = False
    torch.testing.assert_close(layer(x), reference.partial_conv2d(x, None, layer.weight, layer.bias, 2, 1,
                                                                    multi_channel=multi_channel)[0], **F32)


@pytest.mark.parametrize("device", DEVICES)
def test_module_chain_passes_multi_channel_masks(device):
    """A multi_channel layer's (broadcast-view) update mask feeds the next layer."""
    torch.manual_seed(16)
    first = fastad.nn.PartialConv2d(3, 5, 3, padding=1, multi_channel=True, return_mask=True).to(device).double()
    second = fastad.nn.PartialConv2d(5, 4, 3, stride=2, padding=1, multi_channel=True, return_mask=True).to(device).double()
    x, mask, _, _ = random_case(16, cin=3, size=(12, 12), multi_channel=True, device=device, hole_fraction=0.6)
    mask = mask.expand(-1, 3, -1, -1).clone()
    mask[:, 1, :4] = 0  # channels differ
    h, m = first(x, mask)
    out, m2 = second(h, m)
    rh, rm = reference.partial_conv2d(x, mask, first.weight, first.bias, 1, 1, multi_channel=True)
    rout, rm2 = reference.partial_conv2d(rh, rm, second.weight, second.bias, 2, 1, multi_channel=True)
    torch.testing.assert_close(out, rout, **F64)
    assert torch.equal(m2, rm2)


class CountingCoverage:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = pc.partial_conv_coverage

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(pc, "partial_conv_coverage", counted)


def test_module_caches_coverage_and_never_serves_a_changed_mask(monkeypatch):
    counter = CountingCoverage(monkeypatch)
    torch.manual_seed(17)
    layer = fastad.nn.PartialConv2d(4, 6, 3, padding=1).double()
    x, mask, _, _ = random_case(17)
    expect = lambda m: reference.partial_conv2d(x, m, layer.weight, layer.bias, 1, 1)[0]  # noqa: E731
    torch.testing.assert_close(layer(x, mask), expect(mask), **F64)
    torch.testing.assert_close(layer(x * 2, mask), reference.partial_conv2d(x * 2, mask, layer.weight, layer.bias, 1, 1)[0],
                               **F64)
    assert counter.calls == 1  # same mask object, unchanged: the cached coverage
    mask[:, :, 3:8, 3:8] = 0  # in-place write bumps the version counter
    torch.testing.assert_close(layer(x, mask), expect(mask), **F64)
    assert counter.calls == 2
    mask.mul_(0.5)
    torch.testing.assert_close(layer(x, mask), expect(mask), **F64)
    assert counter.calls == 3
    same_values = mask.clone()  # another object: never trusted
    layer(x, same_values)
    assert counter.calls == 4
    layer.stride = (2, 2)  # conv parameters are part of the key
    torch.testing.assert_close(layer(x, same_values), reference.partial_conv2d(x, same_values, layer.weight, layer.bias,
                                                                               2, 1)[0], **F64)
    assert counter.calls == 5
    layer(x)
    layer(x)
    assert counter.calls == 6  # the all-ones mask is cached by input size
    layer(x[..., :9])
    assert counter.calls == 7
    with torch.inference_mode():
        frozen = mask.clone()
        layer(x, frozen)
        layer(x, frozen)
    assert counter.calls == 9  # inference tensors have no version counter: not cached


BAD = [
    (lambda x, m, w, b: (x[0], m, w, b), {}, ValueError, "input must have shape"),
    (lambda x, m, w, b: (x, m, w[0], b), {}, ValueError, "weight must have shape"),
    (lambda x, m, w, b: (x.long(), m, w, b), {}, TypeError, "input must be float32 or float64"),
    (lambda x, m, w, b: (x, m, w.double(), b), {}, TypeError, "weight must have input's dtype"),
    (lambda x, m, w, b: (x[:, :3], m, w, b), {}, ValueError, "weight must be"),
    (lambda x, m, w, b: (x, m, w, b[:2]), {}, ValueError, "bias must have shape"),
    (lambda x, m, w, b: (x, m[..., :5], w, b), {}, ValueError, "mask must have shape"),
    (lambda x, m, w, b: (x, m.expand(-1, 4, -1, -1), w, b), {}, ValueError, "multi_channel=True"),
    (lambda x, m, w, b: (x, m, w, b), dict(multi_channel=True), ValueError, "mask must have shape"),
    (lambda x, m, w, b: (x, m.long(), w, b), {}, TypeError, "mask must be floating or bool"),
    (lambda x, m, w, b: (x, m, w, b), dict(stride=0), ValueError, "stride must be >= 1"),
    (lambda x, m, w, b: (x, m, w, b), dict(padding=-1), ValueError, "padding must be >= 0"),
    (lambda x, m, w, b: (x, m, w, b), dict(dilation=1.5), TypeError, "dilation must be an int"),
    (lambda x, m, w, b: (x, m, w, b), dict(groups=3), ValueError, "groups"),
    (lambda x, m, w, b: (x, m, w, b), dict(dilation=9), ValueError, "does not fit"),
    (lambda x, m, w, b: (x, m, w, b), dict(multi_channel=1), TypeError, "multi_channel must be a bool"),
    (lambda x, m, w, b: (x.numpy(), m, w, b), {}, TypeError, "input must be a torch.Tensor"),
]


@pytest.mark.parametrize("make,kwargs,error,message", BAD, ids=[b[3] for b in BAD])
def test_bad_input_names_the_argument(make, kwargs, error, message):
    x, mask, w, b = random_case(18, dtype=torch.float32)
    with pytest.raises(error, match=message):
        fastad.ops.partial_conv2d(*make(x, mask, w, b), **kwargs)


def test_bool_mask_and_module_errors():
    x, mask, w, b = random_case(19, dtype=torch.float32)
    torch.testing.assert_close(fastad.ops.partial_conv2d(x, mask.bool(), w, b, padding=1)[0],
                               fastad.ops.partial_conv2d(x, mask, w, b, padding=1)[0])
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        fastad.nn.PartialConv2d(4, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="groups"):
        fastad.ops.partial_conv_coverage(mask, 3, groups=2)


def test_cpp_checks_guard_direct_op_calls():
    with pytest.raises(RuntimeError, match="coverage groups"):
        torch.ops.fastad.partial_conv_renormalize(torch.randn(1, 3, 4, 4), torch.ones(1, 2, 4, 4), None, 9.0)
    with pytest.raises(RuntimeError, match="groups"):
        torch.ops.fastad.partial_conv_coverage(torch.ones(1, 3, 4, 4), [3, 3], [1, 1], [0, 0], [1, 1], 2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch():
    x, mask, w, b = random_case(20, dtype=torch.float32)
    with pytest.raises(ValueError, match="same device"):
        fastad.ops.partial_conv2d(x.cuda(), mask, w.cuda(), b.cuda())


@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16),
                                          pytest.param("cuda", torch.float16, marks=DEVICES[1].marks)])
def test_low_precision_only_under_autocast(device, dtype):
    """The dtype rule of every op: float16/bfloat16 refused outside autocast; inside it the input is
    taken as float32 and the convolution follows autocast."""
    x, mask, w, b = random_case(22, device=device, dtype=dtype)
    for name, args in (("input", (x, mask, w, b)), ("mask", None), ("raw", None)):
        with pytest.raises(TypeError, match=f"{name} must be float32 or float64"):
            if name == "input":
                fastad.ops.partial_conv2d(*args, padding=1)
            elif name == "mask":
                fastad.ops.partial_conv_coverage(mask, 3, padding=1)
            else:
                fastad.ops.partial_conv_renormalize(x, mask, None, 9.0)
    x = x.requires_grad_()
    with torch.autocast(device, dtype=dtype):
        out, update = fastad.ops.partial_conv2d(x, mask, w, b, padding=1)
    assert out.dtype == dtype and update.dtype == dtype
    exact = [t.detach().double() for t in (x, mask, w, b)]
    want, want_update = reference.partial_conv2d(*exact, padding=1)
    # |W|·(|X|⊙M)·ratio + |b|: what every product and sum of the forward is bounded by
    magnitude, _ = reference.partial_conv2d(exact[0].abs(), exact[1], exact[2].abs(), exact[3].abs(), padding=1)
    assert_within_rounding(out, want, magnitude, dtype)
    assert torch.equal(update.double(), want_update)
    out.float().sum().backward()
    assert x.grad.dtype == dtype
    xd = exact[0].clone().requires_grad_()
    reference.partial_conv2d(xd, exact[1], exact[2], exact[3], padding=1)[0].sum().backward()
    # grad_x = Σ W·ratio·M over the windows; with |W| the same sum bounds every term
    xa = exact[0].clone().requires_grad_()
    reference.partial_conv2d(xa, exact[1], exact[2].abs(), None, padding=1)[0].sum().backward()
    assert_within_rounding(x.grad, xd.grad, xa.grad, dtype)


def assert_within_rounding(got, exact, magnitude, dtype, roundings=8):
    """|got − exact| ≤ roundings · u · magnitude elementwise, u = dtype's unit roundoff (eps/2).

    `magnitude` is the sum of |terms| behind each element (float64). A low-precision convolution
    rounds its two inputs, its output and the renormalisation (four roundings); how the products
    are accumulated (native BF16 dot products in float32, or BF16 emulated by converting blocks on
    CPUs without it) changes the order, not the bound, so the factor 8 holds on every CPU. A
    wrong formula misses by the size of the terms themselves, far beyond it."""
    u = torch.finfo(dtype).eps / 2
    error = (got.double() - exact).abs()
    bound = roundings * u * magnitude + torch.finfo(dtype).tiny
    worst = (error / bound).max().item()
    assert worst <= 1, (f"{dtype} result off the float64 reference by up to {worst:.2f}x the rounding bound "
                        f"({roundings} * {u:.3g} * magnitude)")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_module_under_cuda_autocast():
    torch.manual_seed(23)
    layer = fastad.nn.PartialConv2d(4, 6, 3, padding=1, return_mask=True).cuda()
    x, mask, _, _ = random_case(23, device="cuda", dtype=torch.float32)
    with torch.autocast("cuda", dtype=torch.float16):
        out, update = layer(x, mask)
    assert out.dtype == torch.float16
    want, want_update = reference.partial_conv2d(x, mask, layer.weight, layer.bias, 1, 1)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    assert torch.equal(update.float(), want_update)
    out.float().sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


# --- channels_last (NHWC) raw: read without a copy, output in raw's layout ------------------------

CL = torch.channels_last


def is_channels_last_only(t):
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def renormalize_case(seed, device, dtype, batch=3, out_channels=6, groups=3, size=(5, 7), coverage_batch=None):
    """raw [B, Co, H, W] contiguous, non-binary coverage [B or 1, G, H, W] (clamp edges included), bias [Co]."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(batch, out_channels, *size, generator=g, dtype=torch.float64).to(device, dtype)
    coverage = (torch.rand(coverage_batch or batch, groups, *size, generator=g, dtype=torch.float64) * 12 - 1).round()
    coverage[0, 0, 0, :3] = torch.tensor([0.0, 0.5, 1.0])
    bias = torch.randn(out_channels, generator=g, dtype=torch.float64).to(device, dtype)
    return raw, coverage.to(device, dtype), bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("groups,coverage_batch", [(1, None), (3, None), (3, 1), (2, 1)])
def test_channels_last_renormalize_is_bit_identical_to_nchw(device, dtype, groups, coverage_batch):
    raw, coverage, bias = renormalize_case(30, device, dtype, groups=groups, coverage_batch=coverage_batch)
    raw_cl = raw.contiguous(memory_format=CL)
    assert is_channels_last_only(raw_cl)
    for b in (bias, None):
        want, want_update = torch.ops.fastad.partial_conv_renormalize(raw, coverage, b, 9.0)
        out, update = torch.ops.fastad.partial_conv_renormalize(raw_cl, coverage, b, 9.0)
        assert is_channels_last_only(out) and want.is_contiguous()
        assert torch.equal(out, want) and torch.equal(update, want_update)
        in_place = raw_cl.clone()
        address = in_place.data_ptr()
        assert torch.equal(torch.ops.fastad.partial_conv_renormalize_(in_place, coverage, b, 9.0), want_update)
        assert in_place.data_ptr() == address and is_channels_last_only(in_place)
        assert torch.equal(in_place, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("has_bias", [True, False])
def test_channels_last_renormalize_backward(device, has_bias):
    dtype = dtype_for(device)
    grad, coverage, _ = renormalize_case(31, device, dtype, batch=2, out_channels=8, groups=2, size=(23, 29))
    want_raw, want_bias = torch.ops.fastad.partial_conv_renormalize_backward(grad, coverage, 9.0, has_bias)
    got_raw, got_bias = torch.ops.fastad.partial_conv_renormalize_backward(grad.contiguous(memory_format=CL), coverage,
                                                                          9.0, has_bias)
    assert is_channels_last_only(got_raw)
    assert torch.equal(got_raw, want_raw)  # the same per-element formula
    torch.testing.assert_close(got_bias, want_bias, **tolerance(dtype))  # summed in another order
    assert got_bias.shape == (8 if has_bias else 0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [dict(padding=1), dict(groups=2, multi_channel=True, padding=1),
                                    dict(mask_batch=1, stride=2, padding=1), dict(bias=False, groups=2, padding=1),
                                    dict(mask_none=True, multi_channel=True, groups=2, padding=1)],
                         ids=["plain", "groups-multi", "mask-batch-1", "groups-no-bias", "mask-none"])
def test_channels_last_partial_conv2d_takes_the_in_place_path(device, config, monkeypatch):
    case, conv = split(config)
    dtype = dtype_for(device)
    x, mask, w, b = random_case(32, cin=4, cout=8, device=device, dtype=dtype, **case)
    if config.get("mask_none"):
        mask = None
    want, want_update = fastad.ops.partial_conv2d(x, mask, w, b, **conv)
    in_place_calls = []
    apply = pc._RenormalizeInPlace.apply
    monkeypatch.setattr(pc._RenormalizeInPlace, "apply", lambda *a: in_place_calls.append(a[0]) or apply(*a))
    out, update = fastad.ops.partial_conv2d(x.contiguous(memory_format=CL), mask, w.contiguous(memory_format=CL), b,
                                            **conv)
    assert len(in_place_calls) == 1 and is_channels_last_only(in_place_calls[0])
    assert is_channels_last_only(out) and out.data_ptr() == in_place_calls[0].data_ptr()
    torch.testing.assert_close(out, want, **tolerance(dtype))  # the convolution algorithm may differ
    assert torch.equal(update, want_update)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gradients(device):
    dtype = dtype_for(device)
    x, mask, w, b = random_case(33, batch=2, cin=4, cout=4, size=(6, 7), groups=2, device=device, dtype=dtype)
    mask[0, :, 1:4, 2:5] = 0
    leaves = [x.contiguous(memory_format=CL).requires_grad_(), w.contiguous(memory_format=CL).requires_grad_(),
              b.clone().requires_grad_()]
    fn = lambda *p: fastad.ops.partial_conv2d(p[0], mask, p[1], p[2], padding=1, groups=2)[0]  # noqa: E731
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)
        raw, coverage, bias = renormalize_case(34, device, dtype, batch=2, out_channels=4, groups=2)
        raw = raw.contiguous(memory_format=CL).requires_grad_()
        bias.requires_grad_()
        renorm = lambda r, bb: fastad.ops.partial_conv_renormalize(r, coverage, bb, 9.0)[0]  # noqa: E731
        assert torch.autograd.gradcheck(renorm, (raw, bias), fast_mode=True)
    # channels_last against contiguous leaves: the same gradients
    flat = [t.detach().contiguous().requires_grad_() for t in leaves]
    grad = torch.randn(fn(*flat).shape, dtype=torch.float64).to(device, dtype)
    want = torch.autograd.grad(fn(*flat), flat, grad)
    got = torch.autograd.grad(fn(*leaves), leaves, grad.contiguous(memory_format=CL))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, **tolerance(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_opcheck(device):
    raw, coverage, bias = renormalize_case(35, device, torch.float32, groups=2, out_channels=6)
    raw_cl = raw.contiguous(memory_format=CL).requires_grad_()
    bias.requires_grad_()
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize.default, (raw_cl, coverage, bias, 9.0))
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize.default, (raw_cl, coverage[:1], None, 9.0))
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize_.default,
                          (raw_cl.detach().clone(), coverage, bias.detach(), 9.0))
    for has_bias in (True, False):
        torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize_backward.default,
                              (raw_cl.detach(), coverage, 9.0, has_bias))
    transposed = raw.detach().transpose(2, 3).contiguous().transpose(2, 3)  # neither layout: NCHW output
    torch.library.opcheck(torch.ops.fastad.partial_conv_renormalize.default, (transposed, coverage, None, 9.0))


@pytest.mark.parametrize("device", DEVICES)
def test_other_layouts_go_through_an_nchw_copy(device):
    raw, coverage, bias = renormalize_case(36, device, dtype_for(device), groups=2)
    want, want_update = torch.ops.fastad.partial_conv_renormalize(raw, coverage, bias, 9.0)
    for odd in (raw.transpose(2, 3).contiguous().transpose(2, 3),
                raw.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3),
                torch.cat([raw, raw], 3)[..., :raw.shape[3]]):
        assert not odd.is_contiguous() and not odd.is_contiguous(memory_format=CL) and torch.equal(odd, raw)
        out, update = torch.ops.fastad.partial_conv_renormalize(odd, coverage, bias, 9.0)
        assert out.is_contiguous() and torch.equal(out, want) and torch.equal(update, want_update)
        grad_raw, _ = torch.ops.fastad.partial_conv_renormalize_backward(odd, coverage, 9.0, True)
        assert grad_raw.is_contiguous()
        with pytest.raises(RuntimeError, match="contiguous"):
            torch.ops.fastad.partial_conv_renormalize_(odd, coverage, bias, 9.0)


def test_torch_compile_channels_last_matches_eager():
    x, mask, w, b = random_case(37, dtype=torch.float32)
    x, w = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL)
    fn = lambda x, m: fastad.ops.partial_conv2d(x, m, w, b, padding=1)[0]  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got, want = compiled(x, mask), fn(x, mask)
    torch.testing.assert_close(got, want)
    assert is_channels_last_only(got) and got.stride() == want.stride()
