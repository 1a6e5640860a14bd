// Argument checks and window arithmetic shared by the CPU and CUDA partial-convolution kernels.
#pragma once
#include <ATen/ATen.h>

namespace fastad::partial_conv {

// NVIDIA's PartialConv2d adds this to the coverage before dividing (mask_ratio).
constexpr double kCoverageEps = 1e-8;

// One spatial axis of a convolution window: output o reads inputs o·stride − padding + t·dilation
// for t in [0, kernel).
struct Axis {
  int64_t in, out, kernel, stride, padding, dilation;
};

inline int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                             int64_t dilation) {
  return (in + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

inline void check_coverage_args(const at::Tensor& mask, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(mask.dim() == 4, "partial_conv_coverage: mask must be [B, C, H, W], got shape ",
              mask.sizes());
  TORCH_CHECK(at::isFloatingType(mask.scalar_type()),
              "partial_conv_coverage: mask must be a floating tensor, got ", mask.scalar_type());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2,
              "partial_conv_coverage: kernel_size, stride, padding and dilation take 2 values each");
  for (int a = 0; a < 2; ++a) {
    TORCH_CHECK(kernel_size[a] >= 1 && stride[a] >= 1 && dilation[a] >= 1 && padding[a] >= 0,
                "partial_conv_coverage: need kernel_size, stride, dilation >= 1 and padding >= 0");
  }
  TORCH_CHECK(groups >= 1 && mask.size(1) % groups == 0, "partial_conv_coverage: groups (", groups,
              ") must divide the mask's channels (", mask.size(1), ")");
  for (int a = 0; a < 2; ++a) {
    TORCH_CHECK(conv_out_size(mask.size(2 + a), kernel_size[a], stride[a], padding[a],
                              dilation[a]) >= 1,
                "partial_conv_coverage: the dilated kernel does not fit the padded mask ",
                mask.sizes());
  }
}

inline Axis make_axis(const at::Tensor& mask, int a, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const int64_t in = mask.size(2 + a);
  return {in, conv_out_size(in, kernel_size[a], stride[a], padding[a], dilation[a]),
          kernel_size[a], stride[a], padding[a], dilation[a]};
}

// raw / grad_out as the renormalisation kernels read it: the tensor itself when it is dense in
// NCHW or in channels_last (NHWC) order, else an NCHW copy. The output is at::empty_like(tensor),
// so it takes raw's own layout on the direct paths (the fake kernels in
// fastad/ops/partial_conv.py follow the same rule).
struct KernelInput {
  at::Tensor tensor;
  bool channels_last;  // loop order NHWC: element (n, c, pixel) at (n·HW + pixel)·Co + c
};

inline KernelInput kernel_input(const at::Tensor& t) {
  if (t.is_contiguous()) return {t, false};
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return {t, true};
  return {t.contiguous(), false};
}

inline void check_renormalize_args(const char* op, const at::Tensor& raw, const at::Tensor& coverage,
                                   const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(raw.dim() == 4, op, ": raw / grad_out must be [B, Co, Ho, Wo], got shape ", raw.sizes());
  TORCH_CHECK(coverage.dim() == 4, op, ": coverage must be [B or 1, G, Ho, Wo], got shape ",
              coverage.sizes());
  TORCH_CHECK(coverage.size(0) == raw.size(0) || coverage.size(0) == 1, op,
              ": coverage batch must be 1 or ", raw.size(0), ", got ", coverage.size(0));
  TORCH_CHECK(coverage.size(1) >= 1 && raw.size(1) % coverage.size(1) == 0, op,
              ": coverage groups (", coverage.size(1), ") must divide the output channels (",
              raw.size(1), ")");
  TORCH_CHECK(coverage.size(2) == raw.size(2) && coverage.size(3) == raw.size(3), op,
              ": coverage is ", coverage.sizes(), " but the output is ", raw.sizes());
  TORCH_CHECK(at::isFloatingType(raw.scalar_type()) && coverage.scalar_type() == raw.scalar_type(),
              op, ": raw and coverage must share one floating dtype, got ", raw.scalar_type(),
              " and ", coverage.scalar_type());
  TORCH_CHECK(coverage.device() == raw.device(), op, ": raw and coverage are on different devices");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == raw.size(1), op, ": bias must be [Co=",
                raw.size(1), "], got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == raw.scalar_type() && bias->device() == raw.device(), op,
                ": bias must match raw's dtype and device");
  }
}

}  // namespace fastad::partial_conv
