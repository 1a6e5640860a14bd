"""gmm_log_prob against scikit-learn's score_samples, torch.distributions' MixtureSameFamily and the
batched-PyTorch reference formula: forward, and forward + backward (all four inputs).

Groups: "gmm_log_prob <pass> <device> N=.. D=.. K=..". Only N = 100k runs here (N = 1M with
scikit-learn takes too long on a shared 2-core machine); the CUDA cases are skipped without a GPU.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import fastad
from benchlib import random_matrix, requires_cuda, run_pedantic, synchronized
from fastad.ops import reference

N = 100_000
SHAPES = [(16, 4), (16, 16), (64, 4), (64, 16)]  # (D, K)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]


def mixture(d: int, k: int, device: str):
    """(log_phi [k], mu [k, d], scale_tril [k, d, d]) float32, seeded."""
    g = torch.Generator().manual_seed(1000 * d + k)
    mu = torch.randn(k, d, generator=g, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    scale_tril = torch.linalg.cholesky(a @ a.transpose(1, 2) + 0.5 * torch.eye(d, dtype=torch.float64))
    log_phi = torch.randn(k, generator=g, dtype=torch.float64).log_softmax(0)
    return tuple(t.float().to(device) for t in (log_phi, mu, scale_tril))


def contenders(device: str):
    """name -> f(z, log_phi, mu, scale_tril) -> [N] log-likelihood."""
    def torch_distributions(z, log_phi, mu, scale_tril):
        mix = MixtureSameFamily(Categorical(logits=log_phi), MultivariateNormal(mu, scale_tril=scale_tril))
        return mix.log_prob(z)

    return {
        "fastad": lambda *args: fastad.ops.gmm_log_prob(*args, check_values=False),
        "reference": reference.gmm_log_prob,
        "torch.distributions": torch_distributions,
    }


def sklearn_model(log_phi, mu, scale_tril):
    """A GaussianMixture(covariance_type="full") holding the given parameters, as if fitted."""
    mixture_module = pytest.importorskip("sklearn.mixture")
    gm = mixture_module.GaussianMixture(log_phi.shape[0], covariance_type="full")
    factor = scale_tril.double()
    gm.weights_ = log_phi.double().exp().numpy()
    gm.means_ = mu.double().numpy()
    gm.covariances_ = (factor @ factor.transpose(1, 2)).numpy()
    gm.precisions_cholesky_ = torch.linalg.inv(factor).transpose(1, 2).contiguous().numpy()
    return gm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d,k", SHAPES)
@pytest.mark.parametrize("name", ["fastad", "reference", "torch.distributions", "sklearn"])
def test_forward(benchmark, name, d, k, device):
    if name == "sklearn" and device == "cuda":
        pytest.skip("scikit-learn runs on the CPU only")
    benchmark.group = f"gmm_log_prob forward {device} N={N} D={d} K={k}"
    benchmark.extra_info["contender"] = name
    z = random_matrix(N, d, device)
    params = mixture(d, k, device)
    if name == "sklearn":
        gm, z_np = sklearn_model(*params), z.numpy()
        run_pedantic(benchmark, lambda: gm.score_samples(z_np))
        return
    fn = contenders(device)[name]
    with torch.no_grad():
        run_pedantic(benchmark, synchronized(lambda: fn(z, *params), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d,k", SHAPES)
@pytest.mark.parametrize("name", ["fastad", "reference", "torch.distributions"])
def test_forward_backward(benchmark, name, d, k, device):
    benchmark.group = f"gmm_log_prob forward+backward {device} N={N} D={d} K={k}"
    benchmark.extra_info["contender"] = name
    z = random_matrix(N, d, device)
    inputs = [t.clone().requires_grad_() for t in (z, *mixture(d, k, device))]
    fn = contenders(device)[name]

    def step():
        return torch.autograd.grad(fn(*inputs).sum(), inputs)

    run_pedantic(benchmark, synchronized(step, device))
