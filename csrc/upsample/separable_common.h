// The separable engine behind gaussian_upsample, patch_average and gaussian_blur.
//
// Each of these ops is out[n] = A_rows · x[n] · A_colsᵀ for x [N, h, w] and two banded 1-D
// linear maps A_rows [H, h], A_cols [W, w]; its adjoint is the same product with the
// transposed maps. A map is a small struct of scalars (GaussianMap, PatchMap, BlurMap, or the
// Adjoint of one) whose FASTAD_HOST_DEVICE methods give, for output o, the inputs it reads,
// first(o) .. last(o) (empty when last < first; both non-decreasing in o), and their weights
// weight(o, i), computed in float64. The CPU tabulates a map on the host (AxisOperator); the CUDA
// path tabulates it on the device in a kernel from the same scalars, so no call copies a table
// from the host, syncs the stream, or breaks CUDA graph capture.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/host_device.h"

namespace fastad::upsample {

FASTAD_HOST_DEVICE inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

FASTAD_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) {
  return -floor_div(-a, b);
}

FASTAD_HOST_DEVICE inline int64_t clamp_index(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// exp(-(d / sigma)² / 2), written so that a tiny sigma gives 1 at d = 0 and 0 elsewhere (never
// 0/0), and a huge one gives 1.
FASTAD_HOST_DEVICE inline double gaussian_weight(double d, double sigma) {
  const double z = d / sigma;
  return ::exp(-0.5 * z * z);
}

// FCDD receptive-field upsampling along one axis: input i spreads exp(-(o - c_i)² / 2σ²) over
// the outputs o with |o - c_i| <= (receptive_field - 1) / 2, c_i = stride * i + start.
struct GaussianMap {
  int64_t n_in, n_out, stride;
  double half, start, sigma;

  GaussianMap(int64_t n_in_, int64_t n_out_, int64_t receptive_field, int64_t stride_, double start_,
              double sigma_)
      : n_in(n_in_), n_out(n_out_), stride(stride_), half((receptive_field - 1) / 2.0), start(start_),
        sigma(sigma_) {}
  FASTAD_HOST_DEVICE int64_t first(int64_t o) const {
    const int64_t i0 = static_cast<int64_t>(::ceil((o - half - start) / stride));
    return i0 < 0 ? 0 : i0;
  }
  FASTAD_HOST_DEVICE int64_t last(int64_t o) const {
    const int64_t i1 = static_cast<int64_t>(::floor((o + half - start) / stride));
    return i1 > n_in - 1 ? n_in - 1 : i1;
  }
  FASTAD_HOST_DEVICE double weight(int64_t o, int64_t i) const {
    return gaussian_weight(o - (static_cast<double>(stride) * i + start), sigma);
  }
};

// Number of patches along an axis: (image - patch) / stride + 1.
inline int64_t patch_count(int64_t patch, int64_t stride, int64_t image) {
  return (image - patch) / stride + 1;
}

// Patch averaging along one axis: patch r covers pixels [r*stride, r*stride + patch); output o
// reads the patches covering o with weight 1/count, or, when none covers o, those covering the
// nearest covered pixel of [0, n_out) (ties to the lower one).
struct PatchMap {
  int64_t n_in, n_out, patch, stride;

  PatchMap(int64_t patch_, int64_t stride_, int64_t image, int64_t n_out_)
      : n_in(patch_count(patch_, stride_, image)), n_out(n_out_), patch(patch_), stride(stride_) {}
  FASTAD_HOST_DEVICE int64_t first_patch(int64_t q) const {
    const int64_t r = ceil_div(q - patch + 1, stride);
    return r < 0 ? 0 : r;
  }
  FASTAD_HOST_DEVICE int64_t last_patch(int64_t q) const {
    const int64_t r = floor_div(q, stride);
    return r > n_in - 1 ? n_in - 1 : r;
  }
  // The nearest covered pixel to o. Pixel 0 is covered; an uncovered o lies after the end of
  // patch r = min(o / stride, count - 1) (the last covered pixel before it) and before the start
  // of patch r + 1, if that patch exists and starts inside [0, n_out).
  FASTAD_HOST_DEVICE int64_t target(int64_t o) const {
    if (first_patch(o) <= last_patch(o)) return o;
    const int64_t r = clamp_index(floor_div(o, stride), 0, n_in - 1);
    const int64_t previous = r * stride + patch - 1;
    const int64_t next = (r + 1) * stride;
    return (r + 1 < n_in && next < n_out && next - o < o - previous) ? next : previous;
  }
  FASTAD_HOST_DEVICE int64_t first(int64_t o) const { return first_patch(target(o)); }
  FASTAD_HOST_DEVICE int64_t last(int64_t o) const { return last_patch(target(o)); }
  FASTAD_HOST_DEVICE double weight(int64_t o, int64_t) const {
    return 1.0 / static_cast<double>(last(o) - first(o) + 1);
  }
};

// Gaussian blur along one axis of length n: normalised taps exp(-t² / 2σ²), |t| <= radius =
// kernel_size / 2, reflect padding (the edge pixel is not repeated; radius < n), folded into the
// band: input j of output o gathers the taps t = j - o, the tap reflected off the start (o + t =
// -j) and the one reflected off the end (o + t = 2(n - 1) - j).
struct BlurMap {
  int64_t n_in, n_out, radius;
  double sigma, total;

  BlurMap(int64_t n, double sigma_, int64_t kernel_size)
      : n_in(n), n_out(n), radius(kernel_size / 2), sigma(sigma_), total(0) {
    for (int64_t t = -radius; t <= radius; ++t) total += gaussian_weight(static_cast<double>(t), sigma);
  }
  FASTAD_HOST_DEVICE double tap(int64_t t) const {
    return (t < -radius || t > radius) ? 0.0 : gaussian_weight(static_cast<double>(t), sigma) / total;
  }
  FASTAD_HOST_DEVICE int64_t first(int64_t o) const { return o - radius < 0 ? 0 : o - radius; }
  FASTAD_HOST_DEVICE int64_t last(int64_t o) const { return o + radius > n_in - 1 ? n_in - 1 : o + radius; }
  FASTAD_HOST_DEVICE double weight(int64_t o, int64_t j) const {
    double w = tap(j - o);
    if (j > 0) w += tap(-j - o);
    if (j < n_in - 1) w += tap(2 * (n_in - 1) - j - o);
    return w;
  }
};

// The transposed map of M: its output i (an input of M) reads the outputs of M that read i.
// They form one range because M's first and last are non-decreasing in o: [first o with
// last(o) >= i, first o with first(o) > i).
template <typename M>
struct Adjoint {
  M map;
  int64_t n_in, n_out;

  explicit Adjoint(const M& m) : map(m), n_in(m.n_out), n_out(m.n_in) {}
  FASTAD_HOST_DEVICE int64_t first(int64_t i) const {
    int64_t lo = 0, hi = map.n_out;  // first o with map.last(o) >= i
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (map.last(mid) >= i) hi = mid; else lo = mid + 1;
    }
    return lo;
  }
  FASTAD_HOST_DEVICE int64_t last(int64_t i) const {
    int64_t lo = 0, hi = map.n_out;  // first o with map.first(o) > i
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (map.first(mid) > i) hi = mid; else lo = mid + 1;
    }
    return lo - 1;
  }
  FASTAD_HOST_DEVICE double weight(int64_t i, int64_t o) const { return map.weight(o, i); }
};

