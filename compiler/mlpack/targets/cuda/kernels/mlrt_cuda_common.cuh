// Device code shared by the CUDA kernels (mlrt_cuda_kernels.cuh) and the host emulation the tests
// use to check generated kernels without a GPU (tests/cuda_emulation): the epilogue, the operand
// loaders, the conv/matmul wrappers and the non-GEMM kernels. Only plain arithmetic here; the
// includer defines `gemm` (tiled on the GPU, a reference loop in the emulation) and, before
// including this file, `to_float` for the half-precision weight types `half` and `__nv_bfloat16`.
#pragma once

#include <stdint.h>

namespace mlrt {

constexpr int kBK = 16, kThreads = 256;  // split-K slices are multiples of kBK

struct Epilogue {
  int overwrite;          // 1: ignore C (the zero/bias fill was fused)
  const float *bias;      // per row (bias_per_col = 0) or per column, or null
  int bias_per_col;
  const float *residual;  // shaped like C, or null
  float lo, hi;           // clamp
  const float *c;         // prior contents of C (used when !overwrite)
  float *dst;             // final output
};

__device__ __forceinline__ void store_output(const Epilogue &ep, int64_t base, int m, int n, int N, float acc) {
  int64_t at = base + (int64_t)m * N + n;
  float v = ep.overwrite ? (ep.bias ? ep.bias[ep.bias_per_col ? n : m] : 0.0f) : ep.c[at];
  v += acc;
  if (ep.residual) v += ep.residual[at];
  v = fminf(fmaxf(v, ep.lo), ep.hi);
  ep.dst[at] = v;
}

// Operands are read as float. GEMM and conv weights of fp16/bf16 bundles are stored in that type
// (docs/bundle-format.md, "Half-precision weights"): E is float, half or __nv_bfloat16, widened
// exactly on load (the tensor-core paths narrow them again when staging, losslessly).
__device__ __forceinline__ float to_float(float v) { return v; }

// A(m, k) of a row-major [M, K] matrix.
template <class E>
struct RowMajorA {
  const E *p;
  int lda;
  __device__ __forceinline__ float operator()(int m, int k) const { return to_float(p[(int64_t)m * lda + k]); }
};

// B(k, n) of a row-major [K, N] matrix, or of the packed panels [ceil(N/16), K, 16] of one.
template <class E>
struct DenseB {
  const E *p;
  int N, K, packed;
  __device__ __forceinline__ float operator()(int k, int n) const {
    return to_float(packed ? p[((int64_t)(n >> 4) * K + k) * 16 + (n & 15)] : p[(int64_t)k * N + n]);
  }
};

// B(k, n) of the implicit im2col matrix of one NCHW image: k = (c, kh, kw), n = (oh, ow).
struct Im2colB {
  const float *x;
  int H, W, KH, KW, OW, sh, sw, dh, dw, pt, pl;
  __device__ __forceinline__ float operator()(int k, int n) const {
    int kw = k % KW, t = k / KW;
    int kh = t % KH, c = t / KH;
    int oh = n / OW, ow = n % OW;
    int h = oh * sh - pt + kh * dh, w = ow * sw - pl + kw * dw;
    return (h >= 0 && h < H && w >= 0 && w < W) ? x[((int64_t)c * H + h) * W + w] : 0.0f;
  }
};

// Where a GEMM tile's results go: through the fused epilogue, or raw into a split-K partial.
struct EpilogueStore {
  const Epilogue &ep;
  int64_t base;
  int N;
  __device__ __forceinline__ void operator()(int m, int n, float acc) const { store_output(ep, base, m, n, N, acc); }
};
struct PartialStore {
  float *p;
  int N;
  __device__ __forceinline__ void operator()(int m, int n, float acc) const { p[(int64_t)m * N + n] = acc; }
};

// Defined by the includer: the block's T x T tile of A[:, k0:k1] * B[k0:k1, :], handed to `store`.
template <int T, class LA, class LB, class ST>
__device__ void gemm(int M, int N, int k0, int k1, LA la, LB lb, const ST &store);

// Split-K: when a GEMM has too few output tiles to fill the GPU, grid z runs `splits` slices of K
// per batch element, each writing raw partial sums to `part` ([batch, splits, M, N]); a second
// kernel (splitk_reduce) adds them in a fixed order (deterministic) and applies the epilogue.
__device__ __forceinline__ void k_slice(int K, int splits, int s, int &k0, int &k1) {
  int per = (K + splits - 1) / splits;
  per = (per + kBK - 1) / kBK * kBK;
  k0 = s * per;
  k1 = min(K, k0 + per);
}

template <int T, class LA, class LB>
__device__ __forceinline__ void gemm_split(int M, int N, int K, LA la, LB lb, const Epilogue &ep, int64_t bz,
                                           int splits, float *part) {
  if (splits == 1) {
    gemm<T>(M, N, 0, K, la, lb, EpilogueStore{ep, bz * M * N, N});
  } else {
    const int s = blockIdx.z % splits;
    int k0, k1;
    k_slice(K, splits, s, k0, k1);
    gemm<T>(M, N, k0, k1, la, lb, PartialStore{part + (bz * splits + s) * M * N, N});
  }
}

// C[z] (op)= A[z] * B[z]: grid (ceil(N/T), ceil(M/T), batch * splits). TA, TB: float, or a
// half type for a weight operand stored narrowed.
template <int T, class TA, class TB>
__device__ __forceinline__ void matmul(const TA *a, const TB *b, int M, int N, int K, int packed, Epilogue ep,
                                       int splits, float *part) {
  const int64_t z = blockIdx.z / splits;
  gemm_split<T>(M, N, K, RowMajorA<TA>{a + z * M * K, K}, DenseB<TB>{b + (packed ? 0 : z * K * N), N, K, packed},
                ep, z, splits, part);
}

// Convolution as implicit GEMM, one image per grid z: [CO, C*KH*KW] x im2col -> [CO, OH*OW].
template <int T, class TW>
__device__ __forceinline__ void conv2d(const float *x, const TW *w, int C, int H, int W, int CO, int KH, int KW,
                                       int OH, int OW, int sh, int sw, int dh, int dw, int pt, int pl, Epilogue ep,
                                       int splits, float *part) {
  const int64_t z = blockIdx.z / splits;
  gemm_split<T>(CO, OH * OW, C * KH * KW, RowMajorA<TW>{w, C * KH * KW},
                Im2colB{x + z * C * H * W, H, W, KH, KW, OW, sh, sw, dh, dw, pt, pl}, ep, z, splits, part);
}

// The second half of split-K: one thread per output element.
__device__ __forceinline__ void splitk_reduce(int batch, int M, int N, int splits, const float *part, Epilogue ep) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, mn = (int64_t)M * N;
  if (i >= batch * mn) return;
  const int64_t bz = i / mn, r = i % mn;
  float acc = 0.0f;
  for (int s = 0; s < splits; ++s) acc += part[(bz * splits + s) * mn + r];
  store_output(ep, bz * mn, r / N, r % N, N, acc);
}

