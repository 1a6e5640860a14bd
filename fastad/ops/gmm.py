"""Gaussian-mixture operators: the batched log-likelihood (fastad::gmm_log_prob and its backward
op), the differentiable M-step of PEDENet/DAGMM (eqs. 3–5), the energy with the covariance
regulariser (eqs. 6, 9, 11), and the conversion of a fitted scikit-learn GaussianMixture."""
from __future__ import annotations

import torch

from fastad.ops.autocast import float32_under_autocast, register_float32_autocast
from fastad.ops import fake
from fastad import extension
from fastad.backend import use_reference
from fastad.ops import reference
from fastad.checks import check_finite, check_float, check_same_device, check_tensor, tracing_or_capturing


class NotPositiveDefiniteError(ValueError):
    """A mixture component's covariance has no Cholesky factor; `component` is its index."""

    def __init__(self, message: str, component: int):
        super().__init__(message)
        self.component = component


@float32_under_autocast
def gmm_log_prob(z: torch.Tensor, log_phi: torch.Tensor, mu: torch.Tensor, scale_tril: torch.Tensor,
                 per_component: bool = False, *, check_values: bool = True) -> torch.Tensor:
    """log Σ_k φ_k N(z | μ_k, Σ_k) per sample (the log of PEDENet eq. 6, normalised by
    (2π)^(D/2) |Σ_k|^(1/2)), with Σ_k = L_k L_kᵀ.

    Args:
        z: [N, D] float32 or float64.
        log_phi: [K] log mixture weights, used as given (not renormalised).
        mu: [K, D] component means.
        scale_tril: [K, D, D] lower-triangular Cholesky factors L_k with a positive diagonal.
            Only the lower triangle is read; the gradient of the upper triangle is zero.
        per_component: return [N, K] log φ_k + log N(z | μ_k, Σ_k) instead of their
            logsumexp over k.
        check_values: reject NaN/Inf inputs and diagonals of scale_tril below
            sqrt(finfo(dtype).tiny) (about 1.1e-19 in float32, whose covariance would underflow;
            one pass over each; on CUDA it waits for the device).

    Returns:
        [N] (or [N, K]) of z's dtype. Each term uses a triangular solve for the Mahalanobis
        distance and the factor's diagonal for the log-determinant; the sum over components is
        a max-shifted logsumexp. No [N, K, D] intermediate is formed. Differentiable in z,
        log_phi, mu and scale_tril (once: the backward op has no derivative of its own).
    """
    _check_log_prob(z, log_phi, mu, scale_tril, per_component, check_values)
    if use_reference():
        return reference.gmm_log_prob(z, log_phi, mu, scale_tril, per_component)
    extension.require("gmm_log_prob")
    return torch.ops.fastad.gmm_log_prob(z, log_phi, mu, scale_tril, per_component)


@float32_under_autocast
def gmm_params(z: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-6):
    """The M-step of eqs. 3–5 from soft memberships, differentiable in z and gamma.

    Args:
        z: [N, D] float32 or float64 embeddings, N >= 1.
        gamma: [N, K] memberships (rows are usually a softmax), same dtype and device; finite and
            >= 0, else ValueError (not checked inside torch.compile tracing or CUDA graph
            capture; on CUDA the check waits for the device).
        eps: added to each covariance's diagonal (eps·I), >= 0.

    Returns:
        phi [K] = Σ_n γ_nk / N, mu [K, D] = Σ_n γ_nk z_n / Σ_n γ_nk and
        sigma [K, D, D] = Σ_n γ_nk (z_n − μ_k)(z_n − μ_k)ᵀ / Σ_n γ_nk + eps·I (symmetric).
        A component with zero total membership gets mu = 0 and sigma = eps·I.

    Written with GEMMs (γᵀZ and one weighted product per component over the centred data, so no
    cancellation from E[zzᵀ] − μμᵀ); autograd differentiates them.
    """
    _check_params(z, gamma, eps)
    if use_reference():
        return reference.gmm_params(z, gamma, eps)
    weight = gamma.sum(0)  # [K]
    phi = weight / z.shape[0]
    denom = weight.clamp_min(torch.finfo(z.dtype).tiny)
    mu = (gamma.t() @ z) / denom[:, None]
    scatter = []
    for k in range(gamma.shape[1]):
        centred = z - mu[k]
        scatter.append((centred * gamma[:, k : k + 1]).t() @ centred)
    sigma = torch.stack(scatter) / denom[:, None, None]
    sigma = 0.5 * (sigma + sigma.transpose(1, 2))
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return phi, mu, sigma + eps * eye


