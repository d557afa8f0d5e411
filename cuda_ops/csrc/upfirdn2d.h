// upfirdn2d: zero-insert upsample, pad (negative crops), FIR filter, decimate, in one pass.
//
// Output pixel o along one axis reads the padded, upsampled signal at o*down + i for taps i in
// [0, taps), where padded index y holds upsampled sample u = y - pad0 and only u = k*up carries
// input sample k. So instead of multiplying zeros, each output visits just the taps that land on
// real input samples: tap0, tap0 + up, ... (see tap_range). The filter is applied as a correlation
// with the prepared kernel fk = (flip_filter ? f : f flipped) * gain, which is a convolution with f.
#pragma once

#include "common.h"

#include <ATen/ATen.h>

namespace styledeck {

struct TapRange {
    int tap0;   // first filter tap (correlation index) that meets an input sample
    int in0;    // that input sample
    int count;  // how many: taps tap0 + k*up meet inputs in0 + k, k < count
};

SD_HOST_DEVICE inline TapRange tap_range(int o, int up, int down, int pad0, int in_size, int taps) {
    const int u0 = o * down - pad0;                                   // upsampled index under tap 0
    const int in0 = imax(ceil_div(u0, up), 0);                        // first real sample at or after it
    const int in_end = imin(in_size, floor_div(u0 + taps - 1, up) + 1);  // one past the last under the taps
    TapRange r;
    r.tap0 = in0 * up - u0;
    r.in0 = in0;
    r.count = imax(in_end - in0, 0);
    return r;
}

// Along x the CPU kernel works in phases: outputs ox = r + k*S (S = up / gcd(up, down)) all see
// the same tap pattern, shifted by `step` = down / gcd input samples per k, so each tap becomes a
// unit- or small-stride loop over k that vectorises. For phase r, the first tap meeting a real
// sample and that sample (unclipped: it may lie outside the image; the caller clips k):
SD_HOST_DEVICE inline void phase_first_tap(int r, int up, int down, int pad0, int& tap0, int& in0) {
    const int u0 = r * down - pad0;  // upsampled index under tap 0 for output r
    tap0 = pos_mod(-u0, up);
    in0 = (u0 + tap0) / up;          // exact division
}

SD_HOST_DEVICE inline int gcd_int(int a, int b) {
    while (b != 0) { const int t = a % b; a = b; b = t; }
    return a;
}

// Output length along one axis.
SD_HOST_DEVICE inline int upfirdn_out_size(int in_size, int up, int down, int pad0, int pad1, int taps) {
    return floor_div(in_size * up + pad0 + pad1 - taps, down) + 1;
}

struct UpFirDnParams {
    int upx, upy, downx, downy, padx0, padx1, pady0, pady1;
    int in_w, in_h, out_w, out_h, fw, fh;
};

// Checks the arguments and fills in the sizes (host side, shared by the CPU and CUDA entry points).
inline UpFirDnParams check_upfirdn2d_args(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy,
                                          int64_t downx, int64_t downy, int64_t padx0, int64_t padx1,
                                          int64_t pady0, int64_t pady1) {
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W], got ", x.sizes());
    TORCH_CHECK(x.is_floating_point(), "upfirdn2d: x must be floating point, got ", x.scalar_type());
    TORCH_CHECK(f.dim() == 2, "upfirdn2d: the filter must be 2-D [fh, fw] here, got ", f.sizes());
    TORCH_CHECK(f.numel() > 0, "upfirdn2d: empty filter");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be at least 1");
    TORCH_CHECK(x.size(2) * upy < (1 << 30) && x.size(3) * upx < (1 << 30), "upfirdn2d: image too large");
    UpFirDnParams p;
    p.upx = int(upx); p.upy = int(upy); p.downx = int(downx); p.downy = int(downy);
    p.padx0 = int(padx0); p.padx1 = int(padx1); p.pady0 = int(pady0); p.pady1 = int(pady1);
    p.in_h = int(x.size(2)); p.in_w = int(x.size(3));
    p.fh = int(f.size(0)); p.fw = int(f.size(1));
    p.out_h = upfirdn_out_size(p.in_h, p.upy, p.downy, p.pady0, p.pady1, p.fh);
    p.out_w = upfirdn_out_size(p.in_w, p.upx, p.downx, p.padx0, p.padx1, p.fw);
    TORCH_CHECK(p.out_h >= 1 && p.out_w >= 1, "upfirdn2d: padding ", padx0, ",", padx1, ",", pady0, ",", pady1,
                " and a ", p.fh, "x", p.fw, " filter leave no output for input ", x.sizes());
    return p;
}

// fk[i, j], the correlation kernel with gain folded in, in the accumulation dtype, on x's device.
inline at::Tensor prepare_filter(const at::Tensor& f, at::Device device, bool flip_filter, double gain,
                                 at::ScalarType acc) {
    at::Tensor fk = f.to(device, acc);
    if (!flip_filter) fk = fk.flip({0, 1});  // conv2d correlates; a FIR filter convolves
    return (fk * gain).contiguous();
}

}  // namespace styledeck
