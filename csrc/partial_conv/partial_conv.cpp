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

// The same as renormalize_planes for raw in channels_last order [B, HW, Co]: parallel over
// (batch, pixel), the factors of a (pixel, group) computed once (the same mask_factors values
// factor_planes stores) and the inner loop over the group's channels. Bit-identical to the NCHW
// loop: same opmath formula, same order of operations. `out` may be `raw` (in place).
template <typename scalar_t>
void renormalize_channels_last(const scalar_t* raw, const at::Tensor& coverage,
                               const std::optional<at::Tensor>& bias_in, double slide_winsize,
                               int64_t batch, int64_t out_channels, int64_t hw, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* cov = coverage.data_ptr<scalar_t>();
  std::vector<opmath_t> bias_values;
  if (bias_in.has_value()) {
    const at::Tensor bias = bias_in->contiguous();
    const scalar_t* b = bias.data_ptr<scalar_t>();
    bias_values.assign(b, b + out_channels);  // static_cast<opmath_t> per element, as the NCHW loop
  }
  const opmath_t* bv = bias_values.empty() ? nullptr : bias_values.data();
  const int64_t groups = coverage.size(1), per_group = out_channels / groups;
  const bool cov_batched = coverage.size(0) != 1;
  const opmath_t slide = static_cast<opmath_t>(slide_winsize);
  at::parallel_for(0, batch * hw, plane_grain(out_channels), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t n = q / hw, pixel = q % hw;
      const scalar_t* cp = cov + (cov_batched ? n : 0) * groups * hw + pixel;
      const scalar_t* rp = raw + q * out_channels;
      scalar_t* op = out + q * out_channels;
      for (int64_t g = 0; g < groups; ++g) {
        opmath_t ratio, update;
        mask_factors(static_cast<opmath_t>(cp[g * hw]), slide, ratio, update);
        const int64_t first = g * per_group, last = first + per_group;
        if (bv != nullptr) {
          _Pragma("omp simd")
          for (int64_t c = first; c < last; ++c) {
            op[c] = static_cast<scalar_t>((static_cast<opmath_t>(rp[c]) * ratio + bv[c]) * update);
          }
        } else {
          _Pragma("omp simd")
          for (int64_t c = first; c < last; ++c) op[c] = static_cast<scalar_t>(static_cast<opmath_t>(rp[c]) * ratio);
        }
      }
    }
  });
}