@float32_under_autocast
def gmm_scale_tril(sigma: torch.Tensor) -> torch.Tensor:
    """Cholesky factors [K, D, D] of covariances sigma [K, D, D] (differentiable).

    Raises NotPositiveDefiniteError (a ValueError) naming the first component whose covariance
    is not finite or not positive definite, instead of letting a NaN reach the loss (except
    inside torch.compile/export tracing or CUDA graph capture, where a failed factor is NaN).
    """
    check_tensor("sigma", sigma, 3, "[K, D, D]")
    check_float("sigma", sigma, cuda_float64=True)
    if tracing_or_capturing(sigma):
        factor, info = torch.linalg.cholesky_ex(sigma)
        return torch.where((info > 0)[:, None, None], torch.nan, factor)
    finite = torch.isfinite(sigma).flatten(1).all(1)
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        raise NotPositiveDefiniteError(f"covariance of component {k} contains NaN or Inf values", k)
    factor, info = torch.linalg.cholesky_ex(sigma)
    failed = info > 0
    if bool(failed.any()):
        k = int(failed.nonzero()[0])
        raise NotPositiveDefiniteError(
            f"covariance of component {k} is not positive definite (its leading minor of order "
            f"{int(info[k])} is not positive, after the eps regularisation); increase eps or check "
            "that the component has enough membership", k)
    return factor


@float32_under_autocast
def gmm_energy(z: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-6):
    """DAGMM/PEDENet sample energy and covariance regulariser from soft memberships.

    Args:
        z: [N, D] embeddings; gamma: [N, K] memberships; eps: as in gmm_params.

    Returns:
        energy [N] = −log P(z_n) (eq. 6 under the parameters of eqs. 3–5 from this batch) and
        penalty [] = Σ_k Σ_j 1 / Σ_k,jj (eq. 11). Both are differentiable in z and gamma; the
        DE loss is typically energy.mean(). Raises NotPositiveDefiniteError naming the component
        whose covariance has no Cholesky factor.
    """
    return energy_from_params(z, *gmm_params(z, gamma, eps))


def energy_from_params(z: torch.Tensor, phi: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor):
    """gmm_energy's second half: (energy [N], penalty []) of z [N, D] under phi [K], mu [K, D],
    sigma [K, D, D] (e.g. from gmm_params). Raises NotPositiveDefiniteError like gmm_energy."""
    scale_tril = gmm_scale_tril(sigma)
    energy = -gmm_log_prob(z, phi.log(), mu, scale_tril, check_values=False)
    penalty = sigma.diagonal(dim1=1, dim2=2).reciprocal().sum()
    return energy, penalty


def gmm_from_sklearn(gm, dtype: torch.dtype = torch.float32, device=None):
    """(log_phi [K], mu [K, D], scale_tril [K, D, D]) of a fitted
    sklearn.mixture.GaussianMixture(covariance_type="full"), for gmm_log_prob.

    The factors are computed in float64 and then converted to `dtype` on `device`, so
    gmm_log_prob(z, *gmm_from_sklearn(gm)) matches gm.score_samples(z).
    """
    if getattr(gm, "covariance_type", None) != "full":
        raise ValueError("gm must be a GaussianMixture with covariance_type='full', got "
                         f"covariance_type={getattr(gm, 'covariance_type', None)!r}")
    if not all(hasattr(gm, name) for name in ("weights_", "means_", "covariances_")):
        raise ValueError("gm must be a fitted GaussianMixture (call gm.fit first)")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    weights = torch.as_tensor(gm.weights_, dtype=torch.float64)
    means = torch.as_tensor(gm.means_, dtype=torch.float64)
    factors = gmm_scale_tril(torch.as_tensor(gm.covariances_, dtype=torch.float64))
    return tuple(t.to(dtype=dtype, device=device) for t in (weights.log(), means, factors))


def _check_log_prob(z, log_phi, mu, scale_tril, per_component, check_values: bool) -> None:
    check_tensor("z", z, 2, "[N, D]")
    check_tensor("log_phi", log_phi, 1, "[K]")
    check_tensor("mu", mu, 2, "[K, D]")
    check_tensor("scale_tril", scale_tril, 3, "[K, D, D]")
    for name, value in (("z", z), ("log_phi", log_phi), ("mu", mu), ("scale_tril", scale_tril)):
        check_float(name, value, cuda_float64=True)
        if value.dtype != z.dtype:
            raise TypeError(f"{name} must have z's dtype {z.dtype}, got {value.dtype}")
        check_same_device(("z", name), z, value)
    if not isinstance(per_component, bool):
        raise TypeError(f"per_component must be a bool, got {type(per_component).__name__}")
    k, d = log_phi.shape[0], z.shape[1]
    if k == 0:
        raise ValueError("log_phi must hold K >= 1 components, got an empty [0]")
    if d == 0:
        raise ValueError("z must have D >= 1 features, got D = 0")
    if tuple(mu.shape) != (k, d):
        raise ValueError(f"mu must have shape [K={k}, D={d}], got {tuple(mu.shape)}")
    if tuple(scale_tril.shape) != (k, d, d):
        raise ValueError(f"scale_tril must have shape [K={k}, D={d}, D={d}], got {tuple(scale_tril.shape)}")
    if check_values:
        for name, value in (("z", z), ("log_phi", log_phi), ("mu", mu), ("scale_tril", scale_tril.tril())):
            check_finite(name, value)
        smallest = _smallest_scale(z.dtype)
        bad = ~(scale_tril.diagonal(dim1=1, dim2=2) >= smallest).all(1)
        if not tracing_or_capturing(bad) and bool(bad.any()):
            c = int(bad.nonzero()[0])
            raise ValueError(f"scale_tril[{c}] (component {c}) must have a diagonal >= {smallest:.3g} (the "
                             f"covariance L Lᵀ must be representable in {z.dtype}), got "
                             f"{scale_tril[c].diagonal().tolist()}")


