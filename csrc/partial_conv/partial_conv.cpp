// CPU kernels of the partial convolution: mask coverage as a separable box sum and the fused
// renormalisation (ratio, bias, update mask) with its backward.
//
// coverage: per (batch, group, input row) the group's channels are summed into one row, which a
// horizontal pass turns into kernel-wide window sums (one per output column); a vertical pass
// then adds kernel-high columns of those rows. (Cg + kW + kH) reads per output instead of the
// Cg·kH·kW of a convolution with a ones kernel, with dilation, stride and zero padding applied
// exactly as the convolution would. Sums run in double, so binary masks give exact counts.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "partial_conv_common.h"

namespace fastad::partial_conv {
namespace {

// Elementwise work below this many elements runs on one thread: waking the pool costs more.
constexpr int64_t kElementGrain = 32768;
// The small per-position passes (coverage, factor planes: B·HW elements) stay on one thread up
// to this size: on a loaded machine a second thread's wake-up costs more than the whole pass.
constexpr int64_t kSmallPassGrain = int64_t(1) << 18;

inline int64_t plane_grain(int64_t plane_elements, int64_t grain = kElementGrain) {
  return std::max<int64_t>(1, grain / std::max<int64_t>(1, plane_elements));
}

// Window sums along one row: out[o] = Σ_t row[o·stride − padding + t·dilation] (in range).
void window_sums(const double* row, const Axis& axis, double* out) {
  for (int64_t o = 0; o < axis.out; ++o) out[o] = 0.0;
  for (int64_t t = 0; t < axis.kernel; ++t) {
    const int64_t offset = t * axis.dilation - axis.padding;
    // valid o: 0 <= o·stride + offset < in
    int64_t first = offset >= 0 ? 0 : (-offset + axis.stride - 1) / axis.stride;
    int64_t last = axis.in - 1 - offset < 0 ? -1 : (axis.in - 1 - offset) / axis.stride;
    last = std::min(last, axis.out - 1);
    if (axis.stride == 1) {
      _Pragma("omp simd")
      for (int64_t o = first; o <= last; ++o) out[o] += row[o + offset];
    } else {
      for (int64_t o = first; o <= last; ++o) out[o] += row[o * axis.stride + offset];
    }
  }
}

template <typename scalar_t>
void coverage_kernel(const scalar_t* mask, int64_t batch, int64_t channels, int64_t groups,
                     const Axis& ax_h, const Axis& ax_w, scalar_t* out) {
  const int64_t per_group = channels / groups;
  const int64_t plane = ax_h.in * ax_w.in;
  // rows [batch·groups, H, Wo]: horizontal window sums of the group-summed mask rows
  std::vector<double> rows(static_cast<size_t>(batch * groups * ax_h.in * ax_w.out));
  at::parallel_for(0, batch * groups * ax_h.in, plane_grain(per_group * ax_w.in, kSmallPassGrain), [&](int64_t begin, int64_t end) {
    std::vector<double> summed(static_cast<size_t>(ax_w.in));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bg = item / ax_h.in, h = item % ax_h.in;
      const int64_t b = bg / groups, g = bg % groups;
      std::fill(summed.begin(), summed.end(), 0.0);
      for (int64_t c = 0; c < per_group; ++c) {
        const scalar_t* src = mask + (b * channels + g * per_group + c) * plane + h * ax_w.in;
        double* dst = summed.data();
        _Pragma("omp simd")
        for (int64_t w = 0; w < ax_w.in; ++w) dst[w] += static_cast<double>(src[w]);
      }
      window_sums(summed.data(), ax_w, rows.data() + item * ax_w.out);
    }
  });
  at::parallel_for(0, batch * groups * ax_h.out, plane_grain(ax_h.kernel * ax_w.out, kSmallPassGrain), [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<size_t>(ax_w.out));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bg = item / ax_h.out, o = item % ax_h.out;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < ax_h.kernel; ++t) {
        const int64_t h = o * ax_h.stride - ax_h.padding + t * ax_h.dilation;
        if (h < 0 || h >= ax_h.in) continue;
        const double* src = rows.data() + (bg * ax_h.in + h) * ax_w.out;
        double* dst = acc.data();
        _Pragma("omp simd")
        for (int64_t w = 0; w < ax_w.out; ++w) dst[w] += src[w];
      }
      scalar_t* dst = out + item * ax_w.out;
      for (int64_t w = 0; w < ax_w.out; ++w) dst[w] = static_cast<scalar_t>(acc[w]);
    }
  });
}

