// CPU k-nearest-neighbour search and greedy k-center coreset selection.
//
// knn (see knn_common.h for the bound and its proof): for a block of queries and a tile of bank
// rows, the candidate kernel (knn_fused_common.h, chosen by CPU feature) gives
// ŝ = |b|² − 2 q·b: a fused fp32 microkernel (AVX-512 or AVX2) that keeps the tile in registers, or a GEMM tile
// (BF16 inputs where the CPU has AVX512-BF16 or AMX-BF16, fp32 on other CPUs) expanded after.
// Each query's scores are folded into a running k-th smallest ŝ per query and bank slice,
// keeping every row with ŝ <= (running k-th) + 2E in a candidate buffer with its score. The
// candidates of all slices are then re-ranked with the canonical fp64 distance. Queries whose
// buffer overflows are redone with fp32 candidates (a much smaller E), and if that overflows
// too, by an exact scan of the whole bank.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "../common/vector_clones.h"
#include "knn_common.h"
#include "knn_fused_common.h"

namespace fastad::knn {
namespace {

constexpr int64_t kQueryBlock = 256;
constexpr int64_t kBankTile = 1024;
constexpr int64_t kScanChunk = 64;
constexpr int64_t kExtraCandidates = 128;  // the candidate buffer holds k + this many rows
constexpr double kInf = std::numeric_limits<double>::infinity();

// out[j] <- norms[j] − 2 g[j] (g an fp32 or bf16 GEMM row); returns the minimum of out.
FASTAD_VECTOR_CLONES float expand_row(const float* g, const float* norms, float* out, int64_t len) {
  float best = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : best)
  for (int64_t j = 0; j < len; ++j) {
    const float v = norms[j] - 2.f * g[j];
    out[j] = v;
    best = v < best ? v : best;
  }
  return best;
}

FASTAD_VECTOR_CLONES float expand_row(const uint16_t* g, const float* norms, float* out,
                                      int64_t len) {
  float best = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : best)
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t bits = static_cast<uint32_t>(g[j]) << 16;
    float x;
    std::memcpy(&x, &bits, sizeof(x));
    const float v = norms[j] - 2.f * x;
    out[j] = v;
    best = v < best ? v : best;
  }
  return best;
}

FASTAD_VECTOR_CLONES float range_min(const float* row, int64_t len) {
  float best = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : best)
  for (int64_t j = 0; j < len; ++j) best = row[j] < best ? row[j] : best;
  return best;
}

// The canonical fp64 squared distance of knn_common.h (32 partial sums, butterfly combine,
// no fused multiply-add); a NaN result counts as +inf.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define FASTAD_CANONICAL_DISTANCE(T)                                                      \
  FASTAD_VECTOR_CLONES double canonical_distance(const T* a, const T* b, int64_t len) {   \
    double acc[32] = {};                                                                  \
    int64_t t0 = 0;                                                                       \
    for (; t0 + 32 <= len; t0 += 32) {                                                    \
      _Pragma("omp simd") for (int l = 0; l < 32; ++l) {                                  \
        const double diff = double(a[t0 + l]) - double(b[t0 + l]);                        \
        const double sq = diff * diff;                                                    \
        acc[l] = acc[l] + sq;                                                             \
      }                                                                                   \
    }                                                                                     \
    for (int l = 0; t0 + l < len; ++l) {                                                  \
      const double diff = double(a[t0 + l]) - double(b[t0 + l]);                          \
      const double sq = diff * diff;                                                      \
      acc[l] = acc[l] + sq;                                                               \
    }                                                                                     \
    for (int h = 16; h >= 1; h /= 2)                                                      \
      for (int l = 0; l < h; ++l) acc[l] = acc[l] + acc[l + h];                           \
    return acc[0] == acc[0] ? acc[0] : kInf;                                              \
  }
FASTAD_CANONICAL_DISTANCE(float)
FASTAD_CANONICAL_DISTANCE(double)
#pragma GCC pop_options

// Inserts (value, index) into the ascending list of length k whose last entry is worse.
// Equal values keep the lower index first.
inline void insert_sorted(double* values, int64_t* indices, int64_t k, double value,
                          int64_t index) {
  int64_t p = k - 1;
  while (p > 0 && (values[p - 1] > value || (values[p - 1] == value && indices[p - 1] > index))) {
    values[p] = values[p - 1];
    indices[p] = indices[p - 1];
    --p;
  }
  values[p] = value;
  indices[p] = index;
}

inline void insert_value(float* values, int64_t k, float value) {
  int64_t p = k - 1;
  while (p > 0 && values[p - 1] > value) {
    values[p] = values[p - 1];
    --p;
  }
  values[p] = value;
}

inline bool better(double d, int64_t j, double worst, int64_t worst_index) {
  return d < worst || (d == worst && j < worst_index);
}

