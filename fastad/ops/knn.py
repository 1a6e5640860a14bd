"""k-nearest-neighbour scoring and greedy k-center coreset selection (fastad::knn,
fastad::kcenter_coreset): argument checks, autograd, fake kernels and backend dispatch."""
from __future__ import annotations

import torch

from fastad.ops.autocast import float32_under_autocast, register_float32_autocast
from fastad.ops import fake
from fastad import extension
from fastad.backend import use_reference
from fastad.ops import reference
from fastad.checks import check_finite, check_float, check_int, check_same_device, check_tensor
from fastad.ops.limits import CUDA_MAX_K


CANDIDATE_PRECISIONS = ("auto", "fp32", "bf16", "tf32")


@float32_under_autocast
def knn(query: torch.Tensor, bank: torch.Tensor, k: int = 1, *, check_values: bool = True, precision: str = "auto"):
    """Exact k nearest bank rows of each query row, by Euclidean distance.

    Args:
        query: [N, D] float32 (float64 on CPU).
        bank: [M, D], same dtype and device as query, M >= 1.
        k: 1 <= k <= M (at most 64 on CUDA).
        check_values: reject NaN/Inf in query and bank (one pass over each; on CUDA it waits
            for the device, and it is skipped under graph capture and torch.compile). With
            False, non-finite inputs follow the rule below instead.
        precision: the candidates': "auto" (BF16 GEMM tiles on CPUs with AVX512-BF16/AMX-BF16,
            else fp32; TF32 tensor cores on CUDA), "fp32", "bf16", or "tf32" (CUDA only).
            The result is the same for every choice. On the CPU, fp32 candidates come from
            fastad's fused AVX-512 or AVX2 microkernel (chosen by CPU feature), else from an
            fp32 GEMM; the environment variable FASTAD_CPU_KERNEL (see knn_cpu_kernels) forces one.

    Returns:
        dist [N, k] ascending and index [N, k] int64: the k rows with the smallest float64
        squared distance (computed in one fixed summation order on both devices, so CPU and
        CUDA return the same rows), ties to the lower bank index; dist is its square root.
        A pair whose distance is NaN counts as +inf: a query with NaN gets dist inf and
        indices 0..k-1; a bank row with NaN/Inf comes after every finite row. Indices are
        always valid rows.

    Candidates come from a low-precision GEMM over the bank centred on its mean, kept within
    a proven error margin of the k-th best and re-ranked exactly (csrc/knn/knn_common.h); the
    N x M matrix never exists (the fused kernels keep each distance tile in registers). No host synchronisation besides check_values, so it runs
    inside CUDA graph capture. Differentiable in query and bank.
    """
    check_knn(query, bank, k, check_values=check_values)
    return knn_prepared(query, bank, k, precision=precision)


def knn_prepared(query: torch.Tensor, bank: torch.Tensor, k: int, bank_sq_norms: torch.Tensor | None = None,
                 precision: str = "auto"):
    """knn() without checks, for callers that did them (NearestNeighborScorer).

    bank_sq_norms: optional [M] (bank * bank).sum(1) in float32, for a bank already centred
    near its mean (the search then skips centring); None centres on the bank mean.
    """
    if precision not in CANDIDATE_PRECISIONS:
        raise ValueError(f"precision must be one of {CANDIDATE_PRECISIONS}, got {precision!r}")
    if use_reference():
        return reference.knn(query, bank, k)
    extension.require("knn")
    return torch.ops.fastad.knn(query, bank, k, bank_sq_norms, precision)


