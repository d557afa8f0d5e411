// filtered_lrelu on the CPU: the fused "up, pointwise, down" pass of filtered_lrelu.h, tiled.
//
// Work unit: a group of kLanes planes ((n, c) pairs) times one output tile. The planes of a group
// are interleaved into the innermost dimension of every tile buffer, so each tap is one multiply-add
// over kLanes contiguous values whatever the phase or stride arithmetic: that loop vectorises.
// Only the tile's share of the upsampled signal exists at any time (a few hundred KB per thread).
// Parallel over (plane group, tile) with at::parallel_for, i.e. OpenMP in the usual torch build.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "filtered_lrelu_host.h"

namespace styledeck {
namespace flrelu {
namespace {

constexpr int kLanes = 8;
constexpr int kMaxMidTile = 128;  // mid samples per tile and axis, at most (keeps buffers in L2)

template <typename T>
struct Taps {  // effective taps of one stage, separable (x, y) or 2-D (xy, row-major [h][w])
  const T* x = nullptr;
  const T* y = nullptr;
  const T* xy = nullptr;
  int w = 1, h = 1;
};

template <typename T>
struct Job {
  Call call;
  Taps<T> A, B;
  bool forward = true;
  T slope = 0, gain = 1, clamp = -1;
  const T* bias = nullptr;  // per channel, forward only
  uint8_t* mask_out = nullptr;      // forward: mask to write (or null)
  const uint8_t* mask_in = nullptr; // backward: mask to read
};

template <typename T>
struct Workspace {
  std::vector<T> in, t1, mid, t2, out;
  std::vector<uint8_t> codes;
};

template <typename V>
inline void grow(std::vector<V>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// The tile kernel, compiled for the baseline instruction set and (x86-64 with GCC or Clang) for
// AVX2 + FMA, chosen at run time: the build uses no -march flag, so without this the 8-lane loops
// would run on SSE2 only.
namespace base {
#include "filtered_lrelu_cpu_tile.h"
}  // namespace base
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SD_FLRELU_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#ifndef __clang__
#pragma GCC optimize("fp-contract=fast")
#endif
namespace avx2 {
#include "filtered_lrelu_cpu_tile.h"
}  // namespace avx2
#pragma GCC pop_options
#endif

bool use_avx2() {
#ifdef SD_FLRELU_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

std::vector<Span> spans(const Axis& a, bool own_mask) {
  const int n = tile_count(a.Lout, std::max(1, (kMaxMidTile - a.FB) / a.D + 1));
  const int size = tile_size(a.Lout, n);
  std::vector<Span> out;
  for (int o0 = 0; o0 < a.Lout; o0 += size) out.push_back(tile_span(a, o0, std::min(o0 + size, a.Lout), own_mask));
  return out;
}

template <typename T, typename S>
void run(const Job<T>& job, const S* src, S* dst) {
  const std::vector<Span> ys = spans(job.call.ay, job.mask_out != nullptr);
  const std::vector<Span> xs = spans(job.call.ax, job.mask_out != nullptr);
  const int64_t groups = (job.call.planes + kLanes - 1) / kLanes;
  const int64_t tiles = static_cast<int64_t>(ys.size()) * static_cast<int64_t>(xs.size());
#ifdef SD_FLRELU_AVX2
  const auto tile_fn = use_avx2() ? &avx2::run_tile<T, S> : &base::run_tile<T, S>;
#else
  const auto tile_fn = &base::run_tile<T, S>;
#endif
  at::parallel_for(0, groups * tiles, 1, [&](int64_t begin, int64_t end) {
    Workspace<T> ws;
    for (int64_t j = begin; j < end; ++j) {
      const int64_t g = j / tiles, t = j % tiles;
      const int64_t p0 = g * kLanes;
      const int nl = static_cast<int>(std::min<int64_t>(kLanes, job.call.planes - p0));
      tile_fn(job, src, dst, p0, nl, ys[static_cast<size_t>(t / static_cast<int64_t>(xs.size()))],
                     xs[static_cast<size_t>(t % static_cast<int64_t>(xs.size()))], ws);
    }
  });
}

template <typename T>
Taps<T> taps_of(const at::Tensor& e, bool separable) {
  Taps<T> t;
  const T* p = e.data_ptr<T>();
  if (separable) {
    t.x = t.y = p;
    t.w = t.h = static_cast<int>(e.size(0));
  } else {
    t.xy = p;
    t.h = static_cast<int>(e.size(0));
    t.w = static_cast<int>(e.size(1));
  }
  return t;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "filtered_lrelu: ", name, " must be on the CPU, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor> filtered_lrelu_cpu(const at::Tensor& x, const at::Tensor& fu, const at::Tensor& fd,
                                                      const at::Tensor& b, int64_t up, int64_t down,
                                                      at::IntArrayRef padding, double gain, double slope, double clamp,
                                                      bool flip_filter, bool write_mask) {
  check_cpu(x, "x"); check_cpu(fu, "fu"); check_cpu(fd, "fd"); check_cpu(b, "b");
  const Call call = forward_call(x, fu, fd, up, down, padding);
  TORCH_CHECK(b.dim() == 1 && b.size(0) == call.channels, "filtered_lrelu: b must be [", call.channels, "], got ",
              b.sizes());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), call.ay.Lout, call.ax.Lout}, x.options());
  at::Tensor mask = write_mask ? at::empty({x.size(0), x.size(1), call.ay.Lmid, call.ax.Lmid}, x.options().dtype(at::kByte))
                               : at::empty({0}, x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "filtered_lrelu_cpu", [&] {
    using T = typename AccType<scalar_t>::type;
    const auto dt = c10::CppTypeToScalarType<T>::value;
    const at::Tensor A = effective_taps(fu, flip_filter, false, up_gain(fu, up), dt);
    const at::Tensor B = effective_taps(fd, flip_filter, false, 1.0, dt);
    const at::Tensor bias = b.to(dt).contiguous();
    Job<T> job;
    job.call = call;
    job.A = taps_of<T>(A, call.sepA);
    job.B = taps_of<T>(B, call.sepB);
    job.forward = true;
    job.slope = static_cast<T>(slope); job.gain = static_cast<T>(gain); job.clamp = static_cast<T>(clamp);
    job.bias = bias.data_ptr<T>();
    job.mask_out = write_mask ? mask.data_ptr<uint8_t>() : nullptr;
    run<T, scalar_t>(job, xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>());
  });
  return {y, mask};
}

at::Tensor filtered_lrelu_backward_cpu(const at::Tensor& grad_y, const at::Tensor& mask, const at::Tensor& fu,
                                       const at::Tensor& fd, int64_t up, int64_t down, at::IntArrayRef padding,
                                       double gain, double slope, bool flip_filter) {
  check_cpu(grad_y, "grad"); check_cpu(mask, "mask"); check_cpu(fu, "fu"); check_cpu(fd, "fd");
  const Call call = backward_call(grad_y, mask, fu, fd, up, down, padding);
  const at::Tensor gc = grad_y.contiguous();
  const at::Tensor mc = mask.contiguous();
  at::Tensor gx = at::empty({grad_y.size(0), grad_y.size(1), call.ay.Lout, call.ax.Lout}, grad_y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(), "filtered_lrelu_backward_cpu", [&] {
    using T = typename AccType<scalar_t>::type;
    const auto dt = c10::CppTypeToScalarType<T>::value;
    const at::Tensor A = effective_taps(fd, flip_filter, true, 1.0, dt);
    const at::Tensor B = effective_taps(fu, flip_filter, true, up_gain(fu, up), dt);
    Job<T> job;
    job.call = call;
    job.A = taps_of<T>(A, call.sepA);
    job.B = taps_of<T>(B, call.sepB);
    job.forward = false;
    job.slope = static_cast<T>(slope); job.gain = static_cast<T>(gain);
    job.mask_in = mc.data_ptr<uint8_t>();
    run<T, scalar_t>(job, gc.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>());
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(styledeck, CPU, m) {
  m.impl("filtered_lrelu", &filtered_lrelu_cpu);
  m.impl("filtered_lrelu_backward", &filtered_lrelu_backward_cpu);
}

}  // namespace flrelu
}  // namespace styledeck
