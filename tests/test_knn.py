"""fastad.ops.knn against a float64 brute force: random, adversarial and edge-case inputs."""
import pytest
import torch

import fastad
from conftest import DEVICES, brute_force_knn

RTOL, ATOL = 1e-4, 1e-5


def assert_matches_oracle(query, bank, k, check_index=True):
    dist, index = fastad.ops.knn(query, bank, k)
    want_dist, want_index = brute_force_knn(query, bank, k)
    assert dist.shape == (query.shape[0], k) and index.shape == (query.shape[0], k)
    assert dist.dtype == query.dtype and index.dtype == torch.int64
    assert dist.device == query.device and index.device == query.device
    torch.testing.assert_close(dist.double().cpu(), want_dist, rtol=RTOL, atol=ATOL)
    # the returned distances are the exact distances of the returned indices
    got = (query.double().cpu()[:, None, :] - bank.double().cpu()[index.cpu()]).pow(2).sum(-1).sqrt()
    torch.testing.assert_close(dist.double().cpu(), got, rtol=RTOL, atol=ATOL)
    if check_index:
        assert torch.equal(index.cpu(), want_index)
    return dist, index


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,d,k", [(1, 1, 1, 1), (37, 50, 3, 5), (300, 3000, 64, 1), (300, 3000, 17, 9),
                                     (70, 2100, 130, 64), (513, 1500, 8, 2)])
def test_random_inputs_match_brute_force(device, dtype, n, m, d, k):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    g = torch.Generator().manual_seed(n * 1000 + m + d + k)
    query = torch.randn(n, d, generator=g, dtype=dtype).to(device)
    bank = torch.randn(m, d, generator=g, dtype=dtype).to(device)
    assert_matches_oracle(query, bank, k)


@pytest.mark.parametrize("device", DEVICES)
def test_k_equal_to_bank_size_returns_all_rows_sorted(device):
    g = torch.Generator().manual_seed(1)
    query, bank = torch.randn(20, 6, generator=g).to(device), torch.randn(40, 6, generator=g).to(device)
    _, index = assert_matches_oracle(query, bank, 40)
    assert torch.equal(index.sort(1).values.cpu(), torch.arange(40).expand(20, 40))


@pytest.mark.parametrize("device", DEVICES)
def test_duplicated_points_have_distance_exactly_zero_and_lowest_index(device):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(100, 32, generator=g) * 5
    bank = torch.cat([base, base, base]).to(device)  # row i == row i+100 == row i+200
    dist, index = fastad.ops.knn(base.to(device), bank, 3)
    assert torch.all(dist.cpu() == 0)
    assert torch.equal(index.cpu(), torch.arange(100)[:, None] + torch.tensor([0, 100, 200]))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_lower_index(device):
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0], [3.0, 0.0]], device=device)
    dist, index = fastad.ops.knn(torch.zeros(1, 2, device=device), bank, 5)
    assert torch.equal(index.cpu(), torch.tensor([[0, 1, 2, 3, 4]]))
    torch.testing.assert_close(dist.cpu(), torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["shared-offset", "spread"])
def test_large_norm_embeddings(device, layout):
    """Norms ~1e3: the |q|² − 2q·b + |b|² expansion alone would lose every digit of a small distance."""
    g = torch.Generator().manual_seed(3)
    if layout == "shared-offset":
        offset = torch.randn(128, generator=g) * (1e3 / 128**0.5)
        bank = offset + 0.05 * torch.randn(4000, 128, generator=g)
        query = offset + 0.05 * torch.randn(200, 128, generator=g)
    else:
        bank = torch.randn(4000, 128, generator=g) * (1e3 / 128**0.5)
        query = bank[:200] + 1e-2 * torch.randn(200, 128, generator=g)
    assert_matches_oracle(query.to(device), bank.to(device), 4)