at::Tensor partial_conv_coverage_cpu(const at::Tensor& mask_in, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups) {
  check_coverage_args(mask_in, kernel_size, stride, padding, dilation, groups);
  const at::Tensor mask = mask_in.contiguous();
  const Axis ax_h = make_axis(mask, 0, kernel_size, stride, padding, dilation);
  const Axis ax_w = make_axis(mask, 1, kernel_size, stride, padding, dilation);
  const int64_t batch = mask.size(0), channels = mask.size(1);
  at::Tensor out = at::empty({batch, groups, ax_h.out, ax_w.out}, mask.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mask.scalar_type(), "partial_conv_coverage_cpu", [&] {
    coverage_kernel<scalar_t>(mask.data_ptr<scalar_t>(), batch, channels, groups, ax_h, ax_w,
                              out.data_ptr<scalar_t>());
  });
  return out;
}

// The per-position factors NVIDIA's layer computes: update = clamp(c, 0, 1) and
// ratio = slide / (c + 1e-8) · update, the division written as reciprocal times slide like
// torch's `number / tensor`.
template <typename opmath_t>
inline void mask_factors(opmath_t coverage, opmath_t slide, opmath_t& ratio, opmath_t& update) {
  update = std::min(std::max(coverage, opmath_t(0)), opmath_t(1));
  ratio = (opmath_t(1) / (coverage + opmath_t(kCoverageEps))) * slide * update;
}

// Per coverage position [Bc·G·HW]: scale[i] and update[i] in opmath, computed once and reused by
// all Co/G channels of a group. scale = ratio, or ratio·update when `scale_by_update`.
template <typename scalar_t>
void factor_planes(const at::Tensor& coverage, double slide_winsize, bool scale_by_update,
                   at::Tensor& scale, at::Tensor& update) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto dtype = c10::CppTypeToScalarType<opmath_t>::value;
  scale = at::empty({coverage.numel()}, coverage.options().dtype(dtype));
  update = at::empty({coverage.numel()}, coverage.options().dtype(dtype));
  const scalar_t* cov = coverage.data_ptr<scalar_t>();
  opmath_t* sc = scale.data_ptr<opmath_t>();
  opmath_t* up = update.data_ptr<opmath_t>();
  const opmath_t slide = static_cast<opmath_t>(slide_winsize);
  at::parallel_for(0, coverage.numel(), kSmallPassGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      opmath_t ratio, u;
      mask_factors(static_cast<opmath_t>(cov[i]), slide, ratio, u);
      sc[i] = scale_by_update ? ratio * u : ratio;
      up[i] = u;
    }
  });
}

// out = (raw·ratio + bias)·update, or raw·ratio without bias; `out` may be `raw` (in place).
template <typename scalar_t>
void renormalize_planes(const scalar_t* raw, const at::Tensor& coverage,
                        const std::optional<at::Tensor>& bias_in, double slide_winsize,
                        int64_t batch, int64_t out_channels, int64_t hw, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::Tensor ratio_t, update_t;
  factor_planes<scalar_t>(coverage, slide_winsize, false, ratio_t, update_t);
  const opmath_t* ratio = ratio_t.data_ptr<opmath_t>();
  const opmath_t* update = update_t.data_ptr<opmath_t>();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const scalar_t* b = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
  const int64_t groups = coverage.size(1), per_group = out_channels / groups;
  const bool cov_batched = coverage.size(0) != 1;
  at::parallel_for(0, batch * out_channels, plane_grain(hw), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / out_channels, c = p % out_channels;
      const int64_t f = ((cov_batched ? n : 0) * groups + c / per_group) * hw;
      const opmath_t* rt = ratio + f;
      const opmath_t* up = update + f;
      const scalar_t* rp = raw + p * hw;
      scalar_t* op = out + p * hw;
      if (b != nullptr) {
        const opmath_t bv = static_cast<opmath_t>(b[c]);
        _Pragma("omp simd")
        for (int64_t i = 0; i < hw; ++i) {
          op[i] = static_cast<scalar_t>((static_cast<opmath_t>(rp[i]) * rt[i] + bv) * up[i]);
        }
      } else {
        _Pragma("omp simd")
        for (int64_t i = 0; i < hw; ++i) op[i] = static_cast<scalar_t>(static_cast<opmath_t>(rp[i]) * rt[i]);
      }
    }
  });
}

at::Tensor update_mask_of(const at::Tensor& coverage) {
  return at::clamp(coverage, 0, 1).contiguous();
}

