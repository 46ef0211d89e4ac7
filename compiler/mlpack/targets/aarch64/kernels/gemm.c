/* SGEMM with a fused epilogue: D = clamp((overwrite ? bias : C) + A * B + residual, lo, hi).
 * fp32, row-major. B is packed into panels of MLRT_NR (16) columns (panel j holds
 * B[0..K)[16j..16j+16) contiguously, zero-padded), A is read in place.
 * aarch64: the register tile is 6 rows x 16 columns = 24 NEON accumulators (4 per row) + 4 B
 * vectors + 1 A value, 29 of the 32 vector registers; the blocking over K (KC) and M (MC), the
 * task split and the packing are those of the x86-64 kernels (same weight layouts, same scratch).
 * Not tuned on ARM hardware: the block sizes are x86's. */
#include <string.h>

#include "mlrt_kernels.h"

enum { MR = MLRT_MR, NR = MLRT_NR, KC = 256, MC = 96 };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Where one register tile lands, and what to do when storing it. */
typedef struct {
  const mlrt_epilogue *ep;
  float *C;         /* tile origin in C */
  int64_t ldc;
  int64_t row, col; /* tile origin in the full C (for bias and residual/dst offsets) */
  int64_t n;        /* valid columns, <= 16 */
  int first, last;  /* first / last K block */
  int stream;       /* B's rows come from memory, not cache: prefetch them ahead */
} tile;

/* How far ahead a streaming tile prefetches B: 64 rows, 4 KiB of a packed panel (measured on
 * Zen 4: a 400x400 weight panel set read by 4 rows went from 59 to 22 us; 16 rows ahead gained
 * half of that). Past the panel's end it reaches into the next panel, which is read next. */
enum { PREFETCH_ROWS = 64 };

/* Scalar version of the store: used for partial tiles. */
static void store_row_scalar(const tile *t, int64_t r, const float *acc) {
  const mlrt_epilogue *ep = t->ep;
  float *c = t->C + r * t->ldc;
  const int64_t off = (t->row + r) * t->ldc + t->col;
  for (int64_t j = 0; j < t->n; ++j) {
    float base;
    if (t->first && ep->overwrite) {
      base = !ep->bias ? 0.0f : ep->bias_per_col ? ep->bias[t->col + j] : ep->bias[t->row + r];
    } else {
      base = c[j];
    }
    float v = base + acc[j];
    if (t->last) {
      if (ep->residual) v += ep->residual[off + j];
      ep->dst[off + j] = mlrt_clamp(v, ep->lo, ep->hi);
    } else {
      c[j] = v;
    }
  }
}

/* NAME##ROWS reads A's rows lda apart, NAME##p##ROWS a packed A panel (MLRT_A_PANELS). */
#define UKERNEL_PAIR(NAME, BODY, ROWS)                                                                          \
  static void NAME##ROWS(int64_t K, const float *A, int64_t lda, const float *Bp, int64_t ldb, const tile *t) {   \
    BODY(ROWS, lda, 1, K, A, Bp, ldb, t);                                                                       \
  }                                                                                                             \
  static void NAME##p##ROWS(int64_t K, const float *A, int64_t lda, const float *Bp, int64_t ldb, const tile *t) { \
    (void)lda;                                                                                                  \
    BODY(ROWS, 1, MR, K, A, Bp, ldb, t);                                                                        \
  }

/* Stores one accumulated row (four q registers): values, not addresses, so the accumulators stay
 * in registers inside the k loop. */
