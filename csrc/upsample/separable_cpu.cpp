// apply_separable: out[n] = rows · x[n] · colsᵀ in two 1-D passes (columns, then rows).
// CPU here; CUDA in separable_cuda.cu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "separable.h"
#include "vector_clones.h"

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

at::Tensor apply_separable(const at::Tensor& x_in, const AxisOperator& rows, const AxisOperator& cols) {
  TORCH_INTERNAL_ASSERT(x_in.dim() == 3 && x_in.size(1) == rows.n_in && x_in.size(2) == cols.n_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t planes = x.size(0);
  if (x.is_cuda()) {
#ifdef FASTAD_WITH_CUDA
    // two host-to-device copies: all index tables in one, all weights in the other
    std::vector<int64_t> index_tables;
    std::vector<double> weights;
    for (const AxisOperator* op : {&rows, &cols}) {
      index_tables.insert(index_tables.end(), op->lo.begin(), op->lo.end());
      index_tables.insert(index_tables.end(), op->len.begin(), op->len.end());
      weights.insert(weights.end(), op->weight.begin(), op->weight.end());
    }
    const at::Tensor index_dev = at::tensor(at::ArrayRef<int64_t>(index_tables), at::kLong).to(x.device());
    const at::Tensor weight_dev =
        at::tensor(at::ArrayRef<double>(weights), at::kDouble).to(x.device(), x.scalar_type());
    const int64_t nr = rows.n_out, nc = cols.n_out;
    return apply_separable_cuda(x, index_dev.narrow(0, 0, nr), index_dev.narrow(0, nr, nr),
                                weight_dev.narrow(0, 0, nr * rows.band), rows.band,
                                index_dev.narrow(0, 2 * nr, nc), index_dev.narrow(0, 2 * nr + nc, nc),
                                weight_dev.narrow(0, nr * rows.band, nc * cols.band), cols.band, nr, nc);
#else
    TORCH_CHECK(false, "fastad was built without CUDA kernels");
#endif
  }
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

}  // namespace fastad::upsample
