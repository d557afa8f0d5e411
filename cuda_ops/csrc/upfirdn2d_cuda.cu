// upfirdn2d on CUDA: one thread per output pixel, the prepared filter in shared memory; the tap
// arithmetic is upfirdn2d.h's, exactly as the CPU kernel runs it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "upfirdn2d.h"

namespace styledeck {
namespace {

constexpr int kMaxSharedFilterBytes = 32 * 1024;  // larger filters are read from global memory

template <typename scalar_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                 const typename AccType<scalar_t>::type* __restrict__ fk, UpFirDnParams p,
                                 int64_t total, bool shared_filter) {
    using acc_t = typename AccType<scalar_t>::type;
    extern __shared__ __align__(16) unsigned char smem[];
    acc_t* sf = reinterpret_cast<acc_t*>(smem);
    const int taps = p.fh * p.fw;
    if (shared_filter) {
        for (int i = threadIdx.x; i < taps; i += blockDim.x) sf[i] = fk[i];
        __syncthreads();
    }
    const acc_t* w_all = shared_filter ? sf : fk;
    const int64_t in_plane = int64_t(p.in_h) * p.in_w;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int ox = int(idx % p.out_w);
        const int oy = int((idx / p.out_w) % p.out_h);
        const int64_t plane = idx / (int64_t(p.out_w) * p.out_h);
        const TapRange rx = tap_range(ox, p.upx, p.downx, p.padx0, p.in_w, p.fw);
        const TapRange ry = tap_range(oy, p.upy, p.downy, p.pady0, p.in_h, p.fh);
        const scalar_t* src = x + plane * in_plane;
        acc_t acc = 0;
        for (int ky = 0; ky < ry.count; ++ky) {
            const scalar_t* s = src + int64_t(ry.in0 + ky) * p.in_w + rx.in0;
            const acc_t* w = w_all + (ry.tap0 + ky * p.upy) * p.fw + rx.tap0;
            for (int kx = 0; kx < rx.count; ++kx) acc += w[kx * p.upx] * acc_t(s[kx]);
        }
        out[idx] = scalar_t(acc);
    }
}

at::Tensor upfirdn2d_cuda(const at::Tensor& x_in, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                          bool flip_filter, double gain) {
    const UpFirDnParams p = check_upfirdn2d_args(x_in, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1);
    TORCH_CHECK(x_in.is_cuda(), "upfirdn2d: x must be a CUDA tensor here");
    const c10::cuda::OptionalCUDAGuard guard(x_in.device());
    const at::Tensor x = x_in.contiguous();
    at::Tensor out = at::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options());
    const int64_t total = out.numel();
    if (total == 0) return out;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t(1) << 20);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
        using acc_t = typename AccType<scalar_t>::type;
        const at::Tensor fk = prepare_filter(f, x.device(), flip_filter, gain, c10::CppTypeToScalarType<acc_t>::value);
        const int64_t filter_bytes = fk.numel() * int64_t(sizeof(acc_t));
        const bool shared_filter = filter_bytes <= kMaxSharedFilterBytes;
        upfirdn2d_kernel<scalar_t><<<unsigned(blocks), threads, shared_filter ? size_t(filter_bytes) : 0, stream>>>(
            out.mutable_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), fk.const_data_ptr<acc_t>(), p, total,
            shared_filter);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
}

}  // namespace
}  // namespace styledeck

TORCH_LIBRARY_IMPL(styledeck, CUDA, m) {
    m.impl("upfirdn2d", &styledeck::upfirdn2d_cuda);
}
