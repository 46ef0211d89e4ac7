/* Convolutions, NCHW fp32 on an already padded input (torch-mlir materializes the padding).
 * conv2d: im2col written straight into the packed-panel layout of the GEMM's B operand, then
 *   Y[CO x OH*OW] += W[CO x C*KH*KW] * cols, with the weights read in place as A.
 * depthwise: a direct loop per channel, vectorized by the compiler along the output row. */
#include <string.h>

#include "mlrt_kernels.h"

enum { NR = MLRT_NR };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

typedef struct {
  const float *x;
  float *bp;
  int64_t C, H, W, KH, KW, OW, N, sh, sw, dh, dw;
} im2col_job;

static void im2col_panel(void *ctx, int64_t p) {
  const im2col_job *j = (const im2col_job *)ctx;
  const int64_t K = j->C * j->KH * j->KW;
  float *dst = j->bp + p * K * NR;
  int64_t off[NR];
  int valid = 0, contiguous = 1;
  for (int l = 0; l < NR; ++l) {
    const int64_t pos = p * NR + l;
    if (pos < j->N) {
      const int64_t oy = pos / j->OW, ox = pos % j->OW;
      off[l] = oy * j->sh * j->W + ox * j->sw;
      ++valid;
      if (l > 0 && off[l] != off[l - 1] + 1) contiguous = 0;
    } else {
      off[l] = -1;
    }
  }
  contiguous = contiguous && valid == NR;
  int64_t k = 0;
  for (int64_t c = 0; c < j->C; ++c)
    for (int64_t ky = 0; ky < j->KH; ++ky)
      for (int64_t kx = 0; kx < j->KW; ++kx, ++k) {
        const float *src = j->x + c * j->H * j->W + ky * j->dh * j->W + kx * j->dw;
        float *d = dst + k * NR;
        if (contiguous) {
          memcpy(d, src + off[0], NR * sizeof(float));
        } else {
          for (int l = 0; l < NR; ++l) d[l] = off[l] >= 0 ? src[off[l]] : 0.0f;
        }
      }
}

void mlrt_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                     int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw,
                     int64_t dh, int64_t dw) {
  const float *X = (const float *)(intptr_t)x, *Wt = (const float *)(intptr_t)w;
  float *Y = (float *)(intptr_t)y, *Bp = (float *)(intptr_t)scratch;
  const int64_t K = C * KH * KW, N = OH * OW;
  for (int64_t n = 0; n < batch; ++n) {
    im2col_job j = {X + n * C * H * W, Bp, C, H, W, KH, KW, OW, N, sh, sw, dh, dw};
    mlrt_parallel_for((N + NR - 1) / NR, im2col_panel, &j);
    mlrt_gemm_packed(CO, N, K, Wt, K, Bp, Y + n * CO * N, N);
  }
}

typedef struct {
  const float *x, *w;
  float *y;
  int64_t C, H, W, KH, KW, OH, OW, sh, sw, dh, dw;
} depthwise_job;

static void depthwise_channel(void *ctx, int64_t t) {
  const depthwise_job *j = (const depthwise_job *)ctx;
  const int64_t c = t % j->C;
  const float *in = j->x + t * j->H * j->W; /* t = n * C + c */
  const float *f = j->w + c * j->KH * j->KW;
  float *out = j->y + t * j->OH * j->OW;
  for (int64_t oy = 0; oy < j->OH; ++oy) {
    float *restrict o = out + oy * j->OW;
    for (int64_t ky = 0; ky < j->KH; ++ky)
      for (int64_t kx = 0; kx < j->KW; ++kx) {
        const float wv = f[ky * j->KW + kx];
        const float *restrict row = in + (oy * j->sh + ky * j->dh) * j->W + kx * j->dw;
        if (j->sw == 1) {
          for (int64_t ox = 0; ox < j->OW; ++ox) o[ox] += wv * row[ox];
        } else {
          for (int64_t ox = 0; ox < j->OW; ++ox) o[ox] += wv * row[ox * j->sw];
        }
      }
  }
}

void mlrt_depthwise_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W,
                               int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh,
                               int64_t dw) {
  depthwise_job j = {(const float *)(intptr_t)x, (const float *)(intptr_t)w, (float *)(intptr_t)y, C, H, W, KH, KW,
                     OH, OW, sh, sw, dh, dw};
  mlrt_parallel_for(batch * C, depthwise_channel, &j);
}
