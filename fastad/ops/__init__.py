"""fastad's operators. Each checks its arguments, then runs the compiled CPU/CUDA kernel or,
under fastad.set_backend("reference"), the pure-PyTorch reference in fastad.ops.reference."""
from fastad.ops import reference
from fastad.ops.knn import kcenter_coreset, knn
from fastad.ops.partial_conv import partial_conv2d, partial_conv_coverage, partial_conv_renormalize

__all__ = ["knn", "kcenter_coreset", "reference"]
