/* SGEMM with a fused epilogue: D = clamp((overwrite ? bias : C) + A * B + residual, lo, hi).
 * fp32, row-major. B is packed into panels of MLRT_NR (16) columns (panel j holds
 * B[0..K)[16j..16j+16) contiguously, zero-padded), A is read in place.
 * Register kernel: 6 rows x 16 columns = 12 AVX2 accumulators (BLIS "haswell" shape), blocked
 * over K (KC) and M (MC) for the caches. aarch64: the same 6x16 tile in 24 NEON accumulators (4
 * per row) + 4 B vectors + 1 A value, 29 of the 32 vector registers, with x86's blocking (not
 * tuned on ARM hardware). Without either (x86-64 baseline bundles) a plain C kernel with the same
 * blocking is compiled instead. */
#include <string.h>

#include "mlrt_kernels.h"

enum { MR = MLRT_MR, NR = MLRT_NR, KC = 256, KC_WHOLE = 4096, MC = 96 };

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

/* Scalar version of the store: used for partial tiles and without AVX2. */
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

/* A full tile's store, read from its tile once: intrinsic stores may alias anything, so a store
 * reading t and t->ep row by row reloaded every field after each row's store (15 loads, 6
 * branches and a multiply a row: at K = 16, the expand convs of inverted residual blocks, the
 * stores took a third of a 6x16 tile's time). */
enum { BASE_ZERO, BASE_ROW_BIAS, BASE_COL_BIAS, BASE_C }; /* what the product is added to */
typedef struct {
  int base, last;
  float *c;          /* the tile's first row in C, rows ldc apart */
  const float *bias; /* BASE_ROW_BIAS: the tile's first row's; BASE_COL_BIAS: its first column's */
  const float *res;  /* last: the residual at the tile's origin, or NULL */
  float *dst;        /* last: the output at the tile's origin */
  int64_t ldc;
  float lo, hi;
} tile_out;

static inline __attribute__((always_inline)) tile_out tile_out_of(const tile *t) {
  const mlrt_epilogue *ep = t->ep;
  const int64_t off = t->row * t->ldc + t->col;
  tile_out o = {BASE_C, t->last, t->C, NULL, NULL, NULL, t->ldc, ep->lo, ep->hi};
  if (t->first && ep->overwrite)
    o.base = !ep->bias ? BASE_ZERO : ep->bias_per_col ? BASE_COL_BIAS : BASE_ROW_BIAS;
  if (o.base == BASE_ROW_BIAS) o.bias = ep->bias + t->row;
  if (o.base == BASE_COL_BIAS) o.bias = ep->bias + t->col;
  if (t->last) o.res = ep->residual ? ep->residual + off : NULL, o.dst = ep->dst + off;
  return o;
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

#ifdef MLRT_HAVE_AVX2
/* Stores one accumulated row (two ymm) of a full tile. Values, not addresses: taking an
 * accumulator's address would make the compiler keep every accumulator in memory inside the k loop. */
static inline __attribute__((always_inline)) void store_row(const tile_out *o, int64_t r, __m256 x0, __m256 x1) {
  float *c = o->c + r * o->ldc;
  __m256 b0, b1;
  if (o->base == BASE_ZERO) {
    b0 = b1 = _mm256_setzero_ps();
  } else if (o->base == BASE_ROW_BIAS) {
    b0 = b1 = _mm256_broadcast_ss(o->bias + r);
  } else if (o->base == BASE_COL_BIAS) {
    b0 = _mm256_loadu_ps(o->bias);
    b1 = _mm256_loadu_ps(o->bias + 8);
  } else {
    b0 = _mm256_loadu_ps(c);
    b1 = _mm256_loadu_ps(c + 8);
  }
  x0 = _mm256_add_ps(b0, x0);
  x1 = _mm256_add_ps(b1, x1);
  if (!o->last) {
    _mm256_storeu_ps(c, x0);
    _mm256_storeu_ps(c + 8, x1);
    return;
  }
  const int64_t off = r * o->ldc;
  if (o->res) {
    x0 = _mm256_add_ps(x0, _mm256_loadu_ps(o->res + off));
    x1 = _mm256_add_ps(x1, _mm256_loadu_ps(o->res + off + 8));
  }
  const __m256 lo = _mm256_set1_ps(o->lo), hi = _mm256_set1_ps(o->hi);
  _mm256_storeu_ps(o->dst + off, mlrt_clamp8(x0, lo, hi));
  _mm256_storeu_ps(o->dst + off + 8, mlrt_clamp8(x1, lo, hi));
}

/* A row of a partial tile (n < 16 valid columns), through the scalar store. */
static inline __attribute__((always_inline)) void store_row_part(const tile *t, int64_t r, __m256 x0, __m256 x1) {
  float tmp[NR];
  _mm256_storeu_ps(tmp, x0);
  _mm256_storeu_ps(tmp + 8, x1);
  store_row_scalar(t, r, tmp);
}

/* C[ROWS x n] += A[ROWS x K] * B[K x 16] (B's rows ldb apart: 16 in a packed panel): 2*ROWS named
 * accumulators stay in registers (`rows` is a constant, so the unused rows compile away). A's
 * element (r, k) is at A + r * rs + k * ks: rows lda apart (ks = 1), or an A panel packed at build
 * time (rs = 1, ks = MR), read as one stream and prefetched ahead like a streaming B. */
#define ROW_FMA(r)                                          \
  if (rows > r) {                                           \
    const __m256 a = _mm256_broadcast_ss(A + r * rs + k * ks); \
    c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);              \
    c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);              \
  }
