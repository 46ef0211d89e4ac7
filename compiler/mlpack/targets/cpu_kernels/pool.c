/* 2-D max and sum pooling, NCHW fp32, any window, stride, dilation and padding.
 * y[p][oy][ox] = op over the window taps in bounds of x[p][oy*sh + ky*dh - pt][ox*sw + kx*dw - pl],
 * op = max (NaN propagates, as arith.maximumf and PyTorch do) or +, starting from y's contents or
 * (overwrite) from -inf / 0. Taps in the padding are skipped: the value torch-mlir pads with is
 * the op's identity (-inf for max, 0 for sum), so the padded copy it makes is never needed.
 *
 * Both ops are separable: per output row, the window's rows are first combined column by column
 * into a row buffer (unit stride, whole vectors), padding filled with the identity, then each
 * output combines its KW taps of that buffer. A 3x3 window costs 3 + 3 vector ops per output
 * vector instead of 9 strided ones. Tasks take whole channel planes. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mlrt_kernels.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* The row buffer: output columns go in blocks whose taps fit in it (SLACK: what vector reads of a
 * block's last outputs may run past its taps, identity filled). */
enum { ROW_FLOATS = 4096, SLACK = 32 };

/* Maps whose output rows are shorter than a vector (a CNN's late stages: 2x2, 4x4, 7x7 -> 3x3)
 * take a table instead: per output, the plane offsets of its taps in bounds, built once per call,
 * then a tight scalar loop per plane (832 planes of 2x2: 31 -> 7 us on Zen 4; the vector rows
 * and the staging cost more than the taps there). */
enum { TABLE_OW = 8, TABLE_TAPS = 1024 };
enum { POOL_PARALLEL_FLOATS = 8192 }; /* input floats from which a pool is shared out between threads */

typedef struct {
  const float *x;
  float *y;
  int64_t planes, H, W, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl, chunk;
  int is_max, overwrite;
  const int32_t *taps;  /* the table: OH*OW outputs x KH*KW offsets, -1 past an output's last */
} pool_job;

/* Where one plane's input lies: an H x W image read at (iy - pt, ix - pl), and how far vector
 * loads may run (`end`: past it they are masked). */
static inline float combine(int is_max, float acc, float v) {
  return is_max ? (v > acc || v != v ? v : acc) : acc + v;
}

#ifdef MLRT_HAVE_AVX2
/* One value into the accumulator: max_ps drops a NaN operand, so max tracks NaN lanes apart (in
 * `nan`, off the chain through acc) for pool_finish to restore. */
