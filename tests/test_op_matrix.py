"""Every public op of fastad.ops (and its backward) against its reference under the "reference"
backend, and on CUDA: under torch.compile(fullgraph=True) with inductor, inside a captured CUDA
graph replayed on new inputs, under autocast bf16/fp16, in float64, on a side stream and on a
second GPU. The CUDA cases skip without a GPU (tests/test_compile_export.py runs inductor on the
CPU for two of these cases)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import fastad
from fastad.ops import PatchGrid
from conftest import requires_cuda

GRID = PatchGrid(8, 4, 32)


@dataclass
class Case:
    fn: Callable                 # tensors -> tensor or tuple of tensors
    make: Callable               # (generator, dtype, device) -> list of input tensors
    grad: tuple = ()             # indices of the inputs the op is differentiable in
    integer_output: bool = False


def _knn_inputs(g, dtype, device):
    return [torch.randn(40, 16, generator=g), torch.randn(300, 16, generator=g)]


def _mixture(g, dtype, device):
    k, d = 3, 5
    mu = 2 * torch.randn(k, d, generator=g)
    a = torch.randn(k, d, d, generator=g) / d ** 0.5
    scale_tril = torch.linalg.cholesky(a @ a.transpose(1, 2) + 0.5 * torch.eye(d))
    return [torch.randn(64, d, generator=g) * 2, torch.randn(k, generator=g).log_softmax(0), mu, scale_tril]


def _memberships(g, dtype, device):
    return [torch.randn(64, 4, generator=g), torch.randn(64, 3, generator=g).softmax(1)]


def _partial_conv(g, dtype, device):
    return [torch.randn(2, 4, 12, 12, generator=g), (torch.rand(2, 1, 12, 12, generator=g) > 0.3).float(),
            torch.randn(6, 4, 3, 3, generator=g) / 6, torch.randn(6, generator=g)]


def _renormalize(g, dtype, device):
    coverage = (torch.rand(2, 1, 10, 10, generator=g) * 11 - 1).round().clamp_min(0)
    return [torch.randn(2, 6, 10, 10, generator=g), coverage, torch.randn(6, generator=g)]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


CASES = {
    "knn": Case(lambda q, b: fastad.ops.knn(q, b, 3)[0], _knn_inputs, (0, 1)),
    "kcenter_coreset": Case(lambda f: fastad.ops.kcenter_coreset(f, 8),
                            lambda g, dt, dv: [torch.randn(500, 12, generator=g)], integer_output=True),
    "gmm_log_prob": Case(lambda *t: fastad.ops.gmm_log_prob(*t, check_values=False), _mixture, (0, 1, 2, 3)),
    "gmm_params": Case(lambda z, gamma: fastad.ops.gmm_params(z, gamma, 1e-3), _memberships, (0, 1)),
    "gmm_energy": Case(lambda z, gamma: fastad.ops.gmm_energy(z, gamma, 1e-3), _memberships, (0, 1)),
    "gmm_scale_tril": Case(fastad.ops.gmm_scale_tril,
                           lambda g, dt, dv: [(lambda a: a @ a.transpose(1, 2) + torch.eye(5))(
                               torch.randn(3, 5, 5, generator=g))], (0,)),
    "gaussian_upsample": Case(lambda h: fastad.ops.gaussian_upsample(h, (30, 26), 9, 4, 1.5, sigma=3.0),
                              lambda g, dt, dv: [torch.rand(2, 3, 7, 6, generator=g)], (0,)),
    "patch_average": Case(lambda s: fastad.ops.patch_average(s, GRID),
                          lambda g, dt, dv: [torch.rand(3, GRID.num_patches, generator=g)], (0,)),
    "idw_upsample": Case(lambda s: fastad.ops.idw_upsample(s, GRID),
                         lambda g, dt, dv: [torch.rand(3, GRID.num_patches, generator=g)], (0,)),
    "gaussian_blur": Case(lambda m: fastad.ops.gaussian_blur(m, 1.5),
                          lambda g, dt, dv: [torch.rand(2, 2, 20, 17, generator=g)], (0,)),
    "partial_conv2d": Case(lambda x, m, w, b: fastad.ops.partial_conv2d(x, m, w, b, padding=1), _partial_conv,
                           (0, 2, 3)),
    "partial_conv_coverage": Case(lambda m: fastad.ops.partial_conv_coverage(m, 3, padding=1),
                                  lambda g, dt, dv: [(torch.rand(2, 1, 12, 12, generator=g) > 0.3).float()]),
    "partial_conv_renormalize": Case(lambda r, c, b: fastad.ops.partial_conv_renormalize(r, c, b, 9.0),
                                     _renormalize, (0, 2)),
}
NAMES = sorted(CASES)
# every op of the library: a new op must get a case here
# every op is in the matrix; the rest of fastad.ops.__all__ are helpers and facts about the kernels
assert set(NAMES) >= {n for n in fastad.ops.__all__ if n not in ("reference", "PatchGrid", "NotPositiveDefiniteError",
                                                                    "gmm_from_sklearn", "knn_cpu_kernels", "knn_cpu_peak",
                                                                    "KNN_CPU_KERNELS")}


def inputs_for(name, seed=0, dtype=torch.float32, device="cpu"):
    """The case's inputs (float ones in dtype) on device, the differentiable ones requiring grad."""
    case = CASES[name]
    tensors = case.make(torch.Generator().manual_seed(seed), dtype, device)
    tensors = [t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in tensors]
    return [t.requires_grad_() if i in case.grad else t for i, t in enumerate(tensors)]


def outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


def weighting(out: torch.Tensor) -> torch.Tensor:
    """Fixed weights in (-1, 1) of out's shape, made on out's device (no host copy: capturable)."""
    steps = torch.arange(out.numel(), device=out.device, dtype=out.dtype).reshape(out.shape)
    return torch.sin(0.7 * steps + 0.3)


def run_with_grads(name, tensors):
    """(outputs, gradients of a fixed random weighting of the outputs w.r.t. the differentiable inputs)."""
    case = CASES[name]
    outs = outputs(case.fn(*tensors))
    if not case.grad:
        return outs, []
    loss = sum((o * weighting(o)).sum() for o in outs if o.is_floating_point())
    return outs, list(torch.autograd.grad(loss, [tensors[i] for i in case.grad]))


def assert_all_close(got, want, rtol, atol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.device == b.device
        if a.is_floating_point():
            scale = b.abs().max().item() if b.numel() else 1.0
            torch.testing.assert_close(a.to(b.dtype), b, rtol=rtol, atol=atol * max(scale, 1e-30))
        else:
            assert torch.equal(a, b)


# --- the reference backend really runs the references (CPU; CUDA too when present) -------------

FASTAD_OPS = ("knn", "kcenter_coreset", "gmm_log_prob", "gmm_log_prob_backward", "partial_conv_coverage",
              "partial_conv_renormalize", "partial_conv_renormalize_", "partial_conv_renormalize_backward",
              "gaussian_upsample", "gaussian_upsample_backward", "patch_average", "patch_average_backward",
              "gaussian_blur", "gaussian_blur_backward", "idw_upsample", "idw_upsample_backward")


def refuse(*args, **kwargs):
    raise AssertionError("a compiled fastad op ran")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])])
@pytest.mark.parametrize("name", NAMES)
def test_reference_backend_runs_no_compiled_op(name, device):
    tensors = inputs_for(name, seed=1, device=device)
    native = run_with_grads(name, tensors)
    with pytest.MonkeyPatch.context() as patch:
        for op in FASTAD_OPS:
            patch.setattr(torch.ops.fastad, op, refuse)
        if name not in ("gmm_params", "gmm_scale_tril"):   # pure torch in both backends
            with pytest.raises(AssertionError, match="compiled fastad op ran"):
                run_with_grads(name, tensors)
        with fastad.use_backend("reference"):
            ref = run_with_grads(name, tensors)
    assert_all_close(ref[0] + ref[1], native[0] + native[1], rtol=1e-4, atol=1e-5)


# --- torch.compile with inductor ---------------------------------------------------------------