#define ROW_STORE(r) \
  if (rows > r) store_row(&o, r, c##r##0, c##r##1);
#define ROW_STORE_PART(r) \
  if (rows > r) store_row_part(t, r, c##r##0, c##r##1);
static inline __attribute__((always_inline)) void ukernel_body(const int rows, const int64_t rs, const int64_t ks,
                                                               int64_t K, const float *A, const float *Bp, int64_t ldb,
                                                               const tile *t) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const int stream = t->stream;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp + k * ldb);
    const __m256 b1 = _mm256_loadu_ps(Bp + k * ldb + 8);
    if (stream) __builtin_prefetch(Bp + (k + PREFETCH_ROWS) * ldb, 0, 0);
    if (ks != 1) __builtin_prefetch(A + (k + PREFETCH_ROWS) * ks, 0, 0);
    ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3) ROW_FMA(4) ROW_FMA(5)
  }
  if (t->n != NR) {
    ROW_STORE_PART(0) ROW_STORE_PART(1) ROW_STORE_PART(2) ROW_STORE_PART(3) ROW_STORE_PART(4) ROW_STORE_PART(5)
    return;
  }
  const tile_out o = tile_out_of(t);
  ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5)
}
/* The same for a last panel with <= 8 valid columns: half the FMAs (N = 49 spatial positions of
 * ResNet's last stage wastes 15 of 64 columns otherwise). */
#define ROW_FMA8(r)                                         \
  if (rows > r) c##r##0 = _mm256_fmadd_ps(_mm256_broadcast_ss(A + r * rs + k * ks), b0, c##r##0);
#define ROW_STORE8(r) \
  if (rows > r) store_row_part(t, r, c##r##0, zero);
static inline __attribute__((always_inline)) void ukernel8_body(const int rows, const int64_t rs, const int64_t ks,
                                                                int64_t K, const float *A, const float *Bp,
                                                                int64_t ldb, const tile *t) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 c00 = zero, c10 = zero, c20 = zero, c30 = zero, c40 = zero, c50 = zero;
  const int stream = t->stream;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp + k * ldb);
    if (stream) __builtin_prefetch(Bp + (k + PREFETCH_ROWS) * ldb, 0, 0);
    if (ks != 1) __builtin_prefetch(A + (k + PREFETCH_ROWS) * ks, 0, 0);
    ROW_FMA8(0) ROW_FMA8(1) ROW_FMA8(2) ROW_FMA8(3) ROW_FMA8(4) ROW_FMA8(5)
  }
  ROW_STORE8(0) ROW_STORE8(1) ROW_STORE8(2) ROW_STORE8(3) ROW_STORE8(4) ROW_STORE8(5)
}
#define DEFINE_UKERNEL(ROWS) UKERNEL_PAIR(ukernel_, ukernel_body, ROWS) UKERNEL_PAIR(ukernel8_, ukernel8_body, ROWS)
#elif defined(MLRT_HAVE_NEON)
/* Stores one accumulated row (four q registers) of a full tile: values, not addresses, so the
 * accumulators stay in registers inside the k loop. */
static inline __attribute__((always_inline)) void store_row(const tile_out *o, int64_t r, float32x4_t x0,
                                                            float32x4_t x1, float32x4_t x2, float32x4_t x3) {
  float *c = o->c + r * o->ldc;
  float32x4_t b0, b1, b2, b3;
  if (o->base == BASE_ZERO) {
    b0 = b1 = b2 = b3 = vdupq_n_f32(0.0f);
  } else if (o->base == BASE_ROW_BIAS) {
    b0 = b1 = b2 = b3 = vdupq_n_f32(o->bias[r]);
  } else if (o->base == BASE_COL_BIAS) {
    const float *b = o->bias;
    b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8), b3 = vld1q_f32(b + 12);
  } else {
    b0 = vld1q_f32(c), b1 = vld1q_f32(c + 4), b2 = vld1q_f32(c + 8), b3 = vld1q_f32(c + 12);
  }
  x0 = vaddq_f32(b0, x0), x1 = vaddq_f32(b1, x1), x2 = vaddq_f32(b2, x2), x3 = vaddq_f32(b3, x3);
  if (!o->last) {
    vst1q_f32(c, x0), vst1q_f32(c + 4, x1), vst1q_f32(c + 8, x2), vst1q_f32(c + 12, x3);
    return;
  }
  const int64_t off = r * o->ldc;
  if (o->res) {
    const float *res = o->res + off;
    x0 = vaddq_f32(x0, vld1q_f32(res)), x1 = vaddq_f32(x1, vld1q_f32(res + 4));
    x2 = vaddq_f32(x2, vld1q_f32(res + 8)), x3 = vaddq_f32(x3, vld1q_f32(res + 12));
  }
  const float32x4_t lo = vdupq_n_f32(o->lo), hi = vdupq_n_f32(o->hi);
  float *d = o->dst + off;
  vst1q_f32(d, mlrt_clamp4(x0, lo, hi)), vst1q_f32(d + 4, mlrt_clamp4(x1, lo, hi));
  vst1q_f32(d + 8, mlrt_clamp4(x2, lo, hi)), vst1q_f32(d + 12, mlrt_clamp4(x3, lo, hi));
}

