/* Checks mlrt_depthwise_conv2d_f32 against a plain reference loop on many shapes, built with
 * AddressSanitizer + UBSan by tests/test_kernels.py. Every buffer is allocated to its exact size,
 * so a read or write past a row, plane or tensor is reported. Tasks run in reverse order on a fake
 * pool: a task that depends on another's writes (or clobbers them) gives a wrong result.
 * Prints "ok <cases>" and exits 0, or names the first mismatching case and exits 1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_harness.h"

typedef struct {
  int64_t N, C, H, W, KH, KW, sh, sw, dh, dw, pt, pl, pb, pr;
  int overwrite, bias, residual, in_place;
  int64_t mult; /* channel multiplier: C = mult * input channels (never in place) */
  int res_is_out; /* the residual is read from the output buffer itself (overwrite, not in place) */
} dw_case;

static int run_case(const dw_case *k, int threads) {
  const int64_t OH = out_size(k->H, k->pt + k->pb, k->KH, k->dh, k->sh);
  const int64_t OW = out_size(k->W, k->pl + k->pr, k->KW, k->dw, k->sw);
  if (OH <= 0 || OW <= 0) return 0;
  const int64_t cin = k->C / k->mult, in_n = k->N * cin * k->H * k->W, out_n = k->N * k->C * OH * OW;
  float *x = fresh(in_n), *w = fresh(k->C * k->KH * k->KW), *b = k->bias ? fresh(k->C) : NULL;
  float *prior = fresh(out_n), *want = malloc((size_t)out_n * sizeof(float));
  float *res = k->res_is_out ? prior : k->residual ? fresh(out_n) : NULL;
  const float lo = -0.7f, hi = 0.9f;
  for (int64_t n = 0; n < k->N; ++n)
    for (int64_t c = 0; c < k->C; ++c)
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          const int64_t o = ((n * k->C + c) * OH + oy) * OW + ox;
          float acc = k->overwrite ? (b ? b[c] : 0.0f) : (k->in_place ? x[o] : prior[o]);
          float sum = 0.0f;
          for (int64_t ky = 0; ky < k->KH; ++ky)
            for (int64_t kx = 0; kx < k->KW; ++kx) {
              const int64_t iy = oy * k->sh + ky * k->dh - k->pt, ix = ox * k->sw + kx * k->dw - k->pl;
              if (iy >= 0 && iy < k->H && ix >= 0 && ix < k->W)
                sum += w[(c * k->KH + ky) * k->KW + kx] * x[((n * cin + c / k->mult) * k->H + iy) * k->W + ix];
            }
          float v = acc + sum + (res ? res[o] : 0.0f);
          want[o] = v < lo ? lo : v > hi ? hi : v;
        }
  float *y = k->in_place ? x : prior;
  use_threads(threads);
  if (k->mult == 1)
    mlrt_depthwise_conv2d_f32((intptr_t)x, (intptr_t)w, (intptr_t)y, k->N, k->C, k->H, k->W, k->KH, k->KW, OH, OW,
                              k->sh, k->sw, k->dh, k->dw, k->pt, k->pl, k->overwrite, (intptr_t)b, (intptr_t)res, lo,
                              hi, (intptr_t)y);
  else
    mlrt_depthwise_mult_conv2d_f32((intptr_t)x, (intptr_t)w, (intptr_t)y, k->N, k->C, k->H, k->W, k->KH, k->KW, OH,
                                   OW, k->sh, k->sw, k->dh, k->dw, k->pt, k->pl, k->mult, k->overwrite, (intptr_t)b,
                                   (intptr_t)res, lo, hi, (intptr_t)y);
  int bad = 0;
  for (int64_t i = 0; i < out_n && !bad; ++i)
    if (fabsf(y[i] - want[i]) > 1e-5f * (1.0f + fabsf(want[i]))) {
      printf("mismatch at %lld: %g vs %g; case N%lld C%lld mult %lld %lldx%lld k%lldx%lld s%lld,%lld d%lld,%lld "
             "pad %lld,%lld,%lld,%lld overwrite %d bias %d residual %d in_place %d threads %d\n",
             (long long)i, y[i], want[i], (long long)k->N, (long long)k->C, (long long)k->mult, (long long)k->H,
             (long long)k->W,
             (long long)k->KH, (long long)k->KW, (long long)k->sh, (long long)k->sw, (long long)k->dh,
             (long long)k->dw, (long long)k->pt, (long long)k->pl, (long long)k->pb, (long long)k->pr, k->overwrite,
             k->bias, k->residual, k->in_place, threads);
      bad = 1;
    }
  free(x), free(w), free(b), free(k->res_is_out ? NULL : res), free(prior), free(want);
  return bad ? -1 : 1;
}

