// bias_act on CUDA: one grid-stride elementwise pass; the arithmetic is bias_act.h's, as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "bias_act.h"

namespace styledeck {
namespace {

// order 0: out = bias_act(x); order 1/2: out = dy * d^order y / dz^order.
template <typename scalar_t, int kAct>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ b, const scalar_t* __restrict__ dy, int64_t n,
                                int64_t channels, int64_t inner, int order,
                                typename AccType<scalar_t>::type alpha, typename AccType<scalar_t>::type gain,
                                typename AccType<scalar_t>::type clamp) {
    using acc_t = typename AccType<scalar_t>::type;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const acc_t z = acc_t(x[i]) + (b != nullptr ? acc_t(b[(i / inner) % channels]) : acc_t(0));
        const acc_t v = order == 0 ? bias_act_value(kAct, z, alpha, gain, clamp)
                                   : acc_t(dy[i]) * bias_act_deriv(kAct, order, z, alpha, gain, clamp);
        out[i] = scalar_t(v);
    }
}

at::Tensor bias_act_cuda_impl(const at::Tensor* dy_in, const at::Tensor& x_in, const std::optional<at::Tensor>& b_in,
                              int64_t dim, c10::string_view act_name, double alpha, double gain, double clamp,
                              int64_t order) {
    const int act = parse_activation(act_name);
    const BiasLayout layout = check_bias_act_args(x_in, b_in, dim);
    TORCH_CHECK(x_in.is_cuda(), "bias_act: x must be a CUDA tensor here");
    const c10::cuda::OptionalCUDAGuard guard(x_in.device());
    const at::Tensor x = x_in.contiguous();
    const at::Tensor b = b_in.has_value() ? b_in->contiguous() : at::Tensor();
    at::Tensor dy;
    if (dy_in != nullptr) {
        TORCH_CHECK(dy_in->sizes() == x.sizes() && dy_in->scalar_type() == x.scalar_type() &&
                    dy_in->device() == x.device(), "bias_act_grad: dy must match x in shape, dtype and device");
        dy = dy_in->contiguous();
    }
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    const int64_t n = x.numel();
    if (n == 0) return out;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cuda", [&] {
        using acc_t = typename AccType<scalar_t>::type;
        dispatch_activation(act, [&](auto act_c) {
            constexpr int kAct = decltype(act_c)::value;
            bias_act_kernel<scalar_t, kAct><<<unsigned(blocks), threads, 0, stream>>>(
                out.mutable_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                dy.defined() ? dy.const_data_ptr<scalar_t>() : nullptr, n, layout.channels,
                std::max<int64_t>(layout.inner, 1), int(order), acc_t(alpha), acc_t(gain), acc_t(clamp));
            C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
    });
    return out;
}

at::Tensor bias_act_cuda(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                         c10::string_view act, double alpha, double gain, double clamp) {
    return bias_act_cuda_impl(nullptr, x, b, dim, act, alpha, gain, clamp, 0);
}

at::Tensor bias_act_grad_cuda(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& b,
                              int64_t dim, c10::string_view act, double alpha, double gain, double clamp,
                              int64_t order) {
    TORCH_CHECK(order == 1 || order == 2, "bias_act_grad: order must be 1 or 2, got ", order);
    return bias_act_cuda_impl(&dy, x, b, dim, act, alpha, gain, clamp, order);
}

}  // namespace
}  // namespace styledeck

TORCH_LIBRARY_IMPL(styledeck, CUDA, m) {
    m.impl("bias_act", &styledeck::bias_act_cuda);
    m.impl("bias_act_grad", &styledeck::bias_act_grad_cuda);
}
