"""PEDENet's density-estimation (DE) network: an MLP predicting soft GMM memberships, with
running mixture parameters kept for scoring after training."""
from __future__ import annotations

import torch
from torch import nn

from fastad.ops.gmm import energy_from_params, gmm_log_prob, gmm_params, gmm_scale_tril


class GaussianMixtureHead(nn.Module):
    """MLP in_dim -> hidden... -> n_components with LeakyReLU(0.1) and a softmax (PEDENet eq. 2).

    Training: `energy(z)` estimates the mixture from the batch's memberships (eqs. 3–5) and
    returns the per-sample energy −log P(z) (eq. 6) and the covariance penalty (eq. 11); in
    training mode it also folds the batch's parameters into the running (exponential moving
    average) buffers running_phi [K], running_mu [K, D], running_sigma [K, D, D].
    Scoring: `score(z)` is −log P(z) under the running parameters.

    Args:
        in_dim: D, the embedding size.
        n_components: K.
        hidden: hidden layer widths (the paper's 128, 64, 32).
        momentum: weight of a new batch in the running parameters; the first batch replaces
            the initial values (phi = 1/K, mu = 0, sigma = I).
        eps: added to each covariance's diagonal.
    """

    def __init__(self, in_dim: int, n_components: int, hidden: tuple[int, ...] = (128, 64, 32),
                 momentum: float = 0.1, eps: float = 1e-6):
        super().__init__()
        if in_dim < 1 or n_components < 1:
            raise ValueError(f"in_dim and n_components must be >= 1, got {in_dim} and {n_components}")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LeakyReLU(0.1)]
            width = size
        layers.append(nn.Linear(width, n_components))
        self.mlp = nn.Sequential(*layers)
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_phi", torch.full((n_components,), 1.0 / n_components))
        self.register_buffer("running_mu", torch.zeros(n_components, in_dim))
        self.register_buffer("running_sigma", torch.eye(in_dim).repeat(n_components, 1, 1))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, D] -> memberships gamma [N, K] (rows sum to 1)."""
        return torch.softmax(self.mlp(z), dim=1)

    def energy(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [N, D] -> (energy [N], covariance penalty [], gamma [N, K]), differentiable in z and
        the network; updates the running parameters in training mode."""
        gamma = self(z)
        params = gmm_params(z, gamma, self.eps)
        energy, penalty = energy_from_params(z, *params)
        if self.training:
            self._update_running(*(p.detach() for p in params))
        return energy, penalty, gamma

    @torch.no_grad()
    def _update_running(self, phi: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        weight = 1.0 if int(self.num_batches_tracked) == 0 else self.momentum
        for buffer, value in ((self.running_phi, phi), (self.running_mu, mu), (self.running_sigma, sigma)):
            buffer.lerp_(value.to(buffer.dtype), weight)
        self.num_batches_tracked += 1

    def running_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, D] -> log P(z) [N] under the running parameters."""
        scale_tril = gmm_scale_tril(self.running_sigma.to(z.dtype))
        return gmm_log_prob(z, self.running_phi.to(z.dtype).log(), self.running_mu.to(z.dtype), scale_tril)

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, D] -> anomaly score −log P(z) [N] under the running parameters."""
        return -self.running_log_prob(z)