// Depthwise convolution (one filter per channel): one thread per output element.
template <class TW>
__device__ __forceinline__ void depthwise_conv2d(const float *x, const TW *w, int batch, int C, int H, int W, int KH,
                                                 int KW, int OH, int OW, int sh, int sw, int dh, int dw, int pt,
                                                 int pl, Epilogue ep) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t total = (int64_t)batch * C * OH * OW;
  if (i >= total) return;
  int ow = i % OW, oh = (i / OW) % OH;
  int64_t nc = i / ((int64_t)OH * OW);
  int c = nc % C;
  const float *xc = x + nc * H * W;
  const TW *wc = w + (int64_t)c * KH * KW;
  float acc = 0.0f;
  for (int kh = 0; kh < KH; ++kh) {
    int h = oh * sh - pt + kh * dh;
    if (h < 0 || h >= H) continue;
    for (int kw = 0; kw < KW; ++kw) {
      int ww = ow * sw - pl + kw * dw;
      if (ww >= 0 && ww < W) acc = fmaf(xc[(int64_t)h * W + ww], to_float(wc[kh * KW + kw]), acc);
    }
  }
  // Per-channel bias: store_output with M = channel rows of one "column".
  int64_t at = i;
  float v = ep.overwrite ? (ep.bias ? ep.bias[c] : 0.0f) : ep.c[at];
  v += acc;
  if (ep.residual) v += ep.residual[at];
  ep.dst[at] = fminf(fmaxf(v, ep.lo), ep.hi);
}

// IEEE maximum/minimum (NaN-propagating, as arith.maximumf / PyTorch's max).
__device__ __forceinline__ float maximumf(float a, float b) { return (a != a || b != b) ? a + b : fmaxf(a, b); }
__device__ __forceinline__ float minimumf(float a, float b) { return (a != a || b != b) ? a + b : fminf(a, b); }
__device__ __forceinline__ double maximumf(double a, double b) { return (a != a || b != b) ? a + b : fmax(a, b); }
__device__ __forceinline__ double minimumf(double a, double b) { return (a != a || b != b) ? a + b : fmin(a, b); }

// Warp-wide reductions for the generated kernels (a warp per output point). MLRT_LANES is 32 on
// the GPU; the host emulation sets 1 (lane 0 alone then walks the whole reduction).
#ifndef MLRT_LANES
#define MLRT_LANES 32
#endif
template <class T, class F>
__device__ __forceinline__ T warp_reduce(T v, F combine) {
#if MLRT_LANES > 1
  for (int o = 16; o > 0; o >>= 1) v = combine(v, __shfl_xor_sync(0xffffffffu, v, o));
#endif
  return v;
}
template <class T> __device__ __forceinline__ T warp_sum(T v) { return warp_reduce(v, [](T a, T b) { return a + b; }); }
template <class T> __device__ __forceinline__ T warp_max(T v) { return warp_reduce(v, [](T a, T b) { return maximumf(a, b); }); }
template <class T> __device__ __forceinline__ T warp_min(T v) { return warp_reduce(v, [](T a, T b) { return minimumf(a, b); }); }

}  // namespace mlrt