// Per (bank slice, query) candidate state: the slice's k smallest ŝ so far (ascending), the
// kept rows (score, index) and their count (-1 once the buffer overflowed).
struct Candidates {
  int64_t n, k, cap, slices;
  at::Tensor top, values, indices, count;
  Candidates(int64_t n_, int64_t k_, int64_t slices_)
      : n(n_), k(k_), cap(k_ + kExtraCandidates), slices(slices_) {
    const auto f = at::TensorOptions().dtype(at::kFloat);
    top = at::full({slices, n, k}, std::numeric_limits<float>::infinity(), f);
    values = at::empty({slices, n, cap}, f);
    indices = at::empty({slices, n, cap}, f.dtype(at::kLong));
    count = at::zeros({slices, n}, f.dtype(at::kLong));
  }
  int64_t at_(int64_t slice, int64_t i) const { return slice * n + i; }
};

// Drops kept rows above thr; returns the new count.
int64_t compact(float* values, int64_t* indices, int64_t count, double thr) {
  int64_t kept = 0;
  for (int64_t c = 0; c < count; ++c) {
    if (double(values[c]) <= thr) {
      values[kept] = values[c];
      indices[kept++] = indices[c];
    }
  }
  return kept;
}

// Folds one expanded tile row (bank rows first..first+len) into a query-slice state.
void fold_scores(const float* s, int64_t len, int64_t first, int64_t k, int64_t cap,
                 double margin2, float* top, float* values, int64_t* indices, int64_t& count) {
  for (int64_t c0 = 0; c0 < len; c0 += kScanChunk) {
    const int64_t c1 = std::min(len, c0 + kScanChunk);
    double thr = double(top[k - 1]) + margin2;
    if (!(double(range_min(s + c0, c1 - c0)) <= thr)) continue;
    for (int64_t j = c0; j < c1; ++j) {
      const float v = s[j];
      if (v < top[k - 1]) {
        insert_value(top, k, v);
        thr = double(top[k - 1]) + margin2;
      }
      if (!(double(v) <= thr)) continue;
      if (count == cap) {
        count = compact(values, indices, count, thr);
        if (count == cap) {
          count = -1;
          return;
        }
      }
      values[count] = v;
      indices[count++] = first + j;
    }
  }
}

// The candidate pass over a contiguous GEMM-dtype copy of queries and bank (float or bf16).
template <typename G>
void search_candidates(const at::Tensor& query, const at::Tensor& bank, const float* norms,
                       const std::vector<double>& margin2, Candidates& cand) {
  using Raw = std::conditional_t<std::is_same_v<G, float>, float, uint16_t>;
  const int64_t n = query.size(0), m = bank.size(0), k = cand.k, slices = cand.slices;
  const int64_t blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const int64_t items = blocks * slices;
  float* top_all = cand.top.data_ptr<float>();
  float* values_all = cand.values.data_ptr<float>();
  int64_t* indices_all = cand.indices.data_ptr<int64_t>();
  int64_t* count_all = cand.count.data_ptr<int64_t>();
  // Work items are handed out one at a time, so a thread that loses its core to another
  // process delays one item, not a fixed half of the work.
  std::atomic<int64_t> next_item{0};
  at::parallel_for(0, std::min<int64_t>(items, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    at::Tensor tile = at::empty({kQueryBlock, kBankTile}, query.options());
    std::vector<float> scores(kBankTile);
    for (int64_t item = next_item++; item < items; item = next_item++) {
      const int64_t block = item / slices, slice = item % slices;
      const int64_t q0 = block * kQueryBlock, qn = std::min(kQueryBlock, n - q0);
      const int64_t s0 = slice * m / slices, s1 = (slice + 1) * m / slices;
      for (int64_t i = q0; i < q0 + qn; ++i) {
        if (!(margin2[i] < kInf)) count_all[cand.at_(slice, i)] = -1;
      }
      const at::Tensor queries = query.narrow(0, q0, qn);
      for (int64_t b0 = s0; b0 < s1; b0 += kBankTile) {
        const int64_t bn = std::min(kBankTile, s1 - b0);
        at::Tensor products = tile.narrow(0, 0, qn).narrow(1, 0, bn);
        at::mm_out(products, queries, bank.narrow(0, b0, bn).t());
        const Raw* rows = reinterpret_cast<const Raw*>(products.data_ptr());
        const int64_t stride = products.stride(0);
        for (int64_t r = 0; r < qn; ++r) {
          const int64_t at = cand.at_(slice, q0 + r);
          int64_t& count = count_all[at];
          if (count < 0) continue;
          float* top = top_all + at * k;
          const float row_min = expand_row(rows + r * stride, norms + b0, scores.data(), bn);
          if (k == 1 && row_min < top[0]) top[0] = row_min;  // k = 1: the tile's minimum is T
          fold_scores(scores.data(), bn, b0, k, cand.cap, margin2[q0 + r], top,
                      values_all + at * cand.cap, indices_all + at * cand.cap, count);
        }
      }
    }
  });
}

