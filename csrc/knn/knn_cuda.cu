// CUDA k-nearest-neighbour search and greedy k-center coreset selection.
//
// knn (the bound and its proof: knn_common.h): the bank is cut into column tiles; per tile one
// cuBLAS GEMM on tensor cores (TF32 by default, BF16 or pedantic fp32 on request; on the current
// stream, whatever the global TF32 flag says) writes g = q·b for all queries into a workspace,
// and knn_select_kernel folds ŝ = |b|² − 2g into per (query, column slice) states: the slice's k
// smallest ŝ and a buffer of every row with ŝ <= (k-th smallest) + 2E, with its score. Many
// slices keep the GPU busy when there are few queries. knn_rerank_kernel then re-ranks each
// query's kept rows with the canonical fp64 distance (one block per query, a warp per row), and
// knn_exact_kernel redoes the queries whose buffer overflowed by scanning the whole bank. No step
// syncs with the host or allocates host memory, so the op runs inside CUDA graph capture.
//
// kcenter_coreset: one persistent cooperative kernel runs every greedy step; a grid-wide barrier
// separates a step's fused distance/minimum/argmax pass from the next; fp64 minima and the
// canonical distance make its picks those of the CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <math_constants.h>
#include <torch/library.h>

#include <cfloat>
#include <climits>
#include <limits>

#include "knn_common.h"