static inline __attribute__((always_inline)) void store_row(const tile *t, int64_t r, float32x4_t x0, float32x4_t x1,
                                                            float32x4_t x2, float32x4_t x3) {
  const mlrt_epilogue *ep = t->ep;
  if (t->n != NR) {
    float tmp[NR];
    vst1q_f32(tmp, x0);
    vst1q_f32(tmp + 4, x1);
    vst1q_f32(tmp + 8, x2);
    vst1q_f32(tmp + 12, x3);
    store_row_scalar(t, r, tmp);
    return;
  }
  float *c = t->C + r * t->ldc;
  float32x4_t b0, b1, b2, b3;
  if (t->first && ep->overwrite) {
    if (!ep->bias) {
      b0 = b1 = b2 = b3 = vdupq_n_f32(0.0f);
    } else if (ep->bias_per_col) {
      const float *b = ep->bias + t->col;
      b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8), b3 = vld1q_f32(b + 12);
    } else {
      b0 = b1 = b2 = b3 = vdupq_n_f32(ep->bias[t->row + r]);
    }
  } else {
    b0 = vld1q_f32(c), b1 = vld1q_f32(c + 4), b2 = vld1q_f32(c + 8), b3 = vld1q_f32(c + 12);
  }
  x0 = vaddq_f32(b0, x0), x1 = vaddq_f32(b1, x1), x2 = vaddq_f32(b2, x2), x3 = vaddq_f32(b3, x3);
  if (!t->last) {
    vst1q_f32(c, x0), vst1q_f32(c + 4, x1), vst1q_f32(c + 8, x2), vst1q_f32(c + 12, x3);
    return;
  }
  const int64_t off = (t->row + r) * t->ldc + t->col;
  if (ep->residual) {
    const float *res = ep->residual + off;
    x0 = vaddq_f32(x0, vld1q_f32(res)), x1 = vaddq_f32(x1, vld1q_f32(res + 4));
    x2 = vaddq_f32(x2, vld1q_f32(res + 8)), x3 = vaddq_f32(x3, vld1q_f32(res + 12));
  }
  const float32x4_t lo = vdupq_n_f32(ep->lo), hi = vdupq_n_f32(ep->hi);
  float *d = ep->dst + off;
  vst1q_f32(d, mlrt_clamp4(x0, lo, hi)), vst1q_f32(d + 4, mlrt_clamp4(x1, lo, hi));
  vst1q_f32(d + 8, mlrt_clamp4(x2, lo, hi)), vst1q_f32(d + 12, mlrt_clamp4(x3, lo, hi));
}

/* C[ROWS x n] += A[ROWS x K] * B[K x 16] (B's rows ldb apart: 16 in a packed panel): 4*ROWS named
 * accumulators (`rows` is a constant, so the unused rows compile away). A's element (r, k) is at
 * A + r * rs + k * ks: rows lda apart (ks = 1), or an A panel packed at build time (rs = 1, ks = MR). */
#define ROW_FMA(r)                                   \
  if (rows > r) {                                    \
    const float a = A[r * rs + k * ks];              \
    c##r##0 = vfmaq_n_f32(c##r##0, b0, a);           \
    c##r##1 = vfmaq_n_f32(c##r##1, b1, a);           \
    c##r##2 = vfmaq_n_f32(c##r##2, b2, a);           \
    c##r##3 = vfmaq_n_f32(c##r##3, b3, a);           \
  }
#define ROW_ZERO(r) float32x4_t c##r##0 = vdupq_n_f32(0.0f), c##r##1 = c##r##0, c##r##2 = c##r##0, c##r##3 = c##r##0;
#define ROW_STORE(r) \
  if (rows > r) store_row(t, r, c##r##0, c##r##1, c##r##2, c##r##3);
static inline __attribute__((always_inline)) void ukernel_body(const int rows, const int64_t rs, const int64_t ks,
                                                               int64_t K, const float *A, const float *Bp, int64_t ldb,
                                                               const tile *t) {
  ROW_ZERO(0) ROW_ZERO(1) ROW_ZERO(2) ROW_ZERO(3) ROW_ZERO(4) ROW_ZERO(5)
  const int stream = t->stream;
  for (int64_t k = 0; k < K; ++k) {
    const float *b = Bp + k * ldb;
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8), b3 = vld1q_f32(b + 12);
    if (stream) __builtin_prefetch(Bp + (k + PREFETCH_ROWS) * ldb, 0, 0);
    if (ks != 1) __builtin_prefetch(A + (k + PREFETCH_ROWS) * ks, 0, 0);
    ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3) ROW_FMA(4) ROW_FMA(5)
  }
  ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5)
}
/* The same for a last panel with <= 8 valid columns: half the FMAs. */
#define ROW_FMA8(r)                                  \
  if (rows > r) {                                    \
    const float a = A[r * rs + k * ks];              \
    c##r##0 = vfmaq_n_f32(c##r##0, b0, a);           \
    c##r##1 = vfmaq_n_f32(c##r##1, b1, a);           \
  }