// The threshold of a query-slice state as an fp32 value f with v <= f ⟺ double(v) <= thr for
// every fp32 v (thr rounded up), NaN once the state has overflowed (no score passes).
inline float fp32_threshold(const float* top, int64_t k, double margin2, int64_t count) {
  if (count < 0) return std::numeric_limits<float>::quiet_NaN();
  const double thr = double(top[k - 1]) + margin2;
  float f = static_cast<float>(thr);
  if (double(f) < thr) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// Rows [0, rows) of x − centre (centre may be null) in fp32, as panels of `nr` rows each laid
// out [D][nr] (the order a fused kernel reads them), rows past the end zero.
template <typename T>
at::Tensor pack_panels(const T* x, int64_t rows, int64_t d, const T* centre, int64_t nr) {
  const int64_t panels = (rows + nr - 1) / nr;
  at::Tensor packed = at::empty({panels, d, nr}, at::TensorOptions().dtype(at::kFloat));
  float* out = packed.data_ptr<float>();
  at::parallel_for(0, panels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t full = std::min(nr, rows - p * nr);
      const T* first = x + p * nr * d;
      float* panel = out + p * d * nr;
      for (int64_t t = 0; t < d; ++t) {
        const T c = centre ? centre[t] : T(0);
        for (int64_t j = 0; j < full; ++j) {
          const T v = first[j * d + t];
          panel[t * nr + j] = static_cast<float>(centre ? T(v - c) : v);
        }
        for (int64_t j = full; j < nr; ++j) panel[t * nr + j] = 0.f;
      }
    }
  });
  return packed;
}

// Loop-nest sizes of a fused candidate pass: `block` query panels per work item, `group` bank
// panels whose running sums wait together between feature chunks of `chunk` features.
struct FusedBlocking {
  int64_t block, group, chunk;
};

// Bytes of a work item's packed query chunks (block panels x chunk features), kept in L2 while
// the bank panels of a group meet them, and of the running sums of a group (block x group tiles).
constexpr int64_t kFusedQueryBytes = 1 << 18;
constexpr int64_t kFusedPartialBytes = 1 << 17;
constexpr int64_t kItemsPerThread = 6;  // so that one item more or less is a small imbalance

// The blocking of the loop nest in search_fused: a bank panel's chunk (nr x chunk floats) stays
// in L1 while every query panel of the block meets it; the block's query chunks stay in L2 while
// the group's bank panels pass; across chunks only the group's running sums wait (in L2), so
// the bank is read from memory once per block and the queries once per group, whatever D is.
FusedBlocking fused_blocking(const FusedKernel& kernel, int64_t query_panels, int64_t d,
                             int64_t threads) {
  FusedBlocking b;
  b.chunk = std::min(d, kernel.chunk);
  const int64_t fit = kFusedQueryBytes / (kernel.mr * b.chunk * 4);
  const int64_t spread = (query_panels + kItemsPerThread * threads - 1) / (kItemsPerThread * threads);
  b.block = std::clamp<int64_t>(std::min(fit, spread), 8, 64);
  const int64_t tile_bytes = kernel.mr * kernel.nr * 4;
  b.group = d <= b.chunk ? 1 : std::clamp<int64_t>(kFusedPartialBytes / (b.block * tile_bytes), 1, 16);
  return b;
}

// Per-thread scratch of search_fused and the candidate state it folds reported rows into.
struct FusedScratch {
  std::vector<float> thr, scores, partial;
};

// Folds the rows a tile of query panel qp and bank panel p reported (bits of `hits`).
inline void fold_hits(uint32_t hits, const FusedKernel& kernel, int64_t qp, int64_t p, int64_t m,
                      int64_t slice, const std::vector<double>& margin2, Candidates& cand,
                      const float* scores, float* thr) {
  const int64_t mr = kernel.mr, nr = kernel.nr, first = p * nr, len = std::min(nr, m - first);
  for (; hits; hits &= hits - 1) {
    const int64_t r = __builtin_ctz(hits), i = qp * mr + r, at = cand.at_(slice, i);
    float* top = cand.top.data_ptr<float>() + at * cand.k;
    int64_t& count = cand.count.data_ptr<int64_t>()[at];
    fold_scores(scores + r * nr, len, first, cand.k, cand.cap, margin2[i], top,
                cand.values.data_ptr<float>() + at * cand.cap,
                cand.indices.data_ptr<int64_t>() + at * cand.cap, count);
    thr[r] = fp32_threshold(top, cand.k, margin2[i], count);
  }
}

