// CUDA kernels the generated code instantiates (the GPU twin of kernels/mlrt_kernels.h).
//
// The generated source includes this file. Every kernel of a bundle is
// `extern "C" __global__ void kN(void *const *A)`: A is the argument table (one device pointer per
// manifest `call` entry), and every shape, stride and offset is a constant in the generated
// wrapper, so the wrappers inline these templates with literal arguments and the compiler folds them.
//
// GEMM-shaped work (matmul, batch matmul, convolution as implicit GEMM) goes through one tiled
// kernel per tile size, 256 threads per block, operands staged through shared memory:
//   64x64 tiles (small GEMMs, with split-K when there are too few tiles): fp32 on CUDA cores, 4x4
//     outputs per thread, for every precision;
//   128x128 tiles (large GEMMs): fp32 on CUDA cores (8x8 per thread), or tensor cores through
//     WMMA for tf32/fp16/bf16 (fp32 accumulation).
// The epilogue is fused: acc = (overwrite ? bias : C) + A*B;  D = clamp(acc + residual, lo, hi),
// exactly as the CPU microkernels define it (kernels/mlrt_kernels.h).
// With --precision fp16/bf16 the weight operand of each GEMM and conv (not biases) is stored in that
// type (half the bytes to read); the loaders widen it to float, and the tensor-core tiles narrow it
// back when staging it in shared memory, which is exact, so the results are those of fp32 weights
// rounded once at build time. (No mma.sync/ldmatrix path reads them raw yet: that waits on GPU timings.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

