// gaussian_upsample, patch_average, gaussian_blur and their adjoints on the separable engine.
// The ops only build their 1-D maps and reshape; apply_separable runs on the data's device, so
// one implementation serves both the CPU and the CUDA dispatch keys.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "separable.h"

namespace fastad::upsample {
namespace {

void check_float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                        const char* shape) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", shape, ", got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

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
at::Tensor apply_to_planes(const at::Tensor& x, const AxisOperator& rows, const AxisOperator& cols) {
  const at::Tensor planes = x.reshape({x.size(0) * x.size(1), x.size(2), x.size(3)});
  return apply_separable(planes, rows, cols).view({x.size(0), x.size(1), rows.n_out, cols.n_out});
}

at::Tensor gaussian_upsample(const at::Tensor& heatmap, at::IntArrayRef out_size,
                             int64_t receptive_field, int64_t stride, double start, double sigma) {
  const char* op = "gaussian_upsample";
  check_float_tensor(op, "heatmap", heatmap, 4, "[B, C, h, w]");
  check_size(op, "out_size", out_size);
  check_gaussian(op, receptive_field, stride, start, sigma);
  TORCH_CHECK(heatmap.size(2) >= 1 && heatmap.size(3) >= 1, op, ": heatmap must have h, w >= 1");
  const auto rows = gaussian_axis(heatmap.size(2), out_size[0], receptive_field, stride, start, sigma);
  const auto cols = gaussian_axis(heatmap.size(3), out_size[1], receptive_field, stride, start, sigma);
  return apply_to_planes(heatmap, rows, cols);
}

at::Tensor gaussian_upsample_backward(const at::Tensor& grad, at::IntArrayRef in_size,
                                      int64_t receptive_field, int64_t stride, double start,
                                      double sigma) {
  const char* op = "gaussian_upsample_backward";
  check_float_tensor(op, "grad", grad, 4, "[B, C, H, W]");
  check_size(op, "in_size", in_size);
  check_gaussian(op, receptive_field, stride, start, sigma);
  TORCH_CHECK(grad.size(2) >= 1 && grad.size(3) >= 1, op, ": grad must have H, W >= 1");
  const auto rows = gaussian_axis(in_size[0], grad.size(2), receptive_field, stride, start, sigma);
  const auto cols = gaussian_axis(in_size[1], grad.size(3), receptive_field, stride, start, sigma);
  return apply_to_planes(grad, rows.transposed(), cols.transposed());
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
  check_float_tensor(op, "scores", scores, 2, "[B, P]");
  check_size(op, "out_size", out_size);
  const PatchAxes grid = check_patch_grid(op, patch_size, stride, image_size);
  TORCH_CHECK(scores.size(1) == grid.rows * grid.cols, op, ": scores must have P = ",
              grid.rows * grid.cols, " (", grid.rows, " x ", grid.cols, " patches), got ",
              scores.size(1));
  const auto rows = patch_axis(patch_size[0], stride[0], image_size[0], out_size[0]);
  const auto cols = patch_axis(patch_size[1], stride[1], image_size[1], out_size[1]);
  const at::Tensor grid_scores = scores.reshape({scores.size(0), grid.rows, grid.cols});
  return apply_separable(grid_scores, rows, cols);
}

at::Tensor patch_average_backward(const at::Tensor& grad, at::IntArrayRef patch_size,
                                  at::IntArrayRef stride, at::IntArrayRef image_size) {
  const char* op = "patch_average_backward";
  check_float_tensor(op, "grad", grad, 3, "[B, H, W]");
  TORCH_CHECK(grad.size(1) >= 1 && grad.size(2) >= 1, op, ": grad must have H, W >= 1");
  const PatchAxes grid = check_patch_grid(op, patch_size, stride, image_size);
  const auto rows = patch_axis(patch_size[0], stride[0], image_size[0], grad.size(1));
  const auto cols = patch_axis(patch_size[1], stride[1], image_size[1], grad.size(2));
  return apply_separable(grad, rows.transposed(), cols.transposed())
      .view({grad.size(0), grid.rows * grid.cols});
}

void check_blur(const char* op, const at::Tensor& maps, double sigma, int64_t kernel_size) {
  check_float_tensor(op, "maps", maps, 4, "[B, C, H, W]");
  TORCH_CHECK(std::isfinite(sigma) && sigma > 0, op, ": sigma must be > 0, got ", sigma);
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, op, ": kernel_size must be odd and >= 1, got ",
              kernel_size);
  TORCH_CHECK(kernel_size / 2 < maps.size(2) && kernel_size / 2 < maps.size(3), op,
              ": reflect padding needs kernel_size / 2 = ", kernel_size / 2,
              " below H and W, got maps of shape ", maps.sizes());
}

at::Tensor gaussian_blur(const at::Tensor& maps, double sigma, int64_t kernel_size) {
  check_blur("gaussian_blur", maps, sigma, kernel_size);
  return apply_to_planes(maps, blur_axis(maps.size(2), sigma, kernel_size),
                         blur_axis(maps.size(3), sigma, kernel_size));
}

at::Tensor gaussian_blur_backward(const at::Tensor& grad, double sigma, int64_t kernel_size) {
  check_blur("gaussian_blur_backward", grad, sigma, kernel_size);
  return apply_to_planes(grad, blur_axis(grad.size(2), sigma, kernel_size).transposed(),
                         blur_axis(grad.size(3), sigma, kernel_size).transposed());
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
