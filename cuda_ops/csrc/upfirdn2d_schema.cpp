// Schema of upfirdn2d; the kernels register per device in upfirdn2d_{cpu,cuda}.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(styledeck, m) {
    // f is 2-D [fh, fw]; the Python wrapper runs a separable 1-D filter as two passes. Its gradient
    // is upfirdn2d again (up and down swapped, filter flipped), so every order of derivative is.
    m.def("upfirdn2d(Tensor x, Tensor f, int upx, int upy, int downx, int downy, int padx0, int padx1, "
          "int pady0, int pady1, bool flip_filter, float gain) -> Tensor");
}