/* A row of a partial tile (n < 16 valid columns), through the scalar store. */
static inline __attribute__((always_inline)) void store_row_part(const tile *t, int64_t r, float32x4_t x0,
                                                                 float32x4_t x1, float32x4_t x2, float32x4_t x3) {
  float tmp[NR];
  vst1q_f32(tmp, x0);
  vst1q_f32(tmp + 4, x1);
  vst1q_f32(tmp + 8, x2);
  vst1q_f32(tmp + 12, x3);
  store_row_scalar(t, r, tmp);
}

/* C[ROWS x n] += A[ROWS x K] * B[K x 16] as the AVX2 kernel above, with 4*ROWS named accumulators. */
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
  if (rows > r) store_row(&o, r, c##r##0, c##r##1, c##r##2, c##r##3);
#define ROW_STORE_PART(r) \
  if (rows > r) store_row_part(t, r, c##r##0, c##r##1, c##r##2, c##r##3);
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
  if (t->n != NR) {
    ROW_STORE_PART(0) ROW_STORE_PART(1) ROW_STORE_PART(2) ROW_STORE_PART(3) ROW_STORE_PART(4) ROW_STORE_PART(5)
    return;
  }
  const tile_out o = tile_out_of(t);
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
  if (rows > r) store_row_part(t, r, c##r##0, c##r##1, zero, zero);
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
#else
static void ukernel_body(const int rows, const int64_t rs, const int64_t ks, int64_t K, const float *A,
                         const float *Bp, int64_t ldb, const tile *t) {
  float acc[MR][NR];
  memset(acc, 0, sizeof(acc));
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < rows; ++i) {
      const float a = A[i * rs + k * ks];
      for (int j = 0; j < NR; ++j) acc[i][j] += a * Bp[k * ldb + j];
    }
  for (int i = 0; i < rows; ++i) store_row_scalar(t, i, acc[i]);
}
#define DEFINE_UKERNEL(ROWS) UKERNEL_PAIR(ukernel_, ukernel_body, ROWS)
#endif

DEFINE_UKERNEL(1)
DEFINE_UKERNEL(2)
DEFINE_UKERNEL(3)
DEFINE_UKERNEL(4)
DEFINE_UKERNEL(5)
DEFINE_UKERNEL(6)

#ifdef MLRT_HAVE_AVX2
/* AVX-512F, picked at run time (mlrt_avx512()): one zmm per row of a 16-column panel, up to ZR
 * rows per pass. On Zen 4 a zmm FMA costs two ymm ones, so the peak is the same as the 6x16 AVX2
 * tile's; what the 32 registers buy is fewer passes over B: M = 7..12 (tokens of a short
 * sequence, a batch of 8, a conv on a 3x3 map) ran as 4 + 4 or 6 + 3 rows, each pass reading
 * the whole panel again (M = 8 x 768 x 768 on packed B, one core: 59 -> 117 GFLOPS). */
enum { ZR = 2 * MR };

/* One row of a tile of n <= 16 valid columns (m: their lanes). */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void store_zrow(const tile_out *o,
                                                                                                 __mmask16 m,
                                                                                                 int64_t r, __m512 x) {
  float *c = o->c + r * o->ldc;
  const __m512 b = o->base == BASE_ZERO       ? _mm512_setzero_ps()
                   : o->base == BASE_ROW_BIAS ? _mm512_set1_ps(o->bias[r])
                   : o->base == BASE_COL_BIAS ? _mm512_maskz_loadu_ps(m, o->bias)
                                              : _mm512_maskz_loadu_ps(m, c);
  x = _mm512_add_ps(b, x);
  if (!o->last) {
    _mm512_mask_storeu_ps(c, m, x);
    return;
  }
  const int64_t off = r * o->ldc;
  if (o->res) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, o->res + off));
  x = _mm512_min_ps(_mm512_set1_ps(o->hi), _mm512_max_ps(_mm512_set1_ps(o->lo), x));
  _mm512_mask_storeu_ps(o->dst + off, m, x);
}

/* C[rows x n] += A[rows x K] * B[K x 16]. Row r of A: A + r * lda + k; or, `packed`, element
 * r % MR of A (rows < MR) or A2 (the rest) at k * lda: two MR-row panels packed at build time
 * (lda = MR), or one panel of all the rows packed here (A2 = A + MR, lda = rows). */
