// CPU Gaussian-mixture log-likelihood and its backward.
//
// Samples are processed in blocks of kBlock, stored transposed ([D][kBlock]) so every inner
// loop runs over the block's samples with unit stride. Per block and component k:
//   y = L_k⁻¹ (z − μ_k)          forward substitution, row by row (left-looking, the running
//                                 sums kept in kBlock independent accumulators)
//   lp_k = c_k − ½ |y|²           c_k = log φ_k − Σ log L_k,ii − (D/2) log 2π
// and the block's lp [K][kBlock] is folded by a max-shifted logsumexp (or written as is).
// Nothing of size N·K·D exists; the K factors (K·D² values) stay in cache.
//
// Backward, with w_nk = g_n · exp(lp_nk − result_n) (per_component=False: the responsibility
// times the incoming gradient) or w_nk = g_nk (per_component=True), u = L_k⁻ᵀ y:
//   ∂/∂z_n = −Σ_k w_nk u,  ∂/∂μ_k = Σ_n w_nk u,  ∂/∂log φ_k = Σ_n w_nk,
//   ∂/∂L_k = tril(Σ_n w_nk u yᵀ) − diag(Σ_n w_nk / L_k,ii).
// The sums over n go to per-chunk accumulators (the input dtype, kChunk samples each), which
// are added into per-thread float64 totals; the thread totals are summed at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gmm_common.h"

#include "../common/vector_clones.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTAD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FASTAD_ALWAYS_INLINE inline
#endif

