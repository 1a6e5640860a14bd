// CUDA Gaussian-mixture log-likelihood and its backward.
//
// One thread per sample, a tile of T samples per block (grid-stride over tiles). The tile's
// embeddings are staged transposed in shared memory ([D][T], element (i, t) at i·T + (t XOR
// (i mod 32)): a warp touching 32 consecutive t or 32 consecutive i hits 32 banks, without
// padding), and so are the per-thread solve vectors. All K factors do not fit in shared memory
// (K·D² values: 256 KB for K = 16, D = 64 in float32), so the block loops over the components
// and holds ONE factor L_k (its diagonal replaced by 1 / L_k,ii) and μ_k in shared memory at a
// time; every thread reads it as a broadcast. T is the largest of 128, 64, 32 whose shared memory
// lets two blocks share an SM (else the largest that fits; an error names D if none does); at
// float32, D = 64 the backward fits T = 128 on an H100.
//
// Forward: y = L_k⁻¹ (z − μ_k) by forward substitution, lp_k = c_k − ½|y|², and a running
// (online, max-shifted) logsumexp over k in registers.
// Backward: the weights w_nk come from the saved forward output (see gmm.cpp), u = L_k⁻ᵀ y by
// back substitution; then the block together adds −w u to the tile's rows of grad_z (coalesced,
// consecutive threads on consecutive features) and computes the sums over the tile for ∂L_k
// (lower triangle of Σ w u yᵀ), ∂μ_k (Σ w u) and ∂log φ_k (Σ w) with each output entry owned by
// one thread, added into the block's own slice of a [blocks, K, D² + D + 1] partial buffer (no
// atomics, fixed order); the slices are summed afterwards.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "gmm_common.h"

namespace fastad::gmm {
namespace {

constexpr int kMaxThreads = 128;
constexpr int kMinThreads = 32;

// Shared memory of a kernel with `vectors` [D][T] tile arrays, one D x D factor, μ and one
// value per warp.
size_t smem_bytes(int vectors, int threads, int64_t d, size_t elem) {
  return elem * (vectors * d * threads + d * d + d + threads / 32);
}

// The largest tile size whose shared memory lets two blocks share an SM (latency hiding), else
// the largest that fits at all; and that size in bytes.
std::pair<int, size_t> pick_tile(int vectors, int64_t d, size_t elem, const char* op) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const size_t limit = prop->sharedMemPerBlockOptin;
  const size_t two_per_sm = std::min(limit, prop->sharedMemPerMultiprocessor / 2 - prop->reservedSharedMemPerBlock);
  for (const size_t budget : {two_per_sm, limit}) {
    for (int threads = kMaxThreads; threads >= kMinThreads; threads /= 2) {
      const size_t bytes = smem_bytes(vectors, threads, d, elem);
      if (bytes <= budget) return {threads, bytes};
    }
  }
  TORCH_CHECK(false, op, " (CUDA): D=", d, " needs ", smem_bytes(vectors, kMinThreads, d, elem),
              " bytes of shared memory per block, more than this device's ", limit,
              "; use the CPU or float32");
  return {0, 0};
}

template <typename scalar_t>
void allow_smem(const void* kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

// Offset of element (i, t) of a [D][T] tile array (T a multiple of 32, see the top).
__device__ __forceinline__ int64_t tile_at(int64_t i, int t, int threads) {
  return i * threads + (t ^ static_cast<int>(i & 31));
}

// zt(c, r) = z[tile_start + r][c] (0 past the end).
template <typename scalar_t>
__device__ void load_tile(const scalar_t* __restrict__ z, int64_t n, int64_t d, int64_t start,
                          int threads, scalar_t* zt) {
  for (int64_t e = threadIdx.x; e < threads * d; e += threads) {
    const int64_t r = e / d, c = e % d, row = start + r;
    zt[tile_at(c, static_cast<int>(r), threads)] = row < n ? z[row * d + c] : scalar_t(0);
  }
}

// Component k's factor with 1 / L_ii on its diagonal, and its mean, into shared memory.
template <typename scalar_t>
__device__ void load_component(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ tril,
                               const scalar_t* __restrict__ inv_diag, int64_t k, int64_t d,
                               scalar_t* l_s, scalar_t* mu_s) {
  for (int64_t e = threadIdx.x; e < d * d; e += blockDim.x) {
    const int64_t i = e / d;
    l_s[e] = e == i * (d + 1) ? inv_diag[k * d + i] : tril[k * d * d + e];
  }
  for (int64_t e = threadIdx.x; e < d; e += blockDim.x) mu_s[e] = mu[k * d + e];
}

// Thread t's y = L⁻¹ (zt(:, t) − μ) into y(:, t); returns |y|².
template <typename scalar_t>
__device__ scalar_t solve_lower(const scalar_t* zt, const scalar_t* l_s, const scalar_t* mu_s,
                                int64_t d, int threads, int t, scalar_t* y) {
  scalar_t m = 0;
  for (int64_t i = 0; i < d; ++i) {
    scalar_t s = zt[tile_at(i, t, threads)] - mu_s[i];
    for (int64_t j = 0; j < i; ++j) s -= l_s[i * d + j] * y[tile_at(j, t, threads)];
    const scalar_t v = s * l_s[i * d + i];
    y[tile_at(i, t, threads)] = v;
    m += v * v;
  }
  return m;
}

template <typename scalar_t>
__global__ void gmm_log_prob_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ mu,
                                    const scalar_t* __restrict__ tril,
                                    const scalar_t* __restrict__ inv_diag,
                                    const scalar_t* __restrict__ constant, int64_t n, int64_t kk,
                                    int64_t d, bool per_component, scalar_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* smem = reinterpret_cast<scalar_t*>(smem_raw);
  const int threads = blockDim.x, t = threadIdx.x;
  scalar_t* zt = smem;                 // [D][T]
  scalar_t* y = zt + d * threads;      // [D][T]
  scalar_t* l_s = y + d * threads;     // [D][D]
  scalar_t* mu_s = l_s + d * d;        // [D]
  const scalar_t neg_inf = -INFINITY;
  const int64_t tiles = (n + threads - 1) / threads;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t start = tile * threads, row = start + t;
    __syncthreads();
    load_tile(z, n, d, start, threads, zt);
    scalar_t best = neg_inf, sum = 0;
    for (int64_t k = 0; k < kk; ++k) {
      __syncthreads();
      load_component(mu, tril, inv_diag, k, d, l_s, mu_s);
      __syncthreads();
      const scalar_t lp = constant[k] - scalar_t(0.5) * solve_lower(zt, l_s, mu_s, d, threads, t, y);
      if (per_component) {
        if (row < n) out[row * kk + k] = lp;
      } else if (lp > best) {
        sum = sum * exp(best - lp) + scalar_t(1);
        best = lp;
      } else if (lp != neg_inf) {
        sum += exp(lp - best);
      }
    }
    if (!per_component && row < n) out[row] = best == neg_inf ? neg_inf : best + log(sum);
  }
}

