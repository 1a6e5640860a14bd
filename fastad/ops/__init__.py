"""fastad's operators. Each checks its arguments, then runs the compiled CPU/CUDA kernel or,
under fastad.set_backend("reference"), the pure-PyTorch reference in fastad.ops.reference.

Dtypes, one rule for every op: tensors are float32 or float64 (float64 on CUDA where the op's
docstring says so) on every device; a float16/bfloat16 tensor is refused with a TypeError naming
the argument. Inside torch.autocast, low-precision arguments are cast to float32 first and the op
computes in float32 (partial_conv2d's convolution itself follows autocast, as nn.Conv2d does).
"""
from fastad.ops import reference
from fastad.ops.gmm import NotPositiveDefiniteError, gmm_energy, gmm_from_sklearn, gmm_log_prob, gmm_params, gmm_scale_tril
from fastad.ops.knn import KNN_CPU_KERNELS, kcenter_coreset, knn, knn_cpu_kernels, knn_cpu_peak
from fastad.ops.partial_conv import partial_conv2d, partial_conv_coverage, partial_conv_renormalize
from fastad.ops.upsample import PatchGrid, gaussian_blur, gaussian_upsample, idw_upsample, patch_average

__all__ = [
    "reference",
    "knn", "kcenter_coreset", "knn_cpu_kernels", "knn_cpu_peak", "KNN_CPU_KERNELS",
    "gmm_log_prob", "gmm_params", "gmm_energy", "gmm_scale_tril", "gmm_from_sklearn", "NotPositiveDefiniteError",
    "PatchGrid", "gaussian_upsample", "patch_average", "idw_upsample", "gaussian_blur",
    "partial_conv2d", "partial_conv_coverage", "partial_conv_renormalize",
]