// One work item of search_fused: query panels [qp0, qp1) against bank panels [p0, p1).
void fused_item(const FusedKernel& kernel, const FusedBlocking& blocking, const float* queries,
                const float* bank, int64_t m, int64_t d, const float* norms, int64_t qp0,
                int64_t qp1, int64_t p0, int64_t p1, int64_t slice,
                const std::vector<double>& margin2, Candidates& cand, FusedScratch& s) {
  const int64_t mr = kernel.mr, nr = kernel.nr, n = cand.n, tile = mr * nr;
  for (int64_t i = qp0 * mr; i < qp1 * mr; ++i) {
    float& t = s.thr[i - qp0 * mr];
    if (i >= n) {
      t = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const int64_t at = cand.at_(slice, i);
    int64_t& count = cand.count.data_ptr<int64_t>()[at];
    if (!(margin2[i] < kInf)) count = -1;
    t = fp32_threshold(cand.top.data_ptr<float>() + at * cand.k, cand.k, margin2[i], count);
  }
  for (int64_t g0 = p0; g0 < p1; g0 += blocking.group) {
    const int64_t g1 = std::min(p1, g0 + blocking.group);
    for (int64_t t0 = 0; t0 < d; t0 += blocking.chunk) {
      const int64_t chunk = std::min(blocking.chunk, d - t0);
      const int stage = (t0 == 0 ? kFirstChunk : 0) | (t0 + chunk == d ? kLastChunk : 0);
      for (int64_t p = g0; p < g1; ++p) {
        const float* b = bank + (p * d + t0) * nr;
        float* partial = s.partial.data() + (p - g0) * (qp1 - qp0) * tile;
        for (int64_t qp = qp0; qp < qp1; ++qp) {
          float* thr = s.thr.data() + (qp - qp0) * mr;
          const uint32_t hits = kernel.tile(queries + (qp * d + t0) * mr, b, chunk,
                                            partial + (qp - qp0) * tile, stage, norms + p * nr,
                                            thr, s.scores.data());
          if (hits) fold_hits(hits, kernel, qp, p, m, slice, margin2, cand, s.scores.data(), thr);
        }
      }
    }
  }
}

// The candidate pass of a fused kernel over packed queries [N/mr][D][mr] and bank
// [M/nr][D][nr]; norms [M/nr · nr] (NaN past M). Work items are a block of query panels and a
// slice of bank panels (fused_blocking), handed out one at a time, so a thread that loses its
// core to another process delays one item, not a fixed share of the work; only the query rows
// a tile reports are folded.
void search_fused(const FusedKernel& kernel, const FusedBlocking& blocking, const float* queries,
                  const float* bank, int64_t m, int64_t d, const float* norms,
                  const std::vector<double>& margin2, Candidates& cand) {
  const int64_t mr = kernel.mr, nr = kernel.nr, slices = cand.slices;
  const int64_t query_panels = (cand.n + mr - 1) / mr, bank_panels = (m + nr - 1) / nr;
  const int64_t blocks = (query_panels + blocking.block - 1) / blocking.block;
  const int64_t items = blocks * slices;
  std::atomic<int64_t> next_item{0};
  at::parallel_for(0, std::min<int64_t>(items, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    FusedScratch s{std::vector<float>(blocking.block * mr), std::vector<float>(mr * nr),
                   std::vector<float>(blocking.group * blocking.block * mr * nr)};
    for (int64_t item = next_item++; item < items; item = next_item++) {
      const int64_t block = item / slices, slice = item % slices;
      const int64_t qp0 = block * blocking.block;
      const int64_t qp1 = std::min(query_panels, qp0 + blocking.block);
      const int64_t p0 = slice * bank_panels / slices, p1 = (slice + 1) * bank_panels / slices;
      fused_item(kernel, blocking, queries, bank, m, d, norms, qp0, qp1, p0, p1, slice, margin2,
                 cand, s);
    }
  });
}

// Re-ranks the kept rows of every query (rows[i] is the output row of query i); returns the
// queries (positions in `rows`) whose buffer overflowed in some slice.
template <typename T>
std::vector<int64_t> rerank(const T* q, const T* b, int64_t d, const std::vector<double>& margin2,
                            const Candidates& cand, const std::vector<int64_t>& rows,
                            double* out_dist, int64_t* out_index) {
  const int64_t n = cand.n, k = cand.k, cap = cand.cap;
  const float* top = cand.top.data_ptr<float>();
  const float* values = cand.values.data_ptr<float>();
  const int64_t* indices = cand.indices.data_ptr<int64_t>();
  const int64_t* count = cand.count.data_ptr<int64_t>();
  std::vector<char> overflow(n, 0);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double bound = kInf;
      for (int64_t s = 0; s < cand.slices; ++s) {
        if (count[cand.at_(s, i)] < 0) overflow[i] = 1;
        bound = std::min(bound, double(top[cand.at_(s, i) * k + k - 1]));
      }
      if (overflow[i]) continue;
      const double thr = bound + margin2[i];
      double* best = out_dist + rows[i] * k;
      int64_t* best_index = out_index + rows[i] * k;
      std::fill(best, best + k, kInf);
      std::fill(best_index, best_index + k, std::numeric_limits<int64_t>::max());
      for (int64_t s = 0; s < cand.slices; ++s) {
        const int64_t at = cand.at_(s, i);
        for (int64_t c = 0; c < count[at]; ++c) {
          if (!(double(values[at * cap + c]) <= thr)) continue;
          const int64_t j = indices[at * cap + c];
          const double sq = canonical_distance(q + i * d, b + j * d, d);
          if (better(sq, j, best[k - 1], best_index[k - 1])) insert_sorted(best, best_index, k, sq, j);
        }
      }
    }
  });
  std::vector<int64_t> left;
  for (int64_t i = 0; i < n; ++i)
    if (overflow[i]) left.push_back(i);
  return left;
}

