/* Checks mlrt_matmul_f32 (A row-major and read in place, B packed at run time or read in place)
 * and mlrt_gemm_packed with A in build-time panels (MLRT_A_PANELS) against plain loops, for M
 * 1-30 (every pass split of the 6-row AVX2 tile and the 12-row AVX-512 one, A packed per block),
 * N 1-70 (whole, half and ragged panels), K past one K block, every epilogue kind, 1 and 3
 * threads. Built with ASan + UBSan by tests/test_kernels.py, once per kernel ISA (MLRT_KERNEL_ISA).
 * Prints "ok <cases> <isa>" and exits 0, or names the first mismatching case and exits 1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_SEED 4242u
#include "check_harness.h"

/* e: bit 0 bias (per column for matmul, per row for packed A), bit 1 residual, bit 2 accumulate
 * into C instead of overwriting it, bit 3 clamp. */
static int run_case(int64_t M, int64_t N, int64_t K, int e, int threads, int a_panels, int b_in_place) {
  const int64_t lda = K + (M % 3); /* rows further apart than K: a view */
  float *A = fresh(M * lda), *B = fresh(K * N), *C = fresh(M * N), *res = (e & 2) ? fresh(M * N) : NULL;
  float *bias = (e & 1) ? fresh(a_panels ? M : N) : NULL, *want = malloc((size_t)(M * N) * sizeof(float));
  const float lo = (e & 8) ? -0.5f : -INFINITY, hi = (e & 8) ? 0.75f : INFINITY;
  const int overwrite = !(e & 4);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = overwrite ? (bias ? bias[a_panels ? i : j] : 0.0) : C[i * N + j];
      for (int64_t k = 0; k < K; ++k) acc += (double)A[i * lda + k] * B[k * N + j];
      if (res) acc += res[i * N + j];
      float v = (float)acc;
      want[i * N + j] = v < lo ? lo : v > hi ? hi : v;
    }
  use_threads(threads);
  if (a_panels) {
    /* [ceil(M/MR)][K][MR], zero rows at the end; B packed in panels */
    const int64_t panels = (M + MLRT_MR - 1) / MLRT_MR;
    float *Ap = calloc((size_t)(panels * K * MLRT_MR), sizeof(float));
    float *Bp = calloc((size_t)mlrt_packed_b_floats(K, N), sizeof(float));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) Ap[(i / MLRT_MR) * K * MLRT_MR + k * MLRT_MR + i % MLRT_MR] = A[i * lda + k];
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) Bp[(j / MLRT_NR) * K * MLRT_NR + k * MLRT_NR + j % MLRT_NR] = B[k * N + j];
    mlrt_epilogue ep = {overwrite, bias, 0, res, lo, hi, C};
    mlrt_gemm_packed(M, N, K, Ap, MLRT_A_PANELS, Bp, C, N, &ep);
    free(Ap);
    free(Bp);
  } else {
    float *scratch = b_in_place ? NULL : malloc((size_t)mlrt_packed_b_floats(K, N) * sizeof(float));
    mlrt_matmul_f32((int64_t)(intptr_t)A, (int64_t)(intptr_t)B, (int64_t)(intptr_t)C, (int64_t)(intptr_t)scratch, 1, M,
                    N, K, overwrite, (int64_t)(intptr_t)bias, 1, 0, (int64_t)(intptr_t)res, lo, hi, (int64_t)(intptr_t)C,
                    0, lda, 0, N, 1);
    free(scratch);
  }
  int bad = 0;
  for (int64_t i = 0; i < M * N && !bad; ++i) {
    const float tol = 1e-4f * (1.0f + fabsf(want[i])) * (float)(K > 16 ? K / 16 : 1);
    if (!(fabsf(C[i] - want[i]) <= tol)) {
      printf("mismatch M=%ld N=%ld K=%ld e=%d threads=%d a_panels=%d b_in_place=%d at %ld: %g vs %g\n", (long)M,
             (long)N, (long)K, e, threads, a_panels, b_in_place, (long)i, C[i], want[i]);
      bad = 1;
    }
  }
  free(A), free(B), free(C), free(res), free(bias), free(want);
  return bad ? -1 : 1;
}

int main(void) {
  int cases = 0;
  /* tails of 1-3 columns after full panels (7x7 maps: 49) take the rows-in-lanes tail kernel */
  static const int64_t Ns[] = {1, 2, 8, 9, 16, 17, 36, 40, 51, 70};
  static const int64_t Ks[] = {1, 7, 300, 520};
  for (int64_t M = 1; M <= 30; ++M)
    for (int ni = 0; ni < (int)(sizeof Ns / sizeof *Ns); ++ni)
      for (int ki = 0; ki < 4; ++ki) {
        const int e = (int)((M + ni + ki) % 16), threads = (M + ki) % 2 ? 3 : 1;
        for (int mode = 0; mode < 3; ++mode) {
          /* B read in place only for few rows, as the compiler passes it */
          if (mode == 2 && M > 4) continue;
          const int r = run_case(M, Ns[ni], Ks[ki], e, threads, mode == 0, mode == 2);
          if (r < 0) return 1;
          cases += r;
        }
      }
  /* deeper than one K block (gemm.c KC_WHOLE): partial sums kept in C between blocks */
  for (int64_t M = 7; M <= 19; M += 6)
    for (int ni = 4; ni < 7; ++ni) {
      const int r = run_case(M, Ns[ni], 4100, (int)(M + ni) % 16, (int)(M % 2) ? 3 : 1, ni == 5, 0);
      if (r < 0) return 1;
      cases += r;
    }
  printf("ok %d %s\n", cases, mlrt_kernel_isa());
  return 0;
}
