/* Convolutions, NCHW fp32. Zero padding is applied here (pad_top/pad_left; the bottom/right
 * padding follows from OH/OW), so the compiler can drop torch-mlir's padded copy of the input.
 * conv2d: im2col written straight into the packed-panel layout of the GEMM's B operand, then
 *   Y[CO x OH*OW] = epilogue(W[CO x C*KH*KW] * cols), the weights read in place as A.
 * depthwise: a direct loop per channel, vectorized by the compiler along the output row. */
#include <string.h>

#include "mlrt_kernels.h"

enum { NR = MLRT_NR };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

typedef struct {
  const float *x;
  float *bp;
  int64_t C, H, W, KH, KW, OW, N, sh, sw, dh, dw, pt, pl;
} im2col_job;

static void im2col_panel(void *ctx, int64_t p) {
  const im2col_job *j = (const im2col_job *)ctx;
  const int64_t taps = j->KH * j->KW, K = j->C * taps, plane = j->H * j->W;
  float *dst = j->bp + p * K * NR;
  int64_t oy[NR], ox[NR];
  for (int l = 0; l < NR; ++l) {
    const int64_t pos = p * NR + l;
    oy[l] = pos < j->N ? pos / j->OW : -1;
    ox[l] = pos < j->N ? pos % j->OW : 0;
  }
  for (int64_t ky = 0; ky < j->KH; ++ky)
    for (int64_t kx = 0; kx < j->KW; ++kx) {
      /* offsets of this tap for the 16 output positions; -1 where it falls in the padding */
      int64_t off[NR];
      int contiguous = 1, stride2 = 1;
      for (int l = 0; l < NR; ++l) {
        const int64_t iy = oy[l] * j->sh + ky * j->dh - j->pt, ix = ox[l] * j->sw + kx * j->dw - j->pl;
        off[l] = (oy[l] >= 0 && iy >= 0 && iy < j->H && ix >= 0 && ix < j->W) ? iy * j->W + ix : -1;
        if (off[l] < 0 || (l > 0 && off[l] != off[l - 1] + 1)) contiguous = 0;
        if (off[l] < 0 || (l > 0 && off[l] != off[l - 1] + 2)) stride2 = 0;
      }
      (void)stride2; /* used by the AVX2 path only */
      float *d = dst + (ky * j->KW + kx) * NR;
      const float *src = j->x;
      for (int64_t c = 0; c < j->C; ++c, d += taps * NR, src += plane) {
        if (contiguous) {
          memcpy(d, src + off[0], NR * sizeof(float));
#ifdef MLRT_HAVE_AVX2
        } else if (stride2) { /* stride-2 convs: deinterleave; reads end at the last element used */
          const float *s = src + off[0];
          _mm256_storeu_ps(d, mlrt_even_lanes(_mm256_loadu_ps(s), _mm256_loadu_ps(s + 8)));
          _mm256_storeu_ps(d + 8, mlrt_odd_lanes(_mm256_loadu_ps(s + 15), _mm256_loadu_ps(s + 23)));
#endif
        } else {
          for (int l = 0; l < NR; ++l) d[l] = off[l] >= 0 ? src[off[l]] : 0.0f;
        }
      }
    }
}

/* im2col and GEMM fused per task: each task packs its own panels and multiplies them while they
 * are still in its cache, and a conv costs one fork-join instead of two. */
typedef struct {
  im2col_job im2col;
  const float *w;
  float *y;
  const mlrt_epilogue *ep;
  int64_t CO, K, N, tasks, panels;
} conv_job;

static void conv_task(void *ctx, int64_t t) {
  const conv_job *j = (const conv_job *)ctx;
  const int64_t p0 = mlrt_part(j->panels, j->tasks, t), p1 = mlrt_part(j->panels, j->tasks, t + 1);
  for (int64_t p = p0; p < p1; ++p) im2col_panel((void *)&j->im2col, p);
  mlrt_gemm_panels(j->CO, j->N, j->K, j->w, j->K, j->im2col.bp, j->y, j->N, j->ep, p0, p1);
}