std::tuple<at::Tensor, at::Tensor> partial_conv_renormalize_cpu(
    const at::Tensor& raw_in, const at::Tensor& coverage_in, const std::optional<at::Tensor>& bias,
    double slide_winsize) {
  check_renormalize_args("partial_conv_renormalize", raw_in, coverage_in, bias);
  const at::Tensor raw = raw_in.contiguous(), coverage = coverage_in.contiguous();
  at::Tensor out = at::empty_like(raw, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, raw.scalar_type(), "partial_conv_renormalize_cpu", [&] {
    renormalize_planes<scalar_t>(raw.data_ptr<scalar_t>(), coverage, bias, slide_winsize, raw.size(0),
                                 raw.size(1), raw.size(2) * raw.size(3), out.data_ptr<scalar_t>());
  });
  return {out, update_mask_of(coverage)};
}

// In-place variant for eager mode: raw (contiguous) becomes out; returns update_mask.
at::Tensor partial_conv_renormalize_inplace_cpu(at::Tensor& raw, const at::Tensor& coverage_in,
                                                const std::optional<at::Tensor>& bias,
                                                double slide_winsize) {
  check_renormalize_args("partial_conv_renormalize_", raw, coverage_in, bias);
  TORCH_CHECK(raw.is_contiguous(), "partial_conv_renormalize_: raw must be contiguous");
  const at::Tensor coverage = coverage_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, raw.scalar_type(), "partial_conv_renormalize_inplace_cpu", [&] {
    renormalize_planes<scalar_t>(raw.data_ptr<scalar_t>(), coverage, bias, slide_winsize, raw.size(0),
                                 raw.size(1), raw.size(2) * raw.size(3), raw.data_ptr<scalar_t>());
  });
  return update_mask_of(coverage);
}

std::tuple<at::Tensor, at::Tensor> partial_conv_renormalize_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& coverage_in, double slide_winsize, bool has_bias) {
  check_renormalize_args("partial_conv_renormalize_backward", grad_in, coverage_in, std::nullopt);
  const at::Tensor grad = grad_in.contiguous(), coverage = coverage_in.contiguous();
  at::Tensor grad_raw = at::empty_like(grad, at::MemoryFormat::Contiguous);
  const int64_t batch = grad.size(0), out_channels = grad.size(1), groups = coverage.size(1);
  const int64_t per_group = out_channels / groups, hw = grad.size(2) * grad.size(3);
  const bool cov_batched = coverage.size(0) != 1;
  // per (batch, channel) partial bias sums, reduced over the batch afterwards (deterministic)
  at::Tensor partial = at::zeros({batch, has_bias ? out_channels : 0}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "partial_conv_renormalize_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // d out / d raw = ratio·update with a bias, ratio without; d out / d bias = update
    at::Tensor scale_t, update_t;
    factor_planes<scalar_t>(coverage, slide_winsize, has_bias, scale_t, update_t);
    const opmath_t* scale = scale_t.data_ptr<opmath_t>();
    const opmath_t* update = update_t.data_ptr<opmath_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* gr = grad_raw.data_ptr<scalar_t>();
    double* sums = partial.data_ptr<double>();
    at::parallel_for(0, batch * out_channels, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / out_channels, c = p % out_channels;
        const int64_t f = ((cov_batched ? n : 0) * groups + c / per_group) * hw;
        const opmath_t* sc = scale + f;
        const opmath_t* up = update + f;
        const scalar_t* gp = g + p * hw;
        scalar_t* rp = gr + p * hw;
        _Pragma("omp simd")
        for (int64_t i = 0; i < hw; ++i) rp[i] = static_cast<scalar_t>(static_cast<opmath_t>(gp[i]) * sc[i]);
        if (has_bias) {
          opmath_t acc = 0;
          _Pragma("omp simd reduction(+ : acc)")
          for (int64_t i = 0; i < hw; ++i) acc += static_cast<opmath_t>(gp[i]) * up[i];
          sums[p] = static_cast<double>(acc);
        }
      }
    });
  });
  at::Tensor grad_bias = partial.sum(0).to(grad.scalar_type());
  return {grad_raw, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("partial_conv_coverage", &partial_conv_coverage_cpu);
  m.impl("partial_conv_renormalize", &partial_conv_renormalize_cpu);
  m.impl("partial_conv_renormalize_", &partial_conv_renormalize_inplace_cpu);
  m.impl("partial_conv_renormalize_backward", &partial_conv_renormalize_backward_cpu);
}

}  // namespace fastad::partial_conv
