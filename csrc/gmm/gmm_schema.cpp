// Schemas of the Gaussian-mixture operators; kernels: gmm.cpp (CPU), gmm_cuda.cu (CUDA).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastad, m) {
  // z [N, D], log_phi [K], mu [K, D], scale_tril [K, D, D] (only its lower triangle is read)
  // -> [N] log Σ_k φ_k N(z | μ_k, L_k L_kᵀ), or [N, K] log φ_k + log N(z | μ_k, L_k L_kᵀ)
  // when per_component.
  m.def("gmm_log_prob(Tensor z, Tensor log_phi, Tensor mu, Tensor scale_tril, bool per_component=False) -> Tensor");
  // grad [N] (or [N, K]) and result, the forward output -> gradients of z [N, D], log_phi [K],
  // mu [K, D], scale_tril [K, D, D] (upper triangle zero).
  m.def("gmm_log_prob_backward(Tensor grad, Tensor z, Tensor log_phi, Tensor mu, Tensor scale_tril, Tensor result, bool per_component) -> (Tensor grad_z, Tensor grad_log_phi, Tensor grad_mu, Tensor grad_scale_tril)");
}