void mlrt_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                     int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw,
                     int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias,
                     int64_t residual, float act_lo, float act_hi, int64_t dst) {
  const float *X = (const float *)(intptr_t)x, *Wt = (const float *)(intptr_t)w;
  float *Y = (float *)(intptr_t)y, *Bp = (float *)(intptr_t)scratch;
  const int64_t K = C * KH * KW, N = OH * OW;
  for (int64_t n = 0; n < batch; ++n) {
    const int64_t y_off = n * CO * N;
    mlrt_epilogue ep = {(int)overwrite, (const float *)(intptr_t)bias, 0,
                        residual ? (const float *)(intptr_t)residual + y_off : NULL, act_lo, act_hi,
                        (float *)(intptr_t)dst + y_off};
    im2col_job j = {X + n * C * H * W, Bp, C, H, W, KH, KW, OW, N, sh, sw, dh, dw, pad_top, pad_left};
    const int64_t threads = mlrt_threads_for(CO * N * K), panels = (N + NR - 1) / NR;
    /* im2col fused into the GEMM per task: tasks take even shares of the panels, small enough
     * that a task's packed columns stay in L2 (~256 KiB), as long as the threads stay within 3%
     * of the best balance a rows x columns split would give. Else im2col first, then the GEMM. */
    int64_t tm, tn, tasks = 0;
    if (threads > 1) {
      const int64_t best = mlrt_gemm_split(CO, panels, threads, 1, &tm, &tn);
      const int64_t blocks = (CO + MLRT_MR - 1) / MLRT_MR, fit = (panels * K * NR * 4 + (256 << 10) - 1) / (256 << 10);
      for (int64_t n = fit > threads ? fit : threads; n <= panels && n <= 16 * threads && !tasks; ++n)
        if (mlrt_gemm_makespan(blocks, panels, 1, n, threads) * 100 <= best * 103) tasks = n;
    }
    if (tasks > 1) {
      conv_job cj = {j, Wt, Y + y_off, &ep, CO, K, N, tasks, panels};
      mlrt_parallel_for(tasks, conv_task, &cj);
      continue;
    }
    if (threads == 1)
      for (int64_t p = 0; p < (N + NR - 1) / NR; ++p) im2col_panel(&j, p);
    else
      mlrt_parallel_for((N + NR - 1) / NR, im2col_panel, &j);
    mlrt_gemm_packed(CO, N, K, Wt, K, Bp, Y + y_off, N, &ep);
  }
}

typedef struct {
  const float *x, *w;
  float *y;
  int64_t C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl;
  mlrt_epilogue ep;
} depthwise_job;

static void depthwise_channel(void *ctx, int64_t t) {
  const depthwise_job *j = (const depthwise_job *)ctx;
  const mlrt_epilogue *ep = &j->ep;
  const int64_t c = t % j->C, plane_out = j->OH * j->OW;
  const float *in = j->x + t * j->H * j->W; /* t = n * C + c */
  const float *f = j->w + c * j->KH * j->KW;
  float *out = j->y + t * plane_out;
  const float init = !ep->overwrite ? 0.0f : ep->bias ? ep->bias[c] : 0.0f;
  for (int64_t oy = 0; oy < j->OH; ++oy) {
    float *restrict o = out + oy * j->OW;
    if (ep->overwrite)
      for (int64_t ox = 0; ox < j->OW; ++ox) o[ox] = init;
    for (int64_t ky = 0; ky < j->KH; ++ky) {
      const int64_t iy = oy * j->sh + ky * j->dh - j->pt;
      if (iy < 0 || iy >= j->H) continue;
      for (int64_t kx = 0; kx < j->KW; ++kx) {
        const float wv = f[ky * j->KW + kx];
        /* ox range whose input column ix = ox*sw + kx*dw - pl lies inside [0, W) */
        const int64_t shift = kx * j->dw - j->pl;
        const int64_t ox0 = shift >= 0 ? 0 : (-shift + j->sw - 1) / j->sw;
        const int64_t ox1 = min64(j->OW, max64(0, (j->W - shift + j->sw - 1) / j->sw));
        if (ox0 >= ox1) continue;
        const float *restrict row = in + iy * j->W + ox0 * j->sw + shift; /* input for ox0 */
        float *restrict oo = o + ox0;
        if (j->sw == 1) {
          for (int64_t i = 0; i < ox1 - ox0; ++i) oo[i] += wv * row[i];
        } else {
          for (int64_t i = 0; i < ox1 - ox0; ++i) oo[i] += wv * row[i * j->sw];
        }
      }
    }
    const int64_t off = t * plane_out + oy * j->OW;
    float *restrict d = ep->dst + off;
    const float *restrict r = ep->residual ? ep->residual + off : NULL;
    for (int64_t ox = 0; ox < j->OW; ++ox) {
      float v = o[ox] + (r ? r[ox] : 0.0f);
      d[ox] = mlrt_clamp(v, ep->lo, ep->hi);
    }
  }
}

void mlrt_depthwise_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W,
                               int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh,
                               int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias,
                               int64_t residual, float act_lo, float act_hi, int64_t dst) {
  depthwise_job j = {(const float *)(intptr_t)x, (const float *)(intptr_t)w, (float *)(intptr_t)y, C, H, W, KH, KW,
                     OH, OW, sh, sw, dh, dw, pad_top, pad_left,
                     {(int)overwrite, (const float *)(intptr_t)bias, 0, (const float *)(intptr_t)residual, act_lo,
                      act_hi, (float *)(intptr_t)dst}};
  if (mlrt_threads_for(batch * C * OH * OW * KH * KW) == 1)
    for (int64_t t = 0; t < batch * C; ++t) depthwise_channel(&j, t);
  else
    mlrt_parallel_for(batch * C, depthwise_channel, &j);
}