// Dispatches on raw's loop order; raw is kernel_input()'s tensor, out may be raw (in place).
void renormalize(const KernelInput& raw, const at::Tensor& coverage,
                 const std::optional<at::Tensor>& bias, double slide_winsize, at::Tensor& out) {
  const at::Tensor& r = raw.tensor;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "partial_conv_renormalize_cpu", [&] {
    const int64_t batch = r.size(0), out_channels = r.size(1), hw = r.size(2) * r.size(3);
    if (raw.channels_last) {
      renormalize_channels_last<scalar_t>(r.data_ptr<scalar_t>(), coverage, bias, slide_winsize, batch,
                                          out_channels, hw, out.data_ptr<scalar_t>());
    } else {
      renormalize_planes<scalar_t>(r.data_ptr<scalar_t>(), coverage, bias, slide_winsize, batch,
                                   out_channels, hw, out.data_ptr<scalar_t>());
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
  const KernelInput raw = kernel_input(raw_in);
  const at::Tensor coverage = coverage_in.contiguous();
  at::Tensor out = at::empty_like(raw.tensor);  // raw's layout: NCHW or channels_last
  if (out.numel() > 0) renormalize(raw, coverage, bias, slide_winsize, out);
  return {out, update_mask_of(coverage)};
}

// In-place variant for eager mode: raw (contiguous in NCHW or channels_last order) becomes out;
// returns update_mask.
at::Tensor partial_conv_renormalize_inplace_cpu(at::Tensor& raw, const at::Tensor& coverage_in,
                                                const std::optional<at::Tensor>& bias,
                                                double slide_winsize) {
  check_renormalize_args("partial_conv_renormalize_", raw, coverage_in, bias);
  const KernelInput input = kernel_input(raw);
  TORCH_CHECK(input.tensor.is_same(raw),
              "partial_conv_renormalize_: raw must be contiguous (NCHW or channels_last)");
  const at::Tensor coverage = coverage_in.contiguous();
  if (raw.numel() > 0) renormalize(input, coverage, bias, slide_winsize, raw);
  return update_mask_of(coverage);
}

// Backward over NCHW planes: grad_raw = grad·scale; per (batch, channel) bias partial sums.
template <typename scalar_t>
void renormalize_backward_planes(const scalar_t* g, const at::Tensor& coverage, double slide_winsize,
                                 bool has_bias, int64_t batch, int64_t out_channels, int64_t hw,
                                 scalar_t* gr, double* sums) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t groups = coverage.size(1), per_group = out_channels / groups;
  const bool cov_batched = coverage.size(0) != 1;
  // d out / d raw = ratio·update with a bias, ratio without; d out / d bias = update
  at::Tensor scale_t, update_t;
  factor_planes<scalar_t>(coverage, slide_winsize, has_bias, scale_t, update_t);
  const opmath_t* scale = scale_t.data_ptr<opmath_t>();
  const opmath_t* update = update_t.data_ptr<opmath_t>();
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
}

// Pixels per bias partial sum of the channels_last backward: a fixed split, so the reduction
// order does not depend on the thread count.
constexpr int64_t kPixelBlock = 256;

// Backward for grad in channels_last order [B, HW, Co]: grad_raw = grad·scale with the same
// per-element formula as the NCHW loop; bias partial sums per (batch, block of kPixelBlock
// pixels) and channel, so the bias gradient may differ from the NCHW path by rounding only.
template <typename scalar_t>
void renormalize_backward_channels_last(const scalar_t* g, const at::Tensor& coverage,
                                        double slide_winsize, bool has_bias, int64_t batch,
                                        int64_t out_channels, int64_t hw, int64_t blocks_per_image,
                                        scalar_t* gr, double* sums) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* cov = coverage.data_ptr<scalar_t>();
  const int64_t groups = coverage.size(1), per_group = out_channels / groups;
  const bool cov_batched = coverage.size(0) != 1;
  const opmath_t slide = static_cast<opmath_t>(slide_winsize);
  at::parallel_for(0, batch * blocks_per_image, plane_grain(kPixelBlock * out_channels), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> acc(static_cast<size_t>(has_bias ? out_channels : 0));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks_per_image;
      const int64_t first_pixel = (item % blocks_per_image) * kPixelBlock;
      const int64_t last_pixel = std::min(hw, first_pixel + kPixelBlock);
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      opmath_t* ac = acc.data();
      for (int64_t pixel = first_pixel; pixel < last_pixel; ++pixel) {
        const scalar_t* cp = cov + (cov_batched ? n : 0) * groups * hw + pixel;
        const scalar_t* gp = g + (n * hw + pixel) * out_channels;
        scalar_t* rp = gr + (n * hw + pixel) * out_channels;
        for (int64_t k = 0; k < groups; ++k) {
          opmath_t ratio, update;
          mask_factors(static_cast<opmath_t>(cp[k * hw]), slide, ratio, update);
          const opmath_t scale = has_bias ? ratio * update : ratio;
          const int64_t first = k * per_group, last = first + per_group;
          _Pragma("omp simd")
          for (int64_t c = first; c < last; ++c) rp[c] = static_cast<scalar_t>(static_cast<opmath_t>(gp[c]) * scale);
          if (has_bias) {
            _Pragma("omp simd")
            for (int64_t c = first; c < last; ++c) ac[c] += static_cast<opmath_t>(gp[c]) * update;
          }
        }
      }
      for (int64_t c = 0; c < static_cast<int64_t>(acc.size()); ++c) {
        sums[item * out_channels + c] = static_cast<double>(ac[c]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> partial_conv_renormalize_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& coverage_in, double slide_winsize, bool has_bias) {
  check_renormalize_args("partial_conv_renormalize_backward", grad_in, coverage_in, std::nullopt);
  const KernelInput grad = kernel_input(grad_in);
  const at::Tensor& g = grad.tensor;
  const at::Tensor coverage = coverage_in.contiguous();
  at::Tensor grad_raw = at::empty_like(g);  // grad's layout: NCHW or channels_last
  const int64_t batch = g.size(0), out_channels = g.size(1), hw = g.size(2) * g.size(3);
  // partial bias sums [items, Co], reduced afterwards (deterministic): items are the (batch,
  // channel) planes' batch rows in NCHW, the (batch, pixel block)s in channels_last
  const int64_t blocks_per_image = grad.channels_last ? (hw + kPixelBlock - 1) / kPixelBlock : 1;
  at::Tensor partial = at::zeros({batch * blocks_per_image, has_bias ? out_channels : 0},
                                 g.options().dtype(at::kDouble));
  if (g.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "partial_conv_renormalize_backward_cpu", [&] {
      if (grad.channels_last) {
        renormalize_backward_channels_last<scalar_t>(g.data_ptr<scalar_t>(), coverage, slide_winsize, has_bias,
                                                     batch, out_channels, hw, blocks_per_image,
                                                     grad_raw.data_ptr<scalar_t>(), partial.data_ptr<double>());
      } else {
        renormalize_backward_planes<scalar_t>(g.data_ptr<scalar_t>(), coverage, slide_winsize, has_bias, batch,
                                              out_channels, hw, grad_raw.data_ptr<scalar_t>(),
                                              partial.data_ptr<double>());
      }
    });
  }
  at::Tensor grad_bias = partial.sum(0).to(g.scalar_type());
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