def _smallest_scale(dtype: torch.dtype) -> float:
    """The smallest diagonal entry of a Cholesky factor whose square is a normal number of dtype."""
    return torch.finfo(dtype).tiny ** 0.5


def _check_params(z, gamma, eps) -> None:
    check_tensor("z", z, 2, "[N, D]")
    check_tensor("gamma", gamma, 2, "[N, K]")
    check_float("z", z, cuda_float64=True)
    check_float("gamma", gamma, cuda_float64=True)
    if gamma.dtype != z.dtype:
        raise TypeError(f"gamma must have z's dtype {z.dtype}, got {gamma.dtype}")
    check_same_device(("z", "gamma"), z, gamma)
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"z must be a non-empty [N, D], got {tuple(z.shape)}")
    if gamma.shape[0] != z.shape[0] or gamma.shape[1] == 0:
        raise ValueError(f"gamma must have shape [N={z.shape[0]}, K>=1], got {tuple(gamma.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    if not tracing_or_capturing(gamma) and gamma.numel() and not bool(((gamma >= 0) & (gamma < torch.inf)).all()):
        raise ValueError("gamma must hold finite memberships >= 0 (NaN, Inf or negative values found)")


def _check_mixture_fake(op, z, log_phi, mu, scale_tril):
    """csrc/gmm/gmm_common.h's check_gmm_args, for the fake kernels."""
    fake.check(z.dim() == 2, f"{op}: z must be [N, D], got shape {fake.shape(z)}")
    fake.check(log_phi.dim() == 1, f"{op}: log_phi must be [K], got shape {fake.shape(log_phi)}")
    k, d = log_phi.shape[0], z.shape[1]
    fake.check(k >= 1, f"{op}: the mixture needs K >= 1 components")
    fake.check(d >= 1, f"{op}: z must have D >= 1 features")
    fake.check(mu.dim() == 2 and mu.shape[0] == k and mu.shape[1] == d,
               f"{op}: mu must be [K={k}, D={d}], got shape {fake.shape(mu)}")
    fake.check(scale_tril.dim() == 3 and tuple(scale_tril.shape) == (k, d, d),
               f"{op}: scale_tril must be [K={k}, D={d}, D={d}], got shape {fake.shape(scale_tril)}")
    for t in (log_phi, mu, scale_tril):
        fake.check(t.dtype == z.dtype, f"{op}: z, log_phi, mu and scale_tril must share one dtype")
        fake.check(t.device == z.device, f"{op}: z, log_phi, mu and scale_tril must be on one device")
    fake.check(z.dtype in (torch.float32, torch.float64),
               f"{op}: tensors must be float32 or float64, got {fake.SCALAR_NAMES.get(z.dtype, z.dtype)}")


def _gmm_log_prob_fake(z, log_phi, mu, scale_tril, per_component=False):
    _check_mixture_fake("gmm_log_prob", z, log_phi, mu, scale_tril)
    shape = (z.shape[0], log_phi.shape[0]) if per_component else (z.shape[0],)
    return z.new_empty(shape)


def _gmm_log_prob_backward_fake(grad, z, log_phi, mu, scale_tril, result, per_component):
    op = "gmm_log_prob_backward"
    _check_mixture_fake(op, z, log_phi, mu, scale_tril)
    want = (z.shape[0], log_phi.shape[0]) if per_component else (z.shape[0],)
    fake.check(tuple(grad.shape) == want, f"{op}: grad must have the forward output's shape, got {fake.shape(grad)}")
    fake.check(result.shape == grad.shape, f"{op}: result must have the forward output's shape, got {fake.shape(result)}")
    for t in (grad, result):
        fake.check(t.dtype == z.dtype and t.device == z.device, f"{op}: grad and result must match z's dtype and device")
    return tuple(t.new_empty(t.shape) for t in (z, log_phi, mu, scale_tril))  # contiguous, like the kernels


def _gmm_log_prob_setup_context(ctx, inputs, output):
    z, log_phi, mu, scale_tril, per_component = inputs
    ctx.save_for_backward(z, log_phi, mu, scale_tril, output)
    ctx.per_component = per_component


def _gmm_log_prob_backward(ctx, grad):
    z, log_phi, mu, scale_tril, result = ctx.saved_tensors
    grads = torch.ops.fastad.gmm_log_prob_backward(grad, z, log_phi, mu, scale_tril, result, ctx.per_component)
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)) + (None,)


if extension.loaded():
    register_float32_autocast("fastad::gmm_log_prob")
    torch.library.register_fake("fastad::gmm_log_prob", _gmm_log_prob_fake)
    torch.library.register_fake("fastad::gmm_log_prob_backward", _gmm_log_prob_backward_fake)
    torch.library.register_autograd("fastad::gmm_log_prob", _gmm_log_prob_backward,
                                    setup_context=_gmm_log_prob_setup_context)
