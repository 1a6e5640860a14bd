// CUDA half of apply_separable: out[n] = rows · x[n] · colsᵀ in two gather passes, one thread
// per output element, consecutive threads on consecutive columns (coalesced).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "separable.h"

namespace fastad::upsample {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t work) {
  return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 65535 * 8));
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

at::Tensor apply_separable_cuda(const at::Tensor& x, const at::Tensor& row_lo,
                                const at::Tensor& row_len, const at::Tensor& row_weight,
                                int64_t row_band, const at::Tensor& col_lo,
                                const at::Tensor& col_len, const at::Tensor& col_weight,
                                int64_t col_band, int64_t out_h, int64_t out_w) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t planes = x.size(0), in_h = x.size(1), in_w = x.size(2);
  at::Tensor tmp = at::empty({planes, in_h, out_w}, x.options());
  at::Tensor out = at::empty({planes, out_h, out_w}, x.options());
  if (out.numel() == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apply_separable_cuda", [&] {
    if (tmp.numel() > 0) {
      pass_along_rows_kernel<scalar_t><<<blocks_for(tmp.numel()), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), tmp.data_ptr<scalar_t>(), planes * in_h, in_w, out_w,
          col_lo.data_ptr<int64_t>(), col_len.data_ptr<int64_t>(), col_weight.data_ptr<scalar_t>(),
          col_band);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    pass_along_columns_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        tmp.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), planes, in_h, out_h, out_w,
        row_lo.data_ptr<int64_t>(), row_len.data_ptr<int64_t>(), row_weight.data_ptr<scalar_t>(),
        row_band);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace fastad::upsample
