// filtered_lrelu: per-element arithmetic shared by the CPU (filtered_lrelu_cpu.cpp) and CUDA
// (filtered_lrelu_cuda.cu) implementations, so that the CPU tests check the kernel's index logic.
//
// The op (see cuda_ops/reference/filtered_lrelu.py) is, per axis and per (n, c) plane,
//     u = upfirdn(x + b, fu, up, pad)      zero insertion, padding, FIR (gain up per axis)
//     a = clamp(lrelu(u, slope) * gain)    pointwise
//     y = upfirdn(a, fd, down)             FIR, keep every down-th sample
// Both the forward and the backward pass are instances of one fused "up, pointwise, down" pass:
//     mid[k] = sum_i in[i] * A[i*U - k + P]          0 <= i < Lin, 0 <= i*U - k + P < FA
//     out[m] = sum_s B[s] * mid'[m*D + Q + s]        0 <= s < FB, 0 <= m*D + Q + s < Lmid
// where mid' is mid after the pointwise step. A and B are the "effective" taps: the user's filters
// flipped or not, with the gain folded in. For the backward pass the roles swap: A is fd's taps
// reversed with U = down, and B is fu's taps reversed with D = up.
#pragma once

#include <cstdint>

#include "common.h"  // SD_HOST_DEVICE, floor_div, ceil_div, imin, imax