// Exact scan of the whole bank for the given queries (rows of the output).
template <typename T>
void exact_scan(const T* q, const T* b, int64_t m, int64_t d, int64_t k,
                const std::vector<int64_t>& rows, double* out_dist, int64_t* out_index) {
  at::parallel_for(0, static_cast<int64_t>(rows.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = rows[r];
      double* best = out_dist + i * k;
      int64_t* best_index = out_index + i * k;
      std::fill(best, best + k, kInf);
      std::fill(best_index, best_index + k, std::numeric_limits<int64_t>::max());
      for (int64_t j = 0; j < m; ++j) {
        const double sq = canonical_distance(q + i * d, b + j * d, d);
        if (better(sq, j, best[k - 1], best_index[k - 1])) insert_sorted(best, best_index, k, sq, j);
      }
    }
  });
}

// Centring and norms shared by the candidate tiers (knn_common.h): the GEMM sees q − c and
// b − c, with c the bank mean when the caller gave no norms (else c = 0 and the given norms).
struct Prepared {
  std::optional<at::Tensor> centre;  // [D] in the input dtype
  at::Tensor norms;                  // [M] fp32 |b − c|²
  std::vector<double> q_norm;        // [N] |q − c|
  double b_norm;                     // >= max |b − c|
};

// Σ_t (double(x_it) − double(c_t))² for each row i (c = 0 when centre is null), in fp64:
// one pass over x, no temporary copies of it.
template <typename T>
std::vector<double> centred_sq_norms(const T* x, int64_t rows, int64_t d, const T* centre) {
  std::vector<double> out(rows);
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* row = x + i * d;
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < d; ++t) {
        const double diff = double(row[t]) - (centre ? double(centre[t]) : 0.0);
        sum += diff * diff;
      }
      out[i] = sum;
    }
  });
  return out;
}

// Rows summed into one fp64 partial of column_mean.
constexpr int64_t kMeanRows = 2048;

// The column means of x [rows, d] in fp64: fp64 sums over fixed blocks of kMeanRows rows, added
// in block order (so the same for every thread count), divided by rows; one pass over x.
template <typename T>
at::Tensor column_mean(const T* x, int64_t rows, int64_t d) {
  const int64_t blocks = (rows + kMeanRows - 1) / kMeanRows;
  std::vector<double> part(blocks * d, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      double* acc = part.data() + block * d;
      for (int64_t i = block * kMeanRows; i < std::min(rows, (block + 1) * kMeanRows); ++i) {
        const T* row = x + i * d;
#pragma omp simd
        for (int64_t t = 0; t < d; ++t) acc[t] += double(row[t]);
      }
    }
  });
  at::Tensor mean = at::zeros({d}, at::TensorOptions().dtype(at::kDouble));
  double* out = mean.data_ptr<double>();
  for (int64_t block = 0; block < blocks; ++block)
    for (int64_t t = 0; t < d; ++t) out[t] += part[block * d + t];
  for (int64_t t = 0; t < d; ++t) out[t] /= static_cast<double>(rows);
  return mean;
}

template <typename T>
Prepared prepare(const at::Tensor& query, const at::Tensor& bank,
                 const std::optional<at::Tensor>& bank_sq_norms) {
  Prepared p;
  const int64_t n = query.size(0), m = bank.size(0), d = bank.size(1);
  if (bank_sq_norms.has_value()) {
    p.norms = bank_sq_norms->to(at::kFloat).contiguous();
  } else {
    p.centre = column_mean(bank.data_ptr<T>(), m, d).to(bank.scalar_type()).contiguous();
    const std::vector<double> norms =
        centred_sq_norms(bank.data_ptr<T>(), m, d, p.centre->data_ptr<T>());
    p.norms = at::empty({m}, bank.options().dtype(at::kFloat));
    float* out = p.norms.data_ptr<float>();
    for (int64_t j = 0; j < m; ++j) out[j] = static_cast<float>(norms[j]);
  }
  const T* centre = p.centre ? p.centre->data_ptr<T>() : nullptr;
  p.q_norm = centred_sq_norms(query.data_ptr<T>(), n, d, centre);
  for (double& v : p.q_norm) v = std::sqrt(v);
  // n̂ >= (1 − γ)|b − c|² (knn_common.h), so |b − c| <= sqrt(max n̂ / (1 − γ)); a NaN norm
  // makes every margin infinite (the exact scan answers).
  const double da = static_cast<double>(d) * 2.384185791015625e-07;
  const double max_norm = p.norms.max().item<double>();
  p.b_norm = da < 0.5 ? std::sqrt(max_norm / (1 - da / (1 - da))) * (1 + 1e-15) : kInf;
  return p;
}

