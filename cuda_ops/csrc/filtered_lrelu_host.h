// filtered_lrelu: host-side argument checks and filter preparation shared by the CPU and CUDA ops.
#pragma once

#include <torch/types.h>

#include <array>

#include "filtered_lrelu.h"

namespace styledeck {
namespace flrelu {

// Everything both passes need to know about the call, in plain numbers.
struct Call {
  int64_t planes = 0, channels = 0;
  bool sepA = true, sepB = true;  // 1-D (separable) or 2-D taps for each stage
  Axis ax{}, ay{};
  int fa_w = 1, fa_h = 1, fb_w = 1, fb_h = 1;  // tap counts of each stage's filter
};

inline std::array<int, 4> parse_padding(at::IntArrayRef padding) {
  TORCH_CHECK(padding.size() == 4, "filtered_lrelu: padding must be (x0, x1, y0, y1), got ", padding.size(), " values");
  return {static_cast<int>(padding[0]), static_cast<int>(padding[1]), static_cast<int>(padding[2]),
          static_cast<int>(padding[3])};
}

inline void check_filter(const at::Tensor& f, const char* name) {
  TORCH_CHECK(f.dim() == 1 || f.dim() == 2, "filtered_lrelu: ", name, " must be 1-D (separable) or 2-D, got ",
              f.dim(), " dims");
  TORCH_CHECK(f.numel() >= 1, "filtered_lrelu: ", name, " is empty");
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), "filtered_lrelu: ", name, " must be floating point");
}

// (width, height) of a filter; a 1-D filter has the same taps along both axes.
inline std::array<int, 2> filter_wh(const at::Tensor& f) {
  return {static_cast<int>(f.size(-1)), static_cast<int>(f.size(0))};
}

// Geometry of the forward pass for x [N, C, H, W].
inline Call forward_call(const at::Tensor& x, const at::Tensor& fu, const at::Tensor& fd, int64_t up, int64_t down,
                         at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4, "filtered_lrelu: x must be [N, C, H, W], got ", x.dim(), " dims");
  TORCH_CHECK(up >= 1 && down >= 1, "filtered_lrelu: up and down must be at least 1, got ", up, " and ", down);
  check_filter(fu, "fu");
  check_filter(fd, "fd");
  const auto p = parse_padding(padding);
  const auto wu = filter_wh(fu), wd = filter_wh(fd);
  Call c;
  c.channels = x.size(1);
  c.planes = x.size(0) * x.size(1);
  c.sepA = fu.dim() == 1;
  c.sepB = fd.dim() == 1;
  c.ax = forward_axis(static_cast<int>(x.size(3)), up, down, p[0], p[1], wu[0], wd[0]);
  c.ay = forward_axis(static_cast<int>(x.size(2)), up, down, p[2], p[3], wu[1], wd[1]);
  TORCH_CHECK(c.ax.Lout >= 1 && c.ay.Lout >= 1, "filtered_lrelu: padding leaves no output for input ", x.sizes());
  c.fa_w = wu[0]; c.fa_h = wu[1]; c.fb_w = wd[0]; c.fb_h = wd[1];
  return c;
}

// Geometry of the backward pass from the mask [N, C, Hu, Wu] of the forward's pre-activation.
inline Call backward_call(const at::Tensor& grad_y, const at::Tensor& mask, const at::Tensor& fu,
                          const at::Tensor& fd, int64_t up, int64_t down, at::IntArrayRef padding) {
  TORCH_CHECK(grad_y.dim() == 4 && mask.dim() == 4, "filtered_lrelu_backward: grad and mask must be 4-D");
  TORCH_CHECK(mask.scalar_type() == at::kByte, "filtered_lrelu_backward: mask must be uint8 (from the forward)");
  TORCH_CHECK(grad_y.size(0) == mask.size(0) && grad_y.size(1) == mask.size(1),
              "filtered_lrelu_backward: grad ", grad_y.sizes(), " does not match mask ", mask.sizes());
  check_filter(fu, "fu");
  check_filter(fd, "fd");
  const auto p = parse_padding(padding);
  const auto wu = filter_wh(fu), wd = filter_wh(fd);
  // The input size is the one whose pre-activation has the mask's size.
  const int64_t num_w = mask.size(3) - p[0] - p[1] + wu[0] - 1, num_h = mask.size(2) - p[2] - p[3] + wu[1] - 1;
  TORCH_CHECK(num_w % up == 0 && num_h % up == 0 && num_w > 0 && num_h > 0,
              "filtered_lrelu_backward: mask ", mask.sizes(), " is not a pre-activation of this op");
  Call c;
  c.channels = mask.size(1);
  c.planes = mask.size(0) * mask.size(1);
  // Backward: up stage filters with fd, down stage with fu.
  c.sepA = fd.dim() == 1;
  c.sepB = fu.dim() == 1;
  c.ax = backward_axis(static_cast<int>(num_w / up), up, down, p[0], p[1], wu[0], wd[0]);
  c.ay = backward_axis(static_cast<int>(num_h / up), up, down, p[2], p[3], wu[1], wd[1]);
  TORCH_CHECK(grad_y.size(2) == c.ay.Lin && grad_y.size(3) == c.ax.Lin, "filtered_lrelu_backward: grad ",
              grad_y.sizes(), " does not match the output size of mask ", mask.sizes());
  c.fa_w = wd[0]; c.fa_h = wd[1]; c.fb_w = wu[0]; c.fb_h = wu[1];
  return c;
}

// Effective taps E[t] = f[user_tap(reverse ? n-1-t : t, n, flip)] * gain (along every axis), as float
// (or double for double inputs), contiguous, on f's device. Only tensor ops, so CUDA-graph safe.
inline at::Tensor effective_taps(const at::Tensor& f, bool flip_filter, bool reverse, double gain,
                                 at::ScalarType dtype) {
  at::Tensor e = f.to(dtype);
  if (flip_filter == reverse) {  // user_tap runs backwards exactly when the two agree
    std::vector<int64_t> dims(static_cast<size_t>(f.dim()));
    for (int64_t i = 0; i < f.dim(); ++i) dims[static_cast<size_t>(i)] = i;
    e = e.flip(dims);
  }
  if (gain != 1.0) e = e * gain;
  return e.contiguous();
}

// Per-axis gain of the up filter: the reference scales fu by up**2 in all (up per axis when separable).
inline double up_gain(const at::Tensor& fu, int64_t up) {
  return fu.dim() == 1 ? static_cast<double>(up) : static_cast<double>(up * up);
}

}  // namespace flrelu
}  // namespace styledeck