#define ZROW_FMA(r)                                                                                       \
  if (rows > r) {                                                                                         \
    const float *ar = packed ? ((r) < MR ? A : A2) + (r) % MR + k * lda : A + (r) * lda + k;             \
    z##r = _mm512_fmadd_ps(_mm512_set1_ps(*ar), b, z##r);                                                 \
  }
#define ZROW_STORE(r) \
  if (rows > r) store_zrow(&o, m, r, z##r);
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
zkernel_body(const int rows, const int packed, int64_t K, const float *A, const float *A2, int64_t lda,
             const float *Bp, int64_t ldb, const tile *t) {
  __m512 z0 = _mm512_setzero_ps(), z1 = z0, z2 = z0, z3 = z0, z4 = z0, z5 = z0, z6 = z0, z7 = z0, z8 = z0,
         z9 = z0, z10 = z0, z11 = z0;
  const int stream = t->stream;
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b = _mm512_loadu_ps(Bp + k * ldb);
    if (stream) __builtin_prefetch(Bp + (k + PREFETCH_ROWS) * ldb, 0, 0);
    if (packed) {
      __builtin_prefetch(A + (k + PREFETCH_ROWS) * lda, 0, 0);
      if (rows > MR) __builtin_prefetch(A2 + (k + PREFETCH_ROWS) * lda, 0, 0);
    }
    ZROW_FMA(0) ZROW_FMA(1) ZROW_FMA(2) ZROW_FMA(3) ZROW_FMA(4) ZROW_FMA(5)
    ZROW_FMA(6) ZROW_FMA(7) ZROW_FMA(8) ZROW_FMA(9) ZROW_FMA(10) ZROW_FMA(11)
  }
  const tile_out o = tile_out_of(t);
  const __mmask16 m = (__mmask16)((1u << t->n) - 1u);
  ZROW_STORE(0) ZROW_STORE(1) ZROW_STORE(2) ZROW_STORE(3) ZROW_STORE(4) ZROW_STORE(5)
  ZROW_STORE(6) ZROW_STORE(7) ZROW_STORE(8) ZROW_STORE(9) ZROW_STORE(10) ZROW_STORE(11)
}

typedef void (*zkernel_fn)(int64_t K, const float *A, const float *A2, int64_t lda, const float *Bp, int64_t ldb,
                           const tile *t);
#define DEFINE_ZKERNEL(ROWS)                                                                                      \
  __attribute__((target("avx512f"))) static void zkernel_##ROWS(int64_t K, const float *A, const float *A2,        \
                                                                 int64_t lda, const float *Bp, int64_t ldb,       \
                                                                 const tile *t) {                                 \
    zkernel_body(ROWS, 0, K, A, A2, lda, Bp, ldb, t);                                                             \
  }                                                                                                               \
  __attribute__((target("avx512f"))) static void zkernel_p##ROWS(int64_t K, const float *A, const float *A2,       \
                                                                  int64_t lda, const float *Bp, int64_t ldb,      \
                                                                  const tile *t) {                                \
    zkernel_body(ROWS, 1, K, A, A2, lda, Bp, ldb, t);                                                             \
  }
DEFINE_ZKERNEL(1)
DEFINE_ZKERNEL(2)
DEFINE_ZKERNEL(3)
DEFINE_ZKERNEL(4)
DEFINE_ZKERNEL(5)
DEFINE_ZKERNEL(6)
DEFINE_ZKERNEL(7)
DEFINE_ZKERNEL(8)
DEFINE_ZKERNEL(9)
DEFINE_ZKERNEL(10)
DEFINE_ZKERNEL(11)
DEFINE_ZKERNEL(12)
static const zkernel_fn zkernels[2][ZR + 1] = {
    {NULL, zkernel_1, zkernel_2, zkernel_3, zkernel_4, zkernel_5, zkernel_6, zkernel_7, zkernel_8, zkernel_9,
     zkernel_10, zkernel_11, zkernel_12},
    {NULL, zkernel_p1, zkernel_p2, zkernel_p3, zkernel_p4, zkernel_p5, zkernel_p6, zkernel_p7, zkernel_p8,
     zkernel_p9, zkernel_p10, zkernel_p11, zkernel_p12}};

/* Rows of the next pass with `left` rows to go: all of them up to ZR; 13..23: half first (A packed
 * at build time: one panel), so no pass has too few rows to hide the FMA latency. */
static inline int64_t zrows(int64_t left, int built_panels) {
  return left <= ZR ? left : left >= 2 * ZR ? ZR : built_panels ? MR : (left + 1) / 2;
}

/* A row-major A block [m rows x kc] in the order zkernel_p reads it: each pass's rows
 * interleaved, [k][rows]. Twelve rows lda apart are twelve streams; with lda a multiple of 4 KiB
 * (K = 3072) they fall in one L1 set and evict each other (M = 12 ran at 79 instead of 106 GFLOPS). */
static void pack_a_block(const float *A, int64_t lda, int64_t m, int64_t kc, float *dst) {
  for (int64_t i = 0, rows; i < m; i += rows) {
    rows = zrows(m - i, 0);
    mlrt_transpose_block(A + i * lda, lda, dst + i * kc, rows, rows, kc); /* 8x8 blocks: element by element it
                                                                            * took a tenth of SqueezeNet */
  }
}
#endif