namespace mlrt {
// Half-precision weights (fp16/bf16 bundles) widen exactly to float when loaded.
__device__ __forceinline__ float to_float(half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
}  // namespace mlrt

#include "mlrt_cuda_common.cuh"  // epilogue, loaders, wrappers: shared with the host emulation

namespace mlrt {

// fp32: CUDA cores. A (16*TM) x (16*TN) tile per 256-thread block, each thread a TM x TN block of
// it; K in steps of 8. The next step's operands are loaded into registers while the current one
// is multiplied from shared memory, so global-memory latency hides behind the FMAs.
template <int TM, int TN, class LA, class LB, class ST>
__device__ __forceinline__ void gemm_fp32(int M, int N, int kbegin, int K, LA la, LB lb, const ST &store) {
  constexpr int BM = 16 * TM, BN = 16 * TN, BK = 8, A_PER = BM * BK / kThreads, B_PER = BN * BK / kThreads;
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  float acc[TM][TN] = {};
  float ra[A_PER], rb[B_PER];
  auto load = [&](int k0) {
#pragma unroll
    for (int r = 0; r < A_PER; ++r) {
      int i = tid + r * kThreads, mm = i / BK, kk = i % BK, m = m0 + mm, k = k0 + kk;
      ra[r] = (m < M && k < K) ? la(m, k) : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < B_PER; ++r) {
      int i = tid + r * kThreads, kk = i / BN, nn = i % BN, k = k0 + kk, n = n0 + nn;
      rb[r] = (k < K && n < N) ? lb(k, n) : 0.0f;
    }
  };
  load(kbegin);
  for (int k0 = kbegin; k0 < K; k0 += BK) {
#pragma unroll
    for (int r = 0; r < A_PER; ++r) {
      int i = tid + r * kThreads;
      As[i % BK][i / BK] = ra[r];
    }
#pragma unroll
    for (int r = 0; r < B_PER; ++r) {
      int i = tid + r * kThreads;
      Bs[i / BN][i % BN] = rb[r];
    }
    __syncthreads();
    if (k0 + BK < K) load(k0 + BK);
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      int m = m0 + ty * TM + i, n = n0 + tx * TN + j;
      if (m < M && n < N) store(m, n, acc[i][j]);
    }
}

// Operand element types of the tensor-core paths.
template <class T> struct Convert;
template <> struct Convert<half> { static __device__ __forceinline__ half from(float v) { return __float2half_rn(v); } };
template <> struct Convert<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};
template <> struct Convert<float> {  // tf32: rounded when loaded into fragments
  static __device__ __forceinline__ float from(float v) { return v; }
};

template <class T> struct Wmma { using In = T; static constexpr int kK = 16; };
template <> struct Wmma<float> { using In = nvcuda::wmma::precision::tf32; static constexpr int kK = 8; };

// tf32 / fp16 / bf16: tensor cores through WMMA, fp32 accumulation, for large GEMMs: a 128x128 tile, 8 warps as 2 (M) x 4 (N), each a 64x32
// slice (4x2 fragments); operands converted once when staged in shared memory (the next K step is
// prefetched into registers meanwhile); each warp hands its accumulators to the epilogue through a
// private 16x16 scratch, so no full-tile staging buffer is needed.
template <class T, class LA, class LB, class ST>
__device__ __forceinline__ void gemm_tc128(int M, int N, int kbegin, int K, LA la, LB lb, const ST &store) {
  using namespace nvcuda;
  constexpr int BM = 128, BN = 128, BK = 16, PER = BM * BK / kThreads;
  constexpr int kPad = 16 / sizeof(T) * 2;
  constexpr int kLdA = BK + kPad, kLdB = BN + kPad;
  __shared__ __align__(32) T As[BM][kLdA];
  __shared__ __align__(32) T Bs[BK][kLdB];
  __shared__ __align__(32) float Ws[8][16 * 16];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wm = warp / 4, wn = warp % 4;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  using In = typename Wmma<T>::In;
  constexpr int kK = Wmma<T>::kK;
  wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  float ra[PER], rb[PER];
  auto load = [&](int k0) {
#pragma unroll
    for (int r = 0; r < PER; ++r) {
      int i = tid + r * kThreads, mm = i / BK, kk = i % BK, m = m0 + mm, k = k0 + kk;
      ra[r] = (m < M && k < K) ? la(m, k) : 0.0f;
      int kb = i / BN, nn = i % BN, kb2 = k0 + kb, n = n0 + nn;
      rb[r] = (kb2 < K && n < N) ? lb(kb2, n) : 0.0f;
    }
  };
  load(kbegin);
  for (int k0 = kbegin; k0 < K; k0 += BK) {
#pragma unroll
    for (int r = 0; r < PER; ++r) {
      int i = tid + r * kThreads;
      As[i / BK][i % BK] = Convert<T>::from(ra[r]);
      Bs[i / BN][i % BN] = Convert<T>::from(rb[r]);
    }
    __syncthreads();
    if (k0 + BK < K) load(k0 + BK);
#pragma unroll
    for (int kk = 0; kk < BK; kk += kK) {
      wmma::fragment<wmma::matrix_b, 16, 16, kK, In, wmma::row_major> b[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(b[j], &Bs[kk][wn * 32 + j * 16], kLdB);
        if constexpr (sizeof(T) == 4) {
          for (int e = 0; e < b[j].num_elements; ++e) b[j].x[e] = wmma::__float_to_tf32(b[j].x[e]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, In, wmma::row_major> a;
        wmma::load_matrix_sync(a, &As[wm * 64 + i * 16][kk], kLdA);
        if constexpr (sizeof(T) == 4) {
          for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(a.x[e]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(Ws[warp], acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int e = lane; e < 256; e += 32) {
        int m = m0 + wm * 64 + i * 16 + e / 16, n = n0 + wn * 32 + j * 16 + e % 16;
        if (m < M && n < N) store(m, n, Ws[warp][e]);
      }
      __syncwarp();
    }
}

// Precision tag -> GEMM implementation (MLRT_PRECISION is set by the generated source); T is the
// output tile (64, or 128 for GEMMs with enough tiles to fill the GPU).
template <int T, class LA, class LB, class ST>
__device__ void gemm(int M, int N, int k0, int k1, LA la, LB lb, const ST &store) {
#if MLRT_PRECISION == 0
  gemm_fp32<T / 16, T / 16>(M, N, k0, k1, la, lb, store);
#else
#if MLRT_PRECISION == 1
  using Op = float;
#elif MLRT_PRECISION == 2
  using Op = half;
#else
  using Op = __nv_bfloat16;
#endif
  // Small GEMMs (64x64 tiles) stay on CUDA cores in fp32: measured on an H200, the 64x64 WMMA
  // kernel made ResNet-50 at batch 1 2x slower than fp32 (2.9 vs 1.5 ms).
  if constexpr (T == 128) {
    gemm_tc128<Op>(M, N, k0, k1, la, lb, store);
  } else {
    gemm_fp32<4, 4>(M, N, k0, k1, la, lb, store);
  }
#endif
}

}  // namespace mlrt