int main(void) {
  int cases = 0;
  /* In place (the compiler's condition: same shape, pad < kernel extent), every row width from
   * 1 to 20 (tails, merged tails, lane-by-lane rows) and a few heights, both epilogue kinds.
   * Channels in the lanes: short maps staged whole, tall ones (80 rows) in bands. */
  const int64_t heights[] = {1, 5, 9, 80};
  for (int64_t W = 1; W <= 20; ++W)
    for (int hi = 0; hi < 4; ++hi)
      for (int e = 0; e < 4; ++e)
        for (int threads = 1; threads <= 3; threads += 2) {
          const dw_case k = {1 + (W % 2), 5, heights[hi], W, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, e & 1, e == 1, e >> 1, 1, 1, 0};
          const int r = run_case(&k, threads);
          if (r < 0) return 1;
          cases += r;
        }
  /* Out of place: strides 1-3, dilation, asymmetric and zero padding, kernel shapes 1x1 to 9x9;
   * short maps (one band) and tall ones (bands). */
  const int64_t ks[][2] = {{3, 3}, {1, 1}, {5, 5}, {3, 4}, {7, 7}, {2, 5}, {9, 9}};
  for (int ki = 0; ki < (int)(sizeof ks / sizeof ks[0]); ++ki)
    for (int64_t s = 1; s <= 3; ++s)
      for (int64_t d = 1; d <= 2; ++d)
        for (int64_t W = 5; W <= 41; W += 9)
          for (int e = 0; e < 8; ++e) {
            const int64_t KH = ks[ki][0], KW = ks[ki][1];
            const int64_t pt = (KH - 1) * d / 2, pl = (e & 2) ? 0 : (KW - 1) * d / 2 + (W % 2);
            const dw_case k = {1, 3, (e & 4 ? 90 : 6) + W % 7, W, KH, KW, s, s == 3 ? 1 : s, d, 3 - d, pt, pl, KH / 2, 1,
                               e & 1, (e & 3) != 2, (e & 3) == 3, 0, 1, 0};
            const int r = run_case(&k, 1 + (W % 3));
            if (r < 0) return 1;
            cases += r;
          }
  /* Outputs of 1 to 9 columns: channels in the lanes below 8, in blocks of 8 (a partial last block),
   * two images; strides, dilation, 3x3 to 7x7, in place where the shape allows it. */
  const int64_t chans[] = {8, 13, 24};
  for (int ci = 0; ci < 3; ++ci)
    for (int64_t W = 1; W <= 9; W += 2)
      for (int64_t K = 3; K <= 7; K += 2)
        for (int e = 0; e < 16; ++e) {
          const int64_t s = 1 + (e & 1), d = 1 + ((e >> 1) & 1), pad = (K - 1) * d / 2;
          const int in_place = s == 1 && (e & 4);
          const dw_case k = {2, chans[ci], W + 2 * (e >> 3), W, K, K, s, s, d, d, pad, pad, pad, pad, in_place || (e & 8),
                             (e & 4) != 0, (e & 8) != 0, in_place, 1, 0};
          const int r = run_case(&k, 1 + (e % 3));
          if (r < 0) return 1;
          cases += r;
        }
  /* Rows too wide for the ring: the direct loop. */
  const dw_case wide = {1, 2, 4, 1500, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0};
  const int r = run_case(&wide, 2);
  if (r < 0) return 1;
  cases += r;
  /* Channel multipliers 2 and 3 (FastViT's patch embedding: 7x7 / stride 2, groups = input
   * channels): with AVX2 channels in the lanes (blocks of 8 across input channels; tall maps in
   * bands), without it the ring and whole-channel staging; the direct loop; two images. */
  const int64_t mh[] = {3, 16, 70}, mw[] = {4, 16, 23};
  for (int64_t m = 2; m <= 3; ++m)
    for (int hi = 0; hi < 3; ++hi)
      for (int e = 0; e < 8; ++e) {
        const int64_t K = e & 1 ? 7 : 3, s = 1 + ((e >> 1) & 1), pad = K / 2;
        const dw_case k = {2, 5 * m, mh[hi], mw[hi], K, K, s, s, 1, 1, pad, pad, pad, pad, e & 1, (e & 4) != 0,
                           (e & 2) != 0, 0, m, 0};
        const int r = run_case(&k, 1 + (e % 3));
        if (r < 0) return 1;
        cases += r;
      }
  /* 3x3, stride 1 and 2, rows of 32 to 63 outputs (with AVX2 blocks of 8 positions, without it
   * the ring's blocks of 16; then the rest: the last block again where storing twice is safe),
   * tall (bands; the ring) and short (one band; whole-channel staging); the epilogues that
   * forbid the overlap: accumulating onto the output, in place, a residual read from the output
   * buffer. */
  for (int64_t OWt = 32; OWt < 64; OWt += 3)
    for (int e = 0; e < 16; ++e) {
      const int64_t s = 1 + (e & 1), W = OWt * s - (e & 2 ? 1 : 0);
      const int overwrite = (e & 12) != 4, in_place = (e & 12) == 8 && s == 1, res_out = (e & 12) == 12;
      const dw_case k = {1 + (OWt % 2), 3, e & 2 ? 70 : 9, W, 3, 3, s, s, 1, 1, 1, 1, 1, 1, overwrite, OWt % 3 == 0,
                         res_out || (e & 12) == 0, in_place, 1, res_out};
      const int r = run_case(&k, 1 + (e % 3));
      if (r < 0) return 1;
      cases += r;
    }
  /* Wide maps with channels in the lanes, staged in bands of rows (a band's shared rows carried to
   * the next in the buffer), in place (a plane's bands in one task, in order) and not; 3x3 and
   * 5x5, strides 1 and 2, a partial last block of channels, the epilogues that forbid the
   * overlapping last block of a row. */
  const int64_t band_w[] = {56, 61, 112};
  for (int wi = 0; wi < 3; ++wi)
    for (int e = 0; e < 16; ++e) {
      const int64_t K = e & 1 ? 5 : 3, s = 1 + ((e >> 1) & 1), pad = K / 2, W = band_w[wi];
      const int kind = e >> 2; /* 0: bias, 1: accumulate, 2: in place, 3: residual read from the output */
      const dw_case k = {1 + (wi == 1), 8 + 5 * (e & 1), W - 3 * (wi == 1), W, K, K, s, s, 1, 1, pad, pad, pad, pad,
                         kind != 1, kind == 0, kind == 3, kind == 2 && s == 1, 1, kind == 3};
      const int r = run_case(&k, 1 + (e % 3));
      if (r < 0) return 1;
      cases += r;
    }
  /* A map under 8 output columns is staged whole, input rows no output reads included: stride 8
   * leaves 7 of them below the last row read (the buffer was once sized by the rows read). */
  const dw_case unread_rows = {1, 8, 40, 56, 1, 1, 8, 8, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0};
  if (run_case(&unread_rows, 1) < 0) return 1;
  ++cases;
  const dw_case wide_mult = {1, 4, 4, 1500, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 2, 0};
  if (run_case(&wide_mult, 2) < 0) return 1;
  ++cases;
  printf("ok %d\n", cases);
  return 0;
}
