/* SGEMM: C += A * B, fp32, row-major. B is packed into panels of MLRT_NR (16) columns
 * (panel j holds B[0..K)[16j..16j+16) contiguously, zero-padded), A is read in place.
 * Register kernel: 6 rows x 16 columns = 12 AVX2 accumulators (BLIS "haswell" shape), blocked
 * over K (KC) and M (MC) for the caches. Without AVX2 (x86-64 baseline bundles) a plain C kernel
 * with the same blocking is compiled instead. */
#include <string.h>

#include "mlrt_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MLRT_HAVE_AVX2 1
#endif

enum { MR = 6, NR = MLRT_NR, KC = 256, MC = 96 };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

#ifdef MLRT_HAVE_AVX2
/* Adds one accumulated row (two ymm) to C[0..n). Values, not addresses: taking the address of an
 * accumulator would make the compiler keep every accumulator in memory inside the k loop. */
static inline __attribute__((always_inline)) void store_row(float *c, __m256 x0, __m256 x1, int64_t n) {
  if (n == NR) {
    _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), x0));
    _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_loadu_ps(c + 8), x1));
  } else {
    float tmp[NR];
    _mm256_storeu_ps(tmp, x0);
    _mm256_storeu_ps(tmp + 8, x1);
    for (int64_t j = 0; j < n; ++j) c[j] += tmp[j];
  }
}

/* C[ROWS x n] += A[ROWS x K] * Bp[K x 16]: 2*ROWS named accumulators stay in registers
 * (`rows` is a constant, so the unused rows compile away). */
#define ROW_FMA(r)                                          \
  if (rows > r) {                                           \
    const __m256 a = _mm256_broadcast_ss(A + r * lda + k);  \
    c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);              \
    c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);              \
  }
#define ROW_STORE(r) \
  if (rows > r) store_row(C + r * ldc, c##r##0, c##r##1, n);
#define DEFINE_UKERNEL(ROWS)                                                                                  \
  static void ukernel_##ROWS(int64_t K, const float *A, int64_t lda, const float *Bp, float *C, int64_t ldc, \
                             int64_t n) {                                                                     \
    const int rows = ROWS;                                                                                    \
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;                 \
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;                                 \
    for (int64_t k = 0; k < K; ++k) {                                                                         \
      const __m256 b0 = _mm256_load_ps(Bp + k * NR);                                                          \
      const __m256 b1 = _mm256_load_ps(Bp + k * NR + 8);                                                      \
      ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3) ROW_FMA(4) ROW_FMA(5)                                        \
    }                                                                                                         \
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5)                              \
  }
#else
#define DEFINE_UKERNEL(ROWS)                                                                                  \
  static void ukernel_##ROWS(int64_t K, const float *A, int64_t lda, const float *Bp, float *C, int64_t ldc, \
                             int64_t n) {                                                                     \
    float acc[ROWS][NR];                                                                                      \
    memset(acc, 0, sizeof(acc));                                                                              \
    for (int64_t k = 0; k < K; ++k)                                                                           \
      for (int i = 0; i < ROWS; ++i) {                                                                        \
        const float a = A[i * lda + k];                                                                       \
        for (int j = 0; j < NR; ++j) acc[i][j] += a * Bp[k * NR + j];                                         \
      }                                                                                                       \
    for (int i = 0; i < ROWS; ++i)                                                                            \
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] += acc[i][j];                                            \
  }
#endif

DEFINE_UKERNEL(1)
DEFINE_UKERNEL(2)
DEFINE_UKERNEL(3)
DEFINE_UKERNEL(4)
DEFINE_UKERNEL(5)
DEFINE_UKERNEL(6)

static void ukernel_rows(int64_t mr, int64_t K, const float *A, int64_t lda, const float *Bp, float *C, int64_t ldc,
                         int64_t n) {
  switch (mr) {
    case 6: ukernel_6(K, A, lda, Bp, C, ldc, n); break;
    case 5: ukernel_5(K, A, lda, Bp, C, ldc, n); break;
    case 4: ukernel_4(K, A, lda, Bp, C, ldc, n); break;
    case 3: ukernel_3(K, A, lda, Bp, C, ldc, n); break;
    case 2: ukernel_2(K, A, lda, Bp, C, ldc, n); break;
    default: ukernel_1(K, A, lda, Bp, C, ldc, n); break;
  }
}

typedef struct {
  int64_t M, N, K, lda, ldc;
  const float *A, *Bp;
  float *C;
  int64_t panels, panel_chunk, m_chunk, n_tasks_n;
} gemm_job;