template <typename scalar_t>
__global__ void gmm_log_prob_backward_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ z,
    const scalar_t* __restrict__ result, const scalar_t* __restrict__ mu,
    const scalar_t* __restrict__ tril, const scalar_t* __restrict__ inv_diag,
    const scalar_t* __restrict__ constant, int64_t n, int64_t kk, int64_t d, bool per_component,
    scalar_t* __restrict__ grad_z, scalar_t* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* smem = reinterpret_cast<scalar_t*>(smem_raw);
  const int threads = blockDim.x, t = threadIdx.x;
  scalar_t* zt = smem;                 // [D][T]
  scalar_t* y = zt + d * threads;      // [D][T]
  scalar_t* u = y + d * threads;       // [D][T], w·L⁻ᵀy
  scalar_t* l_s = u + d * threads;     // [D][D], 1 / L_ii on the diagonal
  scalar_t* mu_s = l_s + d * d;        // [D]
  scalar_t* w_warp = mu_s + d;         // [T / 32], Σ w over each warp
  const int64_t entries = d * d + d + 1;
  scalar_t* block_partial = partial + blockIdx.x * kk * entries;
  const int64_t tiles = (n + threads - 1) / threads;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t start = tile * threads, row = start + t;
    const int64_t rows = n - start < threads ? n - start : threads;
    __syncthreads();
    load_tile(z, n, d, start, threads, zt);
    for (int64_t k = 0; k < kk; ++k) {
      __syncthreads();
      load_component(mu, tril, inv_diag, k, d, l_s, mu_s);
      __syncthreads();
      const scalar_t m = solve_lower(zt, l_s, mu_s, d, threads, t, y);
      scalar_t w = 0;
      if (row < n) {
        if (per_component) {
          w = grad[row * kk + k];
        } else if (isfinite(result[row])) {
          w = grad[row] * exp(constant[k] - scalar_t(0.5) * m - result[row]);
        }
      }
      scalar_t warp_w = w;
      for (int offset = 16; offset > 0; offset /= 2) warp_w += __shfl_down_sync(0xffffffffu, warp_w, offset);
      if ((t & 31) == 0) w_warp[t / 32] = warp_w;
      for (int64_t i = d - 1; i >= 0; --i) {
        scalar_t s = y[tile_at(i, t, threads)];
        for (int64_t j = i + 1; j < d; ++j) s -= l_s[j * d + i] * u[tile_at(j, t, threads)];
        u[tile_at(i, t, threads)] = s * l_s[i * d + i];
      }
      for (int64_t i = 0; i < d; ++i) u[tile_at(i, t, threads)] *= w;
      __syncthreads();
      for (int64_t e = t; e < rows * d; e += threads) {  // grad_z(r, c) −= u(c, r), coalesced
        const int64_t r = e / d, c = e % d;
        grad_z[(start + r) * d + c] -= u[tile_at(c, static_cast<int>(r), threads)];
      }
      scalar_t* out = block_partial + k * entries;
      for (int64_t e = t; e < entries; e += threads) {
        scalar_t s = 0;
        if (e < d * d) {
          const int64_t i = e / d, j = e % d;
          if (j > i) continue;
          for (int r = 0; r < threads; ++r) s += u[tile_at(i, r, threads)] * y[tile_at(j, r, threads)];
        } else if (e < d * d + d) {
          const int64_t i = e - d * d;
          for (int r = 0; r < threads; ++r) s += u[tile_at(i, r, threads)];
        } else {
          for (int r = 0; r < threads / 32; ++r) s += w_warp[r];
        }
        out[e] += s;
      }
    }
  }
}