#define ROW_STORE8(r) \
  if (rows > r) store_row(t, r, c##r##0, c##r##1, zero, zero);
static inline __attribute__((always_inline)) void ukernel8_body(const int rows, const int64_t rs, const int64_t ks,
                                                                int64_t K, const float *A, const float *Bp,
                                                                int64_t ldb, const tile *t) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  float32x4_t c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero;
  float32x4_t c30 = zero, c31 = zero, c40 = zero, c41 = zero, c50 = zero, c51 = zero;
  const int stream = t->stream;
  for (int64_t k = 0; k < K; ++k) {
    const float *b = Bp + k * ldb;
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
    if (stream) __builtin_prefetch(Bp + (k + PREFETCH_ROWS) * ldb, 0, 0);
    if (ks != 1) __builtin_prefetch(A + (k + PREFETCH_ROWS) * ks, 0, 0);
    ROW_FMA8(0) ROW_FMA8(1) ROW_FMA8(2) ROW_FMA8(3) ROW_FMA8(4) ROW_FMA8(5)
  }
  ROW_STORE8(0) ROW_STORE8(1) ROW_STORE8(2) ROW_STORE8(3) ROW_STORE8(4) ROW_STORE8(5)
}
#define DEFINE_UKERNEL(ROWS) UKERNEL_PAIR(ukernel_, ukernel_body, ROWS) UKERNEL_PAIR(ukernel8_, ukernel8_body, ROWS)

DEFINE_UKERNEL(1)
DEFINE_UKERNEL(2)
DEFINE_UKERNEL(3)
DEFINE_UKERNEL(4)
DEFINE_UKERNEL(5)
DEFINE_UKERNEL(6)

typedef void (*ukernel_fn)(int64_t K, const float *A, int64_t lda, const float *Bp, int64_t ldb, const tile *t);
/* [A packed][<= 8 valid columns][rows] */
static const ukernel_fn ukernels[2][2][MR + 1] = {
    {{NULL, ukernel_1, ukernel_2, ukernel_3, ukernel_4, ukernel_5, ukernel_6},
     {NULL, ukernel8_1, ukernel8_2, ukernel8_3, ukernel8_4, ukernel8_5, ukernel8_6}},
    {{NULL, ukernel_p1, ukernel_p2, ukernel_p3, ukernel_p4, ukernel_p5, ukernel_p6},
     {NULL, ukernel8_p1, ukernel8_p2, ukernel8_p3, ukernel8_p4, ukernel8_p5, ukernel8_p6}}};

/* mr (1..6) rows; a panel with <= 8 valid columns takes the 8-wide kernel; lda == MLRT_A_PANELS:
 * A is a packed panel (see mlrt_kernels.h). */
static void ukernel_rows(int64_t mr, int64_t K, const float *A, int64_t lda, const float *Bp, int64_t ldb,
                         const tile *t) {
  ukernels[lda == MLRT_A_PANELS][t->n <= 8][mr](K, A, lda, Bp, ldb, t);
}

typedef struct {
  int64_t M, N, K, lda, ldc;
  const float *A, *Bp;
  float *C;
  const mlrt_epilogue *ep;
  int64_t panels, tm, tn; /* task grid: tm row chunks x tn panel chunks, evenly partitioned */
  /* B read in place (Br != NULL): panels below `in_place` are columns 16p.. of B's rows (ldb
   * apart); the rest are packed in Bp from its start. */
  const float *Br;
  int64_t ldb, in_place;
} gemm_job;

/* Panel p's first row at K offset pc, and its row stride. */
static inline const float *panel_rows(const gemm_job *g, int64_t p, int64_t pc, int64_t *ldb) {
  if (p < g->in_place) {
    *ldb = g->ldb;
    return g->Br + pc * g->ldb + p * NR;
  }
  *ldb = NR;
  return g->Bp + (p - g->in_place) * g->K * NR + pc * NR;
}

