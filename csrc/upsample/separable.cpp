// gaussian_upsample, patch_average, gaussian_blur and their adjoints on the separable engine, and
// the engine's CPU half: out[n] = rows · x[n] · colsᵀ in two 1-D passes (columns, then rows). The
// ops only build their 1-D maps and reshape; apply_separable runs on the data's device (the CUDA
// half is separable_cuda.cu), so one implementation serves both dispatch keys.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../common/checks.h"
#include "../common/vector_clones.h"
#include "separable_common.h"

namespace fastad::upsample {
namespace {

constexpr int64_t kWorkPerChunk = 1 << 15;
constexpr int64_t kRowTile = 16;

template <typename T>
std::vector<T> cast_weights(const AxisOperator& op) {
  return std::vector<T>(op.weight.begin(), op.weight.end());
}

// tmp[r, o] = Σ_t w[o, t] x[r, lo[o] + t] for the rows r in [begin, end) of x [rows, n_in].
// kRowTile rows at a time are transposed into `lanes` [n_in, kRowTile], so that every tap is one
// vector multiply-add across the rows of the tile instead of a short dot product per output.
template <typename T>
FASTAD_VECTOR_CLONES void rows_chunk(const T* x, T* tmp, int64_t begin, int64_t end, int64_t n_in,
                                     int64_t n_out, const int64_t* lo, const int64_t* len, const T* w,
                                     int64_t band, T* lanes) {
  for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
    const int64_t rn = std::min(kRowTile, end - r0);
    for (int64_t i = 0; i < rn; ++i) {
      const T* in = x + (r0 + i) * n_in;
      for (int64_t c = 0; c < n_in; ++c) lanes[c * kRowTile + i] = in[c];
    }
    for (int64_t o = 0; o < n_out; ++o) {
      T acc[kRowTile] = {};
      const T* wo = w + o * band;
      for (int64_t t = 0; t < len[o]; ++t) {
        const T weight = wo[t];
        const T* column = lanes + (lo[o] + t) * kRowTile;
#pragma omp simd
        for (int64_t i = 0; i < kRowTile; ++i) acc[i] += weight * column[i];
      }
      for (int64_t i = 0; i < rn; ++i) tmp[(r0 + i) * n_out + o] = acc[i];
    }
  }
}

// out[n, o, :] = Σ_t w[o, t] tmp[n, lo[o] + t, :] for the items n * n_out + o in [begin, end),
// tmp [planes, n_in, width].
template <typename T>
FASTAD_VECTOR_CLONES void columns_chunk(const T* tmp, T* out, int64_t begin, int64_t end, int64_t n_in,
                                        int64_t n_out, int64_t width, const int64_t* lo,
                                        const int64_t* len, const T* w, int64_t band) {
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / n_out, o = item % n_out;
    T* dst = out + item * width;
    for (int64_t c = 0; c < width; ++c) dst[c] = T(0);
    const T* wo = w + o * band;
    for (int64_t t = 0; t < len[o]; ++t) {
      const T* src = tmp + (n * n_in + lo[o] + t) * width;
      const T weight = wo[t];
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) dst[c] += weight * src[c];
    }
  }
}

template <typename T>
void pass_along_rows(const T* x, T* tmp, int64_t rows, const AxisOperator& op) {
  const std::vector<T> w = cast_weights<T>(op);
  const int64_t grain =
      std::max<int64_t>(kRowTile, kWorkPerChunk / std::max<int64_t>(1, op.n_out * op.band));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> lanes(op.n_in * kRowTile, T(0));  // lanes past a short tile: computed, never stored
    rows_chunk<T>(x, tmp, begin, end, op.n_in, op.n_out, op.lo.data(), op.len.data(), w.data(), op.band,
                  lanes.data());
  });
}

template <typename T>
void pass_along_columns(const T* tmp, T* out, int64_t planes, int64_t width, const AxisOperator& op) {
  const std::vector<T> w = cast_weights<T>(op);
  const int64_t grain = std::max<int64_t>(1, kWorkPerChunk / std::max<int64_t>(1, width * op.band));
  at::parallel_for(0, planes * op.n_out, grain, [&](int64_t begin, int64_t end) {
    columns_chunk<T>(tmp, out, begin, end, op.n_in, op.n_out, width, op.lo.data(), op.len.data(), w.data(),
                     op.band);
  });
}

}  // namespace

