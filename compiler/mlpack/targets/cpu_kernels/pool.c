/* 2-D max and sum pooling, NCHW fp32, any window, stride, dilation and padding.
 * y[p][oy][ox] = op over the window taps in bounds of x[p][oy*sh + ky*dh - pt][ox*sw + kx*dw - pl],
 * op = max (NaN propagates, as arith.maximumf and PyTorch do) or +, starting from y's contents or
 * (overwrite) from -inf / 0. Taps in the padding are skipped: the value torch-mlir pads with is
 * the op's identity (-inf for max, 0 for sum), so the padded copy it makes is never needed.
 *
 * The generic lowering put the taps innermost (scalar loops of 2-9 iterations); here 8 outputs of
 * a row are one vector carried across all taps. A padded plane is first staged, padding filled
 * with the identity, in a buffer on the task's stack, so every output takes the vector path;
 * planes too large for it take vectors in the interior and a checked scalar loop at the borders.
 * Tasks take whole channel planes. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mlrt_kernels.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

enum { STAGE_FLOATS = 8192, SLACK = 16 }; /* the staged plane; vector reads past its end stay inside */

/* Maps whose output rows are shorter than a vector (a CNN's late stages: 2x2, 4x4, 7x7 -> 3x3)
 * take a table instead: per output, the plane offsets of its taps in bounds, built once per call,
 * then a tight scalar loop per plane (832 planes of 2x2: 31 -> 7 us on Zen 4; the vector rows
 * and the staging cost more than the taps there). */
enum { TABLE_OW = 8, TABLE_TAPS = 1024 };

typedef struct {
  const float *x;
  float *y;
  int64_t planes, H, W, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl, chunk;
  int is_max, overwrite;
  const int32_t *taps;  /* the table: OH*OW outputs x KH*KW offsets, -1 past an output's last */
} pool_job;

/* Where one plane's input lies: an H x W image read at (iy - pt, ix - pl), and how far vector
 * loads may run (`end`: past it they are masked). */
typedef struct {
  const float *x, *end;
  int64_t H, W, pt, pl;
} plane_src;

static inline float combine(int is_max, float acc, float v) {
  return is_max ? (v > acc || v != v ? v : acc) : acc + v;
}

#ifdef MLRT_HAVE_AVX2
/* One tap into the accumulator: max_ps drops a NaN operand, so max tracks NaN lanes apart (in
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

/* Outputs [o0, o0 + n) of row oy, n <= 8, in one register across all taps (every tap's column
 * in bounds). Stride 1 and 2 read rows with vector loads (lanes past n see the next values and
 * are dropped), masked only near src->end; other strides gather the n lanes. */
static inline void row_chunk(const pool_job *j, const plane_src *src, int64_t y0, int64_t ky0, int64_t ky1, float *yr,
                             int64_t o0, int64_t n) {
  const __m256i m = mlrt_lanes_below(n), m0 = mlrt_lanes_below(2 * n - 1), m1 = mlrt_lanes_below(2 * n - 9);
  const __m256i step = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)j->sw));
  const __m256 init = _mm256_set1_ps(j->is_max ? -INFINITY : 0.0f);
  float tail[8] = {0};
  if (!j->overwrite) memcpy(tail, yr + o0, (size_t)n * sizeof(float));
  __m256 acc = j->overwrite ? init : _mm256_loadu_ps(tail), nan = _mm256_cmp_ps(acc, acc, _CMP_UNORD_Q);
  for (int64_t ky = ky0; ky < ky1; ++ky) {
    const float *xr = src->x + (y0 + ky * j->dh) * src->W + o0 * j->sw - src->pl;
    for (int64_t kx = 0; kx < j->KW; ++kx) {
      const float *t = xr + kx * j->dw;
      __m256 v;
      if (j->sw == 1)
        v = t + 8 <= src->end ? _mm256_loadu_ps(t) : _mm256_maskload_ps(t, m);
      else if (j->sw == 2)
        v = t + 16 <= src->end ? mlrt_even_lanes(_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8))
                               : mlrt_even_lanes(_mm256_maskload_ps(t, m0), _mm256_maskload_ps(t + 8, m1));
      else
        v = _mm256_mask_i32gather_ps(init, t, step, _mm256_castsi256_ps(m), 4);
      pool_tap(j->is_max, &acc, &nan, v);
    }
  }
  acc = pool_finish(j->is_max, acc, nan);
  if (n == 8) {
    _mm256_storeu_ps(yr + o0, acc);
  } else { /* masked stores are slow on AMD cores */
    _mm256_storeu_ps(tail, acc);
    memcpy(yr + o0, tail, (size_t)n * sizeof(float));
  }
}
#endif

