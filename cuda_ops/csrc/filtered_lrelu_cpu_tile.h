// filtered_lrelu CPU kernel: one tile of the fused pass. Textually included by filtered_lrelu_cpu.cpp
// once per instruction set (inside a namespace, after the headers it needs); not a standalone header.
// NOLINTBEGIN(build/include)

// One tile of one group of planes [p0, p0 + nl).
template <typename T, typename S>
void run_tile(const Job<T>& job, const S* src, S* dst, int64_t p0, int nl, const Span& sy, const Span& sx,
              Workspace<T>& ws) {
  constexpr int L = kLanes;
  const Axis& ay = job.call.ay;
  const Axis& ax = job.call.ax;
  const int in_h = sy.i1 - sy.i0, in_w = sx.i1 - sx.i0;
  const int mid_h = sy.v1 - sy.v0, mid_w = sx.v1 - sx.v0;
  const int out_h = sy.o1 - sy.o0, out_w = sx.o1 - sx.o0;
  const int64_t in_plane = static_cast<int64_t>(ay.Lin) * ax.Lin;
  const int64_t mid_plane = static_cast<int64_t>(ay.Lmid) * ax.Lmid;
  const int64_t out_plane = static_cast<int64_t>(ay.Lout) * ax.Lout;

  grow(ws.out, static_cast<size_t>(out_h) * out_w * L);
  T* out = ws.out.data();
  std::fill(out, out + static_cast<size_t>(out_h) * out_w * L, T(0));

  if (mid_h > 0 && mid_w > 0) {
    // Gather the input tile, interleaving the planes; zeros outside the input (the padding).
    grow(ws.in, static_cast<size_t>(in_h) * in_w * L);
    T* in = ws.in.data();
    for (int l = 0; l < L; ++l) {
      const bool live = l < nl;
      const S* plane = live ? src + (p0 + l) * in_plane : nullptr;
      const T b = (live && job.bias) ? job.bias[(p0 + l) % job.call.channels] : T(0);
      for (int r = 0; r < in_h; ++r) {
        const int iy = sy.i0 + r;
        T* row = in + static_cast<size_t>(r) * in_w * L;
        const bool row_ok = live && iy >= 0 && iy < ay.Lin;
        for (int c = 0; c < in_w; ++c) {
          const int ix = sx.i0 + c;
          row[c * L + l] = (row_ok && ix >= 0 && ix < ax.Lin) ? static_cast<T>(plane[iy * ax.Lin + ix]) + b : T(0);
        }
      }
    }

    // Up stage into mid [mid_h][mid_w][L].
    grow(ws.mid, static_cast<size_t>(mid_h) * mid_w * L);
    T* mid = ws.mid.data();
    std::fill(mid, mid + static_cast<size_t>(mid_h) * mid_w * L, T(0));
    if (job.call.sepA) {
      // Along x: t1 [in_h][mid_w][L].
      grow(ws.t1, static_cast<size_t>(in_h) * mid_w * L);
      T* t1 = ws.t1.data();
      for (int r = 0; r < in_h; ++r) {
        const T* irow = in + static_cast<size_t>(r) * in_w * L;
        T* trow = t1 + static_cast<size_t>(r) * mid_w * L;
        for (int c = 0; c < mid_w; ++c) {
          const int kx = sx.v0 + c;
          int i = up_first(ax, kx);
          T acc[L] = {};
          for (int t = up_tap(ax, i, kx); t < ax.FA; t += ax.U, ++i) {
            const T w = job.A.x[t];
            const T* v = irow + (i - sx.i0) * L;
            for (int l = 0; l < L; ++l) acc[l] += w * v[l];
          }
          for (int l = 0; l < L; ++l) trow[c * L + l] = acc[l];
        }
      }
      // Along y: whole rows at once.
      const int n = mid_w * L;
      for (int r = 0; r < mid_h; ++r) {
        const int ky = sy.v0 + r;
        int i = up_first(ay, ky);
        T* mrow = mid + static_cast<size_t>(r) * n;
        for (int t = up_tap(ay, i, ky); t < ay.FA; t += ay.U, ++i) {
          const T w = job.A.y[t];
          const T* trow = t1 + static_cast<size_t>(i - sy.i0) * n;
          for (int j = 0; j < n; ++j) mrow[j] += w * trow[j];
        }
      }
    } else {
      const int fw = job.A.w;
      for (int r = 0; r < mid_h; ++r) {
        const int ky = sy.v0 + r;
        const int iy_first = up_first(ay, ky);
        for (int c = 0; c < mid_w; ++c) {
          const int kx = sx.v0 + c;
          const int ix_first = up_first(ax, kx);
          const int tx0 = up_tap(ax, ix_first, kx);
          T acc[L] = {};
          int iy = iy_first;
          for (int ty = up_tap(ay, iy, ky); ty < ay.FA; ty += ay.U, ++iy) {
            const T* irow = in + static_cast<size_t>(iy - sy.i0) * in_w * L;
            const T* wrow = job.A.xy + ty * fw;
            int ix = ix_first;
            for (int tx = tx0; tx < ax.FA; tx += ax.U, ++ix) {
              const T w = wrow[tx];
              const T* v = irow + (ix - sx.i0) * L;
              for (int l = 0; l < L; ++l) acc[l] += w * v[l];
            }
          }
          T* m = mid + (static_cast<size_t>(r) * mid_w + c) * L;
          for (int l = 0; l < L; ++l) m[l] = acc[l];
        }
      }
    }

    // Pointwise: activation (forward, writing the mask bytes this tile owns) or its gradient.
    if (job.forward) {
      uint8_t* mask = job.mask_out;
      const T slope = job.slope, gain = job.gain, clamp = job.clamp;
      const int n = mid_w * L;
      grow(ws.codes, static_cast<size_t>(n));
      uint8_t* codes = ws.codes.data();
      for (int r = 0; r < mid_h; ++r) {
        const int ky = sy.v0 + r;
        T* mrow = mid + static_cast<size_t>(r) * n;
        if (mask && ky >= sy.w0 && ky < sy.w1) {
          for (int j = 0; j < n; ++j) {
            const T v = lrelu_gain(mrow[j], slope, gain);
            codes[j] = mask_code(mrow[j], v, clamp);
            mrow[j] = clamp >= T(0) ? clamp_abs(v, clamp) : v;
          }
          for (int l = 0; l < nl; ++l) {
            uint8_t* mk = mask + (p0 + l) * mid_plane + static_cast<int64_t>(ky) * ax.Lmid;
            for (int kx = sx.w0; kx < sx.w1; ++kx) mk[kx] = codes[(kx - sx.v0) * L + l];
          }
        } else if (clamp >= T(0)) {
          for (int j = 0; j < n; ++j) mrow[j] = clamp_abs(lrelu_gain(mrow[j], slope, gain), clamp);
        } else {
          for (int j = 0; j < n; ++j) mrow[j] = lrelu_gain(mrow[j], slope, gain);
        }
      }
    } else {
      const T factor[3] = {activate_grad<T>(kNegative, job.slope, job.gain), activate_grad<T>(kPositive, job.slope, job.gain), T(0)};
      const uint8_t* mplanes[L];
      for (int l = 0; l < L; ++l) mplanes[l] = job.mask_in + (p0 + (l < nl ? l : 0)) * mid_plane;
      for (int r = 0; r < mid_h; ++r) {
        const int64_t row = static_cast<int64_t>(sy.v0 + r) * ax.Lmid + sx.v0;
        T* mrow = mid + static_cast<size_t>(r) * mid_w * L;
        for (int c = 0; c < mid_w; ++c) {
          for (int l = 0; l < L; ++l) {
            const uint8_t code = mplanes[l][row + c];
            mrow[c * L + l] *= factor[code < kClamped ? code : kClamped];
          }
        }
      }
    }

    // Down stage into out [out_h][out_w][L]; mid samples outside [v0, v1) are zeros.
    if (job.call.sepB) {
      // Along x: t2 [mid_h][out_w][L].
      grow(ws.t2, static_cast<size_t>(mid_h) * out_w * L);
      T* t2 = ws.t2.data();
      for (int r = 0; r < mid_h; ++r) {
        const T* mrow = mid + static_cast<size_t>(r) * mid_w * L;
        T* trow = t2 + static_cast<size_t>(r) * out_w * L;
        for (int c = 0; c < out_w; ++c) {
          const int f = down_first(ax, sx.o0 + c) - sx.v0;  // first mid column, tile-relative
          const int s0 = std::max(0, -f), s1 = std::min(ax.FB, mid_w - f);
          T acc[L] = {};
          for (int s = s0; s < s1; ++s) {
            const T w = job.B.x[s];
            const T* v = mrow + (f + s) * L;
            for (int l = 0; l < L; ++l) acc[l] += w * v[l];
          }
          for (int l = 0; l < L; ++l) trow[c * L + l] = acc[l];
        }
      }
      const int n = out_w * L;
      for (int r = 0; r < out_h; ++r) {
        const int f = down_first(ay, sy.o0 + r) - sy.v0;
        const int s0 = std::max(0, -f), s1 = std::min(ay.FB, mid_h - f);
        T* orow = out + static_cast<size_t>(r) * n;
        for (int s = s0; s < s1; ++s) {
          const T w = job.B.y[s];
          const T* trow = t2 + static_cast<size_t>(f + s) * n;
          for (int j = 0; j < n; ++j) orow[j] += w * trow[j];
        }
      }
    } else {
      const int fw = job.B.w;
      for (int r = 0; r < out_h; ++r) {
        const int fy = down_first(ay, sy.o0 + r) - sy.v0;
        const int sy0 = std::max(0, -fy), sy1 = std::min(ay.FB, mid_h - fy);
        for (int c = 0; c < out_w; ++c) {
          const int fx = down_first(ax, sx.o0 + c) - sx.v0;
          const int sx0 = std::max(0, -fx), sx1 = std::min(ax.FB, mid_w - fx);
          T acc[L] = {};
          for (int s = sy0; s < sy1; ++s) {
            const T* mrow = mid + static_cast<size_t>(fy + s) * mid_w * L;
            const T* wrow = job.B.xy + s * fw;
            for (int q = sx0; q < sx1; ++q) {
              const T w = wrow[q];
              const T* v = mrow + (fx + q) * L;
              for (int l = 0; l < L; ++l) acc[l] += w * v[l];
            }
          }
          T* o = out + (static_cast<size_t>(r) * out_w + c) * L;
          for (int l = 0; l < L; ++l) o[l] = acc[l];
        }
      }
    }
  }

  // Scatter the output tile back to the planes.
  for (int l = 0; l < nl; ++l) {
    S* plane = dst + (p0 + l) * out_plane;
    for (int r = 0; r < out_h; ++r) {
      S* orow = plane + static_cast<int64_t>(sy.o0 + r) * ax.Lout + sx.o0;
      const T* trow = out + static_cast<size_t>(r) * out_w * L + l;
      for (int c = 0; c < out_w; ++c) orow[c] = static_cast<S>(trow[c * L]);
    }
  }
}

// NOLINTEND(build/include)