at::Tensor apply_separable_cpu(const at::Tensor& x, const AxisOperator& rows, const AxisOperator& cols) {
  const int64_t planes = x.size(0);
  at::Tensor tmp = at::empty({planes, rows.n_in, cols.n_out}, x.options());
  at::Tensor out = at::empty({planes, rows.n_out, cols.n_out}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apply_separable_cpu", [&] {
    pass_along_rows<scalar_t>(x.data_ptr<scalar_t>(), tmp.data_ptr<scalar_t>(), planes * rows.n_in, cols);
    pass_along_columns<scalar_t>(tmp.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), planes,
                                 cols.n_out, rows);
  });
  return out;
}

namespace {

void check_size(const char* op, const char* name, at::IntArrayRef size) {
  TORCH_CHECK(size.size() == 2 && size[0] >= 1 && size[1] >= 1, op, ": ", name,
              " must be two positive ints, got ", size);
}

void check_gaussian(const char* op, int64_t receptive_field, int64_t stride, double start,
                    double sigma) {
  TORCH_CHECK(receptive_field >= 1, op, ": receptive_field must be >= 1, got ", receptive_field);
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(std::isfinite(start), op, ": start must be finite, got ", start);
  TORCH_CHECK(std::isfinite(sigma) && sigma > 0, op, ": sigma must be > 0, got ", sigma);
}

// [B, C, h, w] -> [B*C, h, w] through apply_separable -> [B, C, H, W].
template <typename M>
at::Tensor apply_to_planes(const at::Tensor& x, const M& rows, const M& cols) {
  const at::Tensor planes = x.reshape({x.size(0) * x.size(1), x.size(2), x.size(3)});
  return apply_separable(planes, rows, cols).view({x.size(0), x.size(1), rows.n_out, cols.n_out});
}

at::Tensor gaussian_upsample(const at::Tensor& heatmap, at::IntArrayRef out_size,
                             int64_t receptive_field, int64_t stride, double start, double sigma) {
  const char* op = "gaussian_upsample";
  check_float(op, "heatmap", heatmap, 4, "[B, C, h, w]");
  check_size(op, "out_size", out_size);
  check_gaussian(op, receptive_field, stride, start, sigma);
  TORCH_CHECK(heatmap.size(2) >= 1 && heatmap.size(3) >= 1, op, ": heatmap must have h, w >= 1");
  const GaussianMap rows(heatmap.size(2), out_size[0], receptive_field, stride, start, sigma);
  const GaussianMap cols(heatmap.size(3), out_size[1], receptive_field, stride, start, sigma);
  return apply_to_planes(heatmap, rows, cols);
}

at::Tensor gaussian_upsample_backward(const at::Tensor& grad, at::IntArrayRef in_size,
                                      int64_t receptive_field, int64_t stride, double start,
                                      double sigma) {
  const char* op = "gaussian_upsample_backward";
  check_float(op, "grad", grad, 4, "[B, C, H, W]");
  check_size(op, "in_size", in_size);
  check_gaussian(op, receptive_field, stride, start, sigma);
  TORCH_CHECK(grad.size(2) >= 1 && grad.size(3) >= 1, op, ": grad must have H, W >= 1");
  const GaussianMap rows(in_size[0], grad.size(2), receptive_field, stride, start, sigma);
  const GaussianMap cols(in_size[1], grad.size(3), receptive_field, stride, start, sigma);
  return apply_to_planes(grad, Adjoint(rows), Adjoint(cols));
}

struct PatchAxes {
  int64_t rows, cols;
};

PatchAxes check_patch_grid(const char* op, at::IntArrayRef patch_size, at::IntArrayRef stride,
                           at::IntArrayRef image_size) {
  check_size(op, "patch_size", patch_size);
  check_size(op, "stride", stride);
  check_size(op, "image_size", image_size);
  TORCH_CHECK(patch_size[0] <= image_size[0] && patch_size[1] <= image_size[1], op,
              ": patch_size ", patch_size, " must fit in image_size ", image_size);
  return {patch_count(patch_size[0], stride[0], image_size[0]),
          patch_count(patch_size[1], stride[1], image_size[1])};
}

at::Tensor patch_average(const at::Tensor& scores, at::IntArrayRef patch_size, at::IntArrayRef stride,
                         at::IntArrayRef image_size, at::IntArrayRef out_size) {
  const char* op = "patch_average";
  check_float(op, "scores", scores, 2, "[B, P]");
  check_size(op, "out_size", out_size);
  const PatchAxes grid = check_patch_grid(op, patch_size, stride, image_size);
  TORCH_CHECK(scores.size(1) == grid.rows * grid.cols, op, ": scores must have P = ",
              grid.rows * grid.cols, " (", grid.rows, " x ", grid.cols, " patches), got ",
              scores.size(1));
  const PatchMap rows(patch_size[0], stride[0], image_size[0], out_size[0]);
  const PatchMap cols(patch_size[1], stride[1], image_size[1], out_size[1]);
  const at::Tensor grid_scores = scores.reshape({scores.size(0), grid.rows, grid.cols});
  return apply_separable(grid_scores, rows, cols);
}

at::Tensor patch_average_backward(const at::Tensor& grad, at::IntArrayRef patch_size,
                                  at::IntArrayRef stride, at::IntArrayRef image_size) {
  const char* op = "patch_average_backward";
  check_float(op, "grad", grad, 3, "[B, H, W]");
  TORCH_CHECK(grad.size(1) >= 1 && grad.size(2) >= 1, op, ": grad must have H, W >= 1");
  const PatchAxes grid = check_patch_grid(op, patch_size, stride, image_size);
  const PatchMap rows(patch_size[0], stride[0], image_size[0], grad.size(1));
  const PatchMap cols(patch_size[1], stride[1], image_size[1], grad.size(2));
  return apply_separable(grad, Adjoint(rows), Adjoint(cols))
      .view({grad.size(0), grid.rows * grid.cols});
}

void check_blur(const char* op, const at::Tensor& maps, double sigma, int64_t kernel_size) {
  check_float(op, "maps", maps, 4, "[B, C, H, W]");
  TORCH_CHECK(std::isfinite(sigma) && sigma > 0, op, ": sigma must be > 0, got ", sigma);
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, op, ": kernel_size must be odd and >= 1, got ",
              kernel_size);
  TORCH_CHECK(kernel_size / 2 < maps.size(2) && kernel_size / 2 < maps.size(3), op,
              ": reflect padding needs kernel_size / 2 = ", kernel_size / 2,
              " below H and W, got maps of shape ", maps.sizes());
}

