// upfirdn2d on the CPU: parallel over image planes, one output row at a time; only filter taps that
// meet real input samples are visited (no multiplications by inserted zeros or padding). Rows use
// upfirdn2d.h's tap_range, as the CUDA kernel does; columns are split into phases (see
// phase_first_tap) so the innermost loops are long and vectorise.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "upfirdn2d.h"

namespace styledeck {
namespace {

// One tap of one phase along x: acc[k] += w * src[in0 + k*step] for k in [k0, k1).
struct PhaseTap {
    int phase, tap, in0, k0, k1;
};

// The x-axis work list of a call: every (phase, tap) pair that meets real input samples.
std::vector<PhaseTap> x_phase_taps(const UpFirDnParams& p, int S, int step) {
    std::vector<PhaseTap> list;
    for (int r = 0; r < S && r < p.out_w; ++r) {
        const int nk = ceil_div(p.out_w - r, S);
        int tap0, in0;
        phase_first_tap(r, p.upx, p.downx, p.padx0, tap0, in0);
        for (int t = tap0, i = in0; t < p.fw; t += p.upx, ++i) {
            const int k0 = imax(0, ceil_div(-i, step));
            const int k1 = imin(nk, floor_div(p.in_w - 1 - i, step) + 1);
            if (k0 < k1) list.push_back({r, t, i, k0, k1});
        }
    }
    return list;
}

template <typename scalar_t, typename acc_t>
inline void accumulate(acc_t* __restrict__ acc, const scalar_t* __restrict__ src, int n, int step, acc_t w) {
    if (step == 1) {
        for (int k = 0; k < n; ++k) acc[k] += w * acc_t(src[k]);
    } else {
        for (int k = 0; k < n; ++k) acc[k] += w * acc_t(src[int64_t(k) * step]);
    }
}

at::Tensor upfirdn2d_cpu(const at::Tensor& x_in, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                         bool flip_filter, double gain) {
    const UpFirDnParams p = check_upfirdn2d_args(x_in, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1);
    const at::Tensor x = x_in.contiguous();
    at::Tensor out = at::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options());
    const int64_t planes = x.size(0) * x.size(1);
    if (planes == 0) return out;
    const int g = gcd_int(p.upx, p.downx);
    const int S = p.upx / g, step = p.downx / g;
    const int nk_max = ceil_div(p.out_w, S);
    const std::vector<PhaseTap> xtaps = x_phase_taps(p, S, step);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cpu", [&] {
        using acc_t = typename AccType<scalar_t>::type;
        const at::Tensor fk_t = prepare_filter(f, x.device(), flip_filter, gain, c10::CppTypeToScalarType<acc_t>::value);
        const acc_t* fk = fk_t.const_data_ptr<acc_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* op = out.mutable_data_ptr<scalar_t>();
        const int64_t in_plane = int64_t(p.in_h) * p.in_w, out_plane = int64_t(p.out_h) * p.out_w;
        const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(out_plane, 1));
        at::parallel_for(0, planes, grain, [&](int64_t p0, int64_t p1) {
            std::vector<acc_t> acc(size_t(S) * nk_max);  // one output row, phase-major: acc[r * nk_max + k]
            for (int64_t plane = p0; plane < p1; ++plane) {
                const scalar_t* src = xp + plane * in_plane;
                scalar_t* dst = op + plane * out_plane;
                for (int oy = 0; oy < p.out_h; ++oy) {
                    std::fill(acc.begin(), acc.end(), acc_t(0));
                    const TapRange ry = tap_range(oy, p.upy, p.downy, p.pady0, p.in_h, p.fh);
                    for (int ky = 0; ky < ry.count; ++ky) {
                        const scalar_t* row = src + int64_t(ry.in0 + ky) * p.in_w;
                        const acc_t* frow = fk + int64_t(ry.tap0 + ky * p.upy) * p.fw;
                        for (const PhaseTap& t : xtaps)
                            accumulate(acc.data() + int64_t(t.phase) * nk_max + t.k0, row + t.in0 + int64_t(t.k0) * step,
                                       t.k1 - t.k0, step, frow[t.tap]);
                    }
                    scalar_t* drow = dst + int64_t(oy) * p.out_w;
                    for (int r = 0; r < S && r < p.out_w; ++r)
                        for (int k = 0, ox = r; ox < p.out_w; ++k, ox += S) drow[ox] = scalar_t(acc[size_t(r) * nk_max + k]);
                }
            }
        });
    });
    return out;
}

}  // namespace
}  // namespace styledeck

TORCH_LIBRARY_IMPL(styledeck, CPU, m) {
    m.impl("upfirdn2d", &styledeck::upfirdn2d_cpu);
}
