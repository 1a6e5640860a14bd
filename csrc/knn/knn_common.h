// Argument checks and small helpers shared by the CPU and CUDA k-NN kernels.
#pragma once
#include <ATen/ATen.h>

namespace fastad::knn {

inline void check_knn_args(const at::Tensor& query, const at::Tensor& bank, int64_t k,
                           const std::optional<at::Tensor>& bank_sq_norms) {
  TORCH_CHECK(query.dim() == 2, "knn: query must be [N, D], got shape ", query.sizes());
  TORCH_CHECK(bank.dim() == 2, "knn: bank must be [M, D], got shape ", bank.sizes());
  TORCH_CHECK(query.size(1) == bank.size(1), "knn: query has D=", query.size(1),
              " but bank has D=", bank.size(1));
  TORCH_CHECK(bank.size(0) > 0, "knn: bank must not be empty");
  TORCH_CHECK(bank.size(1) > 0, "knn: embeddings must have D >= 1");
  TORCH_CHECK(k >= 1 && k <= bank.size(0), "knn: k must be in [1, M=", bank.size(0), "], got ", k);
  TORCH_CHECK(query.scalar_type() == bank.scalar_type(), "knn: query and bank dtypes differ (",
              query.scalar_type(), " vs ", bank.scalar_type(), ")");
  TORCH_CHECK(query.device() == bank.device(), "knn: query and bank are on different devices");
  if (bank_sq_norms.has_value()) {
    const auto& norms = *bank_sq_norms;
    TORCH_CHECK(norms.dim() == 1 && norms.size(0) == bank.size(0),
                "knn: bank_sq_norms must be [M=", bank.size(0), "], got shape ", norms.sizes());
    TORCH_CHECK(norms.scalar_type() == bank.scalar_type() && norms.device() == bank.device(),
                "knn: bank_sq_norms must match bank's dtype and device");
  }
}

inline at::Tensor squared_norms(const at::Tensor& bank,
                                const std::optional<at::Tensor>& bank_sq_norms) {
  if (bank_sq_norms.has_value()) return bank_sq_norms->contiguous();
  return bank.mul(bank).sum(1);
}

inline void check_coreset_args(const at::Tensor& features, int64_t n, int64_t start) {
  TORCH_CHECK(features.dim() == 2, "kcenter_coreset: features must be [M, D], got shape ",
              features.sizes());
  const int64_t m = features.size(0);
  TORCH_CHECK(features.size(1) > 0, "kcenter_coreset: features must have D >= 1");
  TORCH_CHECK(n >= 1 && n <= m, "kcenter_coreset: n must be in [1, M=", m, "], got ", n);
  TORCH_CHECK(start >= 0 && start < m, "kcenter_coreset: start must be in [0, M=", m, "), got ",
              start);
}

// Number of bank slices to search independently so that `work_items` query blocks keep
// `workers` busy; each slice must hold at least `min_rows` bank rows.
inline int64_t bank_slices(int64_t query_blocks, int64_t workers, int64_t bank_rows,
                           int64_t min_rows) {
  const int64_t wanted = (workers + query_blocks - 1) / query_blocks;
  const int64_t most = std::max<int64_t>(1, bank_rows / min_rows);
  return std::max<int64_t>(1, std::min(wanted, most));
}

}  // namespace fastad::knn