/* Rows [m0, m1) x panels [p0, p1) of the product, with the epilogue. */
static void gemm_block(const gemm_job *g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  /* K blocks of equal size (<= KC): a short last block would cost a full extra pass over C. With
   * one row tile, B is read once whatever the blocking, and streams best as one pass. */
  const int packed = g->lda == MLRT_A_PANELS;
  const int64_t blocks = m1 - m0 <= MR || packed ? 1 : (g->K + KC - 1) / KC, step = (g->K + blocks - 1) / blocks, np = p1 - p0;
  for (int64_t pc = 0; pc < g->K; pc += step) {
    const int64_t kc = min64(step, g->K - pc);
    for (int64_t ic = m0; ic < m1; ic += MC) {
      const int64_t mc_end = min64(m1, ic + MC);
      /* A (the weights) streams from memory once per call, and with few panels (7x7 maps: 4) the
       * ukernel waited on it: the next A block (the next rows, else the first rows of the next K
       * block) is prefetched into L2 while this one runs, a share of its lines per panel. */
      const int64_t next_ic = mc_end < m1 ? mc_end : m0, next_pc = mc_end < m1 ? pc : pc + step;
      const int64_t next_lines = next_pc < g->K && !packed ? (min64(step, g->K - next_pc) + 15) / 16 : 0;
      for (int64_t p = p0; p < p1; ++p) {
        int64_t ldb;
        const float *bp = panel_rows(g, p, pc, &ldb);
        const int64_t l0 = next_lines * (p - p0) / np, l1 = next_lines * (p - p0 + 1) / np;
        for (int64_t i = ic, rows; i < mc_end; i += rows) {
          /* 7 or 8 rows left: 4 + 3 or 4 + 4, not 6 + 1 or 6 + 2. A 1- or 2-row tile has too few
           * accumulators to hide the FMA latency and runs at a quarter to half speed. */
          rows = !packed && (mc_end - i == 7 || mc_end - i == 8) ? 4 : min64(MR, mc_end - i);
          for (int64_t r = next_ic + (i - ic); r < min64(next_ic + (i - ic) + rows, m1); ++r)
            for (int64_t l = l0; l < l1; ++l) __builtin_prefetch(g->A + r * g->lda + next_pc + 16 * l, 0, 2);
          /* the first row tile of a block brings B's rows in; the later ones find them in L1 */
          tile t = {g->ep, g->C + i * g->ldc + p * NR, g->ldc, i, p * NR, min64(NR, g->N - p * NR),
                    pc == 0, pc + kc >= g->K, i == ic};
          /* packed A: tiles start at panel boundaries (m0, ic and MC are multiples of MR) */
          const float *a = packed ? g->A + i / MR * g->K * MR + pc * MR : g->A + i * g->lda + pc;
          ukernel_rows(rows, kc, a, g->lda, bp, ldb, &t);
        }
      }
    }
  }
}

static void gemm_task(void *ctx, int64_t task) {
  const gemm_job *g = (const gemm_job *)ctx;
  const int64_t i = task / g->tn, k = task % g->tn, blocks = (g->M + MR - 1) / MR;
  const int64_t m0 = mlrt_part(blocks, g->tm, i) * MR, m1 = min64(g->M, mlrt_part(blocks, g->tm, i + 1) * MR);
  gemm_block(g, m0, m1, mlrt_part(g->panels, g->tn, k), mlrt_part(g->panels, g->tn, k + 1));
}

void mlrt_gemm_panels(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *Bp, float *C,
                      int64_t ldc, const mlrt_epilogue *ep, int64_t p0, int64_t p1) {
  gemm_job g = {M, N, K, lda, ldc, A, Bp, C, ep, (N + NR - 1) / NR, 1, 1, NULL, NR, 0};
  gemm_block(&g, 0, M, p0, p1);
}

/* Cost of panels [p0, p1) of N columns in half panels: the 8-wide kernel does a last panel with
 * <= 8 valid columns in half the time (ResNet's and MobileNetV2's 7x7 maps: N = 49). */
static int64_t panels_cost(int64_t N, int64_t p0, int64_t p1) {
  const int64_t panels = (N + NR - 1) / NR, half_last = N % NR != 0 && N % NR <= 8;
  return 2 * (p1 - p0) - (p1 == panels && p1 > p0 && half_last);
}

/* Finish time of the tm x tn tasks over `rows` x (N columns in panels), handed out in order to
 * `threads` workers: even partitions make the tasks differ by at most one unit per side, so
 * round-robin is what the pool's take-the-next-task order amounts to. */
int64_t mlrt_gemm_makespan(int64_t rows, int64_t N, int64_t tm, int64_t tn, int64_t threads) {
  const int64_t panels = (N + NR - 1) / NR;
  int64_t busy[32] = {0}, end = 0;
  if (threads > 32) threads = 32;
  for (int64_t t = 0; t < tm * tn; ++t) {
    const int64_t i = t / tn, k = t % tn;
    busy[t % threads] += (mlrt_part(rows, tm, i + 1) - mlrt_part(rows, tm, i)) *
                         panels_cost(N, mlrt_part(panels, tn, k), mlrt_part(panels, tn, k + 1));
  }
  for (int64_t i = 0; i < threads; ++i) end = busy[i] > end ? busy[i] : end;
  return end;
}