typedef void (*ukernel_fn)(int64_t K, const float *A, int64_t lda, const float *Bp, int64_t ldb, const tile *t);
/* [A packed][<= 8 valid columns][rows]: the plain C kernel has no 8-wide variant */
#if defined(MLRT_HAVE_AVX2) || defined(MLRT_HAVE_NEON)
static const ukernel_fn ukernels[2][2][MR + 1] = {
    {{NULL, ukernel_1, ukernel_2, ukernel_3, ukernel_4, ukernel_5, ukernel_6},
     {NULL, ukernel8_1, ukernel8_2, ukernel8_3, ukernel8_4, ukernel8_5, ukernel8_6}},
    {{NULL, ukernel_p1, ukernel_p2, ukernel_p3, ukernel_p4, ukernel_p5, ukernel_p6},
     {NULL, ukernel8_p1, ukernel8_p2, ukernel8_p3, ukernel8_p4, ukernel8_p5, ukernel8_p6}}};
#else
static const ukernel_fn ukernels[2][2][MR + 1] = {
    {{NULL, ukernel_1, ukernel_2, ukernel_3, ukernel_4, ukernel_5, ukernel_6},
     {NULL, ukernel_1, ukernel_2, ukernel_3, ukernel_4, ukernel_5, ukernel_6}},
    {{NULL, ukernel_p1, ukernel_p2, ukernel_p3, ukernel_p4, ukernel_p5, ukernel_p6},
     {NULL, ukernel_p1, ukernel_p2, ukernel_p3, ukernel_p4, ukernel_p5, ukernel_p6}}};
#endif

/* mr (1..6) rows; a panel with <= 8 valid columns takes the 8-wide kernel; lda == MLRT_A_PANELS:
 * A is a packed panel (see mlrt_kernels.h). */
static void ukernel_rows(int64_t mr, int64_t K, const float *A, int64_t lda, const float *Bp, int64_t ldb,
                         const tile *t) {
  ukernels[lda == MLRT_A_PANELS][t->n <= 8][mr](K, A, lda, Bp, ldb, t);
}

#ifdef MLRT_HAVE_AVX2
/* A last panel of at most TAIL_COLS valid columns against packed A panels: the rows take the lanes
 * instead. The 8-wide tile spent 6 FMAs per k on 6 rows for 8 columns, 1 to 3 of them real (7x7
 * maps, N = 49: one column, an eighth of a pointwise conv's FMAs); here each k costs one FMA per
 * column for 6 rows (two of 8 lanes idle): 7x7 pointwise convs ran 9-11% faster (Zen 3). Up to 4
 * row panels x 3 columns = 12 accumulators, + 3 B values + A in 16 ymm. With 4 columns (14x14
 * maps) it was no faster than the 8-wide tile. */
