// CUDA kernels of idw_upsample and its adjoint: one thread per pixel and chunk of kBatchChunk
// batch rows, so the weights of a pixel are computed once per chunk. The adjoint scatters with
// atomicAdd into grad_scores [B, P] (summation order, hence the last bits, may vary run to run).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"
#include "idw_common.h"

namespace fastad::upsample {
namespace {

constexpr int kThreads = 128;
constexpr int kBatchChunk = 8;

template <typename T>
__global__ void idw_forward_kernel(const T* __restrict__ scores, T* __restrict__ out, IdwGrid grid,
                                   int64_t batch, int64_t height, int64_t width) {
  const int64_t pixels = height * width;
  const int64_t patches = grid.rows * grid.cols;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBatchChunk;
  for (int64_t pixel = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pixel < pixels;
       pixel += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T acc[kBatchChunk];
#pragma unroll
    for (int j = 0; j < kBatchChunk; ++j) acc[j] = 0;
    idw_for_each_contribution<T>(grid, pixel / width, pixel % width, [&](int64_t p, T w) {
#pragma unroll
      for (int j = 0; j < kBatchChunk; ++j) {
        if (b0 + j < batch) acc[j] += w * scores[(b0 + j) * patches + p];
      }
    });
#pragma unroll
    for (int j = 0; j < kBatchChunk; ++j) {
      if (b0 + j < batch) out[(b0 + j) * pixels + pixel] = acc[j];
    }
  }
}

template <typename T>
__global__ void idw_backward_kernel(const T* __restrict__ grad, T* __restrict__ grad_scores, IdwGrid grid,
                                    int64_t batch, int64_t height, int64_t width) {
  const int64_t pixels = height * width;
  const int64_t patches = grid.rows * grid.cols;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBatchChunk;
  for (int64_t pixel = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pixel < pixels;
       pixel += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T g[kBatchChunk];
#pragma unroll
    for (int j = 0; j < kBatchChunk; ++j) g[j] = b0 + j < batch ? grad[(b0 + j) * pixels + pixel] : T(0);
    idw_for_each_contribution<T>(grid, pixel / width, pixel % width, [&](int64_t p, T w) {
#pragma unroll
      for (int j = 0; j < kBatchChunk; ++j) {
        if (b0 + j < batch) atomicAdd(grad_scores + (b0 + j) * patches + p, w * g[j]);
      }
    });
  }
}

dim3 launch_grid(int64_t pixels, int64_t batch) {
  const int64_t blocks = std::min<int64_t>((pixels + kThreads - 1) / kThreads, 65535);
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>((batch + kBatchChunk - 1) / kBatchChunk));
}

at::Tensor idw_upsample_cuda(const at::Tensor& scores_in, at::IntArrayRef patch_size, at::IntArrayRef stride,
                             at::IntArrayRef image_size, at::IntArrayRef out_size, double power,
                             std::optional<double> radius) {
  const char* op = "idw_upsample";
  check_float(op, "scores", scores_in, 2, "[B, P]");
  const IdwGrid grid = make_idw_grid(op, patch_size, stride, image_size, power, radius);
  TORCH_CHECK(out_size.size() == 2 && out_size[0] >= 1 && out_size[1] >= 1, op,
              ": out_size must be two positive ints, got ", out_size);
  TORCH_CHECK(scores_in.size(1) == grid.rows * grid.cols, op, ": scores must have P = ",
              grid.rows * grid.cols, ", got ", scores_in.size(1));
  TORCH_CHECK(scores_in.size(0) <= 65535LL * kBatchChunk, op, ": batch must be at most ", 65535 * kBatchChunk);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t batch = scores.size(0), height = out_size[0], width = out_size[1];
  at::Tensor out = at::empty({batch, height, width}, scores.options());
  if (batch == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "idw_upsample_cuda", [&] {
    idw_forward_kernel<scalar_t><<<launch_grid(height * width, batch), kThreads, 0, stream>>>(
        scores.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), grid, batch, height, width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor idw_upsample_backward_cuda(const at::Tensor& grad_in, at::IntArrayRef patch_size,
                                      at::IntArrayRef stride, at::IntArrayRef image_size, double power,
                                      std::optional<double> radius) {
  const char* op = "idw_upsample_backward";
  check_float(op, "grad", grad_in, 3, "[B, H, W]");
  const IdwGrid grid = make_idw_grid(op, patch_size, stride, image_size, power, radius);
  TORCH_CHECK(grad_in.size(0) <= 65535LL * kBatchChunk, op, ": batch must be at most ", 65535 * kBatchChunk);
  at::globalContext().alertNotDeterministic("fastad::idw_upsample_backward (CUDA)");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t batch = grad.size(0), height = grad.size(1), width = grad.size(2);
  at::Tensor grad_scores = at::zeros({batch, grid.rows * grid.cols}, grad.options());
  if (batch == 0 || height * width == 0) return grad_scores;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "idw_upsample_backward_cuda", [&] {
    idw_backward_kernel<scalar_t><<<launch_grid(height * width, batch), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), grad_scores.data_ptr<scalar_t>(), grid, batch, height, width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_scores;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("idw_upsample", &idw_upsample_cuda);
  m.impl("idw_upsample_backward", &idw_upsample_backward_cuda);
}

}  // namespace fastad::upsample
