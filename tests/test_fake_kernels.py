"""The fake kernels (what torch.compile and torch.export trace with) refuse what the compiled
kernels refuse, with the same message, and give the same output shapes on valid input.

Each case calls a torch.ops.fastad op twice: on CPU tensors (the C++ kernel) and on meta tensors
(the registered fake kernel)."""
import math

import pytest
import torch

import fastad  # noqa: F401  (registers the ops and their fake kernels)
from fastad import extension

pytestmark = pytest.mark.skipif(not extension.loaded(), reason="needs the compiled extension")

F = torch.float32


def t(*shape, dtype=F):
    return torch.ones(shape, dtype=dtype)


def upsample_args(heatmap=None, size=(20, 24), rf=5, stride=2, start=0.0, sigma=1.5):
    return (t(2, 1, 5, 6) if heatmap is None else heatmap, list(size), rf, stride, start, sigma)


def grid_args(scores=None, patch=(4, 4), stride=(2, 2), image=(8, 8), out=(8, 8)):
    return (t(2, 9) if scores is None else scores, list(patch), list(stride), list(image), list(out))


def gmm_args(z=None, log_phi=None, mu=None, tril=None):
    return (t(5, 3) if z is None else z, t(2) if log_phi is None else log_phi, t(2, 3) if mu is None else mu,
            t(2, 3, 3) if tril is None else tril)


def coverage_args(mask=None, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1):
    return (t(2, 1, 7, 7) if mask is None else mask, list(kernel), list(stride), list(padding), list(dilation), groups)


def renorm_args(raw=None, coverage=None, bias=(), slide=9.0):
    return (t(2, 4, 5, 5) if raw is None else raw, t(2, 1, 5, 5) if coverage is None else coverage,
            t(4) if bias == () else bias, slide)


VALID = [
    ("gaussian_upsample", upsample_args()),
    ("gaussian_upsample_backward", (t(2, 1, 20, 24), [5, 6], 5, 2, 0.0, 1.5)),
    ("patch_average", grid_args()),
    ("patch_average_backward", (t(2, 8, 8), [4, 4], [2, 2], [8, 8])),
    ("idw_upsample", grid_args() + (2.0, None)),
    ("idw_upsample_backward", (t(2, 8, 8), [4, 4], [2, 2], [8, 8], 2.0, 3.0)),
    ("gaussian_blur", (t(1, 2, 9, 9), 1.0, 5)),
    ("gaussian_blur_backward", (t(1, 2, 9, 9), 1.0, 5)),
    ("gmm_log_prob", gmm_args() + (False,)),
    ("gmm_log_prob", gmm_args() + (True,)),
    ("gmm_log_prob_backward", (t(5),) + gmm_args() + (t(5), False)),
    ("partial_conv_coverage", coverage_args()),
    ("partial_conv_coverage", coverage_args(t(2, 4, 9, 7), (3, 2), (2, 1), (0, 1), (2, 1), 2)),
    ("partial_conv_renormalize", renorm_args()),
    ("partial_conv_renormalize", renorm_args(coverage=t(1, 2, 5, 5), bias=None)),
    ("partial_conv_renormalize_backward", (t(2, 4, 5, 5), t(2, 1, 5, 5), 9.0, True)),
    ("knn", (t(7, 3), t(5, 3), 2)),
    ("knn", (t(7, 3), t(5, 3), 5, t(5))),
    ("kcenter_coreset", (t(9, 4), 3, 2)),
]

