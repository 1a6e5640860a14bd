// CUDA kernels of the partial convolution: mask coverage (group channel sum, then a kH·kW window
// sum per output position) and the fused renormalisation with its backward.
//
// The NCHW elementwise kernels give each (batch, output channel) plane a group of threads (one to
// eight warps, the fewest that cover the plane: a 7x7 plane gets one warp, so a 256-thread block
// packs eight such planes), so the plane's channel, group and bias are read once and the backward
// reduces the bias gradient of its plane within its group (partial sums [B, Co], summed over the
// batch afterwards: deterministic).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/launch.h"
#include "partial_conv_common.h"

namespace fastad::partial_conv {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(fastad::blocks_for(n, kThreads));
}

// Threads given to one plane of hw elements: the smallest power-of-two number of warps covering
// it, at most kThreads.
inline int plane_threads_for(int64_t hw) {
  int threads = 32;
  while (threads < kThreads && threads < hw) threads *= 2;
  return threads;
}

// Blocks of kThreads for `planes` planes of plane_threads threads each.
inline unsigned plane_blocks(int64_t planes, int plane_threads) {
  const int64_t per_block = kThreads / plane_threads;
  return static_cast<unsigned>((planes + per_block - 1) / per_block);
}

// summed[b, g, h, w] = Σ_{c in group g} mask[b, c, h, w]
template <typename scalar_t, typename sum_t>
__global__ void group_channel_sum_kernel(const scalar_t* __restrict__ mask, int64_t batch,
                                         int64_t channels, int64_t groups, int64_t plane,
                                         sum_t* __restrict__ summed) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t per_group = channels / groups;
  const int64_t total = batch * groups * plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bg = i / plane, pos = i % plane;
    const int64_t b = bg / groups, g = bg % groups;
    const scalar_t* src = mask + (b * channels + g * per_group) * plane + pos;
    opmath_t acc = 0;
    for (int64_t c = 0; c < per_group; ++c) acc += static_cast<opmath_t>(src[c * plane]);
    summed[i] = static_cast<sum_t>(acc);
  }
}

