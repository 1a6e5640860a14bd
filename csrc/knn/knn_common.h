// Argument checks, the candidate error bound and helpers shared by the CPU and CUDA k-NN kernels.
#pragma once
#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <string>

namespace fastad::knn {

// ------------------------------------------------------------------------------------------
// Exact k-NN from low-precision candidates.
//
// Ranking. For a query q and bank rows b_j, |q − b_j|² = |q|² + s_j with s_j = |b_j|² − 2 q·b_j,
// so the k nearest rows are the k smallest s_j. The answer of both devices is defined as the
// k smallest d_j = fl64(|q − b_j|²) computed in the canonical order below, ties to the lower
// index, a NaN d_j counting as +inf. Every path (candidates + re-rank, or the exact scan of an
// overflowed query) returns exactly that answer, so the CPU and CUDA results are identical.
//
// Canonical fp64 distance. diff_t = fl64(double(q_t) − double(b_t)); 32 partial sums, partial p
// adding fl64(diff_t · diff_t) for t = p, p + 32, p + 64, ... in order (separate multiply and
// add, never fused); then the partials are combined as a butterfly: for h = 16, 8, 4, 2, 1,
// p_l = p_l + p_{l+h} (l < h); the result is p_0. This is a warp's xor-shuffle reduction on CUDA.
//
// Candidates. A GEMM in a low precision gives ĝ_j ≈ q·b_j and ŝ_j = fl32(n̂_j − 2 ĝ_j), with
// n̂_j the fp32 squared norm of b_j. Bound E on |ŝ_j − s_j|, with Q = |q|, B = max_j |b_j|,
// u_in the rounding unit of each GEMM input (0 when the GEMM reads the fp32 inputs as they
// are), u_out that of the GEMM output, u = 2^-24 (fp32), a = 2^-22 (the fp32 accumulation
// unit, taken 4x fp32's because tensor-core adders may truncate aligned addends) and
// γ = D·a / (1 − D·a):
//   inputs:  |q̂_t b̂_t − q_t b_t| <= ((1 + u_in)² − 1) |q_t b_t|;
//   sums:    any summation order of D terms errs by at most γ Σ|q̂_t b̂_t| <= γ (1 + u_in)² Σ|q_t b_t|;
//   Cauchy–Schwarz: Σ|q_t b_t| <= Q B; so |g̃ − q·b| <= ε Q B with ε = (1+u_in)² − 1 + γ (1+u_in)²;
//   output:  |ĝ − g̃| <= u_out |g̃| <= u_out (1 + ε) Q B;
//   flush-to-zero of subnormal inputs, products and sums adds at most D·2^-126 (Q + B + 2);
//   so |ĝ − q·b| <= G := (ε + u_out (1 + ε)) Q B + D·2^-126 (Q + B + 2);
//   norm:    |n̂_j − |b_j|²| <= γ B² (an fp32 sum in any order, or an fp64 one rounded to fp32);
//   final rounding: u (|n̂_j| + 2|ĝ_j|) <= u ((1 + γ) B² + 2 (Q B + G));
//   E0 = γ B² + 2 G + u ((1 + γ) B² + 2 (Q B + G)).
// Re-rank error: |d_j − |q − b_j|²| <= ρ := γ64 (Q + B)², γ64 = (D + 3) 2^-53 / (1 − (D + 3) 2^-53).
// E = (E0 + 2ρ)(1 + 2^-40) (the last factor covers the fp64 evaluation of E and of T + 2E).
//
// Claim: let T be any value such that at least k rows have ŝ <= T (the k-th smallest ŝ of the
// whole bank, or of any part of it: the minimum over bank slices of each slice's k-th smallest
// ŝ, or a running k-th smallest while scanning). Then every row of the answer has ŝ <= T + 2E.
// Proof: take j with ŝ_j > T + 2E. Then s_j >= ŝ_j − E0 > T + E + 2ρ. Each of the k rows i
// with ŝ_i <= T has s_i <= T + E0 <= T + E, so s_j − s_i > 2ρ, hence
// d_j >= |q|² + s_j − ρ > |q|² + s_i + ρ >= d_i: k rows are strictly nearer than j in the
// canonical order, so j is not in the answer. ∎
// Keeping every row with ŝ <= T + 2E (T shrinking as the scan goes on) and re-ranking them with
// d_j thus returns the answer. A query whose kept rows overflow the candidate buffer, or whose
// E is not finite or whose (Q + B)² exceeds 2^100 (so that an fp32 ŝ could overflow) is redone
// by an exact scan of the whole bank with d_j.
// ------------------------------------------------------------------------------------------

// Rounding units of the candidate GEMM: u_in of each input factor, u_out of the output.
struct GemmRounding {
  double u_in;
  double u_out;
};

constexpr double kMaxSafeScale = 1.2676506002282294e30;  // 2^100

C10_HOST_DEVICE inline double candidate_margin(GemmRounding r, int64_t d, double q_norm,
                                               double b_norm_max) {
  const double u = 5.9604644775390625e-08;         // 2^-24
  const double a = 2.384185791015625e-07;          // 2^-22
  const double tiny = 1.1754943508222875e-38;      // 2^-126
  const double u64 = 1.1102230246251565e-16;       // 2^-53
  const double Q = q_norm, B = b_norm_max;
  if (!(Q >= 0) || !(B >= 0) || !((Q + B) * (Q + B) <= kMaxSafeScale)) return INFINITY;
  const double da = static_cast<double>(d) * a;
  if (!(da < 0.5)) return INFINITY;
  const double gamma = da / (1 - da);
  const double in = (1 + r.u_in) * (1 + r.u_in);
  const double eps = (in - 1) + gamma * in;
  const double g = (eps + r.u_out * (1 + eps)) * Q * B + static_cast<double>(d) * tiny * (Q + B + 2);
  const double e0 = gamma * B * B + 2 * g + u * ((1 + gamma) * B * B + 2 * (Q * B + g));
  const double d64 = static_cast<double>(d + 3) * u64;
  const double rho = d64 / (1 - d64) * (Q + B) * (Q + B);
  return (e0 + 2 * rho) * (1 + 9.094947017729282e-13);  // 1 + 2^-40
}

// Candidate GEMM precisions (the `precision` argument of fastad::knn).
enum class Precision { kFp32, kTf32, kBf16 };

inline Precision parse_precision(const std::string& name, bool cuda) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "bf16") return Precision::kBf16;
  if (name == "tf32" && cuda) return Precision::kTf32;
  TORCH_CHECK(name == "auto", "knn: precision must be 'auto', 'fp32', 'bf16'",
              cuda ? " or 'tf32'" : "", ", got '", name, "'");
  return cuda ? Precision::kTf32 : Precision::kFp32;  // the CPU refines "auto" by its ISA
}

