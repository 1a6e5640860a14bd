// CPU kernels of idw_upsample and its adjoint. The weights depend only on the pixel, so each pixel
// computes them once and applies them to the whole batch (scores kept transposed, [P, B], so
// that the batch loop is contiguous).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/checks.h"
#include "idw_common.h"
#include "../common/vector_clones.h"

namespace fastad::upsample {
namespace {

constexpr int64_t kPixelGrain = 256;

// acc[b] += w * x[b] for b < n.
template <typename T>
inline void axpy(T* acc, T w, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t b = 0; b < n; ++b) acc[b] += w * x[b];
}

// out[b, pixel] for the pixels in [begin, end); by_patch [P, B]; acc: B scratch values.
template <typename T>
FASTAD_VECTOR_CLONES void forward_chunk(const IdwGrid& grid, const T* by_patch, T* out, T* acc, int64_t batch,
                                        int64_t width, int64_t pixels, int64_t begin, int64_t end) {
  for (int64_t pixel = begin; pixel < end; ++pixel) {
    for (int64_t b = 0; b < batch; ++b) acc[b] = T(0);
    idw_for_each_contribution<T>(grid, pixel / width, pixel % width,
                                 [&](int64_t p, T w) { axpy(acc, w, by_patch + p * batch, batch); });
    for (int64_t b = 0; b < batch; ++b) out[b * pixels + pixel] = acc[b];
  }
}

// acc[p, b] += w(pixel, p) grad[b, pixel] for the pixels in [begin, end); column: B scratch values.
template <typename T>
FASTAD_VECTOR_CLONES void backward_chunk(const IdwGrid& grid, const T* grad, T* acc, T* column, int64_t batch,
                                         int64_t width, int64_t pixels, int64_t begin, int64_t end) {
  for (int64_t pixel = begin; pixel < end; ++pixel) {
    for (int64_t b = 0; b < batch; ++b) column[b] = grad[b * pixels + pixel];
    idw_for_each_contribution<T>(grid, pixel / width, pixel % width,
                                 [&](int64_t p, T w) { axpy(acc + p * batch, w, column, batch); });
  }
}

at::Tensor idw_upsample_cpu(const at::Tensor& scores, at::IntArrayRef patch_size, at::IntArrayRef stride,
                            at::IntArrayRef image_size, at::IntArrayRef out_size, double power,
                            std::optional<double> radius) {
  const char* op = "idw_upsample";
  check_float(op, "scores", scores, 2, "[B, P]");
  const IdwGrid grid = make_idw_grid(op, patch_size, stride, image_size, power, radius);
  TORCH_CHECK(out_size.size() == 2 && out_size[0] >= 1 && out_size[1] >= 1, op,
              ": out_size must be two positive ints, got ", out_size);
  TORCH_CHECK(scores.size(1) == grid.rows * grid.cols, op, ": scores must have P = ", grid.rows * grid.cols,
              ", got ", scores.size(1));
  const int64_t batch = scores.size(0), height = out_size[0], width = out_size[1];
  at::Tensor out = at::empty({batch, height, width}, scores.options());
  if (batch == 0) return out;
  const at::Tensor by_patch = scores.t().contiguous();  // [P, B]
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "idw_upsample_cpu", [&] {
    const scalar_t* s = by_patch.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t pixels = height * width;
    at::parallel_for(0, pixels, kPixelGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> acc(batch);
      forward_chunk<scalar_t>(grid, s, o, acc.data(), batch, width, pixels, begin, end);
    });
  });
  return out;
}

// grad_scores[b, p] = Σ_pixels w(pixel, p) grad[b, pixel]: each worker scatters its share of the
// pixels into its own [P, B] buffer; the buffers are summed in a fixed order.
at::Tensor idw_upsample_backward_cpu(const at::Tensor& grad_in, at::IntArrayRef patch_size,
                                     at::IntArrayRef stride, at::IntArrayRef image_size, double power,
                                     std::optional<double> radius) {
  const char* op = "idw_upsample_backward";
  check_float(op, "grad", grad_in, 3, "[B, H, W]");
  const IdwGrid grid = make_idw_grid(op, patch_size, stride, image_size, power, radius);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t batch = grad.size(0), height = grad.size(1), width = grad.size(2);
  const int64_t patches = grid.rows * grid.cols, pixels = height * width;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), pixels / kPixelGrain));
  if (batch == 0 || pixels == 0) return at::zeros({batch, patches}, grad.options());
  at::Tensor partial = at::zeros({parts, patches, batch}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "idw_upsample_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* part_data = partial.data_ptr<scalar_t>();
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      std::vector<scalar_t> column(batch);
      for (int64_t part = part_begin; part < part_end; ++part) {
        backward_chunk<scalar_t>(grid, g, part_data + part * patches * batch, column.data(), batch, width,
                                 pixels, part * pixels / parts, (part + 1) * pixels / parts);
      }
    });
  });
  return partial.sum(0).t().contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("idw_upsample", &idw_upsample_cpu);
  m.impl("idw_upsample_backward", &idw_upsample_backward_cpu);
}

}  // namespace fastad::upsample