/* One task: rows [m0, m1) x panels [p0, p1). */
static void gemm_task(void *ctx, int64_t t) {
  const gemm_job *g = (const gemm_job *)ctx;
  const int64_t tm = t / g->n_tasks_n, tn = t % g->n_tasks_n;
  const int64_t m0 = tm * g->m_chunk, m1 = min64(g->M, m0 + g->m_chunk);
  const int64_t p0 = tn * g->panel_chunk, p1 = min64(g->panels, p0 + g->panel_chunk);
  for (int64_t pc = 0; pc < g->K; pc += KC) {
    const int64_t kc = min64(KC, g->K - pc);
    for (int64_t ic = m0; ic < m1; ic += MC) {
      const int64_t mc_end = min64(m1, ic + MC);
      for (int64_t p = p0; p < p1; ++p) {
        const float *bp = g->Bp + p * g->K * NR + pc * NR;
        const int64_t n = min64(NR, g->N - p * NR);
        for (int64_t i = ic; i < mc_end; i += MR)
          ukernel_rows(min64(MR, mc_end - i), kc, g->A + i * g->lda + pc, g->lda, bp, g->C + i * g->ldc + p * NR,
                       g->ldc, n);
      }
    }
  }
}

void mlrt_gemm_packed(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *Bp, float *C,
                      int64_t ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  gemm_job g = {M, N, K, lda, ldc, A, Bp, C, (N + NR - 1) / NR, 0, 0, 0};
  const int64_t threads = mlrt_threads();
  /* Split columns (panels) first: each task then reads all of A once per K block. When there are
   * fewer panels than threads, split rows too (in multiples of MR). */
  int64_t tn = min64(g.panels, threads > 1 ? 2 * threads : 1);
  int64_t tm = 1;
  if (tn < threads) tm = min64((M + MR - 1) / MR, (threads + tn - 1) / tn);
  g.panel_chunk = (g.panels + tn - 1) / tn;
  tn = (g.panels + g.panel_chunk - 1) / g.panel_chunk;
  g.m_chunk = ((M + tm - 1) / tm + MR - 1) / MR * MR;
  tm = (M + g.m_chunk - 1) / g.m_chunk;
  g.n_tasks_n = tn;
  mlrt_parallel_for(tm * tn, gemm_task, &g);
}

/* ------------------------------------------------------------------------- packing B */

typedef struct {
  const float *B;
  float *Bp;
  int64_t K, N, ldb;
} pack_job;

static void pack_panel(void *ctx, int64_t p) {
  const pack_job *j = (const pack_job *)ctx;
  float *dst = j->Bp + p * j->K * NR;
  const int64_t n0 = p * NR, n = min64(NR, j->N - n0);
  for (int64_t k = 0; k < j->K; ++k) {
    const float *src = j->B + k * j->ldb + n0;
    if (n == NR) {
      memcpy(dst + k * NR, src, NR * sizeof(float));
    } else {
      for (int64_t c = 0; c < NR; ++c) dst[k * NR + c] = c < n ? src[c] : 0.0f;
    }
  }
}

/* ------------------------------------------------------------------------- small-M (GEMV-like) */

typedef struct {
  const float *A, *B;
  float *C;
  int64_t M, N, K, chunk;
} direct_job;

/* C[M x N] += A[M x K] * B[K x N] reading B in place: for M this small, packing B would cost as
 * much memory traffic as the product itself. Tasks split the columns. */
static void direct_task(void *ctx, int64_t t) {
  const direct_job *d = (const direct_job *)ctx;
  const int64_t j0 = t * d->chunk, j1 = min64(d->N, j0 + d->chunk);
  for (int64_t i = 0; i < d->M; ++i) {
    const float *a = d->A + i * d->K;
    float *c = d->C + i * d->N;
    for (int64_t k = 0; k < d->K; ++k) {
      const float ak = a[k];
      const float *restrict b = d->B + k * d->N;
      for (int64_t j = j0; j < j1; ++j) c[j] += ak * b[j];
    }
  }
}

/* ------------------------------------------------------------------------- entry points */

void mlrt_matmul_f32(int64_t a, int64_t b, int64_t c, int64_t scratch, int64_t batch, int64_t M, int64_t N,
                     int64_t K) {
  const float *A = (const float *)(intptr_t)a, *B = (const float *)(intptr_t)b;
  float *C = (float *)(intptr_t)c, *Bp = (float *)(intptr_t)scratch;
  for (int64_t bi = 0; bi < batch; ++bi) {
    const float *Ab = A + bi * M * K, *Bb = B + bi * K * N;
    float *Cb = C + bi * M * N;
    if (!Bp) {
      int64_t chunk = (N + mlrt_threads() - 1) / mlrt_threads();
      chunk = (chunk + 15) / 16 * 16;
      direct_job d = {Ab, Bb, Cb, M, N, K, chunk};
      mlrt_parallel_for((N + chunk - 1) / chunk, direct_task, &d);
      continue;
    }
    pack_job p = {Bb, Bp, K, N, N};
    mlrt_parallel_for((N + NR - 1) / NR, pack_panel, &p);
    mlrt_gemm_packed(M, N, K, Ab, K, Bp, Cb, N);
  }
}
