// Schemas of the k-nearest-neighbour operators; kernels: knn.cpp (CPU), knn_cuda.cu (CUDA).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastad, m) {
  // dist [N, k] ascending exact Euclidean distances, index [N, k] int64; bank_sq_norms [M]
  // optional precomputed |bank|² (an fp32 sum of squares); precision: the candidate GEMM's
  // ("auto", "fp32", "bf16", or "tf32" on CUDA); the result is exact for every choice.
  m.def("knn(Tensor query, Tensor bank, int k, Tensor? bank_sq_norms=None, str precision=\"auto\") -> (Tensor dist, Tensor index)");
  // index [n] int64 of a greedy k-center coreset of features [M, D], starting from row `start`.
  m.def("kcenter_coreset(Tensor features, int n, int start) -> Tensor");
}