namespace styledeck {
namespace flrelu {

// Mask codes stored per pre-activation sample by the forward pass (one byte each).
constexpr uint8_t kNegative = 0;  // u <= 0: the slope applies
constexpr uint8_t kPositive = 1;  // u > 0
constexpr uint8_t kClamped = 2;   // |lrelu(u) * gain| > clamp: no gradient

// Index into the user's filter of length n for effective tap t: FIR filters convolve, so the taps
// run backwards unless flip_filter says they are already flipped.
SD_HOST_DEVICE inline int user_tap(int t, int n, bool flip_filter) {
  return flip_filter ? t : n - 1 - t;
}

// One axis of the fused pass (see the top of this file).
struct Axis {
  int U, P, FA;      // up stage: factor, offset, taps
  int D, Q, FB;      // down stage: factor, offset, taps
  int Lin, Lmid, Lout;
};

// Length of the pre-activation signal u along one axis.
SD_HOST_DEVICE inline int mid_length(int in, int up, int pad0, int pad1, int fu) {
  return in * up + pad0 + pad1 - (fu - 1);
}

// Output length along one axis (the reference's output_size).
SD_HOST_DEVICE inline int out_length(int in, int up, int down, int pad0, int pad1, int fu, int fd) {
  return (mid_length(in, up, pad0, pad1, fu) - (fd - 1) + (down - 1)) / down;
}

// Forward: in = x + b (length `in`), mid = u, out = y.
SD_HOST_DEVICE inline Axis forward_axis(int in, int up, int down, int pad0, int pad1, int fu, int fd) {
  Axis a;
  a.U = up; a.P = pad0; a.FA = fu;
  a.D = down; a.Q = 0; a.FB = fd;
  a.Lin = in;
  a.Lmid = mid_length(in, up, pad0, pad1, fu);
  a.Lout = out_length(in, up, down, pad0, pad1, fu, fd);
  return a;
}

// Backward: in = dL/dy, mid = dL/da (then dL/du), out = dL/dx.
//   dL/da[k] = sum_m dy[m] * Bf[k - m*down]        = sum_m dy[m] * A[m*down - k + fd - 1],  A[t] = Bf[fd-1-t]
//   dL/dx[i] = sum_t Af[t] * du[i*up + pad0 - t]   = sum_s B[s] * du[i*up + pad0 - (fu-1) + s], B[s] = Af[fu-1-s]
// with Af, Bf the forward effective taps.
SD_HOST_DEVICE inline Axis backward_axis(int in, int up, int down, int pad0, int pad1, int fu, int fd) {
  const Axis f = forward_axis(in, up, down, pad0, pad1, fu, fd);
  Axis a;
  a.U = down; a.P = fd - 1; a.FA = fd;
  a.D = up; a.Q = pad0 - (fu - 1); a.FB = fu;
  a.Lin = f.Lout;
  a.Lmid = f.Lmid;
  a.Lout = in;
  return a;
}

// Up stage: inputs i in [up_first(k), up_last(k)] feed mid sample k (before clipping to [0, Lin)).
SD_HOST_DEVICE inline int up_first(const Axis& a, int k) { return ceil_div(k - a.P, a.U); }
SD_HOST_DEVICE inline int up_last(const Axis& a, int k) { return floor_div(k - a.P + a.FA - 1, a.U); }
// Effective tap joining input i to mid sample k.
SD_HOST_DEVICE inline int up_tap(const Axis& a, int i, int k) { return i * a.U - k + a.P; }

// Down stage: output m reads mid samples [down_first(m), down_first(m) + FB).
SD_HOST_DEVICE inline int down_first(const Axis& a, int m) { return m * a.D + a.Q; }

// Mid samples an output range [o0, o1) reads (not clipped to [0, Lmid)).
SD_HOST_DEVICE inline int mid_begin(const Axis& a, int o0) { return down_first(a, o0); }
SD_HOST_DEVICE inline int mid_end(const Axis& a, int o1) { return down_first(a, o1 - 1) + a.FB; }

// Mid samples whose mask the tile holding outputs [o0, o1) writes: the tiles partition [0, Lmid)
// so that every mask byte is written exactly once, including samples no output reads.
SD_HOST_DEVICE inline int owned_begin(const Axis& a, int o0) { return o0 == 0 ? 0 : down_first(a, o0); }
SD_HOST_DEVICE inline int owned_end(const Axis& a, int o1) { return o1 == a.Lout ? a.Lmid : down_first(a, o1); }

// The ranges one tile touches along one axis: outputs [o0, o1), mid samples [v0, v1) it computes
// (clipped to [0, Lmid)), inputs [i0, i1) they read (not clipped: out-of-range inputs are zeros),
// and mid samples [w0, w1) whose mask it writes (when own_mask).
struct Span {
  int o0, o1, v0, v1, i0, i1, w0, w1;
};

SD_HOST_DEVICE inline Span tile_span(const Axis& a, int o0, int o1, bool own_mask) {
  Span s;
  s.o0 = o0; s.o1 = o1;
  s.v0 = mid_begin(a, o0); s.v1 = mid_end(a, o1);
  s.w0 = 0; s.w1 = 0;
  if (own_mask) {
    s.w0 = owned_begin(a, o0); s.w1 = owned_end(a, o1);
    s.v0 = imin(s.v0, s.w0); s.v1 = imax(s.v1, s.w1);
  }
  s.v0 = imax(s.v0, 0); s.v1 = imin(s.v1, a.Lmid);
  if (s.v1 <= s.v0) {  // the tile reads no valid mid sample: its outputs are zeros
    s.v1 = s.v0; s.i0 = 0; s.i1 = 0;
  } else {
    s.i0 = up_first(a, s.v0); s.i1 = up_last(a, s.v1 - 1) + 1;
  }
  return s;
}

// Tiling of an output axis of length n into pieces of at most max_tile, as even as possible.
SD_HOST_DEVICE inline int tile_count(int n, int max_tile) { return (n + max_tile - 1) / max_tile; }
SD_HOST_DEVICE inline int tile_size(int n, int count) { return (n + count - 1) / count; }

// Leaky ReLU and gain of one pre-activation sample u: (max(u, 0) + slope * min(u, 0)) * gain, exactly
// the reference's value. Written with selects of values that are computed anyway, so that CPU loops
// vectorise (GCC keeps a conditional multiply as a branch: it could trap).
template <typename T>
SD_HOST_DEVICE inline T lrelu_gain(T u, T slope, T gain) {
  const T pos = u > T(0) ? u : T(0);
  const T neg = u > T(0) ? T(0) : u;
  return (pos + neg * slope) * gain;
}

// v clamped to [-c, c] (c >= 0); NaN stays NaN, as with torch.clamp.
template <typename T>
SD_HOST_DEVICE inline T clamp_abs(T v, T c) {
  const T lo = v < -c ? -c : v;
  return lo > c ? c : lo;
}

// Mask code of a sample with pre-activation u and activation v = lrelu_gain(u) (c < 0: no clamp).
// leaky_relu's gradient at u == 0 is the slope, as in torch.
template <typename T>
SD_HOST_DEVICE inline uint8_t mask_code(T u, T v, T c) {
  // Arithmetic, not branches: the sign of u is a coin toss, which a branch predictor cannot learn.
  const uint8_t sign = static_cast<uint8_t>(u > T(0));  // kPositive or kNegative
  const uint8_t clamped = static_cast<uint8_t>(c >= T(0)) & (static_cast<uint8_t>(v > c) | static_cast<uint8_t>(v < -c));
  return static_cast<uint8_t>(sign + clamped * (kClamped - sign));
}

// Leaky ReLU, gain and clamp of one pre-activation sample; *code receives its mask code.
template <typename T>
SD_HOST_DEVICE inline T activate(T u, T slope, T gain, T clamp, uint8_t* code) {
  const T v = lrelu_gain(u, slope, gain);
  *code = mask_code(u, v, clamp);
  return clamp >= T(0) ? clamp_abs(v, clamp) : v;
}

// d activate / du for a mask code.
template <typename T>
SD_HOST_DEVICE inline T activate_grad(uint8_t code, T slope, T gain) {
  return code == kPositive ? gain : (code == kNegative ? gain * slope : T(0));
}

}  // namespace flrelu
}  // namespace styledeck