at::Tensor gaussian_blur(const at::Tensor& maps, double sigma, int64_t kernel_size) {
  check_blur("gaussian_blur", maps, sigma, kernel_size);
  return apply_to_planes(maps, BlurMap(maps.size(2), sigma, kernel_size),
                         BlurMap(maps.size(3), sigma, kernel_size));
}

at::Tensor gaussian_blur_backward(const at::Tensor& grad, double sigma, int64_t kernel_size) {
  check_blur("gaussian_blur_backward", grad, sigma, kernel_size);
  return apply_to_planes(grad, Adjoint(BlurMap(grad.size(2), sigma, kernel_size)),
                         Adjoint(BlurMap(grad.size(3), sigma, kernel_size)));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("gaussian_upsample", &gaussian_upsample);
  m.impl("gaussian_upsample_backward", &gaussian_upsample_backward);
  m.impl("patch_average", &patch_average);
  m.impl("patch_average_backward", &patch_average_backward);
  m.impl("gaussian_blur", &gaussian_blur);
  m.impl("gaussian_blur_backward", &gaussian_blur_backward);
}

#ifdef FASTAD_WITH_CUDA
TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("gaussian_upsample", &gaussian_upsample);
  m.impl("gaussian_upsample_backward", &gaussian_upsample_backward);
  m.impl("patch_average", &patch_average);
  m.impl("patch_average_backward", &patch_average_backward);
  m.impl("gaussian_blur", &gaussian_blur);
  m.impl("gaussian_blur_backward", &gaussian_blur_backward);
}
#endif

}  // namespace fastad::upsample
