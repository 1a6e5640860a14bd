// Schemas of the partial-convolution operators; kernels: partial_conv.cpp (CPU),
// partial_conv_cuda.cu (CUDA). The convolution of input ⊙ mask itself is torch's own.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastad, m) {
  // coverage [B, groups, Ho, Wo]: per output position, the sum of mask [B, Cm, H, W] over the
  // Cm / groups channels of each group and the (dilated, strided, zero-padded) kernel window,
  // i.e. conv2d(mask, ones) without ever running a convolution.
  m.def("partial_conv_coverage(Tensor mask, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> Tensor");
  // raw [B, Co, Ho, Wo] = conv(input ⊙ mask) without bias; coverage [B or 1, G, Ho, Wo].
  // update_mask = clamp(coverage, 0, 1), ratio = slide_winsize / (coverage + 1e-8) · update_mask,
  // out = (raw · ratio + bias) · update_mask (raw · ratio when bias is None).
  // Returns (out [B, Co, Ho, Wo], update_mask [B or 1, G, Ho, Wo]). raw contiguous in NCHW or in
  // channels_last order is read as it is and out takes its layout; any other raw is copied to
  // NCHW first and out is NCHW. The backward's grad_raw follows grad_out the same way.
  m.def("partial_conv_renormalize(Tensor raw, Tensor coverage, Tensor? bias, float slide_winsize) "
        "-> (Tensor out, Tensor update_mask)");
  // In-place form of partial_conv_renormalize for eager mode: raw (contiguous in NCHW or
  // channels_last order) is overwritten with out; returns update_mask. Saves allocating and
  // first-touching a second output tensor.
  m.def("partial_conv_renormalize_(Tensor(a!) raw, Tensor coverage, Tensor? bias, float slide_winsize) "
        "-> Tensor update_mask");
  // grad_raw [B, Co, Ho, Wo] = grad_out · ratio (· update_mask when has_bias),
  // grad_bias [Co] = Σ_{b,h,w} grad_out · update_mask (zeros [Co] when not has_bias).
  m.def("partial_conv_renormalize_backward(Tensor grad_out, Tensor coverage, float slide_winsize, "
        "bool has_bias) -> (Tensor grad_raw, Tensor grad_bias)");
}
