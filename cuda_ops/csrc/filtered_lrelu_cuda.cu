// filtered_lrelu on CUDA: the fused "up, pointwise, down" pass of filtered_lrelu.h.
//
// One thread block per (plane, output tile). The tile's input, its share of the upsampled signal and
// the intermediate separable passes live in shared memory (two buffers used in turn), so only x, y and
// (when a gradient is needed) one mask byte per pre-activation sample touch device memory. The tile
// geometry and the index, tap and activation arithmetic are filtered_lrelu.h's, which the CPU build
// runs in CI. Half and bfloat16 tensors are computed in float.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "filtered_lrelu_host.h"

namespace styledeck {
namespace flrelu {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxSharedBytes = 48 * 1024;  // no opt-in needed up to here

template <typename T>
struct Params {
  Axis ax, ay;
  bool sepA, sepB;
  const T* A;  // effective up taps: [FA] (separable) or [FA_h][FA_w]
  const T* B;  // effective down taps: [FB] or [FB_h][FB_w]
  int tiles_x, tile_w, tile_h, tiles;
  int64_t channels;
  bool forward;
  T slope, gain, clamp;
  const T* bias;           // forward: [C]
  uint8_t* mask_out;       // forward: mask to write, or null
  const uint8_t* mask_in;  // backward: mask to read
  int buf_a;               // elements of the first shared buffer
};

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads) fused_kernel(const Params<T> p, const S* __restrict__ src,
                                                         S* __restrict__ dst) {
  extern __shared__ unsigned char smem_raw[];
  T* const buf_a = reinterpret_cast<T*>(smem_raw);
  T* const buf_b = buf_a + p.buf_a;

  const int64_t plane = blockIdx.x / p.tiles;
  const int tile = static_cast<int>(blockIdx.x % p.tiles);
  const int oy0 = (tile / p.tiles_x) * p.tile_h, ox0 = (tile % p.tiles_x) * p.tile_w;
  const bool own = p.mask_out != nullptr;
  const Span sy = tile_span(p.ay, oy0, imin(oy0 + p.tile_h, p.ay.Lout), own);
  const Span sx = tile_span(p.ax, ox0, imin(ox0 + p.tile_w, p.ax.Lout), own);
  const Axis& ay = p.ay;
  const Axis& ax = p.ax;
  const int in_h = sy.i1 - sy.i0, in_w = sx.i1 - sx.i0;
  const int mid_h = sy.v1 - sy.v0, mid_w = sx.v1 - sx.v0;
  const int out_h = sy.o1 - sy.o0, out_w = sx.o1 - sx.o0;
  const S* in_plane = src + plane * ay.Lin * ax.Lin;
  S* out_plane = dst + plane * ay.Lout * ax.Lout;
  const int64_t mid_plane = plane * static_cast<int64_t>(ay.Lmid) * ax.Lmid;

  if (mid_h == 0 || mid_w == 0) {  // block-uniform: the tile reads no valid sample
    for (int j = threadIdx.x; j < out_h * out_w; j += blockDim.x)
      out_plane[(sy.o0 + j / out_w) * ax.Lout + sx.o0 + j % out_w] = static_cast<S>(T(0));
    return;
  }

  // Input tile (+ bias), zeros outside the input.
  T* in = p.sepA ? buf_a : buf_b;
  const T b = p.bias ? p.bias[plane % p.channels] : T(0);
  for (int j = threadIdx.x; j < in_h * in_w; j += blockDim.x) {
    const int iy = sy.i0 + j / in_w, ix = sx.i0 + j % in_w;
    in[j] = (iy >= 0 && iy < ay.Lin && ix >= 0 && ix < ax.Lin) ? static_cast<T>(in_plane[iy * ax.Lin + ix]) + b : T(0);
  }
  __syncthreads();

  // Up stage into mid (buf_a) [mid_h][mid_w].
  T* mid = buf_a;
  if (p.sepA) {
    T* t1 = buf_b;  // [in_h][mid_w]
    for (int j = threadIdx.x; j < in_h * mid_w; j += blockDim.x) {
      const int r = j / mid_w, kx = sx.v0 + j % mid_w;
      int i = up_first(ax, kx);
      const T* irow = in + r * in_w - sx.i0;
      T acc = 0;
      for (int t = up_tap(ax, i, kx); t < ax.FA; t += ax.U, ++i) acc += p.A[t] * irow[i];
      t1[j] = acc;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < mid_h * mid_w; j += blockDim.x) {
      const int ky = sy.v0 + j / mid_w, c = j % mid_w;
      int i = up_first(ay, ky);
      T acc = 0;
      for (int t = up_tap(ay, i, ky); t < ay.FA; t += ay.U, ++i) acc += p.A[t] * t1[(i - sy.i0) * mid_w + c];
      mid[j] = acc;
    }
  } else {
    const int fw = ax.FA;
    for (int j = threadIdx.x; j < mid_h * mid_w; j += blockDim.x) {
      const int ky = sy.v0 + j / mid_w, kx = sx.v0 + j % mid_w;
      const int ix_first = up_first(ax, kx), tx0 = up_tap(ax, ix_first, kx);
      int iy = up_first(ay, ky);
      T acc = 0;
      for (int ty = up_tap(ay, iy, ky); ty < ay.FA; ty += ay.U, ++iy) {
        const T* irow = in + (iy - sy.i0) * in_w - sx.i0;
        int ix = ix_first;
        for (int tx = tx0; tx < ax.FA; tx += ax.U, ++ix) acc += p.A[ty * fw + tx] * irow[ix];
      }
      mid[j] = acc;
    }
  }
  __syncthreads();

  // Pointwise: activation (writing the mask bytes this tile owns) or its gradient from the mask.
  for (int j = threadIdx.x; j < mid_h * mid_w; j += blockDim.x) {
    const int ky = sy.v0 + j / mid_w, kx = sx.v0 + j % mid_w;
    const int64_t m = mid_plane + static_cast<int64_t>(ky) * ax.Lmid + kx;
    if (p.forward) {
      uint8_t code;
      mid[j] = activate(mid[j], p.slope, p.gain, p.clamp, &code);
      if (own && ky >= sy.w0 && ky < sy.w1 && kx >= sx.w0 && kx < sx.w1) p.mask_out[m] = code;
    } else {
      mid[j] *= activate_grad(p.mask_in[m], p.slope, p.gain);
    }
  }
  __syncthreads();

  // Down stage; mid samples outside [v0, v1) are zeros.
  if (p.sepB) {
    T* t2 = buf_b;  // [mid_h][out_w]
    for (int j = threadIdx.x; j < mid_h * out_w; j += blockDim.x) {
      const int r = j / out_w, c = j % out_w;
      const int f = down_first(ax, sx.o0 + c) - sx.v0;
      const int s1 = imin(ax.FB, mid_w - f);
      const T* mrow = mid + r * mid_w + f;
      T acc = 0;
      for (int s = imax(0, -f); s < s1; ++s) acc += p.B[s] * mrow[s];
      t2[j] = acc;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < out_h * out_w; j += blockDim.x) {
      const int r = j / out_w, c = j % out_w;
      const int f = down_first(ay, sy.o0 + r) - sy.v0;
      const int s1 = imin(ay.FB, mid_h - f);
      T acc = 0;
      for (int s = imax(0, -f); s < s1; ++s) acc += p.B[s] * t2[(f + s) * out_w + c];
      out_plane[(sy.o0 + r) * ax.Lout + sx.o0 + c] = static_cast<S>(acc);
    }
  } else {
    const int fw = ax.FB;
    for (int j = threadIdx.x; j < out_h * out_w; j += blockDim.x) {
      const int r = j / out_w, c = j % out_w;
      const int fy = down_first(ay, sy.o0 + r) - sy.v0, fx = down_first(ax, sx.o0 + c) - sx.v0;
      const int sy1 = imin(ay.FB, mid_h - fy), sx1 = imin(ax.FB, mid_w - fx);
      T acc = 0;
      for (int s = imax(0, -fy); s < sy1; ++s) {
        const T* mrow = mid + (fy + s) * mid_w + fx;
        for (int q = imax(0, -fx); q < sx1; ++q) acc += p.B[s * fw + q] * mrow[q];
      }
      out_plane[(sy.o0 + r) * ax.Lout + sx.o0 + c] = static_cast<S>(acc);
    }
  }
}

// Largest extents (input, mid) over the tiles of one axis.
struct Extent {
  int in = 0, mid = 0;
};

Extent max_extent(const Axis& a, int tile, bool own) {
  Extent e;
  for (int o0 = 0; o0 < a.Lout; o0 += tile) {
    const Span s = tile_span(a, o0, imin(o0 + tile, a.Lout), own);
    e.in = imax(e.in, s.i1 - s.i0);
    e.mid = imax(e.mid, s.v1 - s.v0);
  }
  return e;
}

// Picks the output tile and shared-memory split, then launches.
template <typename S, typename T>
void launch(Params<T> p, const Call& call, const S* src, S* dst) {
  const bool own = p.mask_out != nullptr;
  for (int tile = 32;; tile /= 2) {
    const Extent ey = max_extent(call.ay, tile, own), ex = max_extent(call.ax, tile, own);
    const size_t in = static_cast<size_t>(ey.in) * ex.in, mid = static_cast<size_t>(ey.mid) * ex.mid;
    const size_t t1 = call.sepA ? static_cast<size_t>(ey.in) * ex.mid : 0;
    const size_t t2 = call.sepB ? static_cast<size_t>(ey.mid) * tile : 0;
    const size_t a = call.sepA ? std::max(in, mid) : mid;
    const size_t b = std::max(std::max(t1, t2), call.sepA ? size_t(0) : in);
    const size_t bytes = (a + b) * sizeof(T);
    if (bytes <= kMaxSharedBytes || tile == 1) {
      TORCH_CHECK(bytes <= kMaxSharedBytes, "filtered_lrelu: filters too large for the CUDA kernel's tiles");
      p.tile_w = p.tile_h = tile;
      p.tiles_x = tile_count(call.ax.Lout, tile);
      p.tiles = p.tiles_x * tile_count(call.ay.Lout, tile);
      p.buf_a = static_cast<int>(a);
      const int64_t blocks = call.planes * p.tiles;
      TORCH_CHECK(blocks < (int64_t(1) << 31), "filtered_lrelu: tensor too large");
      if (blocks == 0) return;
      fused_kernel<S, T><<<static_cast<unsigned>(blocks), kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
          p, src, dst);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
}

void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device(), "filtered_lrelu: ", name, " must be on ", like.device(), ", got ",
              t.device());
}