@pytest.mark.parametrize("device", DEVICES)
def test_near_duplicates_far_from_origin(device):
    """Distances of 1e-3 between points of norm ~1e3 are still returned to 1e-4 relative."""
    g = torch.Generator().manual_seed(4)
    centre = torch.full((64,), 1e3 / 8)
    bank = centre + torch.randn(1000, 64, generator=g, dtype=torch.float64).float()
    query = bank[:50] + 1e-3 * torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=1)
    dist, index = assert_matches_oracle(query.to(device), bank.to(device), 1, check_index=False)
    assert torch.equal(index[:, 0].cpu(), torch.arange(50))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    g = torch.Generator().manual_seed(5)
    query = torch.randn(64, 40, generator=g).to(device)[:, ::2]  # strided columns
    bank = torch.randn(20, 900, generator=g).to(device).t()  # column-major [900, 20]
    assert not query.is_contiguous() and not bank.is_contiguous()
    assert_matches_oracle(query, bank, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_query_gives_empty_result(device):
    dist, index = fastad.ops.knn(torch.empty(0, 8, device=device), torch.randn(10, 8, device=device), 2)
    assert dist.shape == (0, 2) and index.shape == (0, 2) and index.dtype == torch.int64


def test_many_threads_and_slices_agree_with_one_thread():
    g = torch.Generator().manual_seed(6)
    query, bank = torch.randn(5, 16, generator=g), torch.randn(9000, 16, generator=g)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fastad.ops.knn(query, bank, 7)
    finally:
        torch.set_num_threads(previous)
    multi = fastad.ops.knn(query, bank, 7)
    assert torch.equal(single[1], multi[1]) and torch.equal(single[0], multi[0])


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_finite_differences(device):
    g = torch.Generator().manual_seed(7)
    dtype = torch.float64 if device == "cpu" else torch.float32
    query = torch.randn(6, 5, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    bank = torch.randn(12, 5, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda q, b: fastad.ops.knn(q, b, 3)[0], (query, bank))
    else:
        dist, _ = fastad.ops.knn(query, bank, 3)
        dist.sum().backward()
        ref_q = query.detach().double().cpu().requires_grad_()
        ref_b = bank.detach().double().cpu().requires_grad_()
        fastad.ops.reference.knn(ref_q, ref_b, 3)[0].sum().backward()
        torch.testing.assert_close(query.grad.double().cpu(), ref_q.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bank.grad.double().cpu(), ref_b.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_knn(device):
    g = torch.Generator().manual_seed(8)
    query = torch.randn(9, 4, generator=g).to(device).requires_grad_()
    bank = torch.randn(30, 4, generator=g).to(device)
    torch.library.opcheck(torch.ops.fastad.knn.default, (query, bank, 3, None))
    torch.library.opcheck(torch.ops.fastad.knn.default, (query.detach(), bank, 1, bank.pow(2).sum(1)))


@pytest.mark.parametrize("device", DEVICES)
def test_reference_backend_agrees_with_native(device):
    g = torch.Generator().manual_seed(9)
    query, bank = torch.randn(40, 12, generator=g).to(device), torch.randn(700, 12, generator=g).to(device)
    native = fastad.ops.knn(query, bank, 4)
    with fastad.use_backend("reference"):
        reference = fastad.ops.knn(query, bank, 4)
    assert torch.equal(native[1], reference[1])
    torch.testing.assert_close(native[0], reference[0], rtol=RTOL, atol=ATOL)


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(10)
    query, bank = torch.randn(16, 8, generator=g), torch.randn(64, 8, generator=g)
    compiled = torch.compile(lambda q, b: torch.ops.fastad.knn(q, b, 2, None)[0] * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(query, bank), fastad.ops.knn(query, bank, 2)[0] * 2)


GOOD_Q, GOOD_B = torch.randn(4, 3), torch.randn(10, 3)
BAD_INPUTS = [
    ((GOOD_Q[0], GOOD_B, 1), ValueError, "query must have shape"),
    ((GOOD_Q, GOOD_B[None], 1), ValueError, "bank must have shape"),
    ((GOOD_Q, torch.randn(10, 4), 1), ValueError, "query must have D = 4"),
    ((GOOD_Q, GOOD_B, 0), ValueError, "k must be in"),
    ((GOOD_Q, GOOD_B, 11), ValueError, "k must be in"),
    ((GOOD_Q, GOOD_B, 2.0), TypeError, "k must be an int"),
    ((GOOD_Q, torch.empty(0, 3), 1), ValueError, "bank must hold at least one row"),
    ((GOOD_Q, torch.tensor([[float("nan")] * 3] + [[0.0] * 3] * 9), 1), ValueError, "bank contains NaN"),
    ((GOOD_Q, torch.tensor([[float("inf")] * 3] + [[0.0] * 3] * 9), 1), ValueError, "bank contains NaN"),
    ((torch.full((4, 3), float("nan")), GOOD_B, 1), ValueError, "query contains NaN"),
    ((GOOD_Q.long(), GOOD_B, 1), TypeError, "query must be float32 or float64"),
    ((GOOD_Q, GOOD_B.int(), 1), TypeError, "bank must be float32 or float64"),
    ((GOOD_Q, GOOD_B.double(), 1), TypeError, "same dtype"),
    ((GOOD_Q.numpy(), GOOD_B, 1), TypeError, "query must be a torch.Tensor"),
]


@pytest.mark.parametrize("args,error,message", BAD_INPUTS)
def test_bad_input_names_the_argument(args, error, message):
    with pytest.raises(error, match=message):
        fastad.ops.knn(*args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_and_cuda_k_limit():
    with pytest.raises(ValueError, match="same device"):
        fastad.ops.knn(GOOD_Q.cuda(), GOOD_B, 1)
    with pytest.raises(ValueError, match="at most 64 on CUDA"):
        fastad.ops.knn(torch.randn(2, 3).cuda(), torch.randn(100, 3).cuda(), 65)


def test_cpp_checks_guard_direct_op_calls():
    with pytest.raises(RuntimeError, match="k must be in"):
        torch.ops.fastad.knn(GOOD_Q, GOOD_B, 0, None)
    with pytest.raises(RuntimeError, match="bank_sq_norms must be"):
        torch.ops.fastad.knn(GOOD_Q, GOOD_B, 1, torch.ones(3))
