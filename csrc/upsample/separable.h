// The separable engine behind gaussian_upsample, patch_average and gaussian_blur.
//
// Each of these ops is out[n] = A_rows · x[n] · A_colsᵀ for x [N, h, w] and two banded 1-D
// linear maps A_rows [H, h], A_cols [W, w]; its adjoint is the same product with the
// transposed maps. An AxisOperator stores one such map by output index o: the inputs
// lo[o] .. lo[o] + len[o] - 1 with weights weight[o, 0 .. len[o]). Tables are built on the host in
// float64 and cast to the data's dtype and device when applied.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace fastad::upsample {

struct AxisOperator {
  int64_t n_out = 0;
  int64_t n_in = 0;
  int64_t band = 0;              // max len[o], at least 1
  std::vector<int64_t> lo;       // [n_out]
  std::vector<int64_t> len;      // [n_out]
  std::vector<double> weight;    // [n_out * band], zero beyond len[o]

  AxisOperator(int64_t n_out, int64_t n_in, int64_t band);
  double& at(int64_t o, int64_t t) { return weight[o * band + t]; }
  double get(int64_t o, int64_t t) const { return weight[o * band + t]; }
  // The adjoint map [n_in, n_out]. Requires lo[o] and lo[o] + len[o] to be non-decreasing in o
  // (true of every builder below), so that the outputs reading an input form one range.
  AxisOperator transposed() const;
};

// FCDD receptive-field upsampling along one axis: input i spreads exp(-(o - c_i)² / 2σ²) over
// the outputs o with |o - c_i| <= (receptive_field - 1) / 2, c_i = stride * i + start.
AxisOperator gaussian_axis(int64_t n_in, int64_t n_out, int64_t receptive_field, int64_t stride,
                           double start, double sigma);

// Patch averaging along one axis: patch r covers pixels [r*stride, r*stride + patch); output o
// reads the patches covering o with weight 1/count, or, when none covers o, those covering the
// nearest covered pixel (ties to the lower one).
AxisOperator patch_axis(int64_t patch, int64_t stride, int64_t image, int64_t n_out);

// Number of patches along an axis: (image - patch) / stride + 1.
int64_t patch_count(int64_t patch, int64_t stride, int64_t image);

// Gaussian blur along one axis of length n: normalised taps exp(-t² / 2σ²), |t| <= kernel_size/2,
// reflect padding (the edge pixel is not repeated), folded into the band.
AxisOperator blur_axis(int64_t n, double sigma, int64_t kernel_size);

// x [N, h, w] -> [N, H, W] = rows · x[n] · colsᵀ, any float dtype, CPU or CUDA.
at::Tensor apply_separable(const at::Tensor& x, const AxisOperator& rows, const AxisOperator& cols);

#ifdef FASTAD_WITH_CUDA
// The CUDA half of apply_separable: x contiguous on the device; tables already on the device
// (lo, len int64; weight in x's dtype).
at::Tensor apply_separable_cuda(const at::Tensor& x, const at::Tensor& row_lo,
                                const at::Tensor& row_len, const at::Tensor& row_weight,
                                int64_t row_band, const at::Tensor& col_lo,
                                const at::Tensor& col_len, const at::Tensor& col_weight,
                                int64_t col_band, int64_t out_h, int64_t out_w);
#endif

}  // namespace fastad::upsample