namespace fastad::knn {
namespace {

namespace cg = cooperative_groups;

constexpr unsigned kFull = 0xffffffffu;
#ifndef FASTAD_CUDA_MAX_K
#error "FASTAD_CUDA_MAX_K comes from fastad/ops/limits.py, passed by setup.py"
#endif
constexpr int kMaxK = FASTAD_CUDA_MAX_K;
constexpr int kExtraCandidates = 128;  // the candidate buffer holds k + this many rows
constexpr int kWarpThreads = 256;      // 8 warps per block in the selection/re-rank kernels
constexpr int kWarps = kWarpThreads / 32;
constexpr int64_t kWorkspaceFloats = int64_t(1) << 26;  // GEMM tile workspace, 256 MiB
constexpr int kMinSliceColumns = 256;

// The canonical fp64 squared distance of knn_common.h: lane p sums t = p, p + 32, ... without
// fused multiply-add, then an xor butterfly (h = 16 ... 1). Every lane returns the result.
__device__ inline double canonical_distance(const float* __restrict__ a,
                                            const float* __restrict__ b, int d, int lane) {
  double acc = 0.0;
  for (int t = lane; t < d; t += 32) {
    const double diff = __dsub_rn(static_cast<double>(a[t]), static_cast<double>(b[t]));
    acc = __dadd_rn(acc, __dmul_rn(diff, diff));
  }
  for (int h = 16; h >= 1; h /= 2) acc = __dadd_rn(acc, __shfl_xor_sync(kFull, acc, h));
  return isnan(acc) ? CUDART_INF : acc;
}

__device__ inline bool better(double d, int64_t j, double worst, int64_t worst_index) {
  return d < worst || (d == worst && j < worst_index);
}

// Inserts (value, index) into the ascending list of length k whose last entry is worse.
__device__ inline void insert_sorted(double* values, int64_t* indices, int k, double value,
                                     int64_t index) {
  int p = k - 1;
  while (p > 0 && (values[p - 1] > value || (values[p - 1] == value && indices[p - 1] > index))) {
    values[p] = values[p - 1];
    indices[p] = indices[p - 1];
    --p;
  }
  values[p] = value;
  indices[p] = index;
}

// fp32 squared norms |x − c|² (fp64 sums, rounded) and, optionally, fp64 norms |x − c|.
__global__ void row_norms_kernel(const float* __restrict__ x, const float* __restrict__ centre,
                                 int rows, int d, float* __restrict__ sq_out,
                                 double* __restrict__ norm_out) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const float* r = x + static_cast<size_t>(row) * d;
  double acc = 0.0;
  for (int t = lane; t < d; t += 32) {
    const double v = static_cast<double>(r[t]) - (centre ? static_cast<double>(centre[t]) : 0.0);
    acc += v * v;
  }
  for (int h = 16; h >= 1; h /= 2) acc += __shfl_xor_sync(kFull, acc, h);
  if (lane == 0) {
    if (sq_out) sq_out[row] = static_cast<float>(acc);
    if (norm_out) norm_out[row] = sqrt(acc);
  }
}

// Per query: the margin 2E of knn_common.h, and the initial candidate state of every slice.
__global__ void init_states_kernel(const double* __restrict__ q_norm,
                                   const float* __restrict__ max_norm_sq, GemmRounding rounding,
                                   int n, int d, int k, int slices, double* __restrict__ margin2,
                                   float* __restrict__ top, int* __restrict__ count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const double da = static_cast<double>(d) * 2.384185791015625e-07;
  const double b_norm = da < 0.5 ? sqrt(static_cast<double>(*max_norm_sq) / (1 - da / (1 - da))) *
                                       (1 + 1e-15)
                                 : CUDART_INF;
  const double e2 = 2 * candidate_margin(rounding, d, q_norm[i], b_norm);
  margin2[i] = e2;
  for (int s = 0; s < slices; ++s) {
    const size_t at = static_cast<size_t>(s) * n + i;
    count[at] = e2 < CUDART_INF ? 0 : -1;  // a non-finite margin: exact scan
    for (int c = 0; c < k; ++c) top[at * k + c] = CUDART_INF_F;
  }
}

// Folds one GEMM tile (columns b0 .. b0 + cols of the bank) into the candidate states. Warp w
// of the grid owns query w % n and column slice w / n of the tile.
__global__ void __launch_bounds__(kWarpThreads)
knn_select_kernel(const float* __restrict__ products, int64_t ld, const float* __restrict__ norms,
                  const double* __restrict__ margin2, int n, int k, int cap, int slices, int b0,
                  int cols, float* __restrict__ top_all, float* __restrict__ values_all,
                  int* __restrict__ indices_all, int* __restrict__ count_all) {
  __shared__ float top_smem[kWarps][kMaxK];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (w >= static_cast<int64_t>(n) * slices) return;
  const int i = static_cast<int>(w % n), s = static_cast<int>(w / n);
  const size_t at = static_cast<size_t>(s) * n + i;
  int count = count_all[at];
  if (count < 0) return;
  float* top = top_smem[warp];
  for (int c = lane; c < k; c += 32) top[c] = top_all[at * k + c];
  __syncwarp();
  float* values = values_all + at * cap;
  int* indices = indices_all + at * cap;
  const double e2 = margin2[i];
  const int c0 = static_cast<int>(static_cast<int64_t>(s) * cols / slices);
  const int c1 = static_cast<int>(static_cast<int64_t>(s + 1) * cols / slices);
  const float* row = products + static_cast<size_t>(i) * ld;
  for (int j0 = c0; j0 < c1; j0 += 32) {
    const int j = j0 + lane;
    const bool inside = j < c1;
    const float v = inside ? norms[b0 + j] - 2.f * row[j] : CUDART_INF_F;
    unsigned lower = __ballot_sync(kFull, v < top[k - 1]);
    while (lower) {  // rows below the running k-th smallest enter the top list, one by one
      const int src = __ffs(lower) - 1;
      lower &= lower - 1;
      const float x = __shfl_sync(kFull, v, src);
      if (lane == 0 && x < top[k - 1]) {
        int p = k - 1;
        while (p > 0 && top[p - 1] > x) {
          top[p] = top[p - 1];
          --p;
        }
        top[p] = x;
      }
      __syncwarp();
    }
    const double thr = static_cast<double>(top[k - 1]) + e2;
    const bool keep = inside && static_cast<double>(v) <= thr;
    const unsigned kept = __ballot_sync(kFull, keep);
    const int adding = __popc(kept);
    if (adding == 0) continue;
    if (count + adding > cap) {  // drop kept rows above the current threshold, in place
      int kept_so_far = 0;
      for (int c = 0; c < count; c += 32) {
        const bool inside_c = c + lane < count;
        const float old_v = inside_c ? values[c + lane] : 0.f;
        const int old_i = inside_c ? indices[c + lane] : 0;
        const bool stay = inside_c && static_cast<double>(old_v) <= thr;
        const unsigned staying = __ballot_sync(kFull, stay);
        if (stay) {
          const int pos = kept_so_far + __popc(staying & ((1u << lane) - 1));
          values[pos] = old_v;
          indices[pos] = old_i;
        }
        kept_so_far += __popc(staying);
        __syncwarp();
      }
      count = kept_so_far;
      if (count + adding > cap) {
        count = -1;
        break;
      }
    }
    if (keep) {
      const int pos = count + __popc(kept & ((1u << lane) - 1));
      values[pos] = v;
      indices[pos] = b0 + j;
    }
    count += adding;
    __syncwarp();  // the appended rows are visible to every lane of a later compaction
  }
  __syncwarp();
  for (int c = lane; c < k; c += 32) top_all[at * k + c] = top[c];
  if (lane == 0) count_all[at] = count;
}

// Merges the per-warp sorted lists in shared memory into dist/index row i (thread 0).
__device__ void write_best(const double (*best)[kMaxK], const int64_t (*best_index)[kMaxK], int k,
                           int i, float* dist, int64_t* index) {
  int head[kWarps] = {};
  for (int c = 0; c < k; ++c) {
    int pick = 0;
    for (int w = 1; w < kWarps; ++w) {
      if (better(best[w][head[w]], best_index[w][head[w]], best[pick][head[pick]],
                 best_index[pick][head[pick]])) {
        pick = w;
      }
    }
    dist[static_cast<size_t>(i) * k + c] = static_cast<float>(sqrt(best[pick][head[pick]]));
    index[static_cast<size_t>(i) * k + c] = best_index[pick][head[pick]];
    ++head[pick];
  }
}

// One block per query: canonical fp64 distances of the kept rows with ŝ <= T' + 2E (T' the
// smallest slice k-th), best k by (distance, index). Overflowed queries are flagged instead.
__global__ void __launch_bounds__(kWarpThreads)
knn_rerank_kernel(const float* __restrict__ query, const float* __restrict__ bank, int n, int d,
                  int k, int cap, int slices, const double* __restrict__ margin2,
                  const float* __restrict__ top_all, const float* __restrict__ values_all,
                  const int* __restrict__ indices_all, const int* __restrict__ count_all,
                  int* __restrict__ redo, float* __restrict__ dist, int64_t* __restrict__ index) {
  __shared__ double best[kWarps][kMaxK];
  __shared__ int64_t best_index[kWarps][kMaxK];
  __shared__ double thr_smem;
  const int i = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) {
    double bound = CUDART_INF;
    bool overflow = false;
    for (int s = 0; s < slices; ++s) {
      const size_t at = static_cast<size_t>(s) * n + i;
      overflow |= count_all[at] < 0;
      bound = fmin(bound, static_cast<double>(top_all[at * k + k - 1]));
    }
    thr_smem = overflow ? -CUDART_INF : bound + margin2[i];
    if (overflow) redo[i] = 1;
  }
  for (int c = lane; c < k; c += 32) {
    best[warp][c] = CUDART_INF;
    best_index[warp][c] = LLONG_MAX;
  }
  __syncthreads();
  const double thr = thr_smem;
  if (thr == -CUDART_INF) return;
  const float* q = query + static_cast<size_t>(i) * d;
  for (int s = 0; s < slices; ++s) {
    const size_t at = static_cast<size_t>(s) * n + i;
    const int count = count_all[at];
    for (int c = warp; c < count; c += kWarps) {
      if (!(static_cast<double>(values_all[at * cap + c]) <= thr)) continue;
      const int64_t j = indices_all[at * cap + c];
      const double sq = canonical_distance(q, bank + static_cast<size_t>(j) * d, d, lane);
      if (lane == 0 && better(sq, j, best[warp][k - 1], best_index[warp][k - 1])) {
        insert_sorted(best[warp], best_index[warp], k, sq, j);
      }
      __syncwarp();
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    write_best(best, best_index, k, i, dist, index);
    if (index[static_cast<size_t>(i) * k + k - 1] == LLONG_MAX) redo[i] = 1;  // never by the proof
  }
}

// One block per query: the exact scan of the whole bank for the flagged queries.
__global__ void __launch_bounds__(kWarpThreads)
knn_exact_kernel(const float* __restrict__ query, const float* __restrict__ bank, int m, int d,
                 int k, const int* __restrict__ redo, float* __restrict__ dist,
                 int64_t* __restrict__ index) {
  __shared__ double best[kWarps][kMaxK];
  __shared__ int64_t best_index[kWarps][kMaxK];
  const int i = blockIdx.x;
  if (!redo[i]) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int c = lane; c < k; c += 32) {
    best[warp][c] = CUDART_INF;
    best_index[warp][c] = LLONG_MAX;
  }
  __syncwarp();
  const float* q = query + static_cast<size_t>(i) * d;
  for (int j = warp; j < m; j += kWarps) {
    const double sq = canonical_distance(q, bank + static_cast<size_t>(j) * d, d, lane);
    if (lane == 0 && better(sq, j, best[warp][k - 1], best_index[warp][k - 1])) {
      insert_sorted(best[warp], best_index[warp], k, sq, j);
    }
    __syncwarp();
  }
  __syncthreads();
  if (threadIdx.x == 0) write_best(best, best_index, k, i, dist, index);
}

