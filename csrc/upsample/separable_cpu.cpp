// apply_separable: out[n] = rows · x[n] · colsᵀ in two 1-D passes (columns, then rows).
// CPU here; CUDA in separable_cuda.cu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "separable.h"

namespace fastad::upsample {
namespace {

constexpr int64_t kWorkPerChunk = 1 << 15;

template <typename T>
std::vector<T> cast_weights(const AxisOperator& op) {
  return std::vector<T>(op.weight.begin(), op.weight.end());
}

// tmp[r, o] = Σ_t w[o, t] x[r, lo[o] + t] for every row r of x [rows, n_in].
template <typename T>
void pass_along_rows(const T* x, T* tmp, int64_t rows, const AxisOperator& op) {
  const std::vector<T> w = cast_weights<T>(op);
  const int64_t n_in = op.n_in, n_out = op.n_out, band = op.band;
  const int64_t grain = std::max<int64_t>(1, kWorkPerChunk / std::max<int64_t>(1, n_out * band));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* in = x + r * n_in;
      T* out = tmp + r * n_out;
      for (int64_t o = 0; o < n_out; ++o) {
        const T* src = in + op.lo[o];
        const T* wo = w.data() + o * band;
        const int64_t len = op.len[o];
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t t = 0; t < len; ++t) acc += wo[t] * src[t];
        out[o] = acc;
      }
    }
  });
}

// out[n, o, :] = Σ_t w[o, t] tmp[n, lo[o] + t, :] for tmp [planes, n_in, width].
template <typename T>
void pass_along_columns(const T* tmp, T* out, int64_t planes, int64_t width, const AxisOperator& op) {
  const std::vector<T> w = cast_weights<T>(op);
  const int64_t n_in = op.n_in, n_out = op.n_out, band = op.band;
  const int64_t grain = std::max<int64_t>(1, kWorkPerChunk / std::max<int64_t>(1, width * band));
  at::parallel_for(0, planes * n_out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / n_out, o = item % n_out;
      T* dst = out + item * width;
      std::fill(dst, dst + width, T(0));
      const T* wo = w.data() + o * band;
      for (int64_t t = 0; t < op.len[o]; ++t) {
        const T* src = tmp + (n * n_in + op.lo[o] + t) * width;
        const T weight = wo[t];
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) dst[c] += weight * src[c];
      }
    }
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