@float32_under_autocast
def kcenter_coreset(features: torch.Tensor, n: int, start: int = 0, *, check_values: bool = True) -> torch.Tensor:
    """Greedy k-center selection (PatchCore's coreset): starting from row `start`, repeatedly
    add the row farthest (Euclidean) from the rows chosen so far.

    Args:
        features: [M, D] float32 (float64 on CPU).
        n: rows to choose, 1 <= n <= M.
        start: the first row.

    Returns:
        index [n] int64, in selection order. Ties go to the lower index; chosen rows are never
        chosen twice, even among duplicates. One fused pass over features per chosen row; on
        CUDA the whole selection runs without a host round trip.
    """
    check_tensor("features", features, 2, "[M, D]")
    check_float("features", features)
    if features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features must be a non-empty [M, D], got {tuple(features.shape)}")
    check_int("n", n, 1, features.shape[0])
    check_int("start", start, 0, features.shape[0] - 1)
    if check_values:
        check_finite("features", features)
    if use_reference():
        return reference.kcenter_coreset(features, n, start)
    extension.require("kcenter_coreset")
    return torch.ops.fastad.kcenter_coreset(features, n, start)


KNN_CPU_KERNELS = ("bf16-gemm", "avx512", "avx2", "gemm")


def knn_cpu_kernels(precision: str = "auto") -> dict:
    """The CPU candidate kernels of knn, as a dict:

    runs_here: the kernels this CPU can run, best first, out of KNN_CPU_KERNELS: "bf16-gemm" (BF16
    GEMM tiles, then a scan: AVX512-BF16 or AMX-BF16), "avx512" and "avx2" (fastad's fused fp32
    microkernels: AVX-512F, AVX2 with FMA), "gemm" (fp32 GEMM tiles, then a scan: any CPU);
    knn: the kernel knn(..., precision=precision) uses first; fp32: the fp32 kernel that redoes
    the queries whose BF16 candidates overflow.

    The environment variable FASTAD_CPU_KERNEL (one of KNN_CPU_KERNELS, or "auto", the default)
    forces the kernel, e.g. FASTAD_CPU_KERNEL=avx2 runs an AVX-512 CPU like an AVX2 one; an
    explicit precision still wins. Raises ValueError naming FASTAD_CPU_KERNEL when it is not
    one of these or not one this CPU runs.
    """
    if precision not in CANDIDATE_PRECISIONS:
        raise ValueError(f"precision must be one of {CANDIDATE_PRECISIONS}, got {precision!r}")
    extension.require("knn")
    runs_here, first, fp32 = extension.compiled.knn_cpu_kernels("auto" if precision == "tf32" else precision)
    return {"runs_here": runs_here, "knn": first, "fp32": fp32}


def knn_cpu_peak() -> dict:
    """The machine's limit for the knn CPU kernels, as a dict:

    clock_ghz: the core clock, measured (about 60 ms) by a chain of dependent integer adds
    (0.0 where it cannot be, off x86-64); flops_per_cycle: {kernel: peak multiply-add flops
    per cycle and core} for each kernel of knn_cpu_kernels()["runs_here"], from its vector width
    and two FMA pipes (AMD Zen 4 splits 512-bit operations over both; BF16 dot products count
    twice); gflops_per_core: their product with the clock. Multiply by the threads used.
    """
    extension.require("knn")
    flops, clock_hz = extension.compiled.knn_cpu_peak()
    ghz = clock_hz / 1e9
    return {"clock_ghz": ghz, "flops_per_cycle": flops,
            "gflops_per_core": {name: f * ghz for name, f in flops.items()}}


def check_knn(query, bank, k, check_values: bool = True) -> None:
    """The argument checks of knn(): shapes, dtypes, devices, k, and NaN/Inf when check_values.

    Raises TypeError/ValueError naming the argument."""
    check_tensor("query", query, 2, "[N, D]")
    check_tensor("bank", bank, 2, "[M, D]")
    check_float("query", query)
    check_float("bank", bank)
    if query.dtype != bank.dtype:
        raise TypeError(f"query and bank must have the same dtype, got {query.dtype} and {bank.dtype}")
    check_same_device(("query", "bank"), query, bank)
    if bank.shape[0] == 0:
        raise ValueError("bank must hold at least one row, got an empty [0, D] bank")
    if bank.shape[1] == 0:
        raise ValueError("bank must have D >= 1 features, got D = 0")
    if query.shape[1] != bank.shape[1]:
        raise ValueError(f"query must have D = {bank.shape[1]} features like bank, got D = {query.shape[1]}")
    check_int("k", k, 1, bank.shape[0])
    if bank.is_cuda and k > CUDA_MAX_K:
        raise ValueError(f"k must be at most {CUDA_MAX_K} on CUDA, got {k}")
    if check_values:
        check_finite("bank", bank)
        check_finite("query", query)


