// CUDA half of apply_separable: out[n] = rows · x[n] · colsᵀ. One kernel tabulates both 1-D maps
// on the device from their scalars (no host table, no copy, no sync: capturable in a CUDA graph),
// then two gather passes run with one thread per output element, consecutive threads on
// consecutive columns (coalesced).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "../common/launch.h"
#include "separable_common.h"

namespace fastad::upsample {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;

// Tabulates `map` into lo[o], len[o] and weight[o * band + t] (zero beyond len[o]) for output o.
template <typename M, typename T>
__device__ void tabulate(const M& map, int64_t o, int64_t band, int64_t* lo, int64_t* len, T* weight) {
  const int64_t first = map.first(o), last = map.last(o);
  const int64_t n = last < first ? 0 : last - first + 1;
  lo[o] = n == 0 ? 0 : first;
  len[o] = n;
  for (int64_t t = 0; t < band; ++t) weight[o * band + t] = t < n ? static_cast<T>(map.weight(o, first + t)) : T(0);
}

// Thread e < rows.n_out tabulates output e of rows, the next cols.n_out threads those of cols.
// index: [lo rows | len rows | lo cols | len cols]; weight: [rows table | cols table].
template <typename M, typename T>
__global__ void tabulate_kernel(M rows, M cols, int64_t row_band, int64_t col_band,
                                int64_t* __restrict__ index, T* __restrict__ weight) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t nr = rows.n_out, nc = cols.n_out;
  if (e < nr) {
    tabulate(rows, e, row_band, index, index + nr, weight);
  } else if (e < nr + nc) {
    tabulate(cols, e - nr, col_band, index + 2 * nr, index + 2 * nr + nc, weight + nr * row_band);
  }
}

// tmp[r, o] = Σ_t w[o, t] x[r, lo[o] + t], x [rows, n_in], tmp [rows, n_out].
template <typename T>
__global__ void pass_along_rows_kernel(const T* __restrict__ x, T* __restrict__ tmp, int64_t rows,
                                       int64_t n_in, int64_t n_out, const int64_t* __restrict__ lo,
                                       const int64_t* __restrict__ len, const T* __restrict__ w,
                                       int64_t band) {
  const int64_t total = rows * n_out;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / n_out, o = e % n_out;
    const T* src = x + r * n_in + lo[o];
    const T* wo = w + o * band;
    T acc = 0;
    for (int64_t t = 0; t < len[o]; ++t) acc += wo[t] * src[t];
    tmp[e] = acc;
  }
}

// out[n, o, c] = Σ_t w[o, t] tmp[n, lo[o] + t, c], tmp [planes, n_in, width].
template <typename T>
__global__ void pass_along_columns_kernel(const T* __restrict__ tmp, T* __restrict__ out,
                                          int64_t planes, int64_t n_in, int64_t n_out,
                                          int64_t width, const int64_t* __restrict__ lo,
                                          const int64_t* __restrict__ len,
                                          const T* __restrict__ w, int64_t band) {
  const int64_t total = planes * n_out * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = e % width, o = (e / width) % n_out, n = e / (width * n_out);
    const T* src = tmp + (n * n_in + lo[o]) * width + c;
    const T* wo = w + o * band;
    T acc = 0;
    for (int64_t t = 0; t < len[o]; ++t) acc += wo[t] * src[t * width];
    out[e] = acc;
  }
}

}  // namespace

template <typename M>
at::Tensor apply_separable_cuda(const at::Tensor& x, const M& rows, const M& cols) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t planes = x.size(0), in_h = x.size(1), in_w = x.size(2);
  const int64_t out_h = rows.n_out, out_w = cols.n_out;
  at::Tensor out = at::empty({planes, out_h, out_w}, x.options());
  if (out.numel() == 0) return out;
  const int64_t row_band = band_of(rows), col_band = band_of(cols);
  at::Tensor index = at::empty({2 * (out_h + out_w)}, x.options().dtype(at::kLong));
  at::Tensor weight = at::empty({out_h * row_band + out_w * col_band}, x.options());
  at::Tensor tmp = at::empty({planes, in_h, out_w}, x.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apply_separable_cuda", [&] {
    int64_t* idx = index.data_ptr<int64_t>();
    scalar_t* w = weight.data_ptr<scalar_t>();
    tabulate_kernel<M, scalar_t><<<blocks_for(out_h + out_w, kThreads, kMaxBlocks), kThreads, 0, stream>>>(
        rows, cols, row_band, col_band, idx, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t* row_lo = idx;
    const int64_t* row_len = idx + out_h;
    const int64_t* col_lo = idx + 2 * out_h;
    const int64_t* col_len = idx + 2 * out_h + out_w;
    if (tmp.numel() > 0) {
      pass_along_rows_kernel<scalar_t><<<blocks_for(tmp.numel(), kThreads, kMaxBlocks), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), tmp.data_ptr<scalar_t>(), planes * in_h, in_w, out_w, col_lo, col_len,
          w + out_h * row_band, col_band);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    pass_along_columns_kernel<scalar_t><<<blocks_for(out.numel(), kThreads, kMaxBlocks), kThreads, 0, stream>>>(
        tmp.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), planes, in_h, out_h, out_w, row_lo, row_len, w,
        row_band);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template at::Tensor apply_separable_cuda(const at::Tensor&, const GaussianMap&, const GaussianMap&);
template at::Tensor apply_separable_cuda(const at::Tensor&, const Adjoint<GaussianMap>&,
                                         const Adjoint<GaussianMap>&);
template at::Tensor apply_separable_cuda(const at::Tensor&, const PatchMap&, const PatchMap&);
template at::Tensor apply_separable_cuda(const at::Tensor&, const Adjoint<PatchMap>&,
                                         const Adjoint<PatchMap>&);
template at::Tensor apply_separable_cuda(const at::Tensor&, const BlurMap&, const BlurMap&);
template at::Tensor apply_separable_cuda(const at::Tensor&, const Adjoint<BlurMap>&, const Adjoint<BlurMap>&);

}  // namespace fastad::upsample