int64_t mlrt_gemm_split(int64_t M, int64_t N, int64_t threads, int split_rows, int64_t *tm, int64_t *tn) {
  /* The grid with the earliest finish over 6-row blocks x panels, for up to 4 tasks per thread.
   * Ties go to fewer row chunks (each re-reads B), then fewer tasks. Splitting 13 panels into
   * column chunks of 4 alone left 2 threads 20% off balance. */
  if (threads > 32) threads = 32; /* keeps the search to a few microseconds */
  const int64_t rows = (M + MR - 1) / MR, panels = (N + NR - 1) / NR, most = min64(4 * threads, 32);
  int64_t best = -1;
  *tm = *tn = 1;
  for (int64_t m = 1; m <= min64(split_rows ? rows : 1, most); ++m)
    for (int64_t n = 1; n <= min64(panels, most / m); ++n) {
      const int64_t t = mlrt_gemm_makespan(rows, N, m, n, threads);
      if (best < 0 || t < best) best = t, *tm = m, *tn = n;
    }
  return best;
}

/* The product over the task grid `g` describes (tm, tn chosen here), with the epilogue. */
static void gemm_run(gemm_job *g) {
  if (g->M <= 0 || g->N <= 0) return;
  if (g->K <= 0) { /* no product: only the epilogue (one zero-depth block) */
    float zero[NR] = {0};
    for (int64_t i = 0; i < g->M; ++i)
      for (int64_t p = 0; p < g->panels; ++p) {
        tile t = {g->ep, g->C + i * g->ldc + p * NR, g->ldc, i, p * NR, min64(NR, g->N - p * NR), 1, 1, 0};
        store_row_scalar(&t, 0, zero);
      }
    return;
  }
  const int64_t threads = mlrt_threads_for(g->M * g->N * g->K);
  int64_t tm = 1, tn = 1;
  if (threads > 1) mlrt_gemm_split(g->M, g->N, threads, 1, &tm, &tn);
  g->tm = tm;
  g->tn = tn;
  if (threads == 1) {
    for (int64_t t = 0; t < tm * tn; ++t) gemm_task(g, t);
  } else {
    mlrt_parallel_for(tm * tn, gemm_task, g);
  }
}

/* One row of A times packed B panels: four panels at a time, so eight independent accumulators
 * hide the FMA latency that a one-row register tile (two accumulators) is bound by. Tasks split
 * the panels. */
typedef struct {
  const float *a, *Bp;
  float *c;
  int64_t N, K, panels_per_task;
  const mlrt_epilogue *ep;
} packed_row_job;

static void packed_row_task(void *ctx, int64_t task) {
  const packed_row_job *d = (const packed_row_job *)ctx;
  const int64_t panels = (d->N + NR - 1) / NR;
  const int64_t p0 = task * d->panels_per_task, p1 = min64(panels, p0 + d->panels_per_task);
  for (int64_t p = p0; p < p1; p += 4) {
    const int64_t np = min64(4, p1 - p);
    float acc[4][NR];
    const float *b = d->Bp + p * d->K * NR;
    const int64_t stride = d->K * NR; /* floats between panels */
    /* NEON: four panels at once (16 accumulators, one broadcast of a[k] for 64 multiply-adds),
     * else one at a time. The plain loop took 2.9x the instructions of x86's AVX2 here. */
    if (np == 4) {
      float32x4_t s[4][4];
      for (int q = 0; q < 4; ++q)
        for (int v = 0; v < 4; ++v) s[q][v] = vdupq_n_f32(0.0f);
      for (int64_t k = 0; k < d->K; ++k) {
        const float a = d->a[k];
        for (int q = 0; q < 4; ++q) {
          const float *bk = b + q * stride + k * NR;
          for (int v = 0; v < 4; ++v) s[q][v] = vfmaq_n_f32(s[q][v], vld1q_f32(bk + 4 * v), a);
        }
      }
      for (int q = 0; q < 4; ++q)
        for (int v = 0; v < 4; ++v) vst1q_f32(acc[q] + 4 * v, s[q][v]);
    } else {
      for (int64_t q = 0; q < np; ++q) {
        const float *bq = b + q * stride;
        float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t k = 0; k < d->K; ++k) {
          const float a = d->a[k];
          const float *bk = bq + k * NR;
          s0 = vfmaq_n_f32(s0, vld1q_f32(bk), a);
          s1 = vfmaq_n_f32(s1, vld1q_f32(bk + 4), a);
          s2 = vfmaq_n_f32(s2, vld1q_f32(bk + 8), a);
          s3 = vfmaq_n_f32(s3, vld1q_f32(bk + 12), a);
        }
        vst1q_f32(acc[q], s0), vst1q_f32(acc[q] + 4, s1), vst1q_f32(acc[q] + 8, s2), vst1q_f32(acc[q] + 12, s3);
      }
    }
    const mlrt_epilogue *ep = d->ep;
    for (int64_t q = 0; q < np; ++q)
      for (int64_t c = 0, j = (p + q) * NR; c < NR && j < d->N; ++c, ++j) {
        float v = acc[q][c] + (ep->overwrite ? (!ep->bias ? 0.0f : ep->bias_per_col ? ep->bias[j] : ep->bias[0])
                                             : d->c[j]);
        v += ep->residual ? ep->residual[j] : 0.0f;
        ep->dst[j] = mlrt_clamp(v, ep->lo, ep->hi);
      }
  }
}

