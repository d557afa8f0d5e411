// Shared by the CPU (g++) and CUDA (nvcc) builds of every StyleDeck op.
//
// Per-element arithmetic lives in SD_HOST_DEVICE inline functions, so the C++ CPU kernels that CI
// tests against the reference run the very index and activation logic the GPU kernels run.
#pragma once

#ifdef __CUDACC__
#define SD_HOST_DEVICE __host__ __device__
#else
#define SD_HOST_DEVICE
#endif

namespace styledeck {

// Integer division rounding towards minus infinity (C++ rounds towards zero).
SD_HOST_DEVICE inline int floor_div(int a, int b) {
    int q = a / b;
    return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Integer division rounding towards plus infinity.
SD_HOST_DEVICE inline int ceil_div(int a, int b) { return -floor_div(-a, b); }

// Remainder with the sign of the divisor: pos_mod(-1, 4) == 3.
SD_HOST_DEVICE inline int pos_mod(int a, int b) { return a - floor_div(a, b) * b; }

SD_HOST_DEVICE inline int imin(int a, int b) { return a < b ? a : b; }
SD_HOST_DEVICE inline int imax(int a, int b) { return a > b ? a : b; }

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

}  // namespace styledeck
