"""Autocast is a dispatcher kernel of every forward operator (not only a Python decorator on the
wrappers): torch.ops.fastad.* called directly inside torch.autocast computes in float32 from
low-precision inputs, keeps float64 as float64, and outside autocast refuses low precision."""
import pytest
import torch

import fastad
from fastad.ops.autocast import NATIVE_LOW_PRECISION

pytestmark = pytest.mark.skipif(not fastad.extension.loaded(), reason="needs the compiled extension")


def _operators():
    """Every operator registered in the fastad namespace (dir() lists only those already used)."""
    names = {n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastad::")}
    return sorted(names)


def _qualname(name: str) -> str:
    return getattr(torch.ops.fastad, name).default.name()


def _forward(name: str) -> bool:
    """A forward operator that computes in float32 (not a backward, in-place or native one)."""
    return not name.endswith(("_backward", "_")) and _qualname(name) not in NATIVE_LOW_PRECISION


def _arguments(name: str, dtype: torch.dtype):
    """Positional arguments of operator `name` with floating-point tensors of `dtype`."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.rand(*shape, generator=g).to(dtype)

    scale_tril = (torch.eye(4).expand(2, 4, 4) * 1.5).to(dtype)
    table = {
        "knn": lambda: (r(12, 8), r(40, 8), 3, None, "fp32"),
        "kcenter_coreset": lambda: (r(30, 8), 5, 0),
        "gmm_log_prob": lambda: (r(10, 4), torch.log(torch.tensor([0.3, 0.7])).to(dtype), r(2, 4), scale_tril, False),
        "gaussian_upsample": lambda: (r(2, 1, 6, 6), [16, 16], 5, 2, 1.0, 2.0),
        "patch_average": lambda: (r(2, 9), [8, 8], [4, 4], [16, 16], [16, 16]),
        "idw_upsample": lambda: (r(2, 9), [8, 8], [4, 4], [16, 16], [16, 16], 2.0, None),
        "gaussian_blur": lambda: (r(2, 1, 16, 16), 2.0, 9),
    }
    return table[name]()


def _call(name, args):
    out = getattr(torch.ops.fastad, name)(*args)
    return out if isinstance(out, tuple) else (out,)


def test_every_forward_operator_has_autocast_kernels():
    names = [n for n in _operators() if _forward(n)]
    assert names, "no fastad operator registered"
    for name in names:
        qualname = _qualname(name)
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key), f"{qualname} lacks {key}"


def test_backward_inplace_and_native_operators_have_none():
    qualnames = {_qualname(n) for n in _operators()}
    assert set(NATIVE_LOW_PRECISION) <= qualnames, "NATIVE_LOW_PRECISION names an unknown operator"
    for name in [n for n in _operators() if not _forward(n)]:
        qualname = _qualname(name)
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "AutocastCPU"), qualname


@pytest.mark.parametrize("name", [n for n in _operators() if _forward(n)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_direct_call_computes_in_float32_under_autocast(name, dtype):
    low = _arguments(name, dtype)
    as_float = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in low)
    expected = _call(name, as_float)
    with torch.autocast("cpu", dtype=dtype):
        got = _call(name, low)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        assert torch.equal(g, e)
    with pytest.raises(RuntimeError):   # outside autocast the kernel's own dtype check refuses it
        _call(name, low)


@pytest.mark.parametrize("name", ["knn", "gmm_log_prob", "gaussian_blur"])
def test_float64_passes_through_autocast(name):
    args = _arguments(name, torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _call(name, args)
    assert got[0].dtype == torch.float64
    torch.testing.assert_close(got[0], _call(name, args)[0], rtol=0, atol=0)