namespace fastad::gmm {
namespace {

constexpr int kBlock = 32;         // samples solved together
constexpr int64_t kChunk = 1024;   // samples per backward accumulation chunk
constexpr int kRowChunk = 16;      // columns of a ∂L row kept in registers
static_assert(kBlock % 4 == 0, "accumulate_outer unrolls the block by 4");

// The mixture's tensors as raw pointers (all contiguous).
template <typename T>
struct Mixture {
  const T* mu;        // [K, D]
  const T* tril;      // [K, D, D], lower triangle read
  const T* inv_diag;  // [K, D] 1 / L_k,ii
  const T* constant;  // [K] log φ_k − Σ log L_k,ii − (D/2) log 2π
  int64_t k, d;
};

// zt[i][b] = z[n0 + b][i] for the `count` samples of the block, 0 for the padding.
template <typename T>
FASTAD_ALWAYS_INLINE void load_block(const T* z, int64_t n0, int64_t count, int64_t d, T* zt) {
  for (int64_t i = 0; i < d; ++i) {
    T* row = zt + i * kBlock;
    for (int64_t b = 0; b < count; ++b) row[b] = z[(n0 + b) * d + i];
    for (int64_t b = count; b < kBlock; ++b) row[b] = T(0);
  }
}

// y = L⁻¹ (zt − μ) for a block ([D][kBlock] each); sq[b] = |y_b|².
template <typename T>
FASTAD_ALWAYS_INLINE void solve_lower(const T* zt, const T* mu, const T* tril, const T* inv_diag,
                                      int64_t d, T* y, T* sq) {
  T m[kBlock] = {};
  for (int64_t i = 0; i < d; ++i) {
    // two partial sums (even and odd j) halve the FMA dependency chains
    T acc[kBlock], odd[kBlock] = {};
    const T* zi = zt + i * kBlock;
    const T mi = mu[i];
#pragma omp simd
    for (int b = 0; b < kBlock; ++b) acc[b] = zi[b] - mi;
    const T* row = tril + i * d;
    int64_t j = 0;
    for (; j + 1 < i; j += 2) {
      const T l0 = row[j], l1 = row[j + 1];
      const T* y0 = y + j * kBlock;
      const T* y1 = y0 + kBlock;
#pragma omp simd
      for (int b = 0; b < kBlock; ++b) {
        acc[b] -= l0 * y0[b];
        odd[b] -= l1 * y1[b];
      }
    }
    if (j < i) {
      const T l = row[j];
      const T* yj = y + j * kBlock;
#pragma omp simd
      for (int b = 0; b < kBlock; ++b) acc[b] -= l * yj[b];
    }
    const T inv = inv_diag[i];
    T* yi = y + i * kBlock;
#pragma omp simd
    for (int b = 0; b < kBlock; ++b) {
      const T v = (acc[b] + odd[b]) * inv;
      yi[b] = v;
      m[b] += v * v;
    }
  }
  for (int b = 0; b < kBlock; ++b) sq[b] = m[b];
}

// u = L⁻ᵀ y for a block ([D][kBlock] each), back substitution reading L by columns.
template <typename T>
FASTAD_ALWAYS_INLINE void solve_upper_transposed(const T* y, const T* tril, const T* inv_diag,
                                                 int64_t d, T* u) {
  for (int64_t i = d - 1; i >= 0; --i) {
    T acc[kBlock], odd[kBlock] = {};
    const T* yi = y + i * kBlock;
#pragma omp simd
    for (int b = 0; b < kBlock; ++b) acc[b] = yi[b];
    int64_t j = i + 1;
    for (; j + 1 < d; j += 2) {
      const T l0 = tril[j * d + i], l1 = tril[(j + 1) * d + i];
      const T* u0 = u + j * kBlock;
      const T* u1 = u0 + kBlock;
#pragma omp simd
      for (int b = 0; b < kBlock; ++b) {
        acc[b] -= l0 * u0[b];
        odd[b] -= l1 * u1[b];
      }
    }
    if (j < d) {
      const T l = tril[j * d + i];
      const T* uj = u + j * kBlock;
#pragma omp simd
      for (int b = 0; b < kBlock; ++b) acc[b] -= l * uj[b];
    }
    const T inv = inv_diag[i];
    T* ui = u + i * kBlock;
#pragma omp simd
    for (int b = 0; b < kBlock; ++b) ui[b] = (acc[b] + odd[b]) * inv;
  }
}

template <typename T>
FASTAD_ALWAYS_INLINE void forward_block_impl(const T* z, int64_t n0, int64_t count,
                                             const Mixture<T>& mix, bool per_component, T* out,
                                             T* zt, T* y, T* lp) {
  const int64_t d = mix.d, kk = mix.k;
  load_block(z, n0, count, d, zt);
  for (int64_t k = 0; k < kk; ++k) {
    T* lpk = lp + k * kBlock;
    solve_lower(zt, mix.mu + k * d, mix.tril + k * d * d, mix.inv_diag + k * d, d, y, lpk);
    const T c = mix.constant[k];
#pragma omp simd
    for (int b = 0; b < kBlock; ++b) lpk[b] = c - T(0.5) * lpk[b];
  }
  for (int64_t b = 0; b < count; ++b) {
    if (per_component) {
      for (int64_t k = 0; k < kk; ++k) out[(n0 + b) * kk + k] = lp[k * kBlock + b];
      continue;
    }
    T best = -std::numeric_limits<T>::infinity();
    for (int64_t k = 0; k < kk; ++k) best = std::max(best, lp[k * kBlock + b]);
    if (best == -std::numeric_limits<T>::infinity()) {  // every φ_k is 0
      out[n0 + b] = best;
      continue;
    }
    T sum = 0;
    for (int64_t k = 0; k < kk; ++k) sum += std::exp(lp[k * kBlock + b] - best);
    out[n0 + b] = best + std::log(sum);
  }
}

FASTAD_VECTOR_CLONES void forward_block(const float* z, int64_t n0, int64_t count,
                                        const Mixture<float>& mix, bool per_component, float* out,
                                        float* zt, float* y, float* lp) {
  forward_block_impl(z, n0, count, mix, per_component, out, zt, y, lp);
}
FASTAD_VECTOR_CLONES void forward_block(const double* z, int64_t n0, int64_t count,
                                        const Mixture<double>& mix, bool per_component,
                                        double* out, double* zt, double* y, double* lp) {
  forward_block_impl(z, n0, count, mix, per_component, out, zt, y, lp);
}

// Per-block scratch of the backward: [D][kBlock] zt, y, u, ∂z; [kBlock][D] y transposed.
template <typename T>
struct BackwardScratch {
  std::vector<T> zt, y, u, gz, yt;
  explicit BackwardScratch(int64_t d)
      : zt(d * kBlock), y(d * kBlock), u(d * kBlock), gz(d * kBlock), yt(d * kBlock) {}
};

// acc_tril[i][j] += Σ_b uw[i][b] · yt[b][j] for j <= i. Columns past the diagonal may be
// touched too (whole kRowChunk chunks); the caller discards the upper triangle.
template <typename T>
FASTAD_ALWAYS_INLINE void accumulate_outer(const T* uw, const T* yt, int64_t d, T* acc_tril) {
  for (int64_t i = 0; i < d; ++i) {
    T* row = acc_tril + i * d;
    const T* ui = uw + i * kBlock;
    int64_t j0 = 0;
    for (; j0 <= i && j0 + kRowChunk <= d; j0 += kRowChunk) {
      // four partial sums over b: independent FMA chains
      T r0[kRowChunk] = {}, r1[kRowChunk] = {}, r2[kRowChunk] = {}, r3[kRowChunk] = {};
      for (int b = 0; b < kBlock; b += 4) {
        const T a0 = ui[b], a1 = ui[b + 1], a2 = ui[b + 2], a3 = ui[b + 3];
        const T* y0 = yt + b * d + j0;
#pragma omp simd
        for (int jj = 0; jj < kRowChunk; ++jj) {
          r0[jj] += a0 * y0[jj];
          r1[jj] += a1 * y0[d + jj];
          r2[jj] += a2 * y0[2 * d + jj];
          r3[jj] += a3 * y0[3 * d + jj];
        }
      }
#pragma omp simd
      for (int jj = 0; jj < kRowChunk; ++jj) row[j0 + jj] += (r0[jj] + r1[jj]) + (r2[jj] + r3[jj]);
    }
    for (int64_t j = j0; j <= i; ++j) {
      T s = 0;
      for (int b = 0; b < kBlock; ++b) s += ui[b] * yt[b * d + j];
      row[j] += s;
    }
  }
}

// One block's contributions to the gradients. acc is [K][D·D + D + 1]: ∂L_k (full square,
// upper part ignored), ∂μ_k, ∂log φ_k; grad_z rows n0..n0+count are written (summed over k).
template <typename T>
FASTAD_ALWAYS_INLINE void backward_block_impl(const T* grad, const T* z, const T* result,
                                              int64_t n0, int64_t count, const Mixture<T>& mix,
                                              bool per_component, T* grad_z, T* acc,
                                              BackwardScratch<T>& s) {
  const int64_t d = mix.d, kk = mix.k, stride = d * d + d + 1;
  load_block(z, n0, count, d, s.zt.data());
  std::fill(s.gz.begin(), s.gz.end(), T(0));
  T sq[kBlock], w[kBlock];
  for (int64_t k = 0; k < kk; ++k) {
    const T* tril = mix.tril + k * d * d;
    const T* inv_diag = mix.inv_diag + k * d;
    solve_lower(s.zt.data(), mix.mu + k * d, tril, inv_diag, d, s.y.data(), sq);
    const T c = mix.constant[k];
    for (int64_t b = 0; b < kBlock; ++b) {
      if (b >= count) {
        w[b] = T(0);
      } else if (per_component) {
        w[b] = grad[(n0 + b) * kk + k];
      } else {
        const T r = result[n0 + b];
        w[b] = std::isfinite(r) ? grad[n0 + b] * std::exp(c - T(0.5) * sq[b] - r) : T(0);
      }
    }
    solve_upper_transposed(s.y.data(), tril, inv_diag, d, s.u.data());
    T* acc_k = acc + k * stride;
    T* acc_mu = acc_k + d * d;
    T w_sum = 0;
    for (int b = 0; b < kBlock; ++b) w_sum += w[b];
    acc_mu[d] += w_sum;
    for (int64_t i = 0; i < d; ++i) {
      T* ui = s.u.data() + i * kBlock;
      T* gzi = s.gz.data() + i * kBlock;
      const T* yi = s.y.data() + i * kBlock;
      T mu_sum = 0;
#pragma omp simd reduction(+ : mu_sum)
      for (int b = 0; b < kBlock; ++b) {
        ui[b] *= w[b];
        mu_sum += ui[b];
        gzi[b] -= ui[b];
      }
      acc_mu[i] += mu_sum;
      for (int b = 0; b < kBlock; ++b) s.yt[b * d + i] = yi[b];
    }
    accumulate_outer(s.u.data(), s.yt.data(), d, acc_k);
  }
  for (int64_t b = 0; b < count; ++b) {
    for (int64_t i = 0; i < d; ++i) grad_z[(n0 + b) * d + i] = s.gz[i * kBlock + b];
  }
}

FASTAD_VECTOR_CLONES void backward_block(const float* grad, const float* z, const float* result,
                                         int64_t n0, int64_t count, const Mixture<float>& mix,
                                         bool per_component, float* grad_z, float* acc,
                                         BackwardScratch<float>& s) {
  backward_block_impl(grad, z, result, n0, count, mix, per_component, grad_z, acc, s);
}
FASTAD_VECTOR_CLONES void backward_block(const double* grad, const double* z,
                                         const double* result, int64_t n0, int64_t count,
                                         const Mixture<double>& mix, bool per_component,
                                         double* grad_z, double* acc, BackwardScratch<double>& s) {
  backward_block_impl(grad, z, result, n0, count, mix, per_component, grad_z, acc, s);
}

// Contiguous parameters plus the derived 1 / L_ii and per-component constants.
struct PreparedMixture {
  at::Tensor mu, tril, inv_diag, constant;
  PreparedMixture(const at::Tensor& log_phi, const at::Tensor& mu_in,
                  const at::Tensor& scale_tril)
      : mu(mu_in.contiguous()),
        tril(scale_tril.contiguous()),
        inv_diag(scale_tril.diagonal(0, 1, 2).reciprocal().contiguous()),
        constant(component_constants(log_phi, scale_tril).contiguous()) {}
  template <typename T>
  Mixture<T> view() const {
    return {mu.data_ptr<T>(), tril.data_ptr<T>(), inv_diag.data_ptr<T>(),
            constant.data_ptr<T>(), mu.size(0), mu.size(1)};
  }
};

at::Tensor gmm_log_prob_cpu(const at::Tensor& z_in, const at::Tensor& log_phi,
                            const at::Tensor& mu, const at::Tensor& scale_tril,
                            bool per_component) {
  check_gmm_args("gmm_log_prob", z_in, log_phi, mu, scale_tril);
  const at::Tensor z = z_in.contiguous();
  const int64_t n = z.size(0), kk = log_phi.size(0), d = z.size(1);
  at::Tensor out = per_component ? at::empty({n, kk}, z.options()) : at::empty({n}, z.options());
  if (n == 0) return out;
  const PreparedMixture prepared(log_phi, mu, scale_tril);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  // a task gets at least ~64K multiply-adds
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / (kBlock * kk * d * d + 1));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "gmm_log_prob_cpu", [&] {
    const Mixture<scalar_t> mix = prepared.view<scalar_t>();
    const scalar_t* z_data = z.data_ptr<scalar_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> zt(d * kBlock), y(d * kBlock), lp(kk * kBlock);
      for (int64_t block = begin; block < end; ++block) {
        const int64_t n0 = block * kBlock;
        forward_block(z_data, n0, std::min<int64_t>(kBlock, n - n0), mix, per_component,
                      out_data, zt.data(), y.data(), lp.data());
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_log_prob_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& z_in, const at::Tensor& log_phi,
    const at::Tensor& mu, const at::Tensor& scale_tril, const at::Tensor& result_in,
    bool per_component) {
  check_gmm_args("gmm_log_prob_backward", z_in, log_phi, mu, scale_tril);
  check_backward_args(grad_in, z_in, log_phi, result_in, per_component);
  const at::Tensor z = z_in.contiguous(), grad = grad_in.contiguous();
  const at::Tensor result = result_in.contiguous();
  const int64_t n = z.size(0), kk = log_phi.size(0), d = z.size(1);
  const int64_t stride = d * d + d + 1;
  at::Tensor grad_z = at::empty_like(z);
  const int threads = at::get_num_threads();
  at::Tensor totals = at::zeros({threads, kk, stride}, z.options().dtype(at::kDouble));
  if (n > 0) {
    const PreparedMixture prepared(log_phi, mu, scale_tril);
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "gmm_log_prob_backward_cpu", [&] {
      const Mixture<scalar_t> mix = prepared.view<scalar_t>();
      const scalar_t* grad_data = grad.data_ptr<scalar_t>();
      const scalar_t* z_data = z.data_ptr<scalar_t>();
      const scalar_t* result_data = result.data_ptr<scalar_t>();
      scalar_t* grad_z_data = grad_z.data_ptr<scalar_t>();
      double* totals_data = totals.data_ptr<double>();
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        double* total = totals_data + at::get_thread_num() * kk * stride;
        std::vector<scalar_t> acc(kk * stride);
        BackwardScratch<scalar_t> scratch(d);
        for (int64_t chunk = begin; chunk < end; ++chunk) {
          std::fill(acc.begin(), acc.end(), scalar_t(0));
          const int64_t c1 = std::min(n, (chunk + 1) * kChunk);
          for (int64_t n0 = chunk * kChunk; n0 < c1; n0 += kBlock) {
            backward_block(grad_data, z_data, result_data, n0, std::min<int64_t>(kBlock, c1 - n0),
                           mix, per_component, grad_z_data, acc.data(), scratch);
          }
          for (int64_t e = 0; e < kk * stride; ++e) total[e] += static_cast<double>(acc[e]);
        }
      });
    });
  }
  const at::Tensor sums = totals.sum(0).to(z.scalar_type());  // [K, stride]
  auto [grad_log_phi, grad_mu, grad_tril] = unpack_parameter_gradients(sums, scale_tril);
  return {grad_z, grad_log_phi, grad_mu, grad_tril};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("gmm_log_prob", &gmm_log_prob_cpu);
  m.impl("gmm_log_prob_backward", &gmm_log_prob_backward_cpu);
}

}  // namespace fastad::gmm
