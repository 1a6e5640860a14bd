// Builders of the 1-D banded maps (AxisOperator) used by the separable upsampling ops.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "separable.h"

namespace fastad::upsample {

namespace {

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return -floor_div(-a, b);
}

}  // namespace

AxisOperator::AxisOperator(int64_t n_out_, int64_t n_in_, int64_t band_)
    : n_out(n_out_),
      n_in(n_in_),
      band(std::max<int64_t>(band_, 1)),
      lo(n_out_, 0),
      len(n_out_, 0),
      weight(n_out_ * std::max<int64_t>(band_, 1), 0.0) {}

AxisOperator AxisOperator::transposed() const {
  std::vector<int64_t> first(n_in, -1), last(n_in, -1);
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t t = 0; t < len[o]; ++t) {
      const int64_t i = lo[o] + t;
      if (first[i] < 0) first[i] = o;
      TORCH_INTERNAL_ASSERT(last[i] < o && (last[i] < 0 || last[i] == o - 1),
                            "AxisOperator::transposed: the outputs reading an input are not one range");
      last[i] = o;
    }
  }
  int64_t band_t = 1;
  for (int64_t i = 0; i < n_in; ++i) {
    if (first[i] >= 0) band_t = std::max(band_t, last[i] - first[i] + 1);
  }
  AxisOperator result(n_in, n_out, band_t);
  for (int64_t i = 0; i < n_in; ++i) {
    if (first[i] < 0) continue;
    result.lo[i] = first[i];
    result.len[i] = last[i] - first[i] + 1;
  }
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t t = 0; t < len[o]; ++t) {
      const int64_t i = lo[o] + t;
      result.at(i, o - result.lo[i]) = get(o, t);
    }
  }
  return result;
}

AxisOperator gaussian_axis(int64_t n_in, int64_t n_out, int64_t receptive_field, int64_t stride,
                           double start, double sigma) {
  const double half = (receptive_field - 1) / 2.0;
  std::vector<int64_t> first(n_out), last(n_out);
  int64_t band = 1;
  for (int64_t o = 0; o < n_out; ++o) {
    // c_i = stride * i + start within [o - half, o + half]
    int64_t i0 = static_cast<int64_t>(std::ceil((o - half - start) / stride));
    int64_t i1 = static_cast<int64_t>(std::floor((o + half - start) / stride));
    i0 = std::max<int64_t>(i0, 0);
    i1 = std::min<int64_t>(i1, n_in - 1);
    first[o] = i0;
    last[o] = i1;
    if (i1 >= i0) band = std::max(band, i1 - i0 + 1);
  }
  AxisOperator op(n_out, n_in, band);
  const double denom = 2.0 * sigma * sigma;
  for (int64_t o = 0; o < n_out; ++o) {
    if (last[o] < first[o]) continue;
    op.lo[o] = first[o];
    op.len[o] = last[o] - first[o] + 1;
    for (int64_t i = first[o]; i <= last[o]; ++i) {
      const double d = o - (static_cast<double>(stride) * i + start);
      op.at(o, i - first[o]) = std::exp(-d * d / denom);
    }
  }
  return op;
}

int64_t patch_count(int64_t patch, int64_t stride, int64_t image) {
  return (image - patch) / stride + 1;
}

AxisOperator patch_axis(int64_t patch, int64_t stride, int64_t image, int64_t n_out) {
  const int64_t count = patch_count(patch, stride, image);
  auto first_patch = [&](int64_t q) { return std::max<int64_t>(0, ceil_div(q - patch + 1, stride)); };
  auto last_patch = [&](int64_t q) { return std::min<int64_t>(count - 1, floor_div(q, stride)); };
  auto covered = [&](int64_t q) { return first_patch(q) <= last_patch(q); };

  // nearest covered pixel of [0, n_out) for every pixel; pixel 0 is always covered
  std::vector<int64_t> target(n_out);
  int64_t previous = -1;
  for (int64_t o = 0; o < n_out; ++o) {
    if (covered(o)) previous = o;
    target[o] = previous;
  }
  int64_t next = -1;
  for (int64_t o = n_out - 1; o >= 0; --o) {
    if (covered(o)) next = o;
    if (next >= 0 && next - o < o - target[o]) target[o] = next;
  }
  int64_t band = 1;
  for (int64_t o = 0; o < n_out; ++o) band = std::max(band, last_patch(target[o]) - first_patch(target[o]) + 1);
  AxisOperator op(n_out, count, band);
  for (int64_t o = 0; o < n_out; ++o) {
    const int64_t r0 = first_patch(target[o]), r1 = last_patch(target[o]);
    op.lo[o] = r0;
    op.len[o] = r1 - r0 + 1;
    for (int64_t t = 0; t < op.len[o]; ++t) op.at(o, t) = 1.0 / op.len[o];
  }
  return op;
}

AxisOperator blur_axis(int64_t n, double sigma, int64_t kernel_size) {
  const int64_t radius = kernel_size / 2;
  std::vector<double> taps(2 * radius + 1);
  double total = 0;
  for (int64_t t = -radius; t <= radius; ++t) {
    taps[t + radius] = std::exp(-static_cast<double>(t * t) / (2.0 * sigma * sigma));
    total += taps[t + radius];
  }
  for (double& tap : taps) tap /= total;
  AxisOperator op(n, n, std::min<int64_t>(n, 2 * radius + 1));
  for (int64_t o = 0; o < n; ++o) {
    op.lo[o] = std::max<int64_t>(0, o - radius);
    op.len[o] = std::min<int64_t>(n - 1, o + radius) - op.lo[o] + 1;
    for (int64_t t = -radius; t <= radius; ++t) {
      int64_t j = o + t;
      if (j < 0) j = -j;
      if (j >= n) j = 2 * (n - 1) - j;
      op.at(o, j - op.lo[o]) += taps[t + radius];
    }
  }
  return op;
}

}  // namespace fastad::upsample