void mlrt_gemm_packed(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *Bp, float *C,
                      int64_t ldc, const mlrt_epilogue *ep) {
  if (M == 1 && N > 0 && K > 0 && lda != MLRT_A_PANELS) { /* a GEMV (Linear at batch 1, squeeze-excite 1x1 convs): see packed_row_task */
    const int64_t panels = (N + NR - 1) / NR, threads = mlrt_threads_for(N * K);
    int64_t per = (panels + threads - 1) / threads;
    per = (per + 3) / 4 * 4;
    packed_row_job d = {A, Bp, C, N, K, per, ep};
    if (threads == 1)
      packed_row_task(&d, 0);
    else
      mlrt_parallel_for((panels + per - 1) / per, packed_row_task, &d);
    return;
  }
  gemm_job g = {M, N, K, lda, ldc, A, Bp, C, ep, (N + NR - 1) / NR, 1, 1, NULL, NR, 0};
  gemm_run(&g);
}

void mlrt_gemm_rows(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                    const float *Btail, float *C, int64_t ldc, const mlrt_epilogue *ep) {
  gemm_job g = {M, N, K, lda, ldc, A, Btail, C, ep, (N + NR - 1) / NR, 1, 1, B, ldb, N / NR};
  gemm_run(&g);
}

/* ------------------------------------------------------------------------- packing B */

typedef struct {
  const float *B;
  float *Bp;
  int64_t K, N, ldb_k, ldb_n; /* B[k][n] at B + k * ldb_k + n * ldb_n */
} pack_job;

static void pack_panel(void *ctx, int64_t p) {
  const pack_job *j = (const pack_job *)ctx;
  float *dst = j->Bp + p * j->K * NR;
  const int64_t n0 = p * NR, n = min64(NR, j->N - n0);
  if (j->ldb_n == 1) {
    for (int64_t k = 0; k < j->K; ++k) {
      const float *src = j->B + k * j->ldb_k + n0;
      if (n == NR) {
        memcpy(dst + k * NR, src, NR * sizeof(float));
      } else {
        for (int64_t c = 0; c < NR; ++c) dst[k * NR + c] = c < n ? src[c] : 0.0f;
      }
    }
    return;
  }
  /* a strided B (e.g. transposed): walk each column along K, the direction it is stored in */
  for (int64_t c = 0; c < NR; ++c) {
    const float *src = j->B + (n0 + c) * j->ldb_n;
    for (int64_t k = 0; k < j->K; ++k) dst[k * NR + c] = c < n ? src[k * j->ldb_k] : 0.0f;
  }
}

/* ------------------------------------------------------------------------- small-M (GEMV-like) */

typedef struct {
  const float *A, *B;
  float *C;
  int64_t M, N, K, lda, ldb, chunk; /* B's rows are contiguous, ldb apart */
  const mlrt_epilogue *ep;
} direct_job;

/* C[M x N] (op)= A[M x K] * B[K x N] reading B in place: for M this small, packing B would cost
 * as much memory traffic as the product itself. Tasks split the columns. */
