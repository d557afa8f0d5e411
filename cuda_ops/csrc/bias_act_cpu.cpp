// bias_act on the CPU: one pass over x, parallel over [outer, channel] rows of `inner` elements.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "bias_act.h"

namespace styledeck {
namespace {

// One span of elements sharing a bias value. A free function with restrict pointers and by-value
// scalars, so the compiler knows the stores cannot touch them and vectorises the loop.
template <typename scalar_t, int kAct, bool kGrad>
void bias_act_span(scalar_t* __restrict__ out, const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy,
                   int64_t n, typename AccType<scalar_t>::type bias, int order, typename AccType<scalar_t>::type alpha,
                   typename AccType<scalar_t>::type gain, typename AccType<scalar_t>::type clamp) {
    using acc_t = typename AccType<scalar_t>::type;
    if constexpr (!kGrad) {
        for (int64_t i = 0; i < n; ++i) out[i] = scalar_t(bias_act_value(kAct, acc_t(x[i]) + bias, alpha, gain, clamp));
    } else {
        for (int64_t i = 0; i < n; ++i)
            out[i] = scalar_t(acc_t(dy[i]) * bias_act_deriv(kAct, order, acc_t(x[i]) + bias, alpha, gain, clamp));
    }
}

// order 0: y = bias_act(x); order 1/2: out = dy * d^order y / dz^order.
at::Tensor bias_act_cpu_impl(const at::Tensor* dy_in, const at::Tensor& x_in, const std::optional<at::Tensor>& b_in,
                             int64_t dim, c10::string_view act_name, double alpha, double gain, double clamp,
                             int64_t order) {
    const int act = parse_activation(act_name);
    const BiasLayout layout = check_bias_act_args(x_in, b_in, dim);
    TORCH_CHECK(order >= 0 && order <= 2, "bias_act_grad: order must be 1 or 2, got ", order);
    const at::Tensor x = x_in.contiguous();
    const at::Tensor b = b_in.has_value() ? b_in->contiguous() : at::Tensor();
    at::Tensor dy;
    if (dy_in != nullptr) {
        TORCH_CHECK(dy_in->sizes() == x.sizes() && dy_in->scalar_type() == x.scalar_type(),
                    "bias_act_grad: dy must match x in shape and dtype");
        dy = dy_in->contiguous();
    }
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    const int64_t inner = layout.inner, channels = layout.channels;
    const int64_t rows = inner > 0 ? x.numel() / inner : 0;

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cpu", [&] {
        using acc_t = typename AccType<scalar_t>::type;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
        const scalar_t* dyp = dy.defined() ? dy.const_data_ptr<scalar_t>() : nullptr;
        scalar_t* op = out.mutable_data_ptr<scalar_t>();
        const acc_t a = acc_t(alpha), g = acc_t(gain), c = acc_t(clamp);
        const int ord = int(order);
        dispatch_activation(act, [&](auto act_c) {
        constexpr int kAct = decltype(act_c)::value;
        // Elements [i0, i1) share one bias value.
        auto run = [&](int64_t i0, int64_t i1, acc_t bias) {
            if (ord == 0)
                bias_act_span<scalar_t, kAct, false>(op + i0, xp + i0, nullptr, i1 - i0, bias, 0, a, g, c);
            else
                bias_act_span<scalar_t, kAct, true>(op + i0, xp + i0, dyp + i0, i1 - i0, bias, ord, a, g, c);
        };
        constexpr int64_t kGrain = 32768;  // elements per task: small tensors stay on one thread
        if (bp == nullptr) {
            at::parallel_for(0, x.numel(), kGrain, [&](int64_t i0, int64_t i1) { run(i0, i1, acc_t(0)); });
        } else {
            at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)),
                             [&](int64_t r0, int64_t r1) {
                for (int64_t r = r0; r < r1; ++r) run(r * inner, (r + 1) * inner, acc_t(bp[r % channels]));
            });
        }
        });
    });
    return out;
}

at::Tensor bias_act_cpu(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                        c10::string_view act, double alpha, double gain, double clamp) {
    return bias_act_cpu_impl(nullptr, x, b, dim, act, alpha, gain, clamp, 0);
}

at::Tensor bias_act_grad_cpu(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& b,
                             int64_t dim, c10::string_view act, double alpha, double gain, double clamp,
                             int64_t order) {
    TORCH_CHECK(order == 1 || order == 2, "bias_act_grad: order must be 1 or 2, got ", order);
    return bias_act_cpu_impl(&dy, x, b, dim, act, alpha, gain, clamp, order);
}

}  // namespace
}  // namespace styledeck

TORCH_LIBRARY_IMPL(styledeck, CPU, m) {
    m.impl("bias_act", &styledeck::bias_act_cpu);
    m.impl("bias_act_grad", &styledeck::bias_act_grad_cpu);
}
