// bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), and its first and second derivatives.
//
// The activations and their derivatives follow the PyTorch functions the reference calls
// (cuda_ops/reference/bias_act.py); the boundary choices (lrelu at 0, softplus threshold 20,
// clamp letting the gradient through where |v| == clamp) are torch's, so gradients match too.
#pragma once

#include <cmath>
#include <type_traits>

#include "common.h"

#include <ATen/ATen.h>

namespace styledeck {

enum Activation : int {
    kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kNumActivations
};

SD_HOST_DEVICE inline float sd_exp(float v) { return expf(v); }
SD_HOST_DEVICE inline double sd_exp(double v) { return exp(v); }
SD_HOST_DEVICE inline float sd_expm1(float v) { return expm1f(v); }
SD_HOST_DEVICE inline double sd_expm1(double v) { return expm1(v); }
SD_HOST_DEVICE inline float sd_tanh(float v) { return tanhf(v); }
SD_HOST_DEVICE inline double sd_tanh(double v) { return tanh(v); }
SD_HOST_DEVICE inline float sd_log1p(float v) { return log1pf(v); }
SD_HOST_DEVICE inline double sd_log1p(double v) { return log1p(v); }

template <typename T> SD_HOST_DEVICE inline T sd_sigmoid(T z) { return T(1) / (T(1) + sd_exp(-z)); }

// SELU's constants (Klambauer et al. 2017), as torch.nn.functional.selu uses them.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSoftplusThreshold = 20.0;  // torch's default: above it softplus(z) is z

// act(z); `alpha` is only read by lrelu (its negative slope).
template <typename T> SD_HOST_DEVICE inline T act_value(int act, T z, T alpha) {
    switch (act) {
        case kRelu: return z > T(0) ? z : T(0);
        case kLrelu: return z > T(0) ? z : z * alpha;
        case kTanh: return sd_tanh(z);
        case kSigmoid: return sd_sigmoid(z);
        case kElu: return z > T(0) ? z : sd_expm1(z);
        case kSelu: return z > T(0) ? T(kSeluScale) * z : T(kSeluScale * kSeluAlpha) * sd_expm1(z);
        case kSoftplus: return z > T(kSoftplusThreshold) ? z : sd_log1p(sd_exp(z));
        case kSwish: return sd_sigmoid(z) * z;
        default: return z;  // linear
    }
}

// d act / dz.
template <typename T> SD_HOST_DEVICE inline T act_grad1(int act, T z, T alpha) {
    switch (act) {
        case kRelu: return z > T(0) ? T(1) : T(0);
        case kLrelu: return z > T(0) ? T(1) : alpha;
        case kTanh: { T t = sd_tanh(z); return T(1) - t * t; }
        case kSigmoid: { T s = sd_sigmoid(z); return s * (T(1) - s); }
        case kElu: return z > T(0) ? T(1) : sd_exp(z);
        case kSelu: return z > T(0) ? T(kSeluScale) : T(kSeluScale * kSeluAlpha) * sd_exp(z);
        case kSoftplus: return z > T(kSoftplusThreshold) ? T(1) : sd_sigmoid(z);
        case kSwish: { T s = sd_sigmoid(z); return s * (T(1) + z * (T(1) - s)); }
        default: return T(1);
    }
}

// d^2 act / dz^2 (zero almost everywhere for the piecewise-linear ones).
template <typename T> SD_HOST_DEVICE inline T act_grad2(int act, T z, T alpha) {
    switch (act) {
        case kTanh: { T t = sd_tanh(z); return T(-2) * t * (T(1) - t * t); }
        case kSigmoid: { T s = sd_sigmoid(z); return s * (T(1) - s) * (T(1) - T(2) * s); }
        case kElu: return z > T(0) ? T(0) : sd_exp(z);
        case kSelu: return z > T(0) ? T(0) : T(kSeluScale * kSeluAlpha) * sd_exp(z);
        case kSoftplus: { if (z > T(kSoftplusThreshold)) return T(0); T s = sd_sigmoid(z); return s * (T(1) - s); }
        case kSwish: { T s = sd_sigmoid(z); return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s)); }
        default: return T(0);
    }
}

// Forward value at z = x + b; clamp < 0 means no clamp.
template <typename T> SD_HOST_DEVICE inline T bias_act_value(int act, T z, T alpha, T gain, T clamp) {
    T v = act_value(act, z, alpha) * gain;
    if (clamp >= T(0)) v = v > clamp ? clamp : (v < -clamp ? -clamp : v);
    return v;
}

// d^order y / dz^order at z (order 1 or 2); zero where the clamp was active.
template <typename T> SD_HOST_DEVICE inline T bias_act_deriv(int act, int order, T z, T alpha, T gain, T clamp) {
    if (clamp >= T(0)) {
        T v = act_value(act, z, alpha) * gain;
        if (v > clamp || v < -clamp) return T(0);
    }
    return gain * (order == 1 ? act_grad1(act, z, alpha) : act_grad2(act, z, alpha));
}

// Host-side argument handling shared by the CPU and CUDA entry points.

inline int parse_activation(c10::string_view name) {
    static const char* names[kNumActivations] = {"linear", "relu", "lrelu", "tanh", "sigmoid",
                                                 "elu", "selu", "softplus", "swish"};
    for (int i = 0; i < kNumActivations; ++i)
        if (name == names[i]) return i;
    TORCH_CHECK(false, "bias_act: unknown activation '", std::string(name), "'");
}

// Calls f(std::integral_constant<int, act>{}): kernels get the activation as a compile-time
// constant, so the switch in act_value folds away and the inner loops vectorise.
template <typename F> inline void dispatch_activation(int act, F&& f) {
    switch (act) {
        case kRelu: f(std::integral_constant<int, kRelu>{}); break;
        case kLrelu: f(std::integral_constant<int, kLrelu>{}); break;
        case kTanh: f(std::integral_constant<int, kTanh>{}); break;
        case kSigmoid: f(std::integral_constant<int, kSigmoid>{}); break;
        case kElu: f(std::integral_constant<int, kElu>{}); break;
        case kSelu: f(std::integral_constant<int, kSelu>{}); break;
        case kSoftplus: f(std::integral_constant<int, kSoftplus>{}); break;
        case kSwish: f(std::integral_constant<int, kSwish>{}); break;
        default: f(std::integral_constant<int, kLinear>{}); break;
    }
}

// Layout of x seen as [outer, channels, inner] around `dim`, so the bias index is (i / inner) % channels.
struct BiasLayout {
    int64_t channels = 1;
    int64_t inner = 1;
};

inline BiasLayout check_bias_act_args(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t& dim) {
    TORCH_CHECK(x.is_floating_point(), "bias_act: x must be floating point, got ", x.scalar_type());
    BiasLayout layout;
    if (!b.has_value()) return layout;
    TORCH_CHECK(x.dim() >= 1, "bias_act: a bias needs x with at least one dimension");
    dim = c10::maybe_wrap_dim(dim, x.dim());
    TORCH_CHECK(b->dim() == 1 && b->size(0) == x.size(dim), "bias_act: bias of shape ", b->sizes(),
                " does not match dim ", dim, " of x ", x.sizes());
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), "bias_act: bias dtype ", b->scalar_type(),
                " differs from x dtype ", x.scalar_type());
    TORCH_CHECK(b->device() == x.device(), "bias_act: bias and x are on different devices");
    layout.channels = x.size(dim);
    for (int64_t d = dim + 1; d < x.dim(); ++d) layout.inner *= x.size(d);
    return layout;
}

}  // namespace styledeck
