// CPU k-nearest-neighbour search and greedy k-center coreset selection.
//
// knn: for a block of queries and a tile of bank rows, one GEMM gives q·b; the tile is turned
// into |b|² − 2 q·b in place (|q|² is constant per query and cannot change the ranking) and
// folded into a running top-k per query. The candidates are then re-ranked with exact
// (q − b)² distances, so returned distances never carry the expansion's cancellation error.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <vector>

#include "knn_common.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTAD_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTAD_VECTOR_CLONES
#endif

namespace fastad::knn {
namespace {

constexpr int64_t kQueryBlock = 256;
constexpr int64_t kBankTile = 1024;
constexpr int64_t kScanChunk = 64;

// row[j] <- norms[j] - 2 row[j]; returns the minimum of the new row.
#define FASTAD_EXPAND_AND_MIN(T)                                                   \
  FASTAD_VECTOR_CLONES T expand_and_min(T* row, const T* norms, int64_t len) {     \
    T best = std::numeric_limits<T>::infinity();                                    \
    _Pragma("omp simd reduction(min : best)") for (int64_t j = 0; j < len; ++j) {   \
      const T v = norms[j] - T(2) * row[j];                                         \
      row[j] = v;                                                                   \
      best = v < best ? v : best;                                                   \
    }                                                                               \
    return best;                                                                    \
  }
FASTAD_EXPAND_AND_MIN(float)
FASTAD_EXPAND_AND_MIN(double)

#define FASTAD_RANGE_MIN(T)                                                        \
  FASTAD_VECTOR_CLONES T range_min(const T* row, int64_t len) {                    \
    T best = std::numeric_limits<T>::infinity();                                    \
    _Pragma("omp simd reduction(min : best)") for (int64_t j = 0; j < len; ++j) {   \
      best = row[j] < best ? row[j] : best;                                         \
    }                                                                               \
    return best;                                                                    \
  }
FASTAD_RANGE_MIN(float)
FASTAD_RANGE_MIN(double)

#define FASTAD_SQUARED_DISTANCE(T)                                                  \
  FASTAD_VECTOR_CLONES double squared_distance(const T* a, const T* b, int64_t len) { \
    double acc = 0;                                                                  \
    _Pragma("omp simd reduction(+ : acc)") for (int64_t t = 0; t < len; ++t) {       \
      const double diff = double(a[t]) - double(b[t]);                               \
      acc += diff * diff;                                                            \
    }                                                                                \
    return acc;                                                                      \
  }
FASTAD_SQUARED_DISTANCE(float)
FASTAD_SQUARED_DISTANCE(double)

// Inserts (value, index) into the ascending list of length k, whose last value exceeds
// `value` (or ties with a higher index). Equal values keep the lower index first.
template <typename V>
inline void insert_sorted(V* values, int64_t* indices, int64_t k, V value, int64_t index) {
  int64_t p = k - 1;
  while (p > 0 && (values[p - 1] > value || (values[p - 1] == value && indices[p - 1] > index))) {
    values[p] = values[p - 1];
    indices[p] = indices[p - 1];
    --p;
  }
  values[p] = value;
  indices[p] = index;
}

// Folds one expanded row of a tile (bank rows first..first+len) into a running top-k.
template <typename T>
void fold_row(T* row, const T* norms, int64_t len, int64_t first, int64_t k, T* values,
              int64_t* indices) {
  if (k == 1) {
    const T best = expand_and_min(row, norms, len);
    if (best < values[0]) {
      int64_t j = 0;
      while (row[j] != best) ++j;
      values[0] = best;
      indices[0] = first + j;
    }
    return;
  }
  expand_and_min(row, norms, len);
  for (int64_t c0 = 0; c0 < len; c0 += kScanChunk) {
    const int64_t c1 = std::min(len, c0 + kScanChunk);
    if (!(range_min(row + c0, c1 - c0) < values[k - 1])) continue;
    for (int64_t j = c0; j < c1; ++j) {
      if (row[j] < values[k - 1]) insert_sorted(values, indices, k, row[j], first + j);
    }
  }
}

// Candidate search: for every (query block, bank slice) pair, the k best bank rows of the
// slice by |b|² − 2 q·b. Writes candidates [slices, N, k] (values, indices).
template <typename T>
void search_candidates(const at::Tensor& query, const at::Tensor& bank, const at::Tensor& norms,
                       int64_t k, int64_t slices, T* cand_values, int64_t* cand_indices) {
  const int64_t n = query.size(0), m = bank.size(0);
  const int64_t blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const T* norm_data = norms.data_ptr<T>();
  // Work items are handed out one at a time, so a thread that loses its core to another
  // process delays one item, not a fixed half of the work.
  const int64_t items = blocks * slices;
  std::atomic<int64_t> next_item{0};
  at::parallel_for(0, std::min<int64_t>(items, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    at::Tensor tile = at::empty({kQueryBlock, kBankTile}, query.options());
    for (int64_t item = next_item++; item < items; item = next_item++) {
      const int64_t block = item / slices, slice = item % slices;
      const int64_t q0 = block * kQueryBlock, qn = std::min(kQueryBlock, n - q0);
      const int64_t s0 = slice * m / slices, s1 = (slice + 1) * m / slices;
      T* values = cand_values + (slice * n + q0) * k;
      int64_t* indices = cand_indices + (slice * n + q0) * k;
      std::fill(values, values + qn * k, std::numeric_limits<T>::infinity());
      std::fill(indices, indices + qn * k, int64_t(-1));
      const at::Tensor queries = query.narrow(0, q0, qn);
      for (int64_t b0 = s0; b0 < s1; b0 += kBankTile) {
        const int64_t bn = std::min(kBankTile, s1 - b0);
        at::Tensor products = tile.narrow(0, 0, qn).narrow(1, 0, bn);
        at::mm_out(products, queries, bank.narrow(0, b0, bn).t());
        T* rows = products.data_ptr<T>();
        const int64_t stride = products.stride(0);
        for (int64_t i = 0; i < qn; ++i) {
          fold_row(rows + i * stride, norm_data + b0, bn, b0, k, values + i * k, indices + i * k);
        }
      }
    }
  });
}

// Exact re-ranking of the candidates of all slices: dist [N, k] ascending, index [N, k].
template <typename T>
void rerank_exact(const at::Tensor& query, const at::Tensor& bank, int64_t k, int64_t slices,
                  const int64_t* cand_indices, at::Tensor& dist, at::Tensor& index) {
  const int64_t n = query.size(0), d = query.size(1);
  const T* q = query.data_ptr<T>();
  const T* b = bank.data_ptr<T>();
  T* out_dist = dist.data_ptr<T>();
  int64_t* out_index = index.data_ptr<int64_t>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    std::vector<double> best(k);
    for (int64_t i = begin; i < end; ++i) {
      std::fill(best.begin(), best.end(), std::numeric_limits<double>::infinity());
      int64_t* best_index = out_index + i * k;
      std::fill(best_index, best_index + k, std::numeric_limits<int64_t>::max());
      for (int64_t slice = 0; slice < slices; ++slice) {
        const int64_t* cands = cand_indices + (slice * n + i) * k;
        for (int64_t c = 0; c < k; ++c) {
          const int64_t j = cands[c];
          if (j < 0) continue;
          const double sq = squared_distance(q + i * d, b + j * d, d);
          if (sq < best[k - 1] || (sq == best[k - 1] && j < best_index[k - 1])) {
            insert_sorted(best.data(), best_index, k, sq, j);
          }
        }
      }
      for (int64_t c = 0; c < k; ++c) out_dist[i * k + c] = static_cast<T>(std::sqrt(best[c]));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& query_in, const at::Tensor& bank_in,
                                           int64_t k,
                                           const std::optional<at::Tensor>& bank_sq_norms) {
  check_knn_args(query_in, bank_in, k, bank_sq_norms);
  TORCH_CHECK(query_in.scalar_type() == at::kFloat || query_in.scalar_type() == at::kDouble,
              "knn (CPU): query and bank must be float32 or float64, got ",
              query_in.scalar_type());
  const at::Tensor query = query_in.contiguous(), bank = bank_in.contiguous();
  const at::Tensor norms = squared_norms(bank, bank_sq_norms);
  const int64_t n = query.size(0), m = bank.size(0);
  at::Tensor dist = at::empty({n, k}, query.options());
  at::Tensor index = at::empty({n, k}, query.options().dtype(at::kLong));
  if (n == 0) return {dist, index};

  const int64_t blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const int64_t slices = bank_slices(blocks, at::get_num_threads(), m, kBankTile);
  at::Tensor cand_indices = at::empty({slices, n, k}, index.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cpu", [&] {
    at::Tensor cand_values = at::empty({slices, n, k}, query.options());
    search_candidates<scalar_t>(query, bank, norms, k, slices, cand_values.data_ptr<scalar_t>(),
                                cand_indices.data_ptr<int64_t>());
    rerank_exact<scalar_t>(query, bank, k, slices, cand_indices.data_ptr<int64_t>(), dist, index);
  });
  return {dist, index};
}

// Greedy k-center: each step adds the row farthest from the chosen set. One pass over the
// features per step fuses the distance to the newest centre, the running minimum and the argmax.
at::Tensor kcenter_coreset_cpu(const at::Tensor& features_in, int64_t n, int64_t start) {
  check_coreset_args(features_in, n, start);
  TORCH_CHECK(features_in.scalar_type() == at::kFloat || features_in.scalar_type() == at::kDouble,
              "kcenter_coreset (CPU): features must be float32 or float64, got ",
              features_in.scalar_type());
  const at::Tensor features = features_in.contiguous();
  const int64_t m = features.size(0), d = features.size(1);
  at::Tensor selected = at::empty({n}, features.options().dtype(at::kLong));
  int64_t* sel = selected.data_ptr<int64_t>();
  std::vector<double> min_dist(m, std::numeric_limits<double>::infinity());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "kcenter_coreset_cpu", [&] {
    const scalar_t* x = features.data_ptr<scalar_t>();
    const int threads = at::get_num_threads();
    std::vector<double> part_best(threads);
    std::vector<int64_t> part_index(threads);
    // a thread gets at least ~256K multiply-adds per step, or the step runs on one thread
    const int64_t grain = std::max<int64_t>(256, (int64_t(1) << 18) / d);
    int64_t centre = start;
    for (int64_t step = 0; step < n; ++step) {
      sel[step] = centre;
      min_dist[centre] = -1.0;  // chosen rows are never chosen again
      if (step + 1 == n) break;
      std::fill(part_best.begin(), part_best.end(), -2.0);
      std::fill(part_index.begin(), part_index.end(), m);
      const scalar_t* c = x + centre * d;
      at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
        const int tid = at::get_thread_num();
        double best = -2.0;
        int64_t best_index = m;
        for (int64_t i = begin; i < end; ++i) {
          const double updated = std::min(min_dist[i], squared_distance(x + i * d, c, d));
          min_dist[i] = updated;
          if (updated > best) {
            best = updated;
            best_index = i;
          }
        }
        if (best > part_best[tid] || (best == part_best[tid] && best_index < part_index[tid])) {
          part_best[tid] = best;
          part_index[tid] = best_index;
        }
      });
      double best = -2.0;
      int64_t best_index = m;
      for (int t = 0; t < threads; ++t) {
        if (part_best[t] > best || (part_best[t] == best && part_index[t] < best_index)) {
          best = part_best[t];
          best_index = part_index[t];
        }
      }
      centre = best_index;
    }
  });
  return selected;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("knn", &knn_cpu);
  m.impl("kcenter_coreset", &kcenter_coreset_cpu);
}

}  // namespace fastad::knn