enum { TAIL_COLS = 3, TAIL_PANELS = 4, SHORT_K = 32, SHORT_K_PANELS = 8 };
static inline __attribute__((always_inline)) void tail_body(const int tiles, const int cols, int64_t K, const float *A,
                                                            int64_t a_stride, const float *Bp, int64_t ldb,
                                                            __m256 acc[TAIL_PANELS][TAIL_COLS]) {
  const __m256i six = mlrt_lanes_below(MR);
  for (int r = 0; r < tiles; ++r)
    for (int c = 0; c < cols; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[TAIL_COLS];
    for (int c = 0; c < cols; ++c) b[c] = _mm256_broadcast_ss(Bp + k * ldb + c);
    for (int r = 0; r < tiles; ++r) {
      const __m256 a = _mm256_maskload_ps(A + r * a_stride + k * MR, six);
      for (int c = 0; c < cols; ++c) acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
}

/* Rows [i0, i1) (i0 a multiple of MR) x the panel's `cols` valid columns, K block [pc, pc + kc). */
static void tail_columns(const mlrt_epilogue *ep, float *C, int64_t ldc, const float *A, int64_t K, int64_t i0,
                         int64_t i1, int64_t pc, int64_t kc, const float *bp, int64_t ldb, int64_t col, int64_t cols) {
  for (int64_t i = i0; i < i1; i += TAIL_PANELS * MR) {
    const int tiles = (int)min64(TAIL_PANELS, (i1 - i + MR - 1) / MR);
    const float *a = A + i / MR * K * MR + pc * MR;
    __m256 acc[TAIL_PANELS][TAIL_COLS];
#define TAIL_CASE(T, C) \
  case T * 8 + C:       \
    tail_body(T, C, kc, a, K * MR, bp, ldb, acc); \
    break;
    switch (tiles * 8 + (int)cols) {
      TAIL_CASE(1, 1) TAIL_CASE(1, 2) TAIL_CASE(1, 3) TAIL_CASE(2, 1) TAIL_CASE(2, 2) TAIL_CASE(2, 3)
      TAIL_CASE(3, 1) TAIL_CASE(3, 2) TAIL_CASE(3, 3) TAIL_CASE(4, 1) TAIL_CASE(4, 2) TAIL_CASE(4, 3)
    }
#undef TAIL_CASE
    for (int r = 0; r < tiles; ++r) {
      float v[TAIL_COLS][8];
      for (int c = 0; c < cols; ++c) _mm256_storeu_ps(v[c], acc[r][c]);
      const int64_t row = i + r * MR;
      tile t = {ep, C + row * ldc + col, ldc, row, col, cols, pc == 0, pc + kc >= K, 0};
      for (int64_t m = 0; m < MR && row + m < i1; ++m) {
        float out[NR];
        for (int c = 0; c < cols; ++c) out[c] = v[c][m];
        store_row_scalar(&t, m, out);
      }
    }
  }
}
#endif

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
  /* Row-major A: K blocks of equal size, a short last block would cost a full extra pass over C.
   * Up to KC_WHOLE (a 256 KiB panel, in L2) one block: blocks of <= KC (a panel's block in L1)
   * were 2-25% slower at K = 288-3072 (Zen 3, 1 thread; 7-25% at 2), and as fast at 8K-25K. With
   * one row tile, or A packed at build time, B is read once whatever the blocking, and streams
   * best as one pass. */
  const int packed = g->lda == MLRT_A_PANELS;
  int64_t kc_max = KC_WHOLE;
#ifdef MLRT_HAVE_AVX2
  /* zmm: convs (A packed at build time), and row-major A of up to ZR rows (one pass over B). With
   * more rows the 6x16 AVX2 tile, reading A in place, was as fast or up to 9% faster (M = 64-128,
   * Zen 4): packing A costs what the fewer passes save. */
  const int zmm = mlrt_avx512() && (packed || m1 - m0 <= ZR);
  static _Thread_local float zbuf[MC * KC] __attribute__((aligned(64))); /* 96 KiB: not on the stack */
  if (zmm) kc_max = KC; /* zbuf holds an MC x KC block of A */
#endif
  const int64_t blocks = m1 - m0 <= MR || packed ? 1 : (g->K + kc_max - 1) / kc_max, step = (g->K + blocks - 1) / blocks, np = p1 - p0;
  for (int64_t pc = 0; pc < g->K; pc += step) {
    const int64_t kc = min64(step, g->K - pc);
    for (int64_t ic = m0; ic < m1; ic += MC) {
      const int64_t mc_end = min64(m1, ic + MC);
      /* A (the weights) streams from memory once per call, and with few panels (7x7 maps: 4) the
       * ukernel waited on it: the next A block (the next rows, else the first rows of the next K
       * block) is prefetched into L2 while this one runs, a share of its lines per panel. */
      const int64_t next_ic = mc_end < m1 ? mc_end : m0, next_pc = mc_end < m1 ? pc : pc + step;
      const int64_t next_lines = next_pc < g->K && !packed ? (min64(step, g->K - next_pc) + 15) / 16 : 0;
#ifdef MLRT_HAVE_AVX2
      /* more than MR rows of a row-major A: packed once here for every panel of this task */
      const int zpack = zmm && !packed && mc_end - ic > MR;
      if (zpack) pack_a_block(g->A + ic * g->lda + pc, g->lda, mc_end - ic, kc, zbuf);
      /* A short product (K <= SHORT_K: 16-32 input channels, the expand convs of inverted residual
       * blocks on large maps) is a few FMAs per output, and the output's writes dominate: panel by
       * panel, each tile wrote 6 of MC rows 64 bytes at a time. Here each row tile runs across
       * SHORT_K_PANELS panels (their B, at most 16 KiB, stays in L1), so C's rows are written in
       * runs of 512 bytes: 16->96 on 112x112 12% faster, 24->144 on 56x56 5-7%, 32->192 on 28x28
       * 2-5% (Zen 3, 1 thread); at K = 144-192 it was 3-4% slower, and ResNet-50 (Winograd GEMMs of
       * K = 64) 1% slower. */
      if (!zmm && packed && kc <= SHORT_K && np > SHORT_K_PANELS) {
        const int tail = g->N - (p1 - 1) * NR <= TAIL_COLS; /* the last panel: see tail_columns */
        const int64_t pend = tail ? p1 - 1 : p1;
        for (int64_t pb = p0; pb < pend; pb += SHORT_K_PANELS) {
          const int64_t pe = min64(pend, pb + SHORT_K_PANELS);
          for (int64_t i = ic, rows; i < mc_end; i += rows) {
            rows = min64(MR, mc_end - i);
            const float *a = g->A + i / MR * g->K * MR + pc * MR;
            for (int64_t p = pb; p < pe; ++p) {
              int64_t ldb;
              const float *bp = panel_rows(g, p, pc, &ldb);
              tile t = {g->ep, g->C + i * g->ldc + p * NR, g->ldc, i, p * NR, min64(NR, g->N - p * NR),
                        pc == 0, pc + kc >= g->K, i == ic};
              ukernel_rows(rows, kc, a, g->lda, bp, ldb, &t);
            }
          }
        }
        if (tail) {
          int64_t ldb;
          const float *bp = panel_rows(g, p1 - 1, pc, &ldb);
          tail_columns(g->ep, g->C, g->ldc, g->A, g->K, ic, mc_end, pc, kc, bp, ldb, (p1 - 1) * NR, g->N - (p1 - 1) * NR);
        }
        continue;
      }
#endif
      for (int64_t p = p0; p < p1; ++p) {
        int64_t ldb;
        const float *bp = panel_rows(g, p, pc, &ldb);
#ifdef MLRT_HAVE_AVX2
        if (packed && g->N - p * NR <= TAIL_COLS) {
          tail_columns(g->ep, g->C, g->ldc, g->A, g->K, ic, mc_end, pc, kc, bp, ldb, p * NR, g->N - p * NR);
          continue;
        }
#endif
        const int64_t l0 = next_lines * (p - p0) / np, l1 = next_lines * (p - p0 + 1) / np;
        for (int64_t i = ic, rows; i < mc_end; i += rows) {
          const int64_t left = mc_end - i;
#ifdef MLRT_HAVE_AVX2
          if (zmm && min64(NR, g->N - p * NR) > 8) {
            /* up to 12 rows a pass; 13..23 left: the first pass takes half (packed A: one panel) */
            rows = zrows(left, packed);
          } else
#endif
          /* 7 to 9 rows left: 4 + 3, 4 + 4 or 5 + 4, not 6 + 1, 6 + 2 or 6 + 3. A tile of 1 to 3 rows
           * has too few accumulators to hide the FMA latency and runs at a quarter to 3/4 speed. */
          rows = !packed && left >= 7 && left <= 9 ? (left + 1) / 2 : min64(MR, left);
          for (int64_t r = next_ic + (i - ic); r < min64(next_ic + (i - ic) + rows, m1); ++r)
            for (int64_t l = l0; l < l1; ++l) __builtin_prefetch(g->A + r * g->lda + next_pc + 16 * l, 0, 2);
          /* the first row tile of a block brings B's rows in; the later ones find them in L1 */
          tile t = {g->ep, g->C + i * g->ldc + p * NR, g->ldc, i, p * NR, min64(NR, g->N - p * NR),
                    pc == 0, pc + kc >= g->K, i == ic};
          /* packed A: tiles start at panel boundaries (m0, ic and MC are multiples of MR) */
          const float *a = packed ? g->A + i / MR * g->K * MR + pc * MR : g->A + i * g->lda + pc;
#ifdef MLRT_HAVE_AVX2
          if (zmm && t.n > 8) {
            if (zpack) {
              const float *za = zbuf + (i - ic) * kc;
              zkernels[1][rows](kc, za, za + MR, rows, bp, ldb, &t);
            } else {
              zkernels[packed][rows](kc, a, a + g->K * MR, packed ? MR : g->lda, bp, ldb, &t);
            }
            continue;
          }
#endif
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

static int64_t gemm_split_search(int64_t M, int64_t N, int64_t K, int64_t threads, int split_rows, int64_t *tm,
                                 int64_t *tn);

/* The search below costs microseconds, and a model asks it the same questions every run (lcnet:
 * 2% of a run): answers are kept per thread (mlrt_memo_find). */
int64_t mlrt_gemm_split(int64_t M, int64_t N, int64_t K, int64_t threads, int split_rows, int64_t *tm, int64_t *tn) {
  static _Thread_local mlrt_memo_entry memo[MLRT_MEMO_SLOTS];
  const int64_t key[5] = {M, N, K, split_rows, threads};
  int hit;
  mlrt_memo_entry *e = mlrt_memo_find(memo, key, &hit);
  if (hit) {
    *tm = e->value[0];
    *tn = e->value[1];
    return e->value[2];
  }
  const int64_t best = gemm_split_search(M, N, K, threads, split_rows, tm, tn);
  *e = (mlrt_memo_entry){{M, N, K, split_rows, threads}, {*tm, *tn, best}};
  return best;
}

static int64_t gemm_split_search(int64_t M, int64_t N, int64_t K, int64_t threads, int split_rows, int64_t *tm,
                                 int64_t *tn) {
  /* The earliest finish over 6-row blocks x panels, for up to 4 tasks per thread (splitting 13
   * panels into column chunks of 4 alone left 2 threads 20% off balance). The model assumes
   * equally fast threads; of the grids within 3% of it, the one with the most tasks up to
   * mlrt_tasks_for (which see), ties to fewer row chunks (each re-reads B). */
  if (threads > 32) threads = 32; /* keeps the search to a few microseconds */
  const int64_t rows = (M + MR - 1) / MR, panels = (N + NR - 1) / NR, most = min64(4 * threads, 32);
  const int64_t sized = min64(most, mlrt_tasks_for(M * N * K, threads));
  int64_t best = -1, chosen = -1, spans[32][33]; /* makespan of each m x n grid: m, n <= most <= 32 */
  *tm = *tn = 1;
  for (int64_t m = 1; m <= min64(split_rows ? rows : 1, most); ++m)
    for (int64_t n = 1; n <= min64(panels, most / m); ++n) {
      spans[m - 1][n] = mlrt_gemm_makespan(rows, N, m, n, threads);
      if (best < 0 || spans[m - 1][n] < best) best = spans[m - 1][n];
    }
  for (int64_t m = 1; m <= min64(split_rows ? rows : 1, most); ++m)
    for (int64_t n = 1; n <= min64(panels, most / m); ++n)
      if ((m * n <= sized || m * n == 1) && spans[m - 1][n] * 100 <= best * 103 && m * n > chosen)
        chosen = m * n, *tm = m, *tn = n;
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
  /* Rows one zmm pass covers (ZR = 2 * MR) are not split: each row chunk streams all of B (the weights, in the
   * small-map conv), and 9 rows as 6 + 3 ran a 3-row tile bound by its loads. */
  if (threads > 1) mlrt_gemm_split(g->M, g->N, g->K, threads, !(mlrt_avx512() && g->M <= 2 * MR), &tm, &tn);
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
#ifdef MLRT_HAVE_AVX2
    if (np == 4) {
      __m256 s[8];
      for (int q = 0; q < 8; ++q) s[q] = _mm256_setzero_ps();
      for (int64_t k = 0; k < d->K; ++k) {
        const __m256 ak = _mm256_broadcast_ss(d->a + k);
        const float *bk = b + k * NR;
        for (int q = 0; q < 4; ++q) {
          s[2 * q] = _mm256_fmadd_ps(ak, _mm256_loadu_ps(bk + q * stride), s[2 * q]);
          s[2 * q + 1] = _mm256_fmadd_ps(ak, _mm256_loadu_ps(bk + q * stride + 8), s[2 * q + 1]);
        }
      }
      for (int q = 0; q < 4; ++q) {
        _mm256_storeu_ps(acc[q], s[2 * q]);
        _mm256_storeu_ps(acc[q] + 8, s[2 * q + 1]);
      }
    } else {
      /* the last one to three panels: even and odd k in separate accumulators, four chains */
      for (int64_t q = 0; q < np; ++q) {
        const float *bq = b + q * stride;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        int64_t k = 0;
        for (; k + 2 <= d->K; k += 2) {
          const __m256 a0 = _mm256_broadcast_ss(d->a + k), a1 = _mm256_broadcast_ss(d->a + k + 1);
          s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(bq + k * NR), s0);
          s1 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(bq + k * NR + 8), s1);
          s2 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(bq + (k + 1) * NR), s2);
          s3 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(bq + (k + 1) * NR + 8), s3);
        }
        if (k < d->K) {
          const __m256 a0 = _mm256_broadcast_ss(d->a + k);
          s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(bq + k * NR), s0);
          s1 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(bq + k * NR + 8), s1);
        }
        _mm256_storeu_ps(acc[q], _mm256_add_ps(s0, s2));
        _mm256_storeu_ps(acc[q] + 8, _mm256_add_ps(s1, s3));
      }
    }
#elif defined(MLRT_HAVE_NEON)
    /* four panels at once (16 accumulators, one load of a[k] for 64 multiply-adds), else one at a
     * time. The plain loop took 2.9x the instructions of x86's AVX2 here. */
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
#else
    {
      for (int64_t q = 0; q < np; ++q) {
        for (int c = 0; c < NR; ++c) acc[q][c] = 0.0f;
        for (int64_t k = 0; k < d->K; ++k)
          for (int c = 0; c < NR; ++c) acc[q][c] += d->a[k] * b[q * stride + k * NR + c];
      }
    }
#endif
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
    const int64_t panels = (N + NR - 1) / NR, threads = mlrt_threads_for(N * K), tasks = mlrt_tasks_for(N * K, threads);
    int64_t per = (panels + tasks - 1) / tasks;
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

void mlrt_pack_b(const float *B, int64_t ldb_k, int64_t ldb_n, int64_t K, int64_t N, float *Bp, int parallel) {
  pack_job p = {B, Bp, K, N, ldb_k, ldb_n};
  const int64_t panels = (N + NR - 1) / NR;
  if (parallel && panels > 1)
    mlrt_parallel_runs(panels, pack_panel, &p);
  else
    for (int64_t i = 0; i < panels; ++i) pack_panel(&p, i);
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
      const int64_t threads = mlrt_threads_for(8 * M * N * K), tasks = mlrt_tasks_for(8 * M * N * K, threads);
      int64_t chunk = (N + tasks - 1) / tasks;
      chunk = (chunk + 15) / 16 * 16;
      direct_job d = {Ab, Bb, Cb, M, N, K, lda, ldb_k, chunk, &ep};
      if (threads == 1)
        direct_task(&d, 0);
      else
        mlrt_parallel_for((N + chunk - 1) / chunk, direct_task, &d);
      continue;
    }
    mlrt_pack_b(Bb, ldb_k, ldb_n, K, N, Bp, mlrt_threads_for(M * N * K) > 1);
    mlrt_gemm_packed(M, N, K, Ab, lda, Bp, Cb, N, &ep);
  }
}
