"""fastad.ops.gmm_log_prob / gmm_params / gmm_energy / gmm_from_sklearn and GaussianMixtureHead,
against a float64 reference, scikit-learn and torch.distributions."""
import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import fastad
from conftest import DEVICES
from fastad.ops import reference
from fastad.ops.gmm import NotPositiveDefiniteError


def random_mixture(n, k, d, dtype=torch.float64, seed=0, scale=1.0, device="cpu"):
    """(z [n, d], log_phi [k] normalised, mu [k, d], scale_tril [k, d, d]) with well-conditioned
    factors of overall size `scale`; z drawn around the means."""
    g = torch.Generator().manual_seed(seed)
    mu = 3 * scale * torch.randn(k, d, generator=g, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = a @ a.transpose(1, 2) + 0.5 * torch.eye(d, dtype=torch.float64)
    scale_tril = scale * torch.linalg.cholesky(cov)
    log_phi = torch.randn(k, generator=g, dtype=torch.float64).log_softmax(0)
    pick = torch.randint(k, (n,), generator=g)
    z = mu[pick] + 1.5 * scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype=dtype, device=device) for t in (z, log_phi, mu, scale_tril))


def float64_reference(z, log_phi, mu, scale_tril, per_component=False):
    return reference.gmm_log_prob(*(t.double().cpu() for t in (z, log_phi, mu, scale_tril)), per_component)


def tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def cuda_shared_memory_too_small(device, dtype, d) -> bool:
    """Whether the CUDA forward kernel's smallest tile (32 samples: two [D][32] arrays, one D x D
    factor, μ, one value per warp) exceeds this device's shared memory per block, so the op must
    refuse D with its named error (float64 at D=130 on an A100, for one)."""
    if device != "cuda":
        return False
    props = torch.cuda.get_device_properties(0)
    limit = getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block)
    return (2 * d * 32 + d * d + d + 1) * torch.finfo(dtype).bits // 8 > limit


# --- gmm_log_prob forward ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_component", [False, True])
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (37, 3, 5), (300, 4, 16), (70, 16, 64), (33, 2, 130)])
def test_log_prob_matches_float64_reference(device, dtype, per_component, n, k, d, no_tf32):
    inputs = random_mixture(n, k, d, dtype, seed=n + k + d, device=device)
    if cuda_shared_memory_too_small(device, dtype, d):
        with pytest.raises(RuntimeError, match=f"D={d} needs .* bytes of shared memory"):
            fastad.ops.gmm_log_prob(*inputs, per_component=per_component)
        return
    got = fastad.ops.gmm_log_prob(*inputs, per_component=per_component)
    want = float64_reference(*inputs, per_component=per_component)
    assert got.shape == ((n, k) if per_component else (n,)) and got.dtype == dtype and got.device.type == device
    torch.testing.assert_close(got.double().cpu(), want, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_sklearn_score_samples(dtype):
    mixture = pytest.importorskip("sklearn.mixture")
    z, *_ = random_mixture(600, 3, 6, seed=1)
    gm = mixture.GaussianMixture(3, covariance_type="full", random_state=0).fit(z.numpy())
    test = random_mixture(200, 3, 6, seed=2)[0]
    params = fastad.ops.gmm_from_sklearn(gm, dtype=dtype)
    assert all(p.dtype == dtype for p in params)
    got = fastad.ops.gmm_log_prob(test.to(dtype), *params)
    want = torch.from_numpy(gm.score_samples(test.numpy()))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 if dtype == torch.float32 else 1e-9)


def test_gmm_from_sklearn_rejects_other_covariance_types_and_unfitted_models():
    mixture = pytest.importorskip("sklearn.mixture")
    with pytest.raises(ValueError, match="covariance_type='full'"):
        fastad.ops.gmm_from_sklearn(mixture.GaussianMixture(2, covariance_type="diag"))
    with pytest.raises(ValueError, match="fitted"):
        fastad.ops.gmm_from_sklearn(mixture.GaussianMixture(2))