static void direct_task(void *ctx, int64_t task) {
  const direct_job *d = (const direct_job *)ctx;
  const mlrt_epilogue *ep = d->ep;
  const int64_t j0 = task * d->chunk, j1 = min64(d->N, j0 + d->chunk);
  for (int64_t i = 0; i < d->M; ++i) {
    const float *a = d->A + i * d->lda;
    float *c = d->C + i * d->N;
    if (ep->overwrite)
      for (int64_t j = j0; j < j1; ++j)
        c[j] = !ep->bias ? 0.0f : ep->bias_per_col ? ep->bias[j] : ep->bias[i];
    /* four rows of B per pass over c: a quarter of the loads and stores of c */
    int64_t k = 0;
    for (; k + 4 <= d->K; k += 4) {
      const float a0 = a[k], a1 = a[k + 1], a2 = a[k + 2], a3 = a[k + 3];
      const float *restrict b0 = d->B + k * d->ldb, *restrict b1 = b0 + d->ldb, *restrict b2 = b1 + d->ldb,
                            *restrict b3 = b2 + d->ldb;
      for (int64_t j = j0; j < j1; ++j) c[j] += (a0 * b0[j] + a1 * b1[j]) + (a2 * b2[j] + a3 * b3[j]);
    }
    for (; k < d->K; ++k) {
      const float ak = a[k];
      const float *restrict b = d->B + k * d->ldb;
      for (int64_t j = j0; j < j1; ++j) c[j] += ak * b[j];
    }
    for (int64_t j = j0; j < j1; ++j) {
      float v = c[j] + (ep->residual ? ep->residual[i * d->N + j] : 0.0f);
      ep->dst[i * d->N + j] = mlrt_clamp(v, ep->lo, ep->hi);
    }
  }
}

/* ------------------------------------------------------------------------- entry point */

void mlrt_matmul_f32(int64_t a, int64_t b, int64_t c, int64_t scratch, int64_t batch, int64_t M, int64_t N,
                     int64_t K, int64_t overwrite, int64_t bias, int64_t bias_per_col, int64_t b_packed,
                     int64_t residual, float act_lo, float act_hi, int64_t dst, int64_t a_batch, int64_t lda,
                     int64_t b_batch, int64_t ldb_k, int64_t ldb_n) {
  const float *A = (const float *)(intptr_t)a, *B = (const float *)(intptr_t)b;
  float *C = (float *)(intptr_t)c, *Bp = (float *)(intptr_t)scratch;
  for (int64_t bi = 0; bi < batch; ++bi) {
    const int64_t c_off = bi * M * N;
    /* bias is shared by all batch items; residual and dst advance like C */
    mlrt_epilogue ep = {(int)overwrite, (const float *)(intptr_t)bias, (int)bias_per_col,
                        residual ? (const float *)(intptr_t)residual + c_off : NULL, act_lo, act_hi,
                        (float *)(intptr_t)dst + c_off};
    const float *Ab = A + bi * a_batch, *Bb = B + bi * b_batch;
    float *Cb = C + c_off;
    if (b_packed) {  /* 2-D only: the compiler packs weights for plain matmuls */
      mlrt_gemm_packed(M, N, K, Ab, lda, B, Cb, N, &ep);
      continue;
    }
    if (!Bp) {
      /* B streams from memory (or L2) once: a multiply-add costs several of a packed GEMM's.
       * The compiler passes no scratch only where B's rows are contiguous (ldb_n == 1). */
      const int64_t threads = mlrt_threads_for(8 * M * N * K);
      int64_t chunk = (N + threads - 1) / threads;
      chunk = (chunk + 15) / 16 * 16;
      direct_job d = {Ab, Bb, Cb, M, N, K, lda, ldb_k, chunk, &ep};
      if (threads == 1)
        direct_task(&d, 0);
      else
        mlrt_parallel_for((N + chunk - 1) / chunk, direct_task, &d);
      continue;
    }
    const int64_t threads = mlrt_threads_for(M * N * K);
    pack_job p = {Bb, Bp, K, N, ldb_k, ldb_n};
    if (threads == 1)
      for (int64_t i = 0; i < (N + NR - 1) / NR; ++i) pack_panel(&p, i);
    else
      mlrt_parallel_for((N + NR - 1) / NR, pack_panel, &p);
    mlrt_gemm_packed(M, N, K, Ab, lda, Bp, Cb, N, &ep);
  }
}