// The band of a map: the most inputs one output reads, at least 1.
template <typename M>
int64_t band_of(const M& map) {
  int64_t band = 1;
  for (int64_t o = 0; o < map.n_out; ++o) band = std::max(band, map.last(o) - map.first(o) + 1);
  return band;
}

// A map tabulated on the host: output o reads inputs lo[o] .. lo[o] + len[o] - 1 with weights
// weight[o * band + t] (zero beyond len[o]).
struct AxisOperator {
  int64_t n_out = 0;
  int64_t n_in = 0;
  int64_t band = 1;
  std::vector<int64_t> lo;
  std::vector<int64_t> len;
  std::vector<double> weight;

  template <typename M>
  explicit AxisOperator(const M& map)
      : n_out(map.n_out), n_in(map.n_in), band(band_of(map)), lo(map.n_out, 0), len(map.n_out, 0),
        weight(map.n_out * band, 0.0) {
    for (int64_t o = 0; o < n_out; ++o) {
      const int64_t first = map.first(o), last = map.last(o);
      if (last < first) continue;
      lo[o] = first;
      len[o] = last - first + 1;
      for (int64_t t = 0; t < len[o]; ++t) weight[o * band + t] = map.weight(o, first + t);
    }
  }
};

// x [N, h, w] -> [N, H, W] = rows · x[n] · colsᵀ on the CPU, any float dtype.
at::Tensor apply_separable_cpu(const at::Tensor& x, const AxisOperator& rows, const AxisOperator& cols);

#ifdef FASTAD_WITH_CUDA
// The same on the device: x contiguous CUDA; both tables are built there by one kernel.
// Instantiated in separable_cuda.cu for every map type above and its Adjoint.
template <typename M>
at::Tensor apply_separable_cuda(const at::Tensor& x, const M& rows, const M& cols);
#endif

// x [N, h, w] -> [N, rows.n_out, cols.n_out] on x's device.
template <typename M>
at::Tensor apply_separable(const at::Tensor& x_in, const M& rows, const M& cols) {
  TORCH_INTERNAL_ASSERT(x_in.dim() == 3 && x_in.size(1) == rows.n_in && x_in.size(2) == cols.n_in);
  const at::Tensor x = x_in.contiguous();
  if (x.is_cuda()) {
#ifdef FASTAD_WITH_CUDA
    return apply_separable_cuda(x, rows, cols);
#else
    TORCH_CHECK(false, "fastad was built without CUDA kernels");
#endif
  }
  return apply_separable_cpu(x, AxisOperator(rows), AxisOperator(cols));
}

}  // namespace fastad::upsample