static inline void pool_tap(int is_max, __m256 *acc, __m256 *nan, __m256 v) {
  if (is_max) {
    *acc = _mm256_max_ps(*acc, v);
    *nan = _mm256_or_ps(*nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  } else {
    *acc = _mm256_add_ps(*acc, v);
  }
}

static inline __m256 pool_finish(int is_max, __m256 acc, __m256 nan) {
  return is_max ? _mm256_blendv_ps(acc, _mm256_set1_ps(NAN), nan) : acc;
}
#endif

/* r[i] = op over rows [ky0, ky1) of x at column c0 + i, for the columns in [0, W); the identity
 * where no row is in bounds, and (fill) at i in [0, n) (AVX2: up to 7 more) outside [0, W). The
 * identity stays where it was put: with one block of columns a plane fills it once. */
static inline __attribute__((always_inline)) void combine_rows(const pool_job *j, int is_max, const float *x,
                                                               int64_t y0, int64_t ky0, int64_t ky1, int64_t c0,
                                                               int64_t n, int fill, float *r) {
  const float init = is_max ? -INFINITY : 0.0f;
  const int64_t i0 = min64(n, max64(0, -c0)), i1 = max64(i0, min64(n, j->W - c0));
  const float *first = x + (y0 + ky0 * j->dh) * j->W + c0;
  int64_t i = 0;
#ifdef MLRT_HAVE_AVX2
  const __m256 vinit = _mm256_set1_ps(init);
  if (fill) {
    for (; i + 8 <= i0; i += 8) _mm256_storeu_ps(r + i, vinit);
    for (; i < i0; ++i) r[i] = init;
    for (int64_t k = i1; k < n; k += 8) _mm256_storeu_ps(r + k, vinit); /* ROW_FLOATS leaves room */
  }
  const int64_t rstride = j->dh * j->W;
  for (i = i0; i + 8 <= i1; i += 8) {
    __m256 acc = vinit, nan = _mm256_setzero_ps();
    for (int64_t ky = ky0; ky < ky1; ++ky) pool_tap(is_max, &acc, &nan, _mm256_loadu_ps(first + (ky - ky0) * rstride + i));
    _mm256_storeu_ps(r + i, pool_finish(is_max, acc, nan));
  }
  if (i < i1) { /* masked: lanes past i1 read nothing and take the identity */
    const __m256i m = mlrt_lanes_below(i1 - i);
    __m256 acc = vinit, nan = _mm256_setzero_ps();
    for (int64_t ky = ky0; ky < ky1; ++ky) pool_tap(is_max, &acc, &nan, _mm256_maskload_ps(first + (ky - ky0) * rstride + i, m));
    _mm256_storeu_ps(r + i, _mm256_blendv_ps(vinit, pool_finish(is_max, acc, nan), _mm256_castsi256_ps(m)));
  }
#else
  if (fill) {
    for (; i < i0; ++i) r[i] = init;
    for (int64_t k = i1; k < n; ++k) r[k] = init;
  }
  for (i = i0; i < i1; ++i) {
    float a = init;
    for (int64_t ky = ky0; ky < ky1; ++ky) a = combine(is_max, a, first[(ky - ky0) * j->dh * j->W + i]);
    r[i] = a;
  }
#endif
}

/* Outputs [0, n) of a block from its combined row r: y[o] (op)= op over kx of r[o*sw + kx*dw]. */
static inline __attribute__((always_inline)) void combine_cols(const pool_job *j, int is_max, int64_t sw, const float *r,
                                                               int64_t n, float *y) {
  int64_t o = 0;
#ifdef MLRT_HAVE_AVX2
  const __m256i step = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)sw));
  for (; o < n; o += 8) {
    const int64_t m = min64(8, n - o);
    float tail[8];
    __m256 acc, nan;
    if (j->overwrite) {
      acc = _mm256_set1_ps(is_max ? -INFINITY : 0.0f);
    } else {
      for (int64_t l = 0; l < m; ++l) tail[l] = y[o + l];
      acc = _mm256_loadu_ps(tail);
    }
    nan = _mm256_cmp_ps(acc, acc, _CMP_UNORD_Q);
    for (int64_t kx = 0; kx < j->KW; ++kx) {
      const float *t = r + o * sw + kx * j->dw;
      const __m256 v = sw == 1   ? _mm256_loadu_ps(t)
                       : sw == 2 ? mlrt_even_lanes(_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8))
                                    : _mm256_i32gather_ps(t, step, 4);
      pool_tap(is_max, &acc, &nan, v);
    }
    acc = pool_finish(is_max, acc, nan);
    if (m == 8) {
      _mm256_storeu_ps(y + o, acc);
    } else { /* masked stores are slow on AMD cores */
      _mm256_storeu_ps(tail, acc);
      for (int64_t l = 0; l < m; ++l) y[o + l] = tail[l];
    }
  }
#endif
  for (; o < n; ++o) {
    float a = j->overwrite ? (is_max ? -INFINITY : 0.0f) : y[o];
    for (int64_t kx = 0; kx < j->KW; ++kx) a = combine(is_max, a, r[o * sw + kx * j->dw]);
    y[o] = a;
  }
}

/* One plane, a row and a block of output columns at a time through the row buffer; the op and
 * the stride are constants in each of plane's copies (as variables they kept the taps' loop
 * branching: 2x the time of 3x3/2 on 31x31). */
static inline __attribute__((always_inline)) void plane_as(const pool_job *j, int is_max, int64_t sw, const float *x,
                                                           float *y, float *row) {
  const int64_t reach = (j->KW - 1) * j->dw + 1, block = (ROW_FLOATS - SLACK - 8 - reach) / sw + 1;
  for (int64_t oy = 0; oy < j->OH; ++oy) {
    const int64_t y0 = oy * j->sh - j->pt; /* rows in bounds: 0 <= y0 + ky*dh < H */
    int64_t ky0 = 0, ky1 = j->KH;
    while (ky0 < ky1 && y0 + ky0 * j->dh < 0) ++ky0;
    while (ky1 > ky0 && y0 + (ky1 - 1) * j->dh >= j->H) --ky1;
    for (int64_t ox0 = 0; ox0 < j->OW; ox0 += block) {
      const int64_t n = min64(block, j->OW - ox0), taps = (n - 1) * sw + reach;
      combine_rows(j, is_max, x, y0, ky0, ky1, ox0 * sw - j->pl, taps + SLACK, oy == 0 || block < j->OW, row);
      combine_cols(j, is_max, sw, row, n, y + oy * j->OW + ox0);
    }
  }
}

