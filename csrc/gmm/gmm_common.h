// Argument checks and helpers shared by the CPU and CUDA Gaussian-mixture kernels.
#pragma once
#include <ATen/ATen.h>

#include <cmath>

namespace fastad::gmm {

inline void check_gmm_args(const char* op, const at::Tensor& z, const at::Tensor& log_phi,
                           const at::Tensor& mu, const at::Tensor& scale_tril) {
  TORCH_CHECK(z.dim() == 2, op, ": z must be [N, D], got shape ", z.sizes());
  TORCH_CHECK(log_phi.dim() == 1, op, ": log_phi must be [K], got shape ", log_phi.sizes());
  const int64_t k = log_phi.size(0), d = z.size(1);
  TORCH_CHECK(k >= 1, op, ": the mixture needs K >= 1 components");
  TORCH_CHECK(d >= 1, op, ": z must have D >= 1 features");
  TORCH_CHECK(mu.dim() == 2 && mu.size(0) == k && mu.size(1) == d, op, ": mu must be [K=", k,
              ", D=", d, "], got shape ", mu.sizes());
  TORCH_CHECK(scale_tril.dim() == 3 && scale_tril.size(0) == k && scale_tril.size(1) == d &&
                  scale_tril.size(2) == d,
              op, ": scale_tril must be [K=", k, ", D=", d, ", D=", d, "], got shape ",
              scale_tril.sizes());
  for (const at::Tensor* t : {&log_phi, &mu, &scale_tril}) {
    TORCH_CHECK(t->scalar_type() == z.scalar_type(), op,
                ": z, log_phi, mu and scale_tril must share one dtype");
    TORCH_CHECK(t->device() == z.device(), op,
                ": z, log_phi, mu and scale_tril must be on one device");
  }
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, op,
              ": tensors must be float32 or float64, got ", z.scalar_type());
}

inline void check_backward_args(const at::Tensor& grad, const at::Tensor& z,
                                const at::Tensor& log_phi, const at::Tensor& result,
                                bool per_component) {
  const int64_t n = z.size(0), k = log_phi.size(0);
  const bool shaped = per_component ? (grad.dim() == 2 && grad.size(0) == n && grad.size(1) == k)
                                    : (grad.dim() == 1 && grad.size(0) == n);
  TORCH_CHECK(shaped, "gmm_log_prob_backward: grad must have the forward output's shape, got ",
              grad.sizes());
  TORCH_CHECK(result.sizes() == grad.sizes(),
              "gmm_log_prob_backward: result must have the forward output's shape, got ",
              result.sizes());
  for (const at::Tensor* t : {&grad, &result}) {
    TORCH_CHECK(t->scalar_type() == z.scalar_type() && t->device() == z.device(),
                "gmm_log_prob_backward: grad and result must match z's dtype and device");
  }
}

// Per component: log φ_k − Σ_i log L_k,ii − (D/2) log 2π, in float64 -> [K] of z's dtype.
inline at::Tensor component_constants(const at::Tensor& log_phi, const at::Tensor& scale_tril) {
  const int64_t d = scale_tril.size(1);
  const double half_d_log_2pi = 0.5 * static_cast<double>(d) * std::log(2.0 * M_PI);
  at::Tensor log_det = scale_tril.diagonal(0, 1, 2).to(at::kDouble).log().sum(1);
  return (log_phi.to(at::kDouble) - log_det - half_d_log_2pi).to(log_phi.scalar_type());
}

// The parameter gradients from the backward kernels' per-component sums [K, D·D + D + 1]
// (∂/∂L of the Mahalanobis terms, ∂/∂μ, Σ_n w_nk): (grad_log_phi, grad_mu, grad_scale_tril).
// The log-determinant adds −(Σ_n w_nk) / L_k,ii to the diagonal of ∂/∂L.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> unpack_parameter_gradients(
    const at::Tensor& sums, const at::Tensor& scale_tril) {
  const int64_t kk = scale_tril.size(0), d = scale_tril.size(1);
  at::Tensor grad_tril = sums.narrow(1, 0, d * d).reshape({kk, d, d}).tril();
  at::Tensor grad_mu = sums.narrow(1, d * d, d).contiguous();
  at::Tensor grad_log_phi = sums.select(1, d * d + d).contiguous();
  grad_tril.diagonal(0, 1, 2).sub_(grad_log_phi.unsqueeze(1) / scale_tril.diagonal(0, 1, 2));
  return {grad_log_phi, grad_mu, grad_tril};
}

}  // namespace fastad::gmm