inline void check_knn_args(const at::Tensor& query, const at::Tensor& bank, int64_t k,
                           const std::optional<at::Tensor>& bank_sq_norms) {
  TORCH_CHECK(query.dim() == 2, "knn: query must be [N, D], got shape ", query.sizes());
  TORCH_CHECK(bank.dim() == 2, "knn: bank must be [M, D], got shape ", bank.sizes());
  TORCH_CHECK(query.size(1) == bank.size(1), "knn: query has D=", query.size(1),
              " but bank has D=", bank.size(1));
  TORCH_CHECK(bank.size(0) > 0, "knn: bank must not be empty");
  TORCH_CHECK(bank.size(1) > 0, "knn: embeddings must have D >= 1");
  TORCH_CHECK(k >= 1 && k <= bank.size(0), "knn: k must be in [1, M=", bank.size(0), "], got ", k);
  TORCH_CHECK(query.scalar_type() == bank.scalar_type(), "knn: query and bank dtypes differ (",
              query.scalar_type(), " vs ", bank.scalar_type(), ")");
  TORCH_CHECK(query.device() == bank.device(), "knn: query and bank are on different devices");
  if (bank_sq_norms.has_value()) {
    const auto& norms = *bank_sq_norms;
    TORCH_CHECK(norms.dim() == 1 && norms.size(0) == bank.size(0),
                "knn: bank_sq_norms must be [M=", bank.size(0), "], got shape ", norms.sizes());
    TORCH_CHECK(norms.scalar_type() == bank.scalar_type() && norms.device() == bank.device(),
                "knn: bank_sq_norms must match bank's dtype and device");
  }
}

// fp32 squared norms of the bank rows: the given ones (an fp32 sum of squares in any order
// satisfies the bound above), else computed in fp64 and rounded.
inline at::Tensor squared_norms_fp32(const at::Tensor& bank,
                                     const std::optional<at::Tensor>& bank_sq_norms) {
  if (bank_sq_norms.has_value()) return bank_sq_norms->to(at::kFloat).contiguous();
  return bank.to(at::kDouble).square().sum(1).to(at::kFloat);
}

inline void check_coreset_args(const at::Tensor& features, int64_t n, int64_t start) {
  TORCH_CHECK(features.dim() == 2, "kcenter_coreset: features must be [M, D], got shape ",
              features.sizes());
  const int64_t m = features.size(0);
  TORCH_CHECK(features.size(1) > 0, "kcenter_coreset: features must have D >= 1");
  TORCH_CHECK(n >= 1 && n <= m, "kcenter_coreset: n must be in [1, M=", m, "], got ", n);
  TORCH_CHECK(start >= 0 && start < m, "kcenter_coreset: start must be in [0, M=", m, "), got ",
              start);
}

// Number of bank slices to search independently so that `work_items` query blocks keep
// `workers` busy; each slice must hold at least `min_rows` bank rows.
inline int64_t bank_slices(int64_t query_blocks, int64_t workers, int64_t bank_rows,
                           int64_t min_rows) {
  const int64_t wanted = (workers + query_blocks - 1) / query_blocks;
  const int64_t most = std::max<int64_t>(1, bank_rows / min_rows);
  return std::max<int64_t>(1, std::min(wanted, most));
}

}  // namespace fastad::knn
