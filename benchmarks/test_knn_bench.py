"""Benchmarks of fastad.ops.knn and fastad.ops.kcenter_coreset against common baselines.

Run with `pytest benchmarks/test_knn_bench.py --benchmark-group-by=group` to see each group's
contenders side by side; `python benchmarks/runner.py bench benchmarks/test_knn_bench.py` stores
each benchmark as a stamped row with its ratio to fastad, for the generated tables. Every contender's set-up (building an index, fitting,
precomputing bank norms) happens outside the timed call; each test then checks the distances it
timed against exact float64 ones for the first queries, outside the timing.
"""
from __future__ import annotations

import functools
import statistics
import time

import pytest
import torch

from benchlib import knn_data, random_matrix, requires_cuda, run_pedantic, synchronized
from fastad.nn import NearestNeighborScorer
from fastad.ops import kcenter_coreset, knn, knn_cpu_kernels, knn_cpu_peak, reference

QUERY_CHUNK = 1024  # queries per chunk for the torch baselines (never the full N x M at once)
CHECKED_QUERIES = 256
RTOL = 1e-3

CPU_CASES = [(4096, 65536, d, k) for d in (64, 128, 512) for k in (1, 9)]
GPU_CASES = [(50176, 100000, 64, 1), (6272, 200000, 1024, 1)]
CPU_CONTENDERS = ["fastad", "fastad-scorer", "torch-cdist", "anomalib-matmul", "sklearn-brute", "faiss-flat"]
GPU_CONTENDERS = ["fastad", "fastad-scorer", "torch-cdist", "anomalib-matmul"]
GPU_MARKS = [pytest.mark.cuda, requires_cuda]


# Each builder does its set-up, then returns a timed fn() whose result gives the distances
# [N, k] (squared for faiss) through the matching entry of DISTANCES.


def _fastad(q, b, k):
    return lambda: knn(q, b, k)


def _fastad_scorer(q, b, k):
    scorer = NearestNeighborScorer(b, k)
    return lambda: scorer.knn(q)


def _torch_cdist(q, b, k):
    def run():
        out = []
        for chunk in q.split(QUERY_CHUNK):
            d = torch.cdist(chunk, b)
            out.append(d.amin(1, keepdim=True) if k == 1 else d.topk(k, dim=1, largest=False).values)
        return torch.cat(out)

    return run


def _anomalib_matmul(q, b, k):
    """|x|² − 2 x·y + |y|², clamped at 0, square-rooted, then the k smallest."""

    def run():
        b_sq = b.pow(2).sum(1)
        values, indices = [], []
        for chunk in q.split(QUERY_CHUNK):
            sq = chunk.pow(2).sum(1, keepdim=True) - 2 * chunk @ b.T + b_sq
            d, i = sq.clamp_min(0).sqrt().topk(k, dim=1, largest=False)
            values.append(d)
            indices.append(i)
        return torch.cat(values), torch.cat(indices)

    return run


def _sklearn_brute(q, b, k):
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(b.numpy())
    q_np = q.numpy()
    return lambda: index.kneighbors(q_np)


def _faiss_flat(q, b, k):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatL2(b.shape[1])
    index.add(b.numpy())
    q_np = q.numpy()
    return lambda: index.search(q_np, k)


def _reference(q, b, k):
    return lambda: reference.knn(q, b, k)


BUILDERS = {
    "fastad": _fastad,
    "fastad-scorer": _fastad_scorer,
    "torch-cdist": _torch_cdist,
    "anomalib-matmul": _anomalib_matmul,
    "sklearn-brute": _sklearn_brute,
    "faiss-flat": _faiss_flat,
    "reference": _reference,
}

DISTANCES = {
    "torch-cdist": lambda out: out,
    "sklearn-brute": lambda out: torch.from_numpy(out[0]),
    "faiss-flat": lambda out: torch.from_numpy(out[0]).clamp_min(0).sqrt(),
}


def _distances(contender, out):
    return DISTANCES.get(contender, lambda o: o[0])(out)


@functools.lru_cache(maxsize=1)
def _exact(q, b, k):
    """Exact (float64) k smallest distances of the first CHECKED_QUERIES queries."""
    d = torch.cdist(q[:CHECKED_QUERIES].double(), b.double())
    return d.topk(k, dim=1, largest=False).values


def _check(contender, out, q, b, k):
    dist = _distances(contender, out)[:CHECKED_QUERIES].double().to(q.device)
    torch.testing.assert_close(dist, _exact(q, b, k), rtol=RTOL, atol=1e-5)
    if contender in ("fastad", "fastad-scorer", "reference"):
        # the returned indices must be the rows whose distances were returned
        index = out[1][:CHECKED_QUERIES]
        direct = (q[:CHECKED_QUERIES, None].double() - b[index].double()).norm(dim=-1)
        torch.testing.assert_close(dist, direct, rtol=RTOL, atol=1e-5)


def _knn_params():
    params = []
    for n, m, d, k in CPU_CASES:
        contenders = CPU_CONTENDERS + (["reference"] if (n, m, d, k) == CPU_CASES[0] else [])
        params += [pytest.param("cpu", n, m, d, k, c, id=f"{c}-N{n}-M{m}-D{d}-k{k}") for c in contenders]
    for n, m, d, k in GPU_CASES:
        params += [
            pytest.param("cuda", n, m, d, k, c, id=f"{c}-cuda-N{n}-M{m}-D{d}-k{k}", marks=GPU_MARKS)
            for c in GPU_CONTENDERS
        ]
    return params