struct PreparedMixture {
  at::Tensor mu, tril, inv_diag, constant;
  PreparedMixture(const at::Tensor& log_phi, const at::Tensor& mu_in,
                  const at::Tensor& scale_tril)
      : mu(mu_in.contiguous()),
        tril(scale_tril.contiguous()),
        inv_diag(scale_tril.diagonal(0, 1, 2).reciprocal().contiguous()),
        constant(component_constants(log_phi, scale_tril).contiguous()) {}
};

int64_t grid_size(int64_t tiles, int blocks_per_sm) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>(tiles, static_cast<int64_t>(sms) * blocks_per_sm));
}

at::Tensor gmm_log_prob_cuda(const at::Tensor& z_in, const at::Tensor& log_phi,
                             const at::Tensor& mu, const at::Tensor& scale_tril,
                             bool per_component) {
  check_gmm_args("gmm_log_prob", z_in, log_phi, mu, scale_tril);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  const int64_t n = z.size(0), kk = log_phi.size(0), d = z.size(1);
  at::Tensor out = per_component ? at::empty({n, kk}, z.options()) : at::empty({n}, z.options());
  if (n == 0) return out;
  const PreparedMixture prepared(log_phi, mu, scale_tril);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "gmm_log_prob_cuda", [&] {
    const auto [threads, bytes] = pick_tile(2, d, sizeof(scalar_t), "gmm_log_prob");
    const auto kernel = gmm_log_prob_kernel<scalar_t>;
    allow_smem<scalar_t>(reinterpret_cast<const void*>(kernel), bytes);
    const int64_t tiles = (n + threads - 1) / threads;
    kernel<<<grid_size(tiles, 8), threads, bytes, at::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), prepared.mu.data_ptr<scalar_t>(),
        prepared.tril.data_ptr<scalar_t>(), prepared.inv_diag.data_ptr<scalar_t>(),
        prepared.constant.data_ptr<scalar_t>(), n, kk, d, per_component,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_log_prob_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& z_in, const at::Tensor& log_phi,
    const at::Tensor& mu, const at::Tensor& scale_tril, const at::Tensor& result_in,
    bool per_component) {
  check_gmm_args("gmm_log_prob_backward", z_in, log_phi, mu, scale_tril);
  check_backward_args(grad_in, z_in, log_phi, result_in, per_component);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous(), grad = grad_in.contiguous();
  const at::Tensor result = result_in.contiguous();
  const int64_t n = z.size(0), kk = log_phi.size(0), d = z.size(1);
  const int64_t entries = d * d + d + 1;
  at::Tensor grad_z = at::zeros_like(z);
  at::Tensor sums = at::zeros({kk, entries}, z.options());
  if (n > 0) {
    const PreparedMixture prepared(log_phi, mu, scale_tril);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "gmm_log_prob_backward_cuda", [&] {
      const auto [threads, bytes] = pick_tile(3, d, sizeof(scalar_t), "gmm_log_prob_backward");
      const auto kernel = gmm_log_prob_backward_kernel<scalar_t>;
      allow_smem<scalar_t>(reinterpret_cast<const void*>(kernel), bytes);
      const int64_t tiles = (n + threads - 1) / threads;
      const int64_t blocks = grid_size(tiles, 2);
      at::Tensor partial = at::zeros({blocks, kk, entries}, z.options());
      kernel<<<blocks, threads, bytes, at::cuda::getCurrentCUDAStream()>>>(
          grad.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), result.data_ptr<scalar_t>(),
          prepared.mu.data_ptr<scalar_t>(), prepared.tril.data_ptr<scalar_t>(),
          prepared.inv_diag.data_ptr<scalar_t>(), prepared.constant.data_ptr<scalar_t>(), n, kk,
          d, per_component, grad_z.data_ptr<scalar_t>(), partial.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sums = partial.sum(0);
    });
  }
  auto [grad_log_phi, grad_mu, grad_tril] = unpack_parameter_gradients(sums, scale_tril);
  return {grad_z, grad_log_phi, grad_mu, grad_tril};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("gmm_log_prob", &gmm_log_prob_cuda);
  m.impl("gmm_log_prob_backward", &gmm_log_prob_backward_cuda);
}

}  // namespace fastad::gmm