std::tuple<at::Tensor, at::Tensor> filtered_lrelu_cuda(const at::Tensor& x, const at::Tensor& fu, const at::Tensor& fd,
                                                       const at::Tensor& b, int64_t up, int64_t down,
                                                       at::IntArrayRef padding, double gain, double slope,
                                                       double clamp, bool flip_filter, bool write_mask) {
  check_cuda(fu, x, "fu"); check_cuda(fd, x, "fd"); check_cuda(b, x, "b");
  const c10::cuda::CUDAGuard guard(x.device());
  const Call call = forward_call(x, fu, fd, up, down, padding);
  TORCH_CHECK(b.dim() == 1 && b.size(0) == call.channels, "filtered_lrelu: b must be [", call.channels, "], got ",
              b.sizes());
  TORCH_CHECK(static_cast<int64_t>(call.ay.Lmid) * call.ax.Lmid < (int64_t(1) << 31) &&
              static_cast<int64_t>(call.ay.Lin) * call.ax.Lin < (int64_t(1) << 31), "filtered_lrelu: planes too large");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), call.ay.Lout, call.ax.Lout}, x.options());
  at::Tensor mask = write_mask ? at::empty({x.size(0), x.size(1), call.ay.Lmid, call.ax.Lmid}, x.options().dtype(at::kByte))
                               : at::empty({0}, x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "filtered_lrelu_cuda", [&] {
    using T = typename AccType<scalar_t>::type;
    const auto dt = c10::CppTypeToScalarType<T>::value;
    const at::Tensor A = effective_taps(fu, flip_filter, false, up_gain(fu, up), dt);
    const at::Tensor B = effective_taps(fd, flip_filter, false, 1.0, dt);
    const at::Tensor bias = b.to(dt).contiguous();
    Params<T> p{};
    p.ax = call.ax; p.ay = call.ay; p.sepA = call.sepA; p.sepB = call.sepB;
    p.A = A.data_ptr<T>(); p.B = B.data_ptr<T>();
    p.channels = call.channels;
    p.forward = true;
    p.slope = static_cast<T>(slope); p.gain = static_cast<T>(gain); p.clamp = static_cast<T>(clamp);
    p.bias = bias.data_ptr<T>();
    p.mask_out = write_mask ? mask.data_ptr<uint8_t>() : nullptr;
    launch<scalar_t, T>(p, call, xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>());
  });
  return {y, mask};
}