int blocks_for(int64_t warps) { return static_cast<int>((warps + kWarps - 1) / kWarps); }

// The candidate GEMM of one tile: products[i, c] = query_i · bank_{b0 + c} (column-major C of
// cuBLAS = row-major [n, ld]).
void tile_gemm(const at::Tensor& q_gemm, const at::Tensor& b_gemm, Precision precision, int b0,
               int cols, float* products, int64_t ld) {
  const int n = q_gemm.size(0), d = q_gemm.size(1);
  const float alpha = 1.f, beta = 0.f;
  const bool bf16 = precision == Precision::kBf16;
  const cudaDataType_t in_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = precision == Precision::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                      : bf16                         ? CUBLAS_COMPUTE_32F
                                                                     : CUBLAS_COMPUTE_32F_PEDANTIC;
  const size_t elem = bf16 ? 2 : 4;
  const char* b_ptr = static_cast<const char*>(b_gemm.data_ptr()) + static_cast<size_t>(b0) * d * elem;
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to the current stream
  TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, cols, n, d, &alpha, b_ptr,
                                    in_type, d, q_gemm.data_ptr(), in_type, d, &beta, products,
                                    CUDA_R_32F, static_cast<int>(ld), compute,
                                    CUBLAS_GEMM_DEFAULT));
}