@pytest.mark.parametrize("device", DEVICES)
def test_matches_torch_distributions_mixture(device):
    z, log_phi, mu, scale_tril = random_mixture(400, 5, 12, torch.float32, seed=3, device=device)
    mixture = MixtureSameFamily(Categorical(logits=log_phi), MultivariateNormal(mu, scale_tril=scale_tril))
    got = fastad.ops.gmm_log_prob(z, log_phi, mu, scale_tril)
    torch.testing.assert_close(got, mixture.log_prob(z), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_tiny_and_huge_variances(device, scale):
    inputs = random_mixture(100, 3, 8, torch.float32, seed=4, scale=scale, device=device)
    got = fastad.ops.gmm_log_prob(*inputs)
    want = float64_reference(*inputs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_far_away_samples_stay_finite_through_the_max_shift(device):
    z, log_phi, mu, scale_tril = random_mixture(10, 4, 3, torch.float32, seed=5, device=device)
    far = z + 1e3  # every exp(lp) underflows; the max-shifted logsumexp does not
    got = fastad.ops.gmm_log_prob(far, log_phi, mu, scale_tril)
    assert torch.isfinite(got).all() and (got < -1e4).all()
    torch.testing.assert_close(got.double().cpu(), float64_reference(far, log_phi, mu, scale_tril), rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_weight_components_and_all_zero_weights(device):
    z, log_phi, mu, scale_tril = random_mixture(20, 3, 4, torch.float32, seed=6, device=device)
    log_phi = torch.tensor([0.0, -math.inf, -math.inf], device=device)
    got = fastad.ops.gmm_log_prob(z, log_phi, mu, scale_tril, check_values=False)
    single = fastad.ops.gmm_log_prob(z, log_phi[:1], mu[:1], scale_tril[:1])
    torch.testing.assert_close(got, single)
    none = fastad.ops.gmm_log_prob(z, torch.full((3,), -math.inf, device=device), mu, scale_tril, check_values=False)
    assert torch.all(none == -math.inf)


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_lower_triangle_is_read(device):
    z, log_phi, mu, scale_tril = random_mixture(50, 3, 6, torch.float32, seed=7, device=device)
    garbage = scale_tril + torch.triu(torch.full_like(scale_tril, 7.0), diagonal=1)
    want = fastad.ops.gmm_log_prob(z, log_phi, mu, scale_tril)
    garbage.requires_grad_()
    got = fastad.ops.gmm_log_prob(z, log_phi, mu, garbage)
    assert torch.equal(got.detach(), want)
    got.sum().backward()
    assert torch.all(torch.triu(garbage.grad, diagonal=1) == 0)
    assert torch.any(torch.tril(garbage.grad) != 0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    z, log_phi, mu, scale_tril = random_mixture(80, 4, 10, torch.float32, seed=8, device=device)
    z_t = z.t().contiguous().t()
    mu_wide = torch.zeros(4, 20, device=device)
    mu_wide[:, ::2] = mu
    tril_t = scale_tril.transpose(1, 2).contiguous().transpose(1, 2)
    phi_strided = torch.stack([log_phi, log_phi], 1)[:, 0]
    args = (z_t, phi_strided, mu_wide[:, ::2], tril_t)
    assert not any(t.is_contiguous() for t in args)
    got = fastad.ops.gmm_log_prob(*args)
    torch.testing.assert_close(got, fastad.ops.gmm_log_prob(z, log_phi, mu, scale_tril))
    leaves = [t.detach().requires_grad_() for t in args]
    grads = torch.autograd.grad(fastad.ops.gmm_log_prob(*leaves).sum(), leaves)
    want = torch.autograd.grad(reference.gmm_log_prob(*leaves).sum(), leaves)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_component", [False, True])
def test_empty_batch(device, per_component):
    _, log_phi, mu, scale_tril = random_mixture(1, 3, 4, torch.float32, device=device)
    z = torch.empty(0, 4, device=device, requires_grad=True)
    out = fastad.ops.gmm_log_prob(z, log_phi, mu, scale_tril, per_component=per_component)
    assert out.shape == ((0, 3) if per_component else (0,))
    out.sum().backward()
    assert z.grad.shape == (0, 4)


def test_one_thread_and_many_threads_agree():
    inputs = [t.requires_grad_() for t in random_mixture(5000, 4, 9, torch.float32, seed=9)]
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fastad.ops.gmm_log_prob(*inputs)
        single_grads = torch.autograd.grad(single.sum(), inputs)
    finally:
        torch.set_num_threads(previous)
    multi = fastad.ops.gmm_log_prob(*inputs)
    assert torch.equal(single, multi)
    for a, b in zip(single_grads, torch.autograd.grad(multi.sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_reference_backend_gives_the_same_values():
    inputs = random_mixture(64, 3, 5, torch.float64, seed=10)
    with fastad.use_backend("reference"):
        ref = fastad.ops.gmm_log_prob(*inputs)
    torch.testing.assert_close(ref, fastad.ops.gmm_log_prob(*inputs))


# --- gmm_log_prob backward ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_component", [False, True])
@pytest.mark.parametrize("n,k,d", [(6, 1, 1), (9, 3, 4), (40, 2, 35)])
def test_gradcheck_float64_every_input(device, per_component, n, k, d):
    inputs = [t.requires_grad_() for t in random_mixture(n, k, d, torch.float64, seed=11 + d, device=device)]

    def fn(z, log_phi, mu, scale_tril):
        return fastad.ops.gmm_log_prob(z, log_phi, mu, scale_tril, per_component=per_component, check_values=False)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=d > 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_component", [False, True])
def test_float32_gradients_match_float64_reference(device, per_component):
    inputs = random_mixture(700, 6, 24, torch.float32, seed=12, device=device)
    fast = [t.clone().requires_grad_() for t in inputs]
    ref = [t.double().cpu().requires_grad_() for t in inputs]
    out = fastad.ops.gmm_log_prob(*fast, per_component=per_component)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weights.to(device)).sum().backward()
    (reference.gmm_log_prob(*ref, per_component=per_component) * weights.double()).sum().backward()
    for name, a, b in zip(("z", "log_phi", "mu", "scale_tril"), fast, ref):
        scale = b.grad.abs().max()
        torch.testing.assert_close(a.grad.double().cpu() / scale, b.grad / scale, rtol=0, atol=2e-5, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_of_a_single_input(device):
    z, log_phi, mu, scale_tril = random_mixture(30, 2, 3, torch.float32, seed=13, device=device)
    mu.requires_grad_()
    fastad.ops.gmm_log_prob(z, log_phi, mu, scale_tril).sum().backward()
    assert z.grad is None and scale_tril.grad is None
    ref_mu = mu.detach().double().cpu().requires_grad_()
    reference.gmm_log_prob(z.double().cpu(), log_phi.double().cpu(), ref_mu, scale_tril.double().cpu()).sum().backward()
    torch.testing.assert_close(mu.grad.double().cpu(), ref_mu.grad, rtol=1e-4, atol=1e-5)


def tiles_per_block_case(device):
    """N for which every block of the CUDA kernels (forward: 8 blocks per SM, backward: 2, at most
    128 samples a tile) processes a second tile, and the CPU backward several 1024-sample chunks."""
    if device != "cuda":
        return 5000
    return 2 * 8 * torch.cuda.get_device_properties(0).multi_processor_count * 128 + 37


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_component", [False, True])
def test_many_tiles_accumulate_across_tiles(device, per_component):
    n = tiles_per_block_case(device)
    inputs = random_mixture(n, 3, 4, torch.float64, seed=31, device=device)
    fast = [t.clone().requires_grad_() for t in inputs]
    ref = [t.cpu().clone().requires_grad_() for t in inputs]
    out = fastad.ops.gmm_log_prob(*fast, per_component=per_component)
    want = reference.gmm_log_prob(*ref, per_component=per_component)
    torch.testing.assert_close(out.cpu(), want, rtol=1e-10, atol=1e-10)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * weights.to(device)).sum().backward()
    (want * weights).sum().backward()
    for name, a, b in zip(("z", "log_phi", "mu", "scale_tril"), fast, ref):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-8, atol=1e-8 * b.grad.abs().max().item(), msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_component", [False, True])
def test_opcheck(device, per_component):
    z, log_phi, mu, scale_tril = [t.requires_grad_() for t in random_mixture(20, 3, 4, torch.float32, device=device)]
    torch.library.opcheck(torch.ops.fastad.gmm_log_prob.default, (z, log_phi, mu, scale_tril, per_component))
    out = torch.ops.fastad.gmm_log_prob(z, log_phi, mu, scale_tril, per_component)
    args = (torch.randn_like(out), z.detach(), log_phi.detach(), mu.detach(), scale_tril.detach(), out.detach(), per_component)
    torch.library.opcheck(torch.ops.fastad.gmm_log_prob_backward.default, args)


# --- gmm_log_prob argument checks --------------------------------------------------------------


def test_bad_arguments_are_named():
    z, log_phi, mu, scale_tril = random_mixture(10, 3, 4, torch.float32)
    op = fastad.ops.gmm_log_prob
    with pytest.raises(ValueError, match=r"z must have shape \[N, D\]"):
        op(z[0], log_phi, mu, scale_tril)
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        op(z.numpy(), log_phi, mu, scale_tril)
    with pytest.raises(ValueError, match=r"mu must have shape \[K=3, D=4\]"):
        op(z, log_phi, mu[:2], scale_tril)
    with pytest.raises(ValueError, match=r"scale_tril must have shape \[K=3, D=4, D=4\]"):
        op(z, log_phi, mu, scale_tril[:, :3, :3])
    with pytest.raises(TypeError, match="mu must have z's dtype"):
        op(z, log_phi, mu.double(), scale_tril)
    with pytest.raises(TypeError, match="z must be float32 or float64"):
        op(z.half(), log_phi.half(), mu.half(), scale_tril.half())
    with pytest.raises(ValueError, match="K >= 1"):
        op(z, log_phi[:0], mu[:0], scale_tril[:0])
    with pytest.raises(TypeError, match="per_component must be a bool"):
        op(z, log_phi, mu, scale_tril, 1)
    with pytest.raises(ValueError, match="z contains NaN"):
        op(z.index_fill(0, torch.tensor([2]), math.nan), log_phi, mu, scale_tril)
    bad = scale_tril.clone()
    bad[1, 2, 2] = -0.5
    with pytest.raises(ValueError, match=r"scale_tril\[1\] \(component 1\) must have a diagonal >= "):
        op(z, log_phi, mu, bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_is_named():
    z, log_phi, mu, scale_tril = random_mixture(10, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="z and mu must be on the same device"):
        fastad.ops.gmm_log_prob(z, log_phi, mu.cuda(), scale_tril)


# --- gmm_params, gmm_energy --------------------------------------------------------------------


def memberships(n, k, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64).mul(2).softmax(1).to(dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_params_match_reference_and_explicit_formula(device, dtype, no_tf32):
    z = random_mixture(500, 3, 7, dtype, seed=14, device=device)[0]
    gamma = memberships(500, 3, dtype, seed=14, device=device)
    phi, mu, sigma = fastad.ops.gmm_params(z, gamma, eps=1e-3)
    ref = reference.gmm_params(z.double().cpu(), gamma.double().cpu(), eps=1e-3)
    for got, want in zip((phi, mu, sigma), ref):
        assert got.dtype == dtype and got.device.type == device
        torch.testing.assert_close(got.double().cpu(), want, **tolerance(dtype))
    # eq. 5 for one component, written out
    zc, gc = z.double().cpu(), gamma.double().cpu()
    diff = zc - ref[1][2]
    explicit = sum(gc[i, 2] * torch.outer(diff[i], diff[i]) for i in range(500)) / gc[:, 2].sum()
    torch.testing.assert_close(sigma[2].double().cpu(), explicit + 1e-3 * torch.eye(7, dtype=torch.float64),
                               **tolerance(dtype))
    torch.testing.assert_close(phi.sum().double().cpu(), torch.tensor(1.0, dtype=torch.float64))


def test_params_gradcheck():
    z = random_mixture(12, 2, 3, seed=15)[0].requires_grad_()
    gamma = memberships(12, 2, seed=15).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fastad.ops.gmm_params(a, b, 1e-3), (z, gamma))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.5])
def test_params_refuse_meaningless_memberships(bad):
    z, gamma = torch.randn(10, 3), torch.rand(10, 2)
    gamma[3, 1] = bad
    with pytest.raises(ValueError, match="gamma must hold finite memberships >= 0"):
        fastad.ops.gmm_params(z, gamma)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_refuses_a_diagonal_whose_covariance_underflows(dtype):
    z, log_phi, mu, scale_tril = random_mixture(10, 2, 3, dtype, seed=32)
    smallest = torch.finfo(dtype).tiny ** 0.5
    tiny = scale_tril.clone()
    tiny[1, 2, 2] = smallest / 2 if dtype == torch.float64 else 1e-30
    with pytest.raises(ValueError, match=r"scale_tril\[1\] \(component 1\) must have a diagonal >="):
        fastad.ops.gmm_log_prob(z, log_phi, mu, tiny)
    small = scale_tril.clone()
    small[1, 2, 2] = smallest * 4                     # accepted: the result is finite and matches float64
    got = fastad.ops.gmm_log_prob(z, log_phi, mu, small, per_component=True)
    want = float64_reference(z, log_phi, mu, small, per_component=True)
    assert torch.isfinite(got[:, 0]).all()
    torch.testing.assert_close(got[:, 0].double(), want[:, 0], **tolerance(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_energy_is_negative_log_likelihood_plus_diagonal_penalty(device):
    z = random_mixture(300, 4, 6, torch.float64, seed=16, device=device)[0]
    gamma = memberships(300, 4, seed=16, device=device)
    energy, penalty = fastad.ops.gmm_energy(z, gamma, eps=1e-4)
    phi, mu, sigma = reference.gmm_params(z.cpu(), gamma.cpu(), eps=1e-4)
    mixture = MixtureSameFamily(Categorical(probs=phi), MultivariateNormal(mu, covariance_matrix=sigma))
    torch.testing.assert_close(energy.cpu(), -mixture.log_prob(z.cpu()), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(penalty.cpu(), (1 / sigma.diagonal(dim1=1, dim2=2)).sum())


def test_energy_gradcheck():
    z = random_mixture(15, 2, 3, seed=17)[0].requires_grad_()
    gamma = memberships(15, 2, seed=17).requires_grad_()

    def fn(a, b):
        energy, penalty = fastad.ops.gmm_energy(a, b, eps=1e-2)
        return energy, penalty

    assert torch.autograd.gradcheck(fn, (z, gamma), atol=1e-6, rtol=1e-5)


def test_not_positive_definite_covariance_names_the_component():
    g = torch.Generator().manual_seed(18)
    z = torch.randn(50, 4, generator=g, dtype=torch.float64)
    gamma = torch.zeros(50, 3, dtype=torch.float64)
    gamma[:, 0] = 1.0
    gamma[0, 0], gamma[0, 2] = 0.0, 1.0  # component 2 owns one sample: zero covariance
    gamma[:, 1] = 0.5
    gamma = gamma / gamma.sum(1, keepdim=True)
    with pytest.raises(NotPositiveDefiniteError, match="component 2 is not positive definite") as caught:
        fastad.ops.gmm_energy(z, gamma, eps=0.0)
    assert caught.value.component == 2
    energy, _ = fastad.ops.gmm_energy(z, gamma, eps=1e-6)  # the eps regularisation fixes it
    assert torch.isfinite(energy).all()
    sigma = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    sigma[1, 0, 0] = math.nan
    with pytest.raises(NotPositiveDefiniteError, match="component 1 contains NaN"):
        fastad.ops.gmm_scale_tril(sigma)


def test_params_bad_arguments_are_named():
    z, gamma = torch.randn(10, 3), torch.rand(10, 2)
    with pytest.raises(ValueError, match=r"gamma must have shape \[N=10, K>=1\]"):
        fastad.ops.gmm_params(z, gamma[:5])
    with pytest.raises(TypeError, match="gamma must have z's dtype"):
        fastad.ops.gmm_params(z, gamma.double())
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        fastad.ops.gmm_params(z, gamma, eps=-1.0)
    with pytest.raises(ValueError, match="z must be a non-empty"):
        fastad.ops.gmm_params(z[:0], gamma[:0])


# --- GaussianMixtureHead -----------------------------------------------------------------------


def test_head_trains_and_keeps_running_parameters():
    torch.manual_seed(0)
    head = fastad.nn.GaussianMixtureHead(6, 3, momentum=0.5)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [128, 64, 32, 3]
    z = random_mixture(256, 3, 6, torch.float32, seed=19)[0]
    gamma = head(z)
    torch.testing.assert_close(gamma.sum(1), torch.ones(256))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        energy, penalty, _ = head.energy(z)
        loss = energy.mean() + 1e-3 * penalty
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first
    assert int(head.num_batches_tracked) == 15
    assert {"running_phi", "running_mu", "running_sigma"} <= set(head.state_dict())
    torch.testing.assert_close(head.running_phi.sum(), torch.tensor(1.0))
    head.eval()
    before = head.running_mu.clone()
    head.energy(z)
    assert torch.equal(head.running_mu, before)  # eval mode leaves the running parameters alone
    scale_tril = torch.linalg.cholesky(head.running_sigma)
    want = -reference.gmm_log_prob(z, head.running_phi.log(), head.running_mu, scale_tril)
    torch.testing.assert_close(head.score(z), want, rtol=1e-5, atol=1e-4)