// The candidate pass of one tier over the picked queries (GEMM tiles or a fused kernel).
template <typename T>
Candidates tier_candidates(CpuKernel kernel, const at::Tensor& picked, const at::Tensor& bank,
                           const Prepared& prep, int64_t k, const std::vector<double>& margin2) {
  const int64_t n = picked.size(0), m = bank.size(0), d = bank.size(1);
  const float* norms = prep.norms.data_ptr<float>();
  if (kernel == CpuKernel::kGemm || kernel == CpuKernel::kBf16Gemm) {
    const bool bf16 = kernel == CpuKernel::kBf16Gemm;
    const auto gemm_type = bf16 ? at::kBFloat16 : at::kFloat;
    const at::Tensor q_gemm = (prep.centre ? picked - *prep.centre : picked).to(gemm_type).contiguous();
    const at::Tensor b_gemm = (prep.centre ? bank - *prep.centre : bank).to(gemm_type).contiguous();
    const int64_t blocks = (n + kQueryBlock - 1) / kQueryBlock;
    Candidates cand(n, k, bank_slices(blocks, at::get_num_threads(), m, std::max(kBankTile, k)));
    if (bf16) {
      search_candidates<at::BFloat16>(q_gemm, b_gemm, norms, margin2, cand);
    } else {
      search_candidates<float>(q_gemm, b_gemm, norms, margin2, cand);
    }
    return cand;
  }
  const FusedKernel fused = fused_kernel(kernel);
  const T* centre = prep.centre ? prep.centre->data_ptr<T>() : nullptr;
  const at::Tensor q_packed = pack_panels<T>(picked.data_ptr<T>(), n, d, centre, fused.mr);
  const at::Tensor b_packed = pack_panels<T>(bank.data_ptr<T>(), m, d, centre, fused.nr);
  const int64_t panels = b_packed.size(0);
  at::Tensor padded = at::full({panels * fused.nr}, std::numeric_limits<float>::quiet_NaN(),
                               prep.norms.options());
  padded.narrow(0, 0, m).copy_(prep.norms);
  const FusedBlocking blocking = fused_blocking(fused, q_packed.size(0), d, at::get_num_threads());
  const int64_t blocks = (q_packed.size(0) + blocking.block - 1) / blocking.block;
  const int64_t min_panels = (std::max(kBankTile, k) + fused.nr - 1) / fused.nr;
  Candidates cand(n, k, bank_slices(blocks, at::get_num_threads(), panels, min_panels));
  search_fused(fused, blocking, q_packed.data_ptr<float>(), b_packed.data_ptr<float>(), m, d,
               padded.data_ptr<float>(), margin2, cand);
  return cand;
}

// One candidate tier for the queries `rows` of `query`; returns the rows left to the next tier.
template <typename T>
std::vector<int64_t> candidate_tier(const at::Tensor& query, const at::Tensor& bank,
                                    const Prepared& prep, int64_t k, CpuKernel kernel,
                                    const std::vector<int64_t>& rows, double* out_dist,
                                    int64_t* out_index) {
  const int64_t n = rows.size(), d = bank.size(1);
  const bool bf16 = kernel == CpuKernel::kBf16Gemm;
  // bf16: round to nearest even, 2^-9, doubled to cover the fp32 centring before it; fp32:
  // exact unless centred or rounded from fp64 (2^-24 each). A fused kernel's result is its
  // fp32 accumulator (u_out = 0), as is an fp32 GEMM's.
  const bool exact_inputs = !bf16 && query.scalar_type() == at::kFloat && !prep.centre;
  const GemmRounding rounding{bf16 ? 0x1p-8 : (exact_inputs ? 0.0 : 0x1p-23), bf16 ? 0x1p-8 : 0.0};
  std::vector<double> margin2(n);
  for (int64_t i = 0; i < n; ++i) {
    margin2[i] = 2 * candidate_margin(rounding, d, prep.q_norm[rows[i]], prep.b_norm);
  }
  const at::Tensor picked =
      (n == query.size(0) ? query
                          : query.index_select(0, at::tensor(rows, query.options().dtype(at::kLong))))
          .contiguous();
  const Candidates cand = tier_candidates<T>(kernel, picked, bank, prep, k, margin2);
  std::vector<int64_t> left = rerank<T>(picked.data_ptr<T>(), bank.data_ptr<T>(), d, margin2,
                                        cand, rows, out_dist, out_index);
  for (auto& i : left) i = rows[i];
  return left;
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& query_in, const at::Tensor& bank_in,
                                           int64_t k,
                                           const std::optional<at::Tensor>& bank_sq_norms,
                                           c10::string_view precision_name) {
  check_knn_args(query_in, bank_in, k, bank_sq_norms);
  TORCH_CHECK(query_in.scalar_type() == at::kFloat || query_in.scalar_type() == at::kDouble,
              "knn (CPU): query and bank must be float32 or float64, got ",
              query_in.scalar_type());
  parse_precision(std::string(precision_name), /*cuda=*/false);  // rejects a bad name
  const std::string name(precision_name);
  const CpuKernel first = first_cpu_kernel(name.c_str());
  const CpuKernel second = fp32_cpu_kernel();
  const at::Tensor query = query_in.contiguous(), bank = bank_in.contiguous();
  const int64_t n = query.size(0), m = bank.size(0), d = bank.size(1);
  at::Tensor dist64 = at::empty({n, k}, query.options().dtype(at::kDouble));
  at::Tensor index = at::empty({n, k}, query.options().dtype(at::kLong));
  if (n == 0) return {dist64.to(query.scalar_type()), index};

  Prepared prep;
  std::vector<int64_t> rows(n);
  std::iota(rows.begin(), rows.end(), 0);
  double* out_dist = dist64.data_ptr<double>();
  int64_t* out_index = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cpu", [&] {
    prep = prepare<scalar_t>(query, bank, bank_sq_norms);
    rows = candidate_tier<scalar_t>(query, bank, prep, k, first, rows, out_dist, out_index);
    if (!rows.empty() && first == CpuKernel::kBf16Gemm) {
      rows = candidate_tier<scalar_t>(query, bank, prep, k, second, rows, out_dist, out_index);
    }
    exact_scan<scalar_t>(query.data_ptr<scalar_t>(), bank.data_ptr<scalar_t>(), m, d, k, rows,
                         out_dist, out_index);
  });
  return {dist64.sqrt_().to(query.scalar_type()), index};
}

