// Geometry of idw_upsample shared by the CPU (idw.cpp) and CUDA (idw_cuda.cu) kernels: for one
// pixel, the contributing patch centres come from per-axis index ranges computed arithmetically
// from the raster grid, never from a scan over all P centres.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "../common/host_device.h"

namespace fastad::upsample {

struct IdwGrid {
  int64_t patch_h, patch_w, stride_h, stride_w, rows, cols;
  double power;
  bool has_radius;
  double radius;
};

// Validates the op's arguments (shared messages for both devices) and builds the grid.
inline IdwGrid make_idw_grid(const char* op, at::IntArrayRef patch_size, at::IntArrayRef stride,
                             at::IntArrayRef image_size, double power,
                             const std::optional<double>& radius) {
  for (auto [name, size] : {std::pair{"patch_size", patch_size}, std::pair{"stride", stride},
                            std::pair{"image_size", image_size}}) {
    TORCH_CHECK(size.size() == 2 && size[0] >= 1 && size[1] >= 1, op, ": ", name,
                " must be two positive ints, got ", size);
  }
  TORCH_CHECK(patch_size[0] <= image_size[0] && patch_size[1] <= image_size[1], op, ": patch_size ",
              patch_size, " must fit in image_size ", image_size);
  TORCH_CHECK(std::isfinite(power) && power >= 0, op, ": power must be >= 0, got ", power);
  TORCH_CHECK(!radius.has_value() || (std::isfinite(*radius) && *radius >= 0), op,
              ": radius must be >= 0 or None, got ", radius.value_or(0.0));
  return {patch_size[0],
          patch_size[1],
          stride[0],
          stride[1],
          (image_size[0] - patch_size[0]) / stride[0] + 1,
          (image_size[1] - patch_size[1]) / stride[1] + 1,
          power,
          radius.has_value(),
          radius.value_or(0.0)};
}

FASTAD_HOST_DEVICE inline int64_t idw_floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Index range [first, last] along one axis of the patches contributing to pixel coordinate q.
template <typename T>
FASTAD_HOST_DEVICE inline void idw_axis_range(int64_t q, int64_t patch, int64_t stride, int64_t count,
                                              bool has_radius, T radius, int64_t& first, int64_t& last) {
  if (has_radius) {  // |q - (i*stride + (patch-1)/2)| <= radius
    const T offset = T(q) - T(patch - 1) / T(2);
    first = static_cast<int64_t>(ceil((offset - radius) / T(stride)));
    last = static_cast<int64_t>(floor((offset + radius) / T(stride)));
  } else {  // i*stride <= q <= i*stride + patch - 1
    first = -idw_floor_div(-(q - patch + 1), stride);
    last = idw_floor_div(q, stride);
  }
  first = first < 0 ? 0 : first;
  last = last > count - 1 ? count - 1 : last;
}

// Nearest patch index along one axis to pixel coordinate q, ties to the lower index.
template <typename T>
FASTAD_HOST_DEVICE inline int64_t idw_axis_nearest(int64_t q, int64_t patch, int64_t stride, int64_t count) {
  const T v = (T(q) - T(patch - 1) / T(2)) / T(stride);
  int64_t i = static_cast<int64_t>(ceil(v - T(0.5)));
  i = i < 0 ? 0 : i;
  return i > count - 1 ? count - 1 : i;
}

// Calls emit(p, weight) for the contributing patches of pixel (y, x) with weights summing to 1:
// inverse-distance weights, or weight 1 for a centre the pixel sits on, or weight 1 for the
// nearest centre when none contributes.
template <typename T, typename Emit>
FASTAD_HOST_DEVICE inline void idw_for_each_contribution(const IdwGrid& g, int64_t y, int64_t x, Emit&& emit) {
  const T radius = T(g.radius);
  const T radius_sq = radius * radius;
  int64_t r0, r1, c0, c1;
  idw_axis_range<T>(y, g.patch_h, g.stride_h, g.rows, g.has_radius, radius, r0, r1);
  idw_axis_range<T>(x, g.patch_w, g.stride_w, g.cols, g.has_radius, radius, c0, c1);
  const T half_h = T(g.patch_h - 1) / T(2), half_w = T(g.patch_w - 1) / T(2);
  const bool inverse_square = g.power == 2.0;
  const T exponent = T(-g.power / 2.0);
  // Weights relative to the nearest centre's, (sq / nearest)^(-power/2) <= 1, so a large power
  // neither overflows nor underflows the sum (the nearest contributes 1); normalising removes the
  // common factor.
  T nearest = T(0);
  auto weight_of = [&](T sq) { return inverse_square ? nearest / sq : T(pow(sq / nearest, exponent)); };
  // Calls visit(p, squared distance) for each centre within reach, in raster order, until it
  // returns false; returns whether every call returned true.
  auto each_centre = [&](auto&& visit) {
    for (int64_t r = r0; r <= r1; ++r) {
      const T dy = T(y) - (T(r * g.stride_h) + half_h);
      for (int64_t c = c0; c <= c1; ++c) {
        const T dx = T(x) - (T(c * g.stride_w) + half_w);
        const T sq = dy * dy + dx * dx;
        if (g.has_radius && sq > radius_sq) continue;
        if (!visit(r * g.cols + c, sq)) return false;
      }
    }
    return true;
  };
  int64_t contributors = 0, on_centre = -1;
  each_centre([&](int64_t p, T sq) {
    if (sq == T(0)) {
      on_centre = p;
      return false;
    }
    nearest = contributors == 0 || sq < nearest ? sq : nearest;
    ++contributors;
    return true;
  });
  if (on_centre >= 0) {
    emit(on_centre, T(1));
    return;
  }
  if (contributors == 0) {
    const int64_t r = idw_axis_nearest<T>(y, g.patch_h, g.stride_h, g.rows);
    const int64_t c = idw_axis_nearest<T>(x, g.patch_w, g.stride_w, g.cols);
    emit(r * g.cols + c, T(1));
    return;
  }
  T total = 0;
  each_centre([&](int64_t, T sq) {
    total += weight_of(sq);
    return true;
  });
  each_centre([&](int64_t p, T sq) {
    emit(p, weight_of(sq) / total);
    return true;
  });
}

}  // namespace fastad::upsample
