// CUDA k-nearest-neighbour search and greedy k-center coreset selection.
//
// knn_candidates: one block owns 64 queries and one slice of the bank. Per 64-row bank tile it
// computes the 64x64 dot products from shared-memory tiles (4x4 per thread), turns them into
// |b|² − 2 q·b, and each warp folds 8 query rows of the tile into running top-k lists kept in
// shared memory. The N x M matrix never exists. knn_rerank then recomputes exact (q − b)²
// for every candidate of every slice and keeps the best k, ties to the lower index.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cfloat>

#include "knn_common.h"

namespace fastad::knn {
namespace {

constexpr int kTileQ = 64;
constexpr int kTileB = 64;
constexpr int kTileD = 16;
constexpr int kThreads = 256;
constexpr int kMaxK = 64;

size_t candidates_smem_bytes(int k) {
  return sizeof(float) * (2 * kTileD * kTileQ + kTileQ * (kTileB + 1) + kTileQ * k) +
         sizeof(int) * kTileQ * k;
}

// Inserts (value, index) into an ascending list of length k whose last entry is worse.
__device__ inline void insert_sorted(float* values, int* indices, int k, float value, int index) {
  int p = k - 1;
  while (p > 0 && (values[p - 1] > value || (values[p - 1] == value && indices[p - 1] > index))) {
    values[p] = values[p - 1];
    indices[p] = indices[p - 1];
    --p;
  }
  values[p] = value;
  indices[p] = index;
}

__global__ void __launch_bounds__(kThreads)
knn_candidates_kernel(const float* __restrict__ query, const float* __restrict__ bank,
                      const float* __restrict__ norms, int n, int m, int d, int k, int slices,
                      int* __restrict__ cand_indices) {
  extern __shared__ float smem[];
  float* q_tile = smem;                            // [kTileD][kTileQ]
  float* b_tile = q_tile + kTileD * kTileQ;        // [kTileD][kTileB]
  float* scores = b_tile + kTileD * kTileB;        // [kTileQ][kTileB + 1]
  float* top_values = scores + kTileQ * (kTileB + 1);  // [kTileQ][k]
  int* top_indices = reinterpret_cast<int*>(top_values + kTileQ * k);

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int lane = tid % 32, warp = tid / 32;
  const int q0 = blockIdx.x * kTileQ;
  const int slice = blockIdx.y;
  const int s0 = static_cast<int>(static_cast<long long>(slice) * m / slices);
  const int s1 = static_cast<int>(static_cast<long long>(slice + 1) * m / slices);

  for (int e = tid; e < kTileQ * k; e += kThreads) {
    top_values[e] = FLT_MAX;
    top_indices[e] = -1;
  }

  for (int b0 = s0; b0 < s1; b0 += kTileB) {
    float acc[4][4] = {};
    for (int d0 = 0; d0 < d; d0 += kTileD) {
      for (int e = tid; e < kTileD * kTileQ; e += kThreads) {
        const int r = e / kTileD, c = e % kTileD;
        const int qr = q0 + r, bc = b0 + r, dc = d0 + c;
        q_tile[c * kTileQ + r] = (qr < n && dc < d) ? query[static_cast<size_t>(qr) * d + dc] : 0.f;
        b_tile[c * kTileB + r] = (bc < s1 && dc < d) ? bank[static_cast<size_t>(bc) * d + dc] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kTileD; ++c) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          a[i] = q_tile[c * kTileQ + ty * 4 + i];
          b[i] = b_tile[c * kTileB + tx * 4 + i];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int bc = b0 + tx * 4 + j;
        scores[(ty * 4 + i) * (kTileB + 1) + tx * 4 + j] =
            bc < s1 ? norms[bc] - 2.f * acc[i][j] : FLT_MAX;
      }
    __syncthreads();

    for (int r = warp; r < kTileQ; r += kThreads / 32) {
      if (q0 + r >= n) break;
      float* values = top_values + r * k;
      int* indices = top_indices + r * k;
      const float* row = scores + r * (kTileB + 1);
      const float threshold = values[k - 1];
      const unsigned low = __ballot_sync(0xffffffffu, row[lane] < threshold);
      const unsigned high = __ballot_sync(0xffffffffu, row[lane + 32] < threshold);
      if (lane == 0) {
        for (int half = 0; half < 2; ++half) {
          unsigned bits = half ? high : low;
          while (bits) {
            const int col = half * 32 + __ffs(bits) - 1;
            bits &= bits - 1;
            const float v = row[col];
            if (v < values[k - 1]) insert_sorted(values, indices, k, v, b0 + col);
          }
        }
      }
      __syncwarp();
    }
    __syncthreads();
  }

  for (int e = tid; e < kTileQ * k; e += kThreads) {
    const int r = e / k, qr = q0 + r;
    if (qr < n) cand_indices[(static_cast<size_t>(slice) * n + qr) * k + e % k] = top_indices[e];
  }
}

// One warp per query: exact squared distances of all slices' candidates, best k kept.
__global__ void knn_rerank_kernel(const float* __restrict__ query, const float* __restrict__ bank,
                                  const int* __restrict__ cand_indices, int n, int d, int k,
                                  int slices, float* __restrict__ dist,
                                  int64_t* __restrict__ index) {
  const int warps_per_block = blockDim.x / 32;
  const int i = blockIdx.x * warps_per_block + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= n) return;
  float best[kMaxK];
  int best_index[kMaxK];
  for (int c = 0; c < k; ++c) {
    best[c] = FLT_MAX;
    best_index[c] = INT_MAX;
  }
  const float* q = query + static_cast<size_t>(i) * d;
  for (int slice = 0; slice < slices; ++slice) {
    for (int c = 0; c < k; ++c) {
      const int j = cand_indices[(static_cast<size_t>(slice) * n + i) * k + c];
      if (j < 0) continue;
      const float* b = bank + static_cast<size_t>(j) * d;
      float acc = 0.f;
      for (int t = lane; t < d; t += 32) {
        const float diff = q[t] - b[t];
        acc = fmaf(diff, diff, acc);
      }
      for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
      if (acc < best[k - 1] || (acc == best[k - 1] && j < best_index[k - 1])) {
        insert_sorted(best, best_index, k, acc, j);
      }
    }
  }
  if (lane == 0) {
    for (int c = 0; c < k; ++c) {
      dist[static_cast<size_t>(i) * k + c] = sqrtf(best[c]);
      index[static_cast<size_t>(i) * k + c] = best_index[c];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& query_in, const at::Tensor& bank_in,
                                            int64_t k,
                                            const std::optional<at::Tensor>& bank_sq_norms) {
  check_knn_args(query_in, bank_in, k, bank_sq_norms);
  TORCH_CHECK(query_in.scalar_type() == at::kFloat,
              "knn (CUDA): query and bank must be float32, got ", query_in.scalar_type());
  TORCH_CHECK(k <= kMaxK, "knn (CUDA): k must be at most ", kMaxK, ", got ", k);
  TORCH_CHECK(bank_in.size(0) < INT_MAX && query_in.size(0) < INT_MAX,
              "knn (CUDA): N and M must be below 2^31");
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = query_in.contiguous(), bank = bank_in.contiguous();
  const at::Tensor norms = squared_norms(bank, bank_sq_norms);
  const int n = query.size(0), m = bank.size(0), d = query.size(1);
  at::Tensor dist = at::empty({n, k}, query.options());
  at::Tensor index = at::empty({n, k}, query.options().dtype(at::kLong));
  if (n == 0) return {dist, index};

  const int blocks = (n + kTileQ - 1) / kTileQ;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int slices = static_cast<int>(bank_slices(blocks, 2 * sms, m, 8 * kTileB));
  at::Tensor cand_indices = at::empty({slices, n, k}, query.options().dtype(at::kInt));
  const size_t smem = candidates_smem_bytes(static_cast<int>(k));
  C10_CUDA_CHECK(cudaFuncSetAttribute(knn_candidates_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const auto stream = at::cuda::getCurrentCUDAStream();
  knn_candidates_kernel<<<dim3(blocks, slices), kThreads, smem, stream>>>(
      query.data_ptr<float>(), bank.data_ptr<float>(), norms.data_ptr<float>(), n, m, d,
      static_cast<int>(k), slices, cand_indices.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  constexpr int kRerankThreads = 128;
  const int rerank_blocks = (n + kRerankThreads / 32 - 1) / (kRerankThreads / 32);
  knn_rerank_kernel<<<rerank_blocks, kRerankThreads, 0, stream>>>(
      query.data_ptr<float>(), bank.data_ptr<float>(), cand_indices.data_ptr<int>(), n, d,
      static_cast<int>(k), slices, dist.data_ptr<float>(), index.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dist, index};
}

// --- greedy k-center coreset -------------------------------------------------------------

constexpr int kCoresetThreads = 256;
constexpr int kCoresetBlocks = 512;

struct Farthest {
  float dist;
  int index;
};

__device__ inline Farthest farther(Farthest a, Farthest b) {
  return (b.dist > a.dist || (b.dist == a.dist && b.index < a.index)) ? b : a;
}

__device__ inline Farthest warp_farthest(Farthest f) {
  for (int offset = 16; offset > 0; offset /= 2) {
    Farthest other{__shfl_xor_sync(0xffffffffu, f.dist, offset),
                   __shfl_xor_sync(0xffffffffu, f.index, offset)};
    f = farther(f, other);
  }
  return f;
}

__device__ inline Farthest block_farthest(Farthest f) {
  __shared__ Farthest per_warp[kCoresetThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  f = warp_farthest(f);
  if (lane == 0) per_warp[warp] = f;
  __syncthreads();
  f = lane < kCoresetThreads / 32 ? per_warp[lane] : Farthest{-2.f, INT_MAX};
  if (warp == 0) f = warp_farthest(f);
  return f;
}

// Reads the newest centre selected[step] from device memory (no host round trip), folds its
// distances into min_dist and writes each block's farthest row.
__global__ void __launch_bounds__(kCoresetThreads)
coreset_update_kernel(const float* __restrict__ x, int m, int d, const int64_t* selected,
                      int step, float* __restrict__ min_dist, Farthest* __restrict__ partial) {
  const int centre = static_cast<int>(selected[step]);
  const float* c = x + static_cast<size_t>(centre) * d;
  const int lane = threadIdx.x % 32;
  const int warps = kCoresetThreads / 32;
  Farthest local{-2.f, INT_MAX};
  for (int row = blockIdx.x * warps + threadIdx.x / 32; row < m; row += gridDim.x * warps) {
    const float* r = x + static_cast<size_t>(row) * d;
    float acc = 0.f;
    for (int t = lane; t < d; t += 32) {
      const float diff = r[t] - c[t];
      acc = fmaf(diff, diff, acc);
    }
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    const float updated = row == centre ? -1.f : fminf(min_dist[row], acc);
    if (lane == 0) min_dist[row] = updated;
    local = farther(local, Farthest{updated, row});
  }
  local = block_farthest(local);
  if (threadIdx.x == 0) partial[blockIdx.x] = local;
}

__global__ void __launch_bounds__(kCoresetThreads)
coreset_pick_kernel(const Farthest* __restrict__ partial, int parts, int64_t* selected, int step) {
  Farthest local{-2.f, INT_MAX};
  for (int p = threadIdx.x; p < parts; p += kCoresetThreads) local = farther(local, partial[p]);
  local = block_farthest(local);
  if (threadIdx.x == 0) selected[step + 1] = local.index;
}

at::Tensor kcenter_coreset_cuda(const at::Tensor& features_in, int64_t n, int64_t start) {
  check_coreset_args(features_in, n, start);
  TORCH_CHECK(features_in.scalar_type() == at::kFloat,
              "kcenter_coreset (CUDA): features must be float32, got ", features_in.scalar_type());
  TORCH_CHECK(features_in.size(0) < INT_MAX, "kcenter_coreset (CUDA): M must be below 2^31");
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const int m = features.size(0), d = features.size(1);
  at::Tensor selected = at::full({n}, start, features.options().dtype(at::kLong));
  at::Tensor min_dist = at::full({m}, FLT_MAX, features.options());
  const int parts = std::min(kCoresetBlocks, (m + kCoresetThreads / 32 - 1) / (kCoresetThreads / 32));
  at::Tensor partial = at::empty({parts * static_cast<int64_t>(sizeof(Farthest))},
                                 features.options().dtype(at::kByte));
  auto* partial_ptr = reinterpret_cast<Farthest*>(partial.data_ptr<uint8_t>());
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int step = 0; step + 1 < n; ++step) {
    coreset_update_kernel<<<parts, kCoresetThreads, 0, stream>>>(
        features.data_ptr<float>(), m, d, selected.data_ptr<int64_t>(), step,
        min_dist.data_ptr<float>(), partial_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    coreset_pick_kernel<<<1, kCoresetThreads, 0, stream>>>(partial_ptr, parts,
                                                           selected.data_ptr<int64_t>(), step);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return selected;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastad, CUDA, m) {
  m.impl("knn", &knn_cuda);
  m.impl("kcenter_coreset", &kcenter_coreset_cuda);
}

}  // namespace fastad::knn