// out[bg, ho, wo] = Σ over the (dilated, strided, zero-padded) window of src[bg, :, :]
template <typename src_t, typename scalar_t>
__global__ void window_sum_kernel(const src_t* __restrict__ src, int64_t planes, Axis ax_h,
                                  Axis ax_w, scalar_t* __restrict__ out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = ax_h.out * ax_w.out;
  const int64_t total = planes * per_plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bg = i / per_plane, pos = i % per_plane;
    const int64_t ho = pos / ax_w.out, wo = pos % ax_w.out;
    const src_t* base = src + bg * ax_h.in * ax_w.in;
    opmath_t acc = 0;
    for (int64_t t = 0; t < ax_h.kernel; ++t) {
      const int64_t h = ho * ax_h.stride - ax_h.padding + t * ax_h.dilation;
      if (h < 0 || h >= ax_h.in) continue;
      for (int64_t s = 0; s < ax_w.kernel; ++s) {
        const int64_t w = wo * ax_w.stride - ax_w.padding + s * ax_w.dilation;
        if (w < 0 || w >= ax_w.in) continue;
        acc += static_cast<opmath_t>(base[h * ax_w.in + w]);
      }
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

at::Tensor partial_conv_coverage_cuda(const at::Tensor& mask_in, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups) {
  check_coverage_args(mask_in, kernel_size, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(mask_in.device());
  const at::Tensor mask = mask_in.contiguous();
  const Axis ax_h = make_axis(mask, 0, kernel_size, stride, padding, dilation);
  const Axis ax_w = make_axis(mask, 1, kernel_size, stride, padding, dilation);
  const int64_t batch = mask.size(0), channels = mask.size(1), plane = ax_h.in * ax_w.in;
  at::Tensor out = at::empty({batch, groups, ax_h.out, ax_w.out}, mask.options());
  if (out.numel() == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mask.scalar_type(), "partial_conv_coverage_cuda", [&] {
    if (channels == groups) {  // one channel per group: window sums straight from the mask
      window_sum_kernel<scalar_t, scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          mask.data_ptr<scalar_t>(), batch * groups, ax_h, ax_w, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // group sums in float (exact for binary masks), in double for double masks
    using sum_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    at::Tensor summed = at::empty({batch, groups, ax_h.in, ax_w.in},
                                  mask.options().dtype(c10::CppTypeToScalarType<sum_t>::value));
    group_channel_sum_kernel<scalar_t, sum_t><<<blocks_for(summed.numel()), kThreads, 0, stream>>>(
        mask.data_ptr<scalar_t>(), batch, channels, groups, plane, summed.data_ptr<sum_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    window_sum_kernel<sum_t, scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        summed.data_ptr<sum_t>(), batch * groups, ax_h, ax_w, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <typename opmath_t>
__device__ inline void mask_factors(opmath_t coverage, opmath_t slide, opmath_t& ratio,
                                    opmath_t& update) {
  update = coverage < opmath_t(0) ? opmath_t(0) : (coverage > opmath_t(1) ? opmath_t(1) : coverage);
  ratio = (opmath_t(1) / (coverage + opmath_t(kCoverageEps))) * slide * update;
}

// One output element: (raw·ratio + bias)·update, or raw·ratio without bias. Both layouts' kernels
// call this one function, so they round (and contract) identically.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
__device__ inline scalar_t renormalized(scalar_t raw, scalar_t coverage, opmath_t slide, bool has_bias,
                                        opmath_t bias) {
  opmath_t ratio, update;
  mask_factors(static_cast<opmath_t>(coverage), slide, ratio, update);
  const opmath_t v = static_cast<opmath_t>(raw) * ratio;
  return static_cast<scalar_t>(has_bias ? (v + bias) * update : v);
}

// A group of plane_threads threads per (batch, channel) plane of raw [B, Co, HW]; out may be raw
// (in place), each element is read before it is written by the same thread.
template <typename scalar_t>
__global__ void renormalize_kernel(const scalar_t* raw, const scalar_t* __restrict__ coverage,
                                   const scalar_t* __restrict__ bias, int64_t planes, int plane_threads,
                                   int64_t out_channels, int64_t groups, bool cov_batched, int64_t hw,
                                   double slide_winsize, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * (blockDim.x / plane_threads) + threadIdx.x / plane_threads;
  if (p >= planes) return;
  const int64_t n = p / out_channels, c = p % out_channels;
  const scalar_t* cp = coverage + ((cov_batched ? n : 0) * groups + c / (out_channels / groups)) * hw;
  const scalar_t* rp = raw + p * hw;
  scalar_t* op = out + p * hw;
  const opmath_t slide = static_cast<opmath_t>(slide_winsize);
  const opmath_t bv = bias != nullptr ? static_cast<opmath_t>(bias[c]) : opmath_t(0);
  for (int64_t i = threadIdx.x % plane_threads; i < hw; i += plane_threads) {
    op[i] = renormalized<scalar_t>(rp[i], cp[i], slide, bias != nullptr, bv);
  }
}

// The same for raw in channels_last order [B, HW, Co]: one thread per element, element i is
// (n, pixel, c) with c = i % Co, pixel = (i / Co) % HW, n = i / (Co·HW); grid-stride loop.
// out may be raw (in place): each element is read before it is written by the same thread.
template <typename scalar_t>
__global__ void renormalize_channels_last_kernel(const scalar_t* raw, const scalar_t* __restrict__ coverage,
                                                 const scalar_t* __restrict__ bias, int64_t total,
                                                 int64_t out_channels, int64_t groups, bool cov_batched,
                                                 int64_t hw, double slide_winsize, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t per_group = out_channels / groups;
  const opmath_t slide = static_cast<opmath_t>(slide_winsize);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % out_channels;
    const int64_t pixel = (i / out_channels) % hw;
    const int64_t n = i / (out_channels * hw);
    const int64_t f = ((cov_batched ? n : 0) * groups + c / per_group) * hw + pixel;
    const opmath_t bv = bias != nullptr ? static_cast<opmath_t>(bias[c]) : opmath_t(0);
    out[i] = renormalized<scalar_t>(raw[i], coverage[f], slide, bias != nullptr, bv);
  }
}

// Writes out = renormalised raw (out may alias raw): raw is kernel_input()'s tensor and out has
// its layout; coverage contiguous.
void launch_renormalize(const KernelInput& raw_in, const at::Tensor& coverage,
                        const std::optional<at::Tensor>& bias_in, double slide_winsize, at::Tensor& out) {
  const at::Tensor& raw = raw_in.tensor;
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t planes = raw.size(0) * raw.size(1), hw = raw.size(2) * raw.size(3);
  if (planes == 0 || hw == 0) return;
  TORCH_CHECK(raw_in.channels_last || planes < (int64_t(1) << 31),
              "partial_conv_renormalize (CUDA): B·Co must be below 2^31");
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, raw.scalar_type(), "partial_conv_renormalize_cuda", [&] {
    const scalar_t* bias_ptr = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    if (raw_in.channels_last) {
      renormalize_channels_last_kernel<scalar_t><<<blocks_for(raw.numel()), kThreads, 0, stream>>>(
          raw.data_ptr<scalar_t>(), coverage.data_ptr<scalar_t>(), bias_ptr, raw.numel(), raw.size(1),
          coverage.size(1), coverage.size(0) != 1, hw, slide_winsize, out.data_ptr<scalar_t>());
    } else {
      const int plane_threads = plane_threads_for(hw);
      renormalize_kernel<scalar_t><<<plane_blocks(planes, plane_threads), kThreads, 0, stream>>>(
          raw.data_ptr<scalar_t>(), coverage.data_ptr<scalar_t>(), bias_ptr, planes, plane_threads, raw.size(1),
          coverage.size(1), coverage.size(0) != 1, hw, slide_winsize, out.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> partial_conv_renormalize_cuda(
    const at::Tensor& raw_in, const at::Tensor& coverage_in, const std::optional<at::Tensor>& bias,
    double slide_winsize) {
  check_renormalize_args("partial_conv_renormalize", raw_in, coverage_in, bias);
  const c10::cuda::CUDAGuard guard(raw_in.device());
  const KernelInput raw = kernel_input(raw_in);
  const at::Tensor coverage = coverage_in.contiguous();
  at::Tensor out = at::empty_like(raw.tensor);  // raw's layout: NCHW or channels_last
  launch_renormalize(raw, coverage, bias, slide_winsize, out);
  return {out, at::clamp(coverage, 0, 1).contiguous()};
}

// raw: contiguous in NCHW or channels_last order.
at::Tensor partial_conv_renormalize_inplace_cuda(at::Tensor& raw, const at::Tensor& coverage_in,
                                                 const std::optional<at::Tensor>& bias,
                                                 double slide_winsize) {
  check_renormalize_args("partial_conv_renormalize_", raw, coverage_in, bias);
  const c10::cuda::CUDAGuard guard(raw.device());
  const KernelInput input = kernel_input(raw);
  TORCH_CHECK(input.tensor.is_same(raw),
              "partial_conv_renormalize_: raw must be contiguous (NCHW or channels_last)");
  const at::Tensor coverage = coverage_in.contiguous();
  launch_renormalize(input, coverage, bias, slide_winsize, raw);
  return at::clamp(coverage, 0, 1).contiguous();
}

// The sum of `value` over the plane_threads threads of the calling thread's plane (in a fixed
// order: deterministic), returned to all of them. Every thread of the block must call it.
template <typename opmath_t>
__device__ inline opmath_t plane_sum(opmath_t value, int plane_threads) {
  __shared__ opmath_t per_warp[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) per_warp[threadIdx.x / 32] = value;
  __syncthreads();
  const int warps = plane_threads / 32, first = static_cast<int>(threadIdx.x / plane_threads) * warps;
  opmath_t total = 0;
  for (int w = 0; w < warps; ++w) total += per_warp[first + w];
  return total;
}

// A group of plane_threads threads per (batch, channel) plane of grad [B, Co, HW].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
renormalize_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ coverage,
                            int64_t planes, int plane_threads, int64_t out_channels, int64_t groups,
                            bool cov_batched, int64_t hw, double slide_winsize, bool has_bias,
                            scalar_t* __restrict__ grad_raw, at::opmath_type<scalar_t>* __restrict__ bias_partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * (blockDim.x / plane_threads) + threadIdx.x / plane_threads;
  const int lane = static_cast<int>(threadIdx.x % plane_threads);
  const opmath_t slide = static_cast<opmath_t>(slide_winsize);
  opmath_t acc = 0;
  if (p < planes) {  // no early return: plane_sum synchronises the block
    const int64_t n = p / out_channels, c = p % out_channels;
    const scalar_t* cp = coverage + ((cov_batched ? n : 0) * groups + c / (out_channels / groups)) * hw;
    const scalar_t* gp = grad + p * hw;
    scalar_t* rp = grad_raw + p * hw;
    for (int64_t i = lane; i < hw; i += plane_threads) {
      opmath_t ratio, update;
      mask_factors(static_cast<opmath_t>(cp[i]), slide, ratio, update);
      const opmath_t g = static_cast<opmath_t>(gp[i]);
      if (has_bias) {
        const opmath_t gu = g * update;
        rp[i] = static_cast<scalar_t>(gu * ratio);
        acc += gu;
      } else {
        rp[i] = static_cast<scalar_t>(g * ratio);
      }
    }
  }
  if (has_bias) {
    acc = plane_sum(acc, plane_threads);
    if (p < planes && lane == 0) bias_partial[p] = acc;
  }
}

std::tuple<at::Tensor, at::Tensor> partial_conv_renormalize_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& coverage_in, double slide_winsize, bool has_bias) {
  check_renormalize_args("partial_conv_renormalize_backward", grad_in, coverage_in, std::nullopt);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  // The kernel reads NCHW planes: channels_last grad is copied to NCHW here and grad_raw copied
  // back into grad's own layout at the end (the layout the CPU kernel and the fake kernel give).
  const bool channels_last =
      !grad_in.is_contiguous() && grad_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor grad = grad_in.contiguous(), coverage = coverage_in.contiguous();
  at::Tensor grad_raw = at::empty_like(grad, at::MemoryFormat::Contiguous);
  const int64_t batch = grad.size(0), out_channels = grad.size(1), hw = grad.size(2) * grad.size(3);
  const int64_t planes = batch * out_channels;
  TORCH_CHECK(planes < (int64_t(1) << 31), "partial_conv_renormalize_backward (CUDA): B·Co must be below 2^31");
  const auto opmath_dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = at::zeros({batch, has_bias ? out_channels : 0}, grad.options().dtype(opmath_dtype));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "partial_conv_renormalize_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    if (planes > 0 && hw > 0) {
      const int plane_threads = plane_threads_for(hw);
      renormalize_backward_kernel<scalar_t><<<plane_blocks(planes, plane_threads), kThreads, 0, stream>>>(
          grad.data_ptr<scalar_t>(), coverage.data_ptr<scalar_t>(), planes, plane_threads, out_channels,
          coverage.size(1),
          coverage.size(0) != 1, hw, slide_winsize, has_bias, grad_raw.data_ptr<scalar_t>(),
          has_bias ? partial.data_ptr<opmath_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  at::Tensor grad_bias = partial.sum(0).to(grad.scalar_type());
  if (channels_last) {
    at::Tensor grad_raw_channels_last = at::empty_like(grad_in);
    grad_raw_channels_last.copy_(grad_raw);
    return {grad_raw_channels_last, grad_bias};
  }
  return {grad_raw, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("partial_conv_coverage", &partial_conv_coverage_cuda);
  m.impl("partial_conv_renormalize", &partial_conv_renormalize_cuda);
  m.impl("partial_conv_renormalize_", &partial_conv_renormalize_inplace_cuda);
  m.impl("partial_conv_renormalize_backward", &partial_conv_renormalize_backward_cuda);
}

}  // namespace fastad::partial_conv
