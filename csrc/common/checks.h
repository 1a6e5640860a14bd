// Argument checks shared by the op folders: one message format for the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>

namespace fastad {

// `t` of `op` must have `dim` dimensions (described as `shape`, e.g. "[B, P]") and be float32 or
// float64.
inline void check_float(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                        const char* shape) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", shape, ", got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

}  // namespace fastad