def check_compiled_matches_eager(name, device):
    torch._dynamo.reset()
    case = CASES[name]
    tensors = inputs_for(name, seed=2, device=device)
    eager = run_with_grads(name, tensors)
    compiled_fn = torch.compile(case.fn, fullgraph=True, backend="inductor")
    compiled_case = Case(compiled_fn, case.make, case.grad, case.integer_output)
    CASES["_compiled"] = compiled_case
    try:
        got = run_with_grads("_compiled", tensors)
    finally:
        del CASES["_compiled"]
    assert_all_close(got[0] + got[1], eager[0] + eager[1], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("name", NAMES)
def test_inductor_on_cuda_matches_eager(name):
    check_compiled_matches_eager(name, "cuda")


# --- CUDA graph capture, replayed on new inputs ------------------------------------------------

@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_graph_replay_on_new_inputs(name):
    static = inputs_for(name, seed=3, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                     # warm-up (lazy inits) off the capture
        for _ in range(2):
            run_with_grads(name, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured_outs, captured_grads = run_with_grads(name, static)
    for seed in (4, 5):
        fresh = inputs_for(name, seed=seed, device="cuda")
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        want_outs, want_grads = run_with_grads(name, fresh)
        assert_all_close(captured_outs + captured_grads, want_outs + want_grads, rtol=1e-5, atol=1e-6)


# --- autocast bf16 / fp16 ------------------------------------------------------------------------

@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_autocast_computes_in_float32(name, dtype):
    low = [t.detach().to(dtype) if t.is_floating_point() else t for t in inputs_for(name, seed=6, device="cuda")]
    with torch.autocast("cuda", dtype=dtype):
        got = outputs(CASES[name].fn(*low))
    want = outputs(CASES[name].fn(*[t.float() if t.is_floating_point() else t for t in low]))
    for a, b in zip(got, want):
        if name == "partial_conv2d" and a.is_floating_point():   # its convolution follows autocast
            assert a.dtype == dtype
            torch.testing.assert_close(a.float(), b, rtol=3e-2, atol=3e-2 * b.abs().max().item())
        elif a.is_floating_point():
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(b.abs().max().item(), 1.0))
        else:
            assert torch.equal(a, b)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.filterwarnings("ignore:UTAD. no VGG-19 weights")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model_name", ["pedenet", "fcdd", "glance", "utad", "rawpixel"])
def test_scorer_low_precision_on_cuda_stays_close(model_name, precision):
    from test_scorer import ready

    model, images = ready(model_name, "cuda")
    exact = fastad.Scorer(model, "cuda").score(images).maps
    low = fastad.Scorer(model, "cuda", precision=precision).score(images).maps
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - exact).abs().mean() <= 0.05 * exact.abs().mean()


# --- float64 on CUDA ------------------------------------------------------------------------------

@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("name", NAMES)
def test_float64_on_cuda_matches_cpu(name, no_tf32):
    tensors = inputs_for(name, seed=7, dtype=torch.float64, device="cuda")
    try:
        got = run_with_grads(name, tensors)
    except TypeError as error:                       # the op's documented rule: float32 only on CUDA
        assert "float32 on CUDA" in str(error)
        return
    on_cpu = run_with_grads(name, inputs_for(name, seed=7, dtype=torch.float64))
    assert_all_close([t.cpu() for t in got[0] + got[1]], on_cpu[0] + on_cpu[1], rtol=1e-9, atol=1e-10)


# --- streams and devices ---------------------------------------------------------------------------

@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("name", NAMES)
def test_side_stream_orders_after_the_producer(name):
    """Inputs written on a side stream after a long sleep: a kernel launched on another stream
    than the current one would read them before they are written."""
    want = run_with_grads(name, inputs_for(name, seed=8, device="cuda"))
    source = inputs_for(name, seed=8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        tensors = [t.detach().clone().requires_grad_(t.requires_grad) for t in source]
        got = run_with_grads(name, tensors)
    side.synchronize()
    assert_all_close(got[0] + got[1], want[0] + want[1], rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("name", NAMES)
def test_second_gpu_while_the_first_is_current(name):
    want = run_with_grads(name, inputs_for(name, seed=9, device="cuda:0"))
    with torch.cuda.device(0):
        got = run_with_grads(name, inputs_for(name, seed=9, device="cuda:1"))
    assert all(t.device == torch.device("cuda:1") for t in got[0] + got[1])
    assert_all_close([t.to("cuda:0") for t in got[0] + got[1]], want[0] + want[1], rtol=1e-5, atol=1e-6)
