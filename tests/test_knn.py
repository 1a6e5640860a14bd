"""fastad.ops.knn against a float64 brute force: random, adversarial and edge-case inputs."""
import pytest
import torch

import fastad
from conftest import DEVICES, brute_force_knn, requires_cuda

RTOL, ATOL = 1e-4, 1e-5
ORACLE_BYTES = 1 << 27  # the float64 oracle's [chunk, M, D] difference tensor stays below this


def oracle(query, bank, k):
    """conftest's float64 brute force, a chunk of queries at a time (large M x D)."""
    chunk = max(1, ORACLE_BYTES // (8 * bank.shape[0] * bank.shape[1]))
    parts = [brute_force_knn(q, bank, k) for q in query.split(chunk)] or [brute_force_knn(query, bank, k)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def assert_matches_oracle(query, bank, k, check_index=True, **kwargs):
    dist, index = fastad.ops.knn(query, bank, k, **kwargs)
    want_dist, want_index = oracle(query, bank, k)
    assert dist.shape == (query.shape[0], k) and index.shape == (query.shape[0], k)
    assert dist.dtype == query.dtype and index.dtype == torch.int64
    assert dist.device == query.device and index.device == query.device
    torch.testing.assert_close(dist.double().cpu(), want_dist, rtol=RTOL, atol=ATOL)
    # the returned distances are the exact distances of the returned indices
    got = (query.double().cpu()[:, None, :] - bank.double().cpu()[index.cpu()]).norm(dim=-1)
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
    torch.library.opcheck(torch.ops.fastad.knn.default, (query.detach(), bank, 2, None, "fp32"))


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
    compiled = torch.compile(lambda q, b: fastad.ops.knn(q, b, 2, check_values=False)[0] * 2, fullgraph=True,
                             backend="eager")
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


def test_cpp_checks_precision_name():
    with pytest.raises(RuntimeError, match="precision must be"):
        torch.ops.fastad.knn(GOOD_Q, GOOD_B, 1, None, "tf32")  # CUDA only
    with pytest.raises(ValueError, match="precision must be one of"):
        fastad.ops.knn(GOOD_Q, GOOD_B, 1, precision="fp16")


def cuda_precisions():
    return ["auto", "fp32", "bf16", "tf32"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m,d,k", [(300, 5000, 48, 3), (4, 9000, 200, 64), (600, 2500, 33, 1)])
def test_every_precision_returns_the_same_exact_answer(device, n, m, d, k):
    """The candidate GEMM's precision changes only how many rows are re-ranked."""
    g = torch.Generator().manual_seed(n + m + d + k)
    query = torch.randn(n, d, generator=g).to(device)
    bank = torch.randn(m, d, generator=g).to(device)
    precisions = cuda_precisions() if device == "cuda" else ["auto", "fp32", "bf16"]
    first = assert_matches_oracle(query, bank, k, precision=precisions[0])
    for precision in precisions[1:]:
        dist, index = fastad.ops.knn(query, bank, k, precision=precision)
        assert torch.equal(index, first[1]) and torch.equal(dist, first[0]), precision


@pytest.mark.parametrize("device", DEVICES)
def test_exact_ties_beyond_the_candidate_buffer(device):
    """600 rows at exactly the same distance (more than any candidate buffer keeps): every
    candidate tier overflows, the exact scan answers, ties go to the lower index."""
    d = 300
    axes = torch.cat([torch.eye(d), -torch.eye(d)]) * 4.0  # 600 rows at distance 4 from 0
    far = 10.0 + torch.randn(50, d, generator=torch.Generator().manual_seed(20))
    bank = torch.cat([far[:25], axes, far[25:]]).to(device)
    query = torch.zeros(3, d, device=device)
    for precision in ["fp32", "bf16", "auto"]:
        dist, index = fastad.ops.knn(query, bank, 40, precision=precision)
        assert torch.equal(index.cpu(), (25 + torch.arange(40)).expand(3, 40))
        assert torch.all(dist.cpu() == 4.0)


@pytest.mark.parametrize("device", DEVICES)
def test_near_ties_overflow_the_low_precision_buffer(device):
    """400 rows whose distances differ by 1e-4 relative: all inside the BF16/TF32 margin (the
    first tier overflows), resolved by the next tier or the exact scan."""
    g = torch.Generator().manual_seed(21)
    d = 64
    directions = torch.nn.functional.normalize(torch.randn(400, d, generator=g, dtype=torch.float64), dim=1)
    radii = 10.0 * (1 + 1e-4 * torch.randperm(400, generator=g).double() / 400)
    query = torch.randn(2, d, generator=g, dtype=torch.float64)
    bank = torch.cat([query[0] + directions * radii[:, None], 30 + torch.randn(100, d, generator=g).double()])
    assert_matches_oracle(query.float().to(device), bank.float().to(device), 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m,d,k", [(64, 135_000, 16, 64), (1, 140_000, 8, 64), (40, 4000, 1024, 5),
                                     (130, 2000, 1500, 1)])
def test_many_slices_and_wide_embeddings(device, n, m, d, k):
    """Few queries against a large bank (many bank slices per query, several GEMM tiles), and
    D >= 1024."""
    g = torch.Generator().manual_seed(n + m + d)
    query = torch.randn(n, d, generator=g).to(device)
    bank = torch.randn(m, d, generator=g).to(device)
    assert_matches_oracle(query, bank, k)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_inputs_without_checks_follow_the_documented_rule(device):
    g = torch.Generator().manual_seed(22)
    bank = torch.randn(50, 6, generator=g)
    bank[3] = float("nan")
    bank[7, 2] = float("inf")
    query = torch.randn(4, 6, generator=g)
    query[1, 0] = float("nan")
    dist, index = fastad.ops.knn(query.to(device), bank.to(device), 50, check_values=False)
    dist, index = dist.cpu(), index.cpu()
    # a query with NaN: every distance counts as +inf, ties to the lower index
    assert torch.all(torch.isinf(dist[1])) and torch.equal(index[1], torch.arange(50))
    # finite queries: the NaN/Inf rows come after every finite row, lower index first
    for i in (0, 2, 3):
        assert index[i, -2:].tolist() == [3, 7] and torch.all(torch.isinf(dist[i, -2:]))
        assert torch.all(torch.isfinite(dist[i, :-2]))
    want = fastad.ops.reference.knn(query, bank, 50)
    assert torch.equal(index, want[1]) and torch.equal(torch.isinf(dist), torch.isinf(want[0]))
    # the backward only ever indexes valid rows
    q = query.to(device).requires_grad_()
    fastad.ops.knn(q, bank.to(device), 3, check_values=False)[0].sum().backward()
    assert q.grad.shape == query.shape


@pytest.mark.cuda
@requires_cuda
def test_cuda_ranks_exactly_like_the_cpu():
    """Same rows and the same fp32 distances on both devices, near-ties included."""
    g = torch.Generator().manual_seed(23)
    base = torch.randn(3000, 96, generator=g)
    bank = torch.cat([base, base[:500] + 1e-6 * torch.randn(500, 96, generator=g)])
    query = torch.cat([base[:200] + 1e-3 * torch.randn(200, 96, generator=g), torch.randn(300, 96, generator=g)])
    for k in (1, 8, 64):
        cpu = fastad.ops.knn(query, bank, k)
        for precision in cuda_precisions():
            cuda = fastad.ops.knn(query.cuda(), bank.cuda(), k, precision=precision)
            assert torch.equal(cuda[1].cpu(), cpu[1]) and torch.equal(cuda[0].cpu(), cpu[0]), (k, precision)


@pytest.mark.cuda
@requires_cuda
def test_cuda_graph_capture_and_replay_on_new_inputs():
    g = torch.Generator().manual_seed(24)
    query = torch.randn(100, 32, generator=g).cuda()
    bank = torch.randn(5000, 32, generator=g).cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fastad.ops.knn(query, bank, 4)  # warm-up (cuBLAS workspace) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dist, index = fastad.ops.knn(query, bank, 4, check_values=False)
    for seed in (25, 26):
        g = torch.Generator().manual_seed(seed)
        query.copy_(torch.randn(100, 32, generator=g))
        bank.copy_(torch.randn(5000, 32, generator=g))
        graph.replay()
        want = fastad.ops.knn(query.cpu(), bank.cpu(), 4)
        assert torch.equal(index.cpu(), want[1]) and torch.equal(dist.cpu(), want[0])


@pytest.mark.cuda
@requires_cuda
def test_cuda_side_stream():
    g = torch.Generator().manual_seed(27)
    query, bank = torch.randn(70, 20, generator=g), torch.randn(3000, 20, generator=g)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        q, b = query.cuda(), bank.cuda()
        dist, index = fastad.ops.knn(q, b, 5, check_values=False)
    stream.synchronize()
    want = fastad.ops.knn(query, bank, 5)
    assert torch.equal(index.cpu(), want[1]) and torch.equal(dist.cpu(), want[0])


def cpu_kernels_here():
    return fastad.ops.knn_cpu_kernels()["runs_here"] if fastad.extension.loaded() else []


def adversarial_data(n, m, d, seed, dtype):
    """Random rows far from the origin (the kernels centre them), exact duplicates and near ties."""
    g = torch.Generator().manual_seed(seed)
    bank = 5.0 + torch.randn(m, d, generator=g, dtype=torch.float64)
    bank[m // 2: m // 2 + 3] = bank[min(1, m - 1)].clone()  # exact duplicates of row 1
    query = torch.cat([bank[:n // 2] + 1e-4 * torch.randn(n // 2, d, generator=g, dtype=torch.float64),
                       5.0 + torch.randn(n - n // 2, d, generator=g, dtype=torch.float64)])
    return query.to(dtype), bank.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,d,k", [(1, 1, 1, 1), (5, 31, 3, 31), (50, 3000, 7, 1), (97, 2600, 130, 9),
                                     (13, 4100, 515, 3), (4, 9000, 33, 64)])
def test_every_cpu_kernel_returns_the_same_exact_answer(monkeypatch, dtype, n, m, d, k):
    """Each CPU kernel this machine runs, forced with FASTAD_CPU_KERNEL (an AVX-512 CPU runs the AVX2
    path too): the float64 oracle's rows and bitwise the same distances on every path, with and
    without given bank norms (no centring then), sizes off every tile multiple included."""
    query, bank = adversarial_data(n, m, d, n + m + d + k, dtype)
    norms = bank.pow(2).sum(1)
    first = assert_matches_oracle(query, bank, k)
    kernels = cpu_kernels_here()
    assert "gemm" in kernels
    for kernel in kernels:
        monkeypatch.setenv("FASTAD_CPU_KERNEL", kernel)
        assert fastad.ops.knn_cpu_kernels()["knn"] == kernel
        dist, index = fastad.ops.knn(query, bank, k)
        assert torch.equal(index, first[1]) and torch.equal(dist, first[0]), kernel
        dist, index = torch.ops.fastad.knn(query, bank, k, norms)
        assert torch.equal(index, first[1]) and torch.equal(dist, first[0]), kernel


@pytest.mark.parametrize("kernel", ["avx512", "avx2", "gemm"])
def test_fused_kernels_overflow_to_the_exact_scan(monkeypatch, kernel):
    """600 rows tied exactly and 400 near ties: the fp32 kernels' buffers overflow, the exact scan
    answers, ties to the lower index."""
    if kernel not in cpu_kernels_here():
        pytest.skip(f"this CPU does not run the {kernel} kernel")
    monkeypatch.setenv("FASTAD_CPU_KERNEL", kernel)
    d = 300
    axes = torch.cat([torch.eye(d), -torch.eye(d)]) * 4.0
    far = 10.0 + torch.randn(50, d, generator=torch.Generator().manual_seed(20))
    dist, index = fastad.ops.knn(torch.zeros(3, d), torch.cat([far[:25], axes, far[25:]]), 40, precision="fp32")
    assert torch.equal(index, (25 + torch.arange(40)).expand(3, 40)) and torch.all(dist == 4.0)
    g = torch.Generator().manual_seed(21)
    directions = torch.nn.functional.normalize(torch.randn(400, 64, generator=g, dtype=torch.float64), dim=1)
    radii = 10.0 * (1 + 1e-4 * torch.randperm(400, generator=g).double() / 400)
    query = torch.randn(2, 64, generator=g, dtype=torch.float64)
    bank = torch.cat([query[0] + directions * radii[:, None], 30 + torch.randn(100, 64, generator=g).double()])
    assert_matches_oracle(query.float(), bank.float(), 10)


def test_non_finite_rows_on_every_cpu_kernel(monkeypatch):
    g = torch.Generator().manual_seed(22)
    bank = torch.randn(70, 6, generator=g)
    bank[3] = float("nan")
    bank[7, 2] = float("inf")
    query = torch.randn(4, 6, generator=g)
    query[1, 0] = float("nan")
    want = fastad.ops.reference.knn(query, bank, 70)
    for kernel in cpu_kernels_here():
        monkeypatch.setenv("FASTAD_CPU_KERNEL", kernel)
        dist, index = fastad.ops.knn(query, bank, 70, check_values=False)
        assert torch.equal(index, want[1]) and torch.equal(torch.isinf(dist), torch.isinf(want[0])), kernel


def test_cpu_kernel_override(monkeypatch):
    monkeypatch.delenv("FASTAD_CPU_KERNEL", raising=False)  # the defaults, whatever the run forces
    kernels = cpu_kernels_here()
    assert kernels == [k for k in fastad.ops.KNN_CPU_KERNELS if k in kernels]
    fp32 = fastad.ops.knn_cpu_kernels("fp32")
    assert fp32["knn"] == fp32["fp32"] == next(k for k in kernels if k != "bf16-gemm")
    assert fastad.ops.knn_cpu_kernels("bf16")["knn"] == "bf16-gemm"
    monkeypatch.setenv("FASTAD_CPU_KERNEL", "gemm")
    assert fastad.ops.knn_cpu_kernels() == {"runs_here": kernels, "knn": "gemm", "fp32": "gemm"}
    assert fastad.ops.knn_cpu_kernels("bf16") == {"runs_here": kernels, "knn": "bf16-gemm", "fp32": "gemm"}
    monkeypatch.setenv("FASTAD_CPU_KERNEL", "sse9")
    with pytest.raises(ValueError, match="FASTAD_CPU_KERNEL must be auto, bf16-gemm, avx512, avx2 or gemm, got 'sse9'"):
        fastad.ops.knn_cpu_kernels()
    with pytest.raises(RuntimeError, match="FASTAD_CPU_KERNEL must be"):
        fastad.ops.knn(GOOD_Q, GOOD_B, 1)
    assert "FASTAD_CPU_KERNEL must be" in fastad.info()["cpu_kernels"]
    missing = [k for k in fastad.ops.KNN_CPU_KERNELS if k not in kernels]
    if missing:
        monkeypatch.setenv("FASTAD_CPU_KERNEL", missing[0])
        with pytest.raises(ValueError, match=f"FASTAD_CPU_KERNEL={missing[0]}: this CPU cannot run"):
            fastad.ops.knn_cpu_kernels()