std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& query_in, const at::Tensor& bank_in,
                                            int64_t k,
                                            const std::optional<at::Tensor>& bank_sq_norms,
                                            c10::string_view precision_name) {
  check_knn_args(query_in, bank_in, k, bank_sq_norms);
  TORCH_CHECK(query_in.scalar_type() == at::kFloat,
              "knn (CUDA): query and bank must be float32, got ", query_in.scalar_type());
  TORCH_CHECK(k <= kMaxK, "knn (CUDA): k must be at most ", kMaxK, ", got ", k);
  TORCH_CHECK(bank_in.size(0) < INT_MAX && query_in.size(0) < INT_MAX,
              "knn (CUDA): N and M must be below 2^31");
  const Precision precision = parse_precision(std::string(precision_name), /*cuda=*/true);
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = query_in.contiguous(), bank = bank_in.contiguous();
  const int n = query.size(0), m = bank.size(0), d = query.size(1), kk = static_cast<int>(k);
  at::Tensor dist = at::empty({n, k}, query.options());
  at::Tensor index = at::empty({n, k}, query.options().dtype(at::kLong));
  if (n == 0) return {dist, index};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto f32 = query.options();

  // Centring (on the bank mean, when the caller gave no norms) and the norms of the bound.
  std::optional<at::Tensor> centre;
  at::Tensor norms;
  if (bank_sq_norms.has_value()) {
    norms = bank_sq_norms->to(at::kFloat).contiguous();
  } else {
    centre = bank.mean({0}, false, at::kDouble).to(at::kFloat);
    norms = at::empty({m}, f32);
    row_norms_kernel<<<blocks_for(m), kWarpThreads, 0, stream>>>(
        bank.data_ptr<float>(), centre->data_ptr<float>(), m, d, norms.data_ptr<float>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor q_norm = at::empty({n}, f32.dtype(at::kDouble));
  row_norms_kernel<<<blocks_for(n), kWarpThreads, 0, stream>>>(
      query.data_ptr<float>(), centre ? centre->data_ptr<float>() : nullptr, n, d, nullptr,
      q_norm.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor max_norm_sq = norms.max();  // NaN propagates: then every query is exact
  const bool bf16 = precision == Precision::kBf16;
  const auto gemm_type = bf16 ? at::kBFloat16 : at::kFloat;
  const at::Tensor q_gemm = (centre ? query - *centre : query).to(gemm_type).contiguous();
  const at::Tensor b_gemm = (centre ? bank - *centre : bank).to(gemm_type).contiguous();
  // Rounding units (knn_common.h): TF32 2^-10 covers truncation as well as rounding, plus
  // 2^-23 for the fp32 centring before it; BF16 round-to-nearest 2^-9, doubled for the same.
  const double centring = centre ? 0x1p-23 : 0.0;
  const GemmRounding rounding{
      precision == Precision::kTf32 ? 0x1p-10 + centring : (bf16 ? 0x1p-8 : centring), 0.0};

  // Tiles of columns whose [n, cols] products fit the workspace; column slices per tile.
  const int64_t tile_cols = std::min<int64_t>(
      m, std::max<int64_t>(128, (kWorkspaceFloats / n) / 128 * 128));
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want_warps = static_cast<int64_t>(sms) * 64;
  const int slices = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((want_warps + n - 1) / n, tile_cols / kMinSliceColumns)));
  const int cap = kk + kExtraCandidates;
  at::Tensor products = at::empty({n, tile_cols}, f32);
  at::Tensor margin2 = at::empty({n}, f32.dtype(at::kDouble));
  at::Tensor top = at::empty({slices, n, k}, f32);
  at::Tensor values = at::empty({slices, n, cap}, f32);
  at::Tensor indices = at::empty({slices, n, cap}, f32.dtype(at::kInt));
  at::Tensor count = at::empty({slices, n}, f32.dtype(at::kInt));
  at::Tensor redo = at::zeros({n}, f32.dtype(at::kInt));
  init_states_kernel<<<(n + 255) / 256, 256, 0, stream>>>(
      q_norm.data_ptr<double>(), max_norm_sq.data_ptr<float>(), rounding, n, d, kk, slices,
      margin2.data_ptr<double>(), top.data_ptr<float>(), count.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t b0 = 0; b0 < m; b0 += tile_cols) {
    const int cols = static_cast<int>(std::min<int64_t>(tile_cols, m - b0));
    tile_gemm(q_gemm, b_gemm, precision, static_cast<int>(b0), cols, products.data_ptr<float>(),
              tile_cols);
    knn_select_kernel<<<blocks_for(static_cast<int64_t>(n) * slices), kWarpThreads, 0, stream>>>(
        products.data_ptr<float>(), tile_cols, norms.data_ptr<float>(), margin2.data_ptr<double>(),
        n, kk, cap, slices, static_cast<int>(b0), cols, top.data_ptr<float>(),
        values.data_ptr<float>(), indices.data_ptr<int>(), count.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  knn_rerank_kernel<<<n, kWarpThreads, 0, stream>>>(
      query.data_ptr<float>(), bank.data_ptr<float>(), n, d, kk, cap, slices,
      margin2.data_ptr<double>(), top.data_ptr<float>(), values.data_ptr<float>(),
      indices.data_ptr<int>(), count.data_ptr<int>(), redo.data_ptr<int>(), dist.data_ptr<float>(),
      index.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  knn_exact_kernel<<<n, kWarpThreads, 0, stream>>>(query.data_ptr<float>(), bank.data_ptr<float>(),
                                                   m, d, kk, redo.data_ptr<int>(),
                                                   dist.data_ptr<float>(), index.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dist, index};
}

// --- greedy k-center coreset -------------------------------------------------------------

constexpr int kCoresetThreads = 256;

struct Farthest {
  double dist;
  int index;
};

__device__ inline Farthest farther(Farthest a, Farthest b) {
  return (b.dist > a.dist || (b.dist == a.dist && b.index < a.index)) ? b : a;
}

__device__ inline Farthest warp_farthest(Farthest f) {
  for (int offset = 16; offset > 0; offset /= 2) {
    Farthest other{__shfl_xor_sync(kFull, f.dist, offset), __shfl_xor_sync(kFull, f.index, offset)};
    f = farther(f, other);
  }
  return f;
}

// The block's farthest row; every thread gets it.
__device__ inline Farthest block_farthest(Farthest f, Farthest* per_warp) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  f = warp_farthest(f);
  __syncthreads();  // per_warp may still be read from the previous call
  if (lane == 0) per_warp[warp] = f;
  __syncthreads();
  f = lane < kCoresetThreads / 32 ? per_warp[lane] : Farthest{-2.0, INT_MAX};
  return warp_farthest(f);
}

// Every greedy step in one cooperative launch. Step s: fold the canonical fp64 distance to the
// newest centre into min_dist, write each block's farthest row to partial[s % 2], grid barrier,
// then every block reduces partial[s % 2] to the same next centre (the double buffer makes the
// next step's writes safe: a block writes partial[s % 2] again only after the barrier of step
// s + 1, which every block reaches after reading it in step s).
__global__ void __launch_bounds__(kCoresetThreads)
coreset_kernel(const float* __restrict__ x, int m, int d, int n, int start,
               int64_t* __restrict__ selected, double* __restrict__ min_dist,
               Farthest* __restrict__ partial) {
  __shared__ Farthest per_warp[kCoresetThreads / 32];
  cg::grid_group grid = cg::this_grid();
  const int lane = threadIdx.x % 32;
  const int warps = kCoresetThreads / 32;
  const int64_t first_warp = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32;
  const int64_t all_warps = static_cast<int64_t>(gridDim.x) * warps;
  int centre = start;
  for (int step = 0;; ++step) {
    if (blockIdx.x == 0 && threadIdx.x == 0) selected[step] = centre;
    if (step + 1 == n) break;
    const float* c = x + static_cast<size_t>(centre) * d;
    Farthest local{-2.0, INT_MAX};
    for (int64_t row = first_warp; row < m; row += all_warps) {
      const double sq = canonical_distance(x + static_cast<size_t>(row) * d, c, d, lane);
      const double previous = min_dist[row];
      const double updated = row == centre ? -1.0 : fmin(previous, sq);  // chosen rows stay -1
      __syncwarp();
      if (lane == 0) min_dist[row] = updated;
      local = farther(local, Farthest{updated, static_cast<int>(row)});
    }
    local = block_farthest(local, per_warp);
    Farthest* part = partial + (step % 2) * gridDim.x;
    if (threadIdx.x == 0) part[blockIdx.x] = local;
    grid.sync();
    Farthest best{-2.0, INT_MAX};
    for (int p = threadIdx.x; p < static_cast<int>(gridDim.x); p += kCoresetThreads) {
      best = farther(best, part[p]);
    }
    centre = block_farthest(best, per_warp).index;
  }
}

at::Tensor kcenter_coreset_cuda(const at::Tensor& features_in, int64_t n, int64_t start) {
  check_coreset_args(features_in, n, start);
  TORCH_CHECK(features_in.scalar_type() == at::kFloat,
              "kcenter_coreset (CUDA): features must be float32, got ", features_in.scalar_type());
  TORCH_CHECK(features_in.size(0) < INT_MAX, "kcenter_coreset (CUDA): M must be below 2^31");
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const int m = features.size(0), d = features.size(1);
  const auto* props = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(props->cooperativeLaunch, "kcenter_coreset (CUDA): the device does not support "
              "cooperative launches");
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, coreset_kernel,
                                                               kCoresetThreads, 0));
  const int64_t needed = (m + kCoresetThreads / 32 - 1) / (kCoresetThreads / 32);
  int grid = static_cast<int>(std::min<int64_t>(needed,
                                                static_cast<int64_t>(per_sm) * props->multiProcessorCount));
  grid = std::max(grid, 1);
  at::Tensor selected = at::empty({n}, features.options().dtype(at::kLong));
  at::Tensor min_dist = at::full({m}, std::numeric_limits<double>::infinity(),
                                 features.options().dtype(at::kDouble));
  at::Tensor partial = at::empty({2 * grid * static_cast<int64_t>(sizeof(Farthest))},
                                 features.options().dtype(at::kByte));
  const float* x = features.data_ptr<float>();
  int start_i = static_cast<int>(start), n_i = static_cast<int>(n);
  int64_t* sel = selected.data_ptr<int64_t>();
  double* mins = min_dist.data_ptr<double>();
  auto* part = reinterpret_cast<Farthest*>(partial.data_ptr<uint8_t>());
  void* args[] = {&x, const_cast<int*>(&m), const_cast<int*>(&d), &n_i, &start_i, &sel, &mins, &part};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(coreset_kernel), grid,
                                             kCoresetThreads, args, 0,
                                             at::cuda::getCurrentCUDAStream()));
  return selected;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("knn", &knn_cuda);
  m.impl("kcenter_coreset", &kcenter_coreset_cuda);
}

}  // namespace fastad::knn