// Greedy k-center: each step adds the row farthest from the chosen set, on the canonical fp64
// squared distance, the running fp64 minimum per row and the argmax (ties to the lower index),
// exactly as the CUDA kernel does. Rows that the newest centre c provably cannot bring closer
// are not read: a lower bound on d(i, c) comes from a projection y = P (x - mu) onto the top k
// principal directions (rows of P orthonormal, so |P v| <= |v|), kept in fp64 ([M, k], a few
// bytes per row instead of D).
//
// Row i with stored minimum R (0 < R, 2^-900 <= R < inf) is skipped when
//   p >= (sqrt(R) (1 + eta) + slack)^2,   p = computed |y_i - y_c|^2,  eta = 1e-6
// (p over the first components only is a bound too: the rows of P are orthonormal).
// Why min(R, canonical(i, c)) == R then: each computed y has an error of norm at most
// E = sqrt(k) (D + 2) 2^-53 max_j |x_j - mu| (one rounding of x - mu, then a dot product;
// |P_row| = 1, Cauchy-Schwarz), p has a relative error <= (k + 2) 2^-53, and |P|_2^2 <= 1 + k tau
// (Gershgorin) with tau <= 1e-9 the largest entry of |P P^T - I|, checked. With slack = 4 E, in exact arithmetic d(i, c) >= |P (x_i -
// c)| / |P|_2 >= sqrt(R) (1 + eta / 2). The canonical squared distance over D terms is within
// a relative eps <= (D/32 + 8) 2^-52 of the exact one (nonnegative terms, every difference and
// square rounded once, at most D/32 + 5 additions on any path) plus an absolute D 2^-1074 from
// underflow, both far below eta R for D <= 2048 and R >= 2^-900; so canonical(i, c) > R.
// Rows with R <= 0 (chosen rows hold -1, a duplicate of a centre holds 0) are skipped too:
// canonical distances are >= 0. Rows with R = +inf or R < 2^-900 are always read. The pruning is
// set up only where it can pay (M >= 256, n >= 16, D <= 2048) and all features are finite.
constexpr double kPruneEta = 1e-6;
constexpr double kPruneMinSquare = 0x1p-900;

struct KcenterBest {
  double value;
  int64_t index;
  void fold(double v, int64_t i) {
    if (v > value || (v == value && i < index)) {
      value = v;
      index = i;
    }
  }
};

struct KcenterProjection {
  at::Tensor y;  // [M, k] fp64, or undefined: no pruning
  int64_t k = 0;
  double slack = 0.0;
};

// The projection of the rows onto the top k principal directions of (a sample of) the rows.
KcenterProjection kcenter_projection(const at::Tensor& features, int64_t n) {
  const int64_t m = features.size(0), d = features.size(1);
  KcenterProjection proj;
  if (m < 256 || n < 16 || d > 2048) return proj;
  const int64_t k = std::clamp<int64_t>(d / 4, 1, 32);
  const at::Tensor x = features.to(at::kDouble);
  const at::Tensor mu = x.mean(0);
  const at::Tensor centred = x - mu;
  const at::Tensor sample = centred.slice(0, 0, m, std::max<int64_t>(1, m / 8192));
  const at::Tensor covariance = sample.t().mm(sample);
  if (!covariance.isfinite().all().item<bool>()) return proj;
  const at::Tensor vectors = std::get<1>(at::linalg_eigh(covariance));
  const at::Tensor p = vectors.slice(1, d - k, d).t().contiguous();  // [k, D], orthonormal rows
  const double tau = (p.mm(p.t()) - at::eye(k, p.options())).abs().max().item<double>();
  const double max_norm = centred.norm(2, 1).max().item<double>();
  at::Tensor y = centred.mm(p.t()).contiguous();
  if (!(tau <= 1e-9) || !std::isfinite(max_norm) || !y.isfinite().all().item<bool>()) return proj;
  proj.y = y;
  proj.k = k;
  proj.slack = 4.0 * std::sqrt(double(k)) * double(d + 2) * 0x1p-53 * max_norm * (1.0 + 1e-3);
  return proj;
}