/* Output columns [lo, hi) of one output row, every tap's column in bounds. */
static void interior(const pool_job *j, const plane_src *src, int64_t y0, int64_t ky0, int64_t ky1, float *yr,
                     int64_t lo, int64_t hi) {
#ifdef MLRT_HAVE_AVX2
  for (int64_t o0 = lo; o0 < hi; o0 += 8) row_chunk(j, src, y0, ky0, ky1, yr, o0, min64(8, hi - o0));
#else
  for (int64_t ox = lo; ox < hi; ++ox) {
    float a = j->overwrite ? (j->is_max ? -INFINITY : 0.0f) : yr[ox];
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const float *xr = src->x + (y0 + ky * j->dh) * src->W + ox * j->sw - src->pl;
      for (int64_t kx = 0; kx < j->KW; ++kx) a = combine(j->is_max, a, xr[kx * j->dw]);
    }
    yr[ox] = a;
  }
#endif
}

/* One plane: rows' taps clipped to the image, border columns one output at a time. */
static void plane(const pool_job *j, const plane_src *src, float *y) {
  /* columns whose taps all lie inside: ox*sw - pl >= 0 and ox*sw + (KW-1)*dw - pl <= W-1 */
  const int64_t lo = min64(j->OW, (src->pl + j->sw - 1) / j->sw), last = src->W - 1 + src->pl - (j->KW - 1) * j->dw;
  const int64_t hi = max64(lo, last < 0 ? 0 : min64(j->OW, last / j->sw + 1));
  const float init = j->is_max ? -INFINITY : 0.0f;
  for (int64_t oy = 0; oy < j->OH; ++oy) {
    float *yr = y + oy * j->OW;
    const int64_t y0 = oy * j->sh - src->pt; /* rows in bounds: 0 <= y0 + ky*dh < H */
    int64_t ky0 = 0, ky1 = j->KH;
    while (ky0 < ky1 && y0 + ky0 * j->dh < 0) ++ky0;
    while (ky1 > ky0 && y0 + (ky1 - 1) * j->dh >= src->H) --ky1;
    for (int64_t ox = 0; ox < j->OW; ++ox) {
      if (ox == lo) ox = hi;
      if (ox >= j->OW) break;
      float a = j->overwrite ? init : yr[ox];
      for (int64_t ky = ky0; ky < ky1; ++ky) {
        const float *xr = src->x + (y0 + ky * j->dh) * src->W;
        for (int64_t kx = 0; kx < j->KW; ++kx) {
          const int64_t ix = ox * j->sw + kx * j->dw - src->pl;
          if (ix >= 0 && ix < src->W) a = combine(j->is_max, a, xr[ix]);
        }
      }
      yr[ox] = a;
    }
    interior(j, src, y0, ky0, ky1, yr, lo, hi);
  }
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
    for (int64_t i = 0; i < hw; ++i)
      for (int l = 0; l < 8; ++l) st[i * 8 + l] = x[l * hw + i];
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
  if (j->taps) {
    table_planes(j, task * j->chunk, min64(j->planes, (task + 1) * j->chunk));
    return;
  }
  /* the padded extent every window reaches: pad top/left, and bottom/right as far as the last one */
  const int64_t hp = max64(j->pt + j->H, (j->OH - 1) * j->sh + (j->KH - 1) * j->dh + 1);
  const int64_t wp = max64(j->pl + j->W, (j->OW - 1) * j->sw + (j->KW - 1) * j->dw + 1);
  const int padded = hp != j->H || wp != j->W;
  const int stage = padded && hp * wp + SLACK <= STAGE_FLOATS;
  float staged[stage ? hp * wp + SLACK : 1];
  if (stage) {
    const float init = j->is_max ? -INFINITY : 0.0f;
    for (int64_t i = 0; i < hp * wp + SLACK; ++i) staged[i] = init;
  }
  for (int64_t p = task * j->chunk; p < min64(j->planes, (task + 1) * j->chunk); ++p) {
    const float *x = j->x + p * j->H * j->W;
    float *y = j->y + p * j->OH * j->OW;
    if (stage) {  /* the padding stays the identity from the first fill */
      for (int64_t r = 0; r < j->H; ++r) memcpy(staged + (j->pt + r) * wp + j->pl, x + r * j->W, (size_t)j->W * sizeof(float));
      const plane_src src = {staged, staged + hp * wp + SLACK, hp, wp, 0, 0};
      plane(j, &src, y);
    } else {
      const plane_src src = {x, j->x + j->planes * j->H * j->W, j->H, j->W, j->pt, j->pl};
      plane(j, &src, y);
    }
  }
}

void mlrt_pool2d_f32(int64_t x, int64_t y, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t KH,
                     int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl,
                     int64_t is_max, int64_t overwrite) {
  if (planes <= 0 || OH <= 0 || OW <= 0) return;
  const int64_t threads = mlrt_threads_for(planes * OH * OW * KH * KW);
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