INVALID = [
    ("gaussian_upsample", upsample_args(heatmap=t(2, 5, 6))),
    ("gaussian_upsample", upsample_args(heatmap=t(2, 1, 5, 6, dtype=torch.int64))),
    ("gaussian_upsample", upsample_args(size=(0, 3))),
    ("gaussian_upsample", upsample_args(rf=0)),
    ("gaussian_upsample", upsample_args(stride=0)),
    ("gaussian_upsample", upsample_args(start=math.inf)),
    ("gaussian_upsample", upsample_args(sigma=0.0)),
    ("gaussian_upsample", upsample_args(heatmap=t(2, 1, 0, 6))),
    ("gaussian_upsample_backward", (t(2, 1, 20), [5, 6], 5, 2, 0.0, 1.5)),
    ("gaussian_upsample_backward", (t(2, 1, 20, 24), [5], 5, 2, 0.0, 1.5)),
    ("patch_average", grid_args(scores=t(2, 9, 1))),
    ("patch_average", grid_args(scores=t(2, 8))),
    ("patch_average", grid_args(patch=(9, 4))),
    ("patch_average", grid_args(out=(0, 1))),
    ("patch_average", grid_args(stride=(0, 2))),
    ("patch_average_backward", (t(2, 8), [4, 4], [2, 2], [8, 8])),
    ("patch_average_backward", (t(2, 0, 8), [4, 4], [2, 2], [8, 8])),
    ("idw_upsample", grid_args() + (-1.0, None)),
    ("idw_upsample", grid_args() + (2.0, -1.0)),
    ("idw_upsample", grid_args(scores=t(2, 10)) + (2.0, None)),
    ("idw_upsample", grid_args(out=(3, 0)) + (2.0, None)),
    ("idw_upsample_backward", (t(2, 8, 8, dtype=torch.float16), [4, 4], [2, 2], [8, 8], 2.0, None)),
    ("gaussian_blur", (t(1, 9, 9), 1.0, 5)),
    ("gaussian_blur", (t(1, 2, 9, 9), 0.0, 5)),
    ("gaussian_blur", (t(1, 2, 9, 9), 1.0, 4)),
    ("gaussian_blur", (t(1, 2, 9, 4), 1.0, 9)),
    ("gaussian_blur_backward", (t(1, 2, 9, 9), 1.0, -1)),
    ("gmm_log_prob", gmm_args(z=t(5)) + (False,)),
    ("gmm_log_prob", gmm_args(log_phi=t(2, 1)) + (False,)),
    ("gmm_log_prob", gmm_args(log_phi=t(0), mu=t(0, 3), tril=t(0, 3, 3)) + (False,)),
    ("gmm_log_prob", gmm_args(z=t(5, 0), mu=t(2, 0), tril=t(2, 0, 0)) + (False,)),
    ("gmm_log_prob", gmm_args(mu=t(2, 4)) + (False,)),
    ("gmm_log_prob", gmm_args(tril=t(2, 3, 2)) + (False,)),
    ("gmm_log_prob", gmm_args(mu=t(2, 3, dtype=torch.float64)) + (False,)),
    ("gmm_log_prob", gmm_args(*(t(*s, dtype=torch.float16) for s in ((5, 3), (2,), (2, 3), (2, 3, 3)))) + (False,)),
    ("gmm_log_prob_backward", (t(5, 2),) + gmm_args() + (t(5), False)),
    ("gmm_log_prob_backward", (t(5),) + gmm_args() + (t(4), False)),
    ("gmm_log_prob_backward", (t(5, dtype=torch.float64),) + gmm_args() + (t(5), False)),
    ("partial_conv_coverage", coverage_args(mask=t(2, 7, 7))),
    ("partial_conv_coverage", coverage_args(mask=t(2, 1, 7, 7, dtype=torch.int64))),
    ("partial_conv_coverage", coverage_args(kernel=(3,))),
    ("partial_conv_coverage", coverage_args(kernel=(0, 3))),
    ("partial_conv_coverage", coverage_args(padding=(-1, 0))),
    ("partial_conv_coverage", coverage_args(groups=2)),
    ("partial_conv_coverage", coverage_args(kernel=(9, 9), padding=(0, 0))),
    ("partial_conv_renormalize", renorm_args(raw=t(2, 4, 5))),
    ("partial_conv_renormalize", renorm_args(coverage=t(2, 5, 5))),
    ("partial_conv_renormalize", renorm_args(coverage=t(3, 1, 5, 5))),
    ("partial_conv_renormalize", renorm_args(coverage=t(2, 3, 5, 5))),
    ("partial_conv_renormalize", renorm_args(coverage=t(2, 1, 5, 4))),
    ("partial_conv_renormalize", renorm_args(coverage=t(2, 1, 5, 5, dtype=torch.float64))),
    ("partial_conv_renormalize", renorm_args(bias=t(3))),
    ("partial_conv_renormalize", renorm_args(bias=t(4, dtype=torch.float64))),
    ("partial_conv_renormalize_", renorm_args(bias=t(4, 1))),
    ("partial_conv_renormalize_backward", (t(2, 4, 5, 5), t(2, 3, 5, 5), 9.0, False)),
    ("knn", (t(7), t(5, 3), 1)),
    ("knn", (t(7, 3), t(5, 3, 1), 1)),
    ("knn", (t(7, 3), t(5, 4), 1)),
    ("knn", (t(7, 3), t(0, 3), 1)),
    ("knn", (t(7, 0), t(5, 0), 1)),
    ("knn", (t(7, 3), t(5, 3), 6)),
    ("knn", (t(7, 3), t(5, 3), 0)),
    ("knn", (t(7, 3), t(5, 3, dtype=torch.float64), 1)),
    ("knn", (t(7, 3), t(5, 3), 1, t(4))),
    ("knn", (t(7, 3), t(5, 3), 1, t(5, dtype=torch.float64))),
    ("kcenter_coreset", (t(9), 3, 0)),
    ("kcenter_coreset", (t(9, 0), 3, 0)),
    ("kcenter_coreset", (t(9, 4), 10, 0)),
    ("kcenter_coreset", (t(9, 4), 3, 9)),
]


def on_meta(args):
    return tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name,args", VALID, ids=[name for name, _ in VALID])
def test_fake_shapes_match_the_kernel(name, args):
    op = getattr(torch.ops.fastad, name)
    real = outputs(op(*args))
    fake = outputs(op(*on_meta(args)))
    assert [r.shape for r in real] == [f.shape for f in fake]
    assert [r.dtype for r in real] == [f.dtype for f in fake]


@pytest.mark.parametrize("name,args", INVALID, ids=[f"{name}-{i}" for i, (name, _) in enumerate(INVALID)])
def test_fake_kernels_refuse_what_the_kernel_refuses(name, args):
    op = getattr(torch.ops.fastad, name)
    with pytest.raises(RuntimeError) as kernel:
        op(*args)
    with pytest.raises(RuntimeError) as fake:
        op(*on_meta(args))
    assert str(fake.value).splitlines()[0] == str(kernel.value).splitlines()[0]