static void plane(const pool_job *j, const float *x, float *y, float *row) {
  if (j->is_max && j->sw == 1)
    plane_as(j, 1, 1, x, y, row);
  else if (j->is_max && j->sw == 2)
    plane_as(j, 1, 2, x, y, row);
  else if (j->is_max)
    plane_as(j, 1, j->sw, x, y, row);
  else if (j->sw == 1)
    plane_as(j, 0, 1, x, y, row);
  else if (j->sw == 2)
    plane_as(j, 0, 2, x, y, row);
  else
    plane_as(j, 0, j->sw, x, y, row);
}

static void table_planes(const pool_job *j, int64_t p0, int64_t p1) {
  const int64_t outs = j->OH * j->OW, kt = j->KH * j->KW;
  const float init = j->is_max ? -INFINITY : 0.0f;
#ifdef MLRT_HAVE_AVX2
  const int64_t hw = j->H * j->W;
  /* 8 planes at a time in the lanes: staged interleaved ([H*W][8]), every tap one vector load */
  for (; p0 + 8 <= p1 && hw <= TABLE_TAPS; p0 += 8) {
    float st[TABLE_TAPS * 8] __attribute__((aligned(32))), out[8];
    const float *x = j->x + p0 * hw;
    float *y = j->y + p0 * outs;
    mlrt_transpose_block(x, hw, st, 8, 8, hw); /* st[i][l] = plane l's x[i] */
    for (int64_t o = 0; o < outs; ++o) {
      const int32_t *t = j->taps + o * kt;
      for (int l = 0; l < 8; ++l) out[l] = j->overwrite ? init : y[l * outs + o];
      __m256 acc = _mm256_loadu_ps(out), nan = _mm256_cmp_ps(acc, acc, _CMP_UNORD_Q);
      for (int64_t k = 0; k < kt && t[k] >= 0; ++k) pool_tap(j->is_max, &acc, &nan, _mm256_load_ps(st + t[k] * 8));
      _mm256_storeu_ps(out, pool_finish(j->is_max, acc, nan));
      for (int l = 0; l < 8; ++l) y[l * outs + o] = out[l];
    }
  }
#endif
  for (int64_t p = p0; p < p1; ++p) {
    const float *x = j->x + p * j->H * j->W;
    float *y = j->y + p * outs;
    for (int64_t o = 0; o < outs; ++o) {
      const int32_t *t = j->taps + o * kt;
      float a = j->overwrite ? init : y[o];
      for (int64_t k = 0; k < kt && t[k] >= 0; ++k) a = combine(j->is_max, a, x[t[k]]);
      y[o] = a;
    }
  }
}

static void pool_planes(void *ctx, int64_t task) {
  const pool_job *j = (const pool_job *)ctx;
  const int64_t p0 = task * j->chunk, p1 = min64(j->planes, (task + 1) * j->chunk);
  if (j->taps) {
    table_planes(j, p0, p1);
    return;
  }
  float row[ROW_FLOATS];
  for (int64_t p = p0; p < p1; ++p) plane(j, j->x + p * j->H * j->W, j->y + p * j->OH * j->OW, row);
}

void mlrt_pool2d_f32(int64_t x, int64_t y, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t KH,
                     int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl,
                     int64_t is_max, int64_t overwrite) {
  if (planes <= 0 || OH <= 0 || OW <= 0) return;
  /* bound by reading the input: shared out by its size (SqueezeNet's 3x3/2 pool of 128 15x15 planes,
   * 29K floats and 56K taps, ran on one thread for 17 us) */
  const int64_t threads = planes * H * W >= POOL_PARALLEL_FLOATS ? mlrt_threads() : 1;
  const int64_t tasks = threads == 1 ? 1 : min64(planes, 4 * threads);
  pool_job j = {(const float *)(intptr_t)x, (float *)(intptr_t)y, planes, H, W, OH, OW, KH, KW, sh, sw, dh, dw,
                pt, pl, (planes + tasks - 1) / tasks, (int)is_max, (int)overwrite, NULL};
  int32_t table[TABLE_TAPS];
  if (OW < TABLE_OW && OH * OW * KH * KW <= TABLE_TAPS && H * W <= INT32_MAX) {
    for (int64_t oy = 0, o = 0; oy < OH; ++oy)
      for (int64_t ox = 0; ox < OW; ++ox, ++o) {
        int64_t n = 0;
        for (int64_t ky = 0; ky < KH; ++ky)
          for (int64_t kx = 0; kx < KW; ++kx) {
            const int64_t iy = oy * sh + ky * dh - pt, ix = ox * sw + kx * dw - pl;
            if (iy >= 0 && iy < H && ix >= 0 && ix < W) table[o * KH * KW + n++] = (int32_t)(iy * W + ix);
          }
        for (; n < KH * KW; ++n) table[o * KH * KW + n] = -1;
      }
    j.taps = table;
  }
  mlrt_parallel_for((planes + j.chunk - 1) / j.chunk, pool_planes, &j);
}