// Whether row i's minimum r2 provably stays as it is for the centre whose projection is yc. The
// squared projected distance grows with every component, so it stops at the first 8-component
// group that reaches (sqrt(r2) (1 + eta) + slack)^2 (its rounding, 4 ulps, is far below eta).
inline bool kcenter_skip(double r2, const double* yi, const double* yc, int64_t k, double slack) {
  if (r2 <= 0.0) return true;
  if (!(r2 >= kPruneMinSquare && r2 < kInf)) return false;
  const double bound = std::sqrt(r2) * (1.0 + kPruneEta) + slack;
  const double target = bound * bound;
  double p = 0.0;
  for (int64_t j0 = 0; j0 < k; j0 += 8) {
    const int64_t j1 = std::min(k, j0 + 8);
    for (int64_t j = j0; j < j1; ++j) {
      const double diff = yi[j] - yc[j];
      p += diff * diff;
    }
    if (p >= target) return true;
  }
  return false;
}

// Where few rows are skipped (features with a flat spectrum) the checks cost more than they save:
// a step with checks that took longer than the latest step without them (step 0 is one: no row
// has a minimum yet) is followed by `backoff` steps without checks, the backoff doubling up to
// 64 while that lasts. Timing only decides which rows are read, never what any step picks.
template <typename T>
void kcenter_steps(const T* x, int64_t m, int64_t d, int64_t n, int64_t start,
                   const KcenterProjection& proj, int64_t* sel) {
  std::vector<double> min_dist(m, kInf);
  const double* y = proj.y.defined() ? proj.y.data_ptr<double>() : nullptr;
  const int64_t k = proj.k;
  const int threads = at::get_num_threads();
  std::vector<KcenterBest> part(threads);
  // a thread gets at least ~256K multiply-adds per step (unpruned), or the step runs on one thread
  const int64_t grain = std::max<int64_t>(256, (int64_t(1) << 18) / d);
  int64_t centre = start, pause = 1, backoff = 1;
  double plain_seconds = kInf;
  for (int64_t step = 0; step < n; ++step) {
    sel[step] = centre;
    min_dist[centre] = -1.0;  // chosen rows are never chosen again
    if (step + 1 == n) break;
    std::fill(part.begin(), part.end(), KcenterBest{-2.0, m});
    const auto began = std::chrono::steady_clock::now();
    const T* c = x + centre * d;
    const double* yc = (y && pause == 0) ? y + centre * k : nullptr;
    at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
      KcenterBest best{-2.0, m};
      for (int64_t i = begin; i < end; ++i) {
        double r = min_dist[i];
        if (!(yc && kcenter_skip(r, y + i * k, yc, k, proj.slack))) {
          r = std::min(r, canonical_distance(x + i * d, c, d));
          min_dist[i] = r;
        }
        if (r > best.value) best = KcenterBest{r, i};
      }
      part[at::get_thread_num()].fold(best.value, best.index);
    });
    KcenterBest best{-2.0, m};
    for (const KcenterBest& p : part) best.fold(p.value, p.index);
    centre = best.index;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    if (!yc) {
      plain_seconds = seconds;
      pause = std::max<int64_t>(0, pause - 1);
    } else if (seconds > plain_seconds) {
      pause = backoff;
      backoff = std::min<int64_t>(2 * backoff, 64);
    } else {
      backoff = 1;
    }
  }
}

at::Tensor kcenter_coreset_cpu(const at::Tensor& features_in, int64_t n, int64_t start) {
  check_coreset_args(features_in, n, start);
  TORCH_CHECK(features_in.scalar_type() == at::kFloat || features_in.scalar_type() == at::kDouble,
              "kcenter_coreset (CPU): features must be float32 or float64, got ",
              features_in.scalar_type());
  const at::Tensor features = features_in.contiguous();
  at::Tensor selected = at::empty({n}, features.options().dtype(at::kLong));
  const KcenterProjection projection = kcenter_projection(features, n);
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "kcenter_coreset_cpu", [&] {
    kcenter_steps<scalar_t>(features.data_ptr<scalar_t>(), features.size(0), features.size(1), n,
                            start, projection, selected.data_ptr<int64_t>());
  });
  return selected;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CPU, m) {
  m.impl("knn", &knn_cpu);
  m.impl("kcenter_coreset", &kcenter_coreset_cpu);
}

}  // namespace fastad::knn
