// Host emulation of the CUDA target, for tests on machines without a GPU: the generated CUDA
// source is compiled as C++ with this file standing in for the real mlrt_cuda_kernels.cuh. Each
// kernel runs one (block, thread) at a time; GEMM-shaped kernels use a reference loop (thread 0 of
// each block computes the block's 64x64 tile) with operands rounded to the bundle's precision, so
// everything but the tiled/tensor-core GEMM bodies (checked on a real GPU) is exercised: addressing,
// launch grids, operand loaders, fused epilogues, generated elementwise and reduction kernels.
#pragma once

#include <math.h>

#include <algorithm>
#include <stdint.h>
#include <string.h>

struct mlrt_dim3 {
  unsigned x, y, z;
};
static mlrt_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

static inline float __int_as_float(unsigned v) {
  float f;
  memcpy(&f, &v, 4);
  return f;
}
static inline double __longlong_as_double(long long v) {
  double d;
  memcpy(&d, &v, 8);
  return d;
}
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
using std::min;

// The half-precision weight types of fp16/bf16 bundles: IEEE binary16 is the compiler's _Float16;
// bfloat16 is its bits (the upper half of a float32), widened exactly as __bfloat162float does.
typedef _Float16 half;
struct __nv_bfloat16 {
  uint16_t bits;
};
namespace mlrt {
static inline float to_float(half v) { return (float)v; }
static inline float to_float(__nv_bfloat16 v) {
  uint32_t b = (uint32_t)v.bits << 16;
  float f;
  memcpy(&f, &b, 4);
  return f;
}
}  // namespace mlrt

#define MLRT_LANES 1  // warp-split reductions: lane 0 alone walks the whole reduction
#include "mlrt_cuda_common.cuh"

namespace mlrt {

// Operand rounding of the tensor-core precisions (round to nearest even).
static inline float round_operand(float v) {
#if MLRT_PRECISION == 0
  return v;
#else
  uint32_t b;
  memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) == 0x7f800000u) return v;
#if MLRT_PRECISION == 1
  const int drop = 13;  // tf32: 10 mantissa bits
#elif MLRT_PRECISION == 2
  return (float)(_Float16)v;  // fp16 (range too)
#else
  const int drop = 16;  // bf16: 7 mantissa bits
#endif
#if MLRT_PRECISION != 2
  uint32_t half = 1u << (drop - 1), lsb = (b >> drop) & 1u;
  b = (b + half - 1 + lsb) & ~((1u << drop) - 1);
  memcpy(&v, &b, 4);
  return v;
#endif
#endif
}

template <int T, class LA, class LB, class ST>
void gemm(int M, int N, int k0, int k1, LA la, LB lb, const ST &store) {
  if (threadIdx.x != 0) return;
  const int m0 = blockIdx.y * T, n0 = blockIdx.x * T;
  for (int m = m0; m < m0 + T && m < M; ++m)
    for (int n = n0; n < n0 + T && n < N; ++n) {
      float acc = 0.0f;
      for (int k = k0; k < k1; ++k) {
        // Tensor cores (rounded operands) only in 128x128 tiles; 64x64 tiles compute in fp32.
        acc = T == 128 ? fmaf(round_operand(la(m, k)), round_operand(lb(k, n)), acc) : fmaf(la(m, k), lb(k, n), acc);
      }
      store(m, n, acc);
    }
}

}  // namespace mlrt