at::Tensor filtered_lrelu_backward_cuda(const at::Tensor& grad_y, const at::Tensor& mask, const at::Tensor& fu,
                                        const at::Tensor& fd, int64_t up, int64_t down, at::IntArrayRef padding,
                                        double gain, double slope, bool flip_filter) {
  check_cuda(mask, grad_y, "mask"); check_cuda(fu, grad_y, "fu"); check_cuda(fd, grad_y, "fd");
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const Call call = backward_call(grad_y, mask, fu, fd, up, down, padding);
  const at::Tensor gc = grad_y.contiguous();
  const at::Tensor mc = mask.contiguous();
  at::Tensor gx = at::empty({grad_y.size(0), grad_y.size(1), call.ay.Lout, call.ax.Lout}, grad_y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(), "filtered_lrelu_backward_cuda", [&] {
    using T = typename AccType<scalar_t>::type;
    const auto dt = c10::CppTypeToScalarType<T>::value;
    const at::Tensor A = effective_taps(fd, flip_filter, true, 1.0, dt);
    const at::Tensor B = effective_taps(fu, flip_filter, true, up_gain(fu, up), dt);
    Params<T> p{};
    p.ax = call.ax; p.ay = call.ay; p.sepA = call.sepA; p.sepB = call.sepB;
    p.A = A.data_ptr<T>(); p.B = B.data_ptr<T>();
    p.channels = call.channels;
    p.forward = false;
    p.slope = static_cast<T>(slope); p.gain = static_cast<T>(gain); p.clamp = T(-1);
    p.bias = nullptr;
    p.mask_in = mc.data_ptr<uint8_t>();
    launch<scalar_t, T>(p, call, gc.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>());
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(styledeck, CUDA, m) {
  m.impl("filtered_lrelu", &filtered_lrelu_cuda);
  m.impl("filtered_lrelu_backward", &filtered_lrelu_backward_cuda);
}

}  // namespace flrelu
}  // namespace styledeck
