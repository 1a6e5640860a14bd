// Schemas of the score-map upsampling operators. Kernels: separable_ops.cpp (gaussian_upsample,
// patch_average, gaussian_blur on the shared separable engine, CPU and CUDA), idw.cpp (CPU) and
// idw_cuda.cu (CUDA). Every op is linear in its tensor input; each *_backward op applies the
// adjoint and is itself differentiable (its adjoint is the forward op).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastad, m) {
  // heatmap [B, C, h, w] -> [B, C, out_size]: every low-resolution value spreads as an
  // unnormalised Gaussian (std sigma) over the receptive_field pixels centred on stride*i + start.
  m.def("gaussian_upsample(Tensor heatmap, int[2] out_size, int receptive_field, int stride, "
        "float start, float sigma) -> Tensor");
  // grad [B, C, H, W] -> [B, C, in_size]: the adjoint of gaussian_upsample.
  m.def("gaussian_upsample_backward(Tensor grad, int[2] in_size, int receptive_field, int stride, "
        "float start, float sigma) -> Tensor");
  // scores [B, P] on the raster patch grid -> [B, out_size]: mean over the covering patches.
  m.def("patch_average(Tensor scores, int[2] patch_size, int[2] stride, int[2] image_size, "
        "int[2] out_size) -> Tensor");
  // grad [B, H, W] -> [B, P]: the adjoint of patch_average.
  m.def("patch_average_backward(Tensor grad, int[2] patch_size, int[2] stride, int[2] image_size) "
        "-> Tensor");
  // maps [B, C, H, W] -> [B, C, H, W]: separable Gaussian blur with reflect padding.
  m.def("gaussian_blur(Tensor maps, float sigma, int kernel_size) -> Tensor");
  m.def("gaussian_blur_backward(Tensor grad, float sigma, int kernel_size) -> Tensor");
  // scores [B, P] on the raster patch grid -> [B, out_size]: inverse-distance weighting.
  m.def("idw_upsample(Tensor scores, int[2] patch_size, int[2] stride, int[2] image_size, "
        "int[2] out_size, float power, float? radius) -> Tensor");
  m.def("idw_upsample_backward(Tensor grad, int[2] patch_size, int[2] stride, int[2] image_size, "
        "float power, float? radius) -> Tensor");
}