def _knn_fake(query, bank, k, bank_sq_norms=None, precision="auto"):
    """csrc/knn/knn_common.h's check_knn_args, then the output shapes."""
    fake.check(query.dim() == 2, f"knn: query must be [N, D], got shape {fake.shape(query)}")
    fake.check(bank.dim() == 2, f"knn: bank must be [M, D], got shape {fake.shape(bank)}")
    fake.check(query.shape[1] == bank.shape[1], f"knn: query has D={query.shape[1]} but bank has D={bank.shape[1]}")
    fake.check(bank.shape[0] > 0, "knn: bank must not be empty")
    fake.check(bank.shape[1] > 0, "knn: embeddings must have D >= 1")
    fake.check(1 <= k <= bank.shape[0], f"knn: k must be in [1, M={bank.shape[0]}], got {k}")
    fake.check(query.dtype == bank.dtype, f"knn: query and bank dtypes differ ({fake.SCALAR_NAMES.get(query.dtype)} "
                                          f"vs {fake.SCALAR_NAMES.get(bank.dtype)})")
    fake.check(query.device == bank.device, "knn: query and bank are on different devices")
    if bank_sq_norms is not None:
        fake.check(bank_sq_norms.dim() == 1 and bank_sq_norms.shape[0] == bank.shape[0],
                   f"knn: bank_sq_norms must be [M={bank.shape[0]}], got shape {fake.shape(bank_sq_norms)}")
        fake.check(bank_sq_norms.dtype == bank.dtype and bank_sq_norms.device == bank.device,
                   "knn: bank_sq_norms must match bank's dtype and device")
    n = query.shape[0]
    return query.new_empty((n, k)), query.new_empty((n, k), dtype=torch.long)


def _kcenter_coreset_fake(features, n, start):
    """csrc/knn/knn_common.h's check_coreset_args, then the output shape."""
    fake.check(features.dim() == 2, f"kcenter_coreset: features must be [M, D], got shape {fake.shape(features)}")
    m = features.shape[0]
    fake.check(features.shape[1] > 0, "kcenter_coreset: features must have D >= 1")
    fake.check(1 <= n <= m, f"kcenter_coreset: n must be in [1, M={m}], got {n}")
    fake.check(0 <= start < m, f"kcenter_coreset: start must be in [0, M={m}), got {start}")
    return features.new_empty((n,), dtype=torch.long)


def _knn_setup_context(ctx, inputs, output):
    query, bank = inputs[:2]
    dist, index = output
    ctx.save_for_backward(query, bank, dist, index)


def _knn_backward(ctx, grad_dist, grad_index):
    """d|q − b|/dq = (q − b)/|q − b| (0 where the distance is 0); bank rows get the opposite."""
    query, bank, dist, index = ctx.saved_tensors
    neighbours = bank[index]  # [N, k, D]
    diff = query.unsqueeze(1) - neighbours
    scale = torch.where(dist > 0, grad_dist / dist.clamp_min(torch.finfo(dist.dtype).tiny), 0.0)
    per_pair = diff * scale.unsqueeze(-1)
    grad_query = per_pair.sum(1) if ctx.needs_input_grad[0] else None
    grad_bank = None
    if ctx.needs_input_grad[1]:
        grad_bank = torch.zeros_like(bank).index_add_(0, index.reshape(-1), -per_pair.reshape(-1, bank.shape[1]))
    return grad_query, grad_bank, None, None, None


if extension.loaded():
    register_float32_autocast("fastad::knn")
    register_float32_autocast("fastad::kcenter_coreset")
    torch.library.register_fake("fastad::knn", _knn_fake)
    torch.library.register_fake("fastad::kcenter_coreset", _kcenter_coreset_fake)
    torch.library.register_autograd("fastad::knn", _knn_backward, setup_context=_knn_setup_context)