@pytest.mark.parametrize("device,n,m,d,k,contender", _knn_params())
def test_knn(benchmark, device, n, m, d, k, contender):
    benchmark.group = f"knn N={n} M={m} D={d} k={k}" + (" cuda" if device == "cuda" else "")
    benchmark.extra_info["contender"] = contender
    q, b = knn_data(n, m, d, device)
    fn = synchronized(BUILDERS[contender](q, b, k), device)
    if contender == "reference":  # tens of seconds a call: one round, no warm-up
        out = run_pedantic(benchmark, fn, rounds=1, warmup_rounds=0)
    else:
        out = run_pedantic(benchmark, fn)
    _check(contender, out, q, b, k)


ALTERNATING_CASES = [(4096, 65536, d, k) for d in (64, 128, 512, 1536) for k in (1, 9)]
ALTERNATING_ROUNDS = 5
ALTERNATING_CONTENDERS = ("fastad", "faiss-flat", "torch-cdist")


def _peak_facts(n, m, d, seconds):
    """GFLOP/s of the 2·N·M·D multiply-add flops of a search that took `seconds`, the machine's peak
    for the knn kernel in use at torch's thread count, and their ratio."""
    kernel = knn_cpu_kernels()["knn"]
    peak = knn_cpu_peak()
    peak_gflops = peak["gflops_per_core"][kernel] * torch.get_num_threads()
    gflops = 2 * n * m * d / seconds / 1e9
    return {"kernel": kernel, "clock_ghz": peak["clock_ghz"], "threads": torch.get_num_threads(),
            "gflops": gflops, "peak_gflops": peak_gflops, "fraction_of_peak": gflops / peak_gflops}


@pytest.mark.parametrize("n,m,d,k", ALTERNATING_CASES)
def test_knn_alternating_with_faiss(benchmark, n, m, d, k):
    """fastad.ops.knn, faiss IndexFlatL2 and chunked torch.cdist timed in alternation, round by
    round, so a slow spell of a shared machine lands on all; extra_info holds the per-round ratios
    faiss / fastad and cdist / fastad (median, min, max), the medians, and fastad's GFLOP/s and
    fraction of the machine's peak for the kernel it used (knn_cpu_peak). The benchmark's own
    time is one round of all three.

    To measure as on an AVX2-only CPU, run with FASTAD_CPU_KERNEL=avx2 ATEN_CPU_CAPABILITY=avx2
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell (the last one is
    faiss's BLAS)."""
    pytest.importorskip("faiss")
    benchmark.group = f"knn alternating with faiss N={n} M={m} D={d} k={k}"
    benchmark.extra_info["contender"] = "+".join(ALTERNATING_CONTENDERS)
    q, b = knn_data(n, m, d)
    fns = {name: BUILDERS[name](q, b, k) for name in ALTERNATING_CONTENDERS}
    times = {name: [] for name in fns}
    outs = {}

    def one_round():
        for name, fn in fns.items():
            start = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - start)

    run_pedantic(benchmark, one_round, rounds=ALTERNATING_ROUNDS)
    for name in ALTERNATING_CONTENDERS[1:]:
        ratios = [t / o for t, o in zip(times[name][1:], times["fastad"][1:])]  # warm-up dropped
        key = "faiss_over_fastad" if name == "faiss-flat" else "cdist_over_fastad"
        benchmark.extra_info[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    benchmark.extra_info["median_ms"] = {name: 1e3 * statistics.median(t[1:]) for name, t in times.items()}
    benchmark.extra_info.update(_peak_facts(n, m, d, statistics.median(times["fastad"][1:])))
    for name, out in outs.items():
        _check(name, out, q, b, k)


CORESET_CASES = [(16384, 128, 1638), (40960, 384, 4096)]   # the second: 10 % of PatchCore's 40 crops at 256 px
CORESET_CHECKED = 64


@pytest.mark.parametrize("contender", ["fastad", "reference"])
@pytest.mark.parametrize("m,d,n", CORESET_CASES)
def test_kcenter_coreset(benchmark, m, d, n, contender):
    if contender == "reference" and m * d > 16384 * 128:
        pytest.skip("the reference takes minutes at this size: the small case times it")
    benchmark.group = f"coreset M={m} D={d} n={n}"
    benchmark.extra_info["contender"] = contender
    features = random_matrix(m, d, seed=3)
    if contender == "fastad":
        chosen = run_pedantic(benchmark, lambda: kcenter_coreset(features, n))
        # greedy selections are prefix-consistent: compare the first steps with the reference
        expected = reference.kcenter_coreset(features, CORESET_CHECKED, 0)
        assert torch.equal(chosen[:CORESET_CHECKED], expected)
    else:
        slow = lambda: reference.kcenter_coreset(features, n, 0)  # noqa: E731
        chosen = run_pedantic(benchmark, slow, rounds=1, warmup_rounds=0)
    assert chosen.shape == (n,) and chosen.unique().numel() == n


GPU_CORESET_M, GPU_CORESET_D, GPU_CORESET_N = 200_000, 128, 20_000  # 10 % of a PatchCore-sized bank


@pytest.mark.cuda
@requires_cuda
def test_kcenter_coreset_cuda(benchmark):
    """Target: under 1 s on an H100 (one persistent kernel for all 20,000 steps)."""
    benchmark.group = f"coreset M={GPU_CORESET_M} D={GPU_CORESET_D} n={GPU_CORESET_N} cuda"
    benchmark.extra_info["contender"] = "fastad"
    features = random_matrix(GPU_CORESET_M, GPU_CORESET_D, "cuda", seed=4)
    fn = synchronized(lambda: kcenter_coreset(features, GPU_CORESET_N), "cuda")
    chosen = run_pedantic(benchmark, fn)
    assert chosen.unique().numel() == GPU_CORESET_N
    # the CPU kernel makes the same picks (fp64 minima on both devices)
    assert torch.equal(chosen[:CORESET_CHECKED].cpu(), kcenter_coreset(features.cpu(), CORESET_CHECKED))
