// Schemas of the filtered_lrelu ops (implementations: filtered_lrelu_cpu.cpp, filtered_lrelu_cuda.cu;
// fake implementations and autograd: cuda_ops/kernels/filtered_lrelu.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(styledeck, m) {
  // y = fd-downsample(clamp(lrelu(fu-upsample(x + b)) * gain)). padding is (x0, x1, y0, y1); clamp < 0 means
  // none. With write_mask the second output is the uint8 mask [N, C, Hu, Wu] of the pre-activation that
  // filtered_lrelu_backward needs; otherwise it is empty.
  m.def("filtered_lrelu(Tensor x, Tensor fu, Tensor fd, Tensor b, int up, int down, int[] padding, float gain, "
        "float slope, float clamp, bool flip_filter, bool write_mask) -> (Tensor, Tensor)");
  // dL/dx from dL/dy and the forward's mask (dL/db is its sum over N, H, W).
  m.def("filtered_lrelu_backward(Tensor grad, Tensor mask, Tensor fu, Tensor fd, int up, int down, int[] padding, "
        "float gain, float slope, bool flip_filter) -> Tensor");
}
