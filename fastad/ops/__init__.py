"""fastad's operators. Each checks its arguments, then runs the compiled CPU/CUDA kernel or,
under fastad.set_backend("reference"), the pure-PyTorch reference in fastad.ops.reference."""
from fastad.ops import reference
from fastad.ops.gmm import NotPositiveDefiniteError, gmm_energy, gmm_from_sklearn, gmm_log_prob, gmm_params, gmm_scale_tril
from fastad.ops.knn import kcenter_coreset, knn

__all__ = ["knn", "kcenter_coreset", "reference", "gmm_log_prob", "gmm_params", "gmm_energy", "gmm_scale_tril",
           "gmm_from_sklearn", "NotPositiveDefiniteError"]
