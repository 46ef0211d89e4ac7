/* Checks mlrt_conv2d_grouped_f32, mlrt_conv2d_packed_f32, mlrt_conv2d_small_f32, mlrt_conv3d_f32 and
 * mlrt_conv2d_winograd_f32 (F(2x2) and F(4x4), ragged right/bottom edges) and mlrt_pool2d_f32
 * (max with NaNs, sum; padding, strides, dilation) against plain
 * reference loops on many shapes, built with AddressSanitizer + UBSan by tests/test_kernels.py.
 * Every buffer (scratch included, at the size kernel_calls.py gives it) is allocated to its exact
 * size, so a read or write past it is reported. Tasks run in reverse order on a fake pool.
 * Prints "ok <cases>" and exits 0, or names the first mismatching case and exits 1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK_SEED 777u
#include "check_harness.h"

typedef struct {
  int64_t N, G, C, CO, H, W, KH, KW, sh, sw, dh, dw, pt, pl, pb, pr;
  int overwrite, bias, residual, small;
} conv_case;

static int run_case(const conv_case *k, int threads) {
  const int64_t OH = out_size(k->H, k->pt + k->pb, k->KH, k->dh, k->sh);
  const int64_t OW = out_size(k->W, k->pl + k->pr, k->KW, k->dw, k->sw);
  if (OH <= 0 || OW <= 0) return 0;
  const int64_t cg = k->C / k->G, fg = k->CO / k->G, K = cg * k->KH * k->KW, P = OH * OW;
  const int64_t out_n = k->N * k->CO * P;
  float *x = fresh(k->N * k->C * k->H * k->W), *w = fresh(k->CO * K), *b = k->bias ? fresh(k->CO) : NULL;
  float *res = k->residual ? fresh(out_n) : NULL, *y = fresh(out_n), *want = malloc((size_t)out_n * sizeof(float));
  const float lo = -2.5f, hi = 3.0f;
  for (int64_t n = 0; n < k->N; ++n)
    for (int64_t co = 0; co < k->CO; ++co)
      for (int64_t p = 0; p < P; ++p) {
        const int64_t o = (n * k->CO + co) * P + p, oy = p / OW, ox = p % OW, g = co / fg;
        double sum = 0.0;
        for (int64_t c = 0; c < cg; ++c)
          for (int64_t ky = 0; ky < k->KH; ++ky)
            for (int64_t kx = 0; kx < k->KW; ++kx) {
              const int64_t iy = oy * k->sh + ky * k->dh - k->pt, ix = ox * k->sw + kx * k->dw - k->pl;
              if (iy >= 0 && iy < k->H && ix >= 0 && ix < k->W)
                sum += (double)w[((co * cg + c) * k->KH + ky) * k->KW + kx] *
                       x[((n * k->C + g * cg + c) * k->H + iy) * k->W + ix];
            }
        const float v = (float)sum + (k->overwrite ? (b ? b[co] : 0.0f) : y[o]) + (res ? res[o] : 0.0f);
        want[o] = v < lo ? lo : v > hi ? hi : v;
      }
  use_threads(threads);
  float *scratch, *wp = NULL;
  if (k->small) { /* per group, W_g^T [K x CO/G] (K ordered tap, channel) in packed B panels, as
                    * kernel_calls.pack_conv_panels stores it */
    const int64_t panels = (fg + MLRT_NR - 1) / MLRT_NR, taps = k->KH * k->KW;
    wp = malloc((size_t)(k->G * panels * K * MLRT_NR) * sizeof(float));
    for (int64_t g = 0; g < k->G; ++g)
      for (int64_t pn = 0; pn < panels; ++pn)
        for (int64_t kk = 0; kk < K; ++kk)
          for (int64_t l = 0; l < MLRT_NR; ++l) {
            const int64_t co = pn * MLRT_NR + l, tap = kk / cg, c = kk % cg;
            wp[((g * panels + pn) * K + kk) * MLRT_NR + l] = co < fg ? w[(g * fg + co) * K + c * taps + tap] : 0.0f;
          }
    scratch = malloc((size_t)mlrt_conv_small_scratch_floats(k->N, k->C, k->H, k->W, k->KH, k->KW, k->CO, OH, OW) *
                     sizeof(float));
    mlrt_conv2d_small_f32((intptr_t)x, (intptr_t)wp, (intptr_t)y, (intptr_t)scratch, k->N, k->G, k->C, k->H, k->W,
                          k->CO, k->KH, k->KW, OH, OW, k->sh, k->sw, k->dh, k->dw, k->pt, k->pl, k->overwrite,
                          (intptr_t)b, (intptr_t)res, lo, hi, (intptr_t)y);
  } else if (k->G == 1 && k->CO % 2 == 0) { /* weights in A panels of MR output channels, zero rows last */
    const int64_t panels = (k->CO + MLRT_MR - 1) / MLRT_MR;
    wp = malloc((size_t)(panels * K * MLRT_MR) * sizeof(float));
    for (int64_t pn = 0; pn < panels; ++pn)
      for (int64_t kk = 0; kk < K; ++kk)
        for (int64_t r = 0; r < MLRT_MR; ++r) {
          const int64_t co = pn * MLRT_MR + r;
          wp[(pn * K + kk) * MLRT_MR + r] = co < k->CO ? w[co * K + kk] : 0.0f;
        }
    scratch = malloc((size_t)mlrt_packed_b_floats(K, P) * sizeof(float));
    mlrt_conv2d_packed_f32((intptr_t)x, (intptr_t)wp, (intptr_t)y, (intptr_t)scratch, k->N, k->C, k->H, k->W, k->CO,
                           k->KH, k->KW, OH, OW, k->sh, k->sw, k->dh, k->dw, k->pt, k->pl, k->overwrite, (intptr_t)b,
                           (intptr_t)res, lo, hi, (intptr_t)y);
  } else {
    const int64_t slices = k->N * k->G < 8 ? k->N * k->G : 8;
    scratch = malloc((size_t)(slices * mlrt_packed_b_floats(K, P)) * sizeof(float));
    mlrt_conv2d_grouped_f32((intptr_t)x, (intptr_t)w, (intptr_t)y, (intptr_t)scratch, k->N, k->G, slices, k->C, k->H,
                            k->W, k->CO, k->KH, k->KW, OH, OW, k->sh, k->sw, k->dh, k->dw, k->pt, k->pl, k->overwrite,
                            (intptr_t)b, (intptr_t)res, lo, hi, (intptr_t)y);
  }
  int bad = 0;
  for (int64_t i = 0; i < out_n && !bad; ++i)
    if (fabsf(y[i] - want[i]) > 1e-4f * (1.0f + fabsf(want[i]))) {
      printf("mismatch at %lld: %g vs %g; %s N%lld G%lld C%lld CO%lld %lldx%lld k%lldx%lld s%lld,%lld d%lld,%lld "
             "pad %lld,%lld overwrite %d bias %d residual %d threads %d\n",
             (long long)i, y[i], want[i], k->small ? "small" : k->G == 1 && k->CO % 2 == 0 ? "packed" : "grouped", (long long)k->N, (long long)k->G,
             (long long)k->C, (long long)k->CO, (long long)k->H, (long long)k->W, (long long)k->KH,
             (long long)k->KW, (long long)k->sh, (long long)k->sw, (long long)k->dh, (long long)k->dw,
             (long long)k->pt, (long long)k->pl, k->overwrite, k->bias, k->residual, threads);
      bad = 1;
    }
  free(x), free(w), free(b), free(res), free(y), free(want), free(scratch), free(wp);
  return bad ? -1 : 1;
}

/* 3-D: weights [CO][C][KD][KH][KW] packed in A panels as kernel_calls.pack_a_panels stores them. */
static int run_case3d(int64_t N, int64_t C, int64_t CO, int64_t D, int64_t H, int64_t W, int64_t KD, int64_t KH,
                      int64_t KW, int64_t s, int64_t dd, int64_t pd, int64_t p, int e, int threads) {
  const int64_t OD = out_size(D, 2 * pd, KD, dd, s), OH = out_size(H, 2 * p, KH, 1, s), OW = out_size(W, 2 * p, KW, 1, s);
  if (OD <= 0 || OH <= 0 || OW <= 0) return 0;
  const int64_t K = C * KD * KH * KW, P = OD * OH * OW, out_n = N * CO * P;
  const int overwrite = e & 1, has_bias = (e & 3) != 2, has_res = (e & 3) == 3;
  float *x = fresh(N * C * D * H * W), *w = fresh(CO * K), *b = has_bias ? fresh(CO) : NULL;
  float *res = has_res ? fresh(out_n) : NULL, *y = fresh(out_n), *want = malloc((size_t)out_n * sizeof(float));
  const float lo = -2.5f, hi = 3.0f;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < CO; ++co)
      for (int64_t q = 0; q < P; ++q) {
        const int64_t o = (n * CO + co) * P + q, od = q / (OH * OW), oy = q / OW % OH, ox = q % OW;
        double sum = 0.0;
        for (int64_t kd = 0; kd < KD; ++kd)
          for (int64_t c = 0; c < C; ++c)
            for (int64_t ky = 0; ky < KH; ++ky)
              for (int64_t kx = 0; kx < KW; ++kx) {
                const int64_t id = od * s + kd * dd - pd, iy = oy * s + ky - p, ix = ox * s + kx - p;
                if (id >= 0 && id < D && iy >= 0 && iy < H && ix >= 0 && ix < W)
                  sum += (double)w[(((co * C + c) * KD + kd) * KH + ky) * KW + kx] *
                         x[(((n * C + c) * D + id) * H + iy) * W + ix];
              }
        const float v = (float)sum + (overwrite ? (b ? b[co] : 0.0f) : y[o]) + (res ? res[o] : 0.0f);
        want[o] = v < lo ? lo : v > hi ? hi : v;
      }
  use_threads(threads);
  const int64_t panels = (CO + MLRT_MR - 1) / MLRT_MR;
  float *wp = calloc((size_t)(panels * K * MLRT_MR), sizeof(float));
  for (int64_t co = 0; co < CO; ++co)
    for (int64_t kk = 0; kk < K; ++kk) wp[(co / MLRT_MR * K + kk) * MLRT_MR + co % MLRT_MR] = w[co * K + kk];
  float *scratch = malloc((size_t)mlrt_packed_b_floats(K, P) * sizeof(float));
  mlrt_conv3d_f32((intptr_t)x, (intptr_t)wp, (intptr_t)y, (intptr_t)scratch, N, C, D, H, W, CO, KD, KH, KW, OD, OH, OW,
                  s, s, s, dd, 1, 1, pd, p, p, overwrite, (intptr_t)b, (intptr_t)res, lo, hi, (intptr_t)y);
  int bad = 0;
  for (int64_t i = 0; i < out_n && !bad; ++i)
    if (fabsf(y[i] - want[i]) > 1e-4f * (1.0f + fabsf(want[i]))) {
      printf("mismatch at %lld: %g vs %g; conv3d N%lld C%lld CO%lld %lldx%lldx%lld k%lldx%lldx%lld s%lld dd%lld "
             "pad %lld,%lld e%d threads %d\n", (long long)i, y[i], want[i], (long long)N, (long long)C, (long long)CO,
             (long long)D, (long long)H, (long long)W, (long long)KD, (long long)KH, (long long)KW, (long long)s,
             (long long)dd, (long long)pd, (long long)p, e, threads);
      bad = 1;
    }
  free(x), free(w), free(wp), free(b), free(res), free(y), free(want), free(scratch);
  return bad ? -1 : 1;
}

/* Winograd: 3x3 stride 1, weights transformed as kernel_calls.winograd_weights /
 * winograd4_weights do (U = G g G^T in double, [E][CO][C]), scratch sized as
 * kernel_calls.winograd_scratch_floats. */
static int run_winograd(int64_t N, int64_t C, int64_t CO, int64_t H, int64_t W, int64_t pt, int64_t pl, int64_t pb,
                        int64_t pr, int64_t T, int e, int threads) {
  const int64_t OH = H + pt + pb - 2, OW = W + pl + pr - 2;
  if (OH <= 0 || OW <= 0) return 0;
  const int64_t P = OH * OW, out_n = N * CO * P, E = (T + 2) * (T + 2);
  const int overwrite = e & 1, has_bias = (e & 3) != 2, has_res = (e & 3) == 3;
  float *x = fresh(N * C * H * W), *w = fresh(CO * C * 9), *b = has_bias ? fresh(CO) : NULL;
  float *res = has_res ? fresh(out_n) : NULL, *y = fresh(out_n), *want = malloc((size_t)out_n * sizeof(float));
  const float lo = -2.5f, hi = 3.0f;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < CO; ++co)
      for (int64_t q = 0; q < P; ++q) {
        const int64_t o = (n * CO + co) * P + q, oy = q / OW, ox = q % OW;
        double sum = 0.0;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t ky = 0; ky < 3; ++ky)
            for (int64_t kx = 0; kx < 3; ++kx) {
              const int64_t iy = oy + ky - pt, ix = ox + kx - pl;
              if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                sum += (double)w[(co * C + c) * 9 + ky * 3 + kx] * x[((n * C + c) * H + iy) * W + ix];
            }
        const float v = (float)sum + (overwrite ? (b ? b[co] : 0.0f) : y[o]) + (res ? res[o] : 0.0f);
        want[o] = v < lo ? lo : v > hi ? hi : v;
      }
  static const double g2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static const double g4[6][3] = {{1.0 / 4, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                  {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  const int64_t t = T + 2, co_rows = (CO + MLRT_MR - 1) / MLRT_MR * MLRT_MR;
  /* per element, [CO, C] in A panels of MR output channels, zero rows last (kernel_calls.pack_a_panels) */
  float *u = calloc((size_t)(E * co_rows * C), sizeof(float));
  for (int64_t i = 0; i < t; ++i)
    for (int64_t jj = 0; jj < t; ++jj)
      for (int64_t co = 0; co < CO; ++co)
        for (int64_t c = 0; c < C; ++c) {
          double sum = 0.0;
          for (int k = 0; k < 3; ++k)
            for (int l = 0; l < 3; ++l)
              sum += (T == 4 ? g4[i][k] * g4[jj][l] : g2[i][k] * g2[jj][l]) * w[(co * C + c) * 9 + k * 3 + l];
          u[((i * t + jj) * co_rows + co / MLRT_MR * MLRT_MR) * C + c * MLRT_MR + co % MLRT_MR] = (float)sum;
        }
  /* kernel_calls.winograd_scratch_floats, with _winograd_tiles' tile-row rounding */
  const int64_t th = (OH + T - 1) / T, tw = (OW + T - 1) / T, tw8 = (tw + 7) / 8 * 8;
  const int64_t twp = T == 4 || (th * tw8 + 15) / 16 == (th * tw + 15) / 16 ? tw8 : tw, panels = (th * twp + 15) / 16;
  const int64_t wpad = T * twp + (T == 4 ? 4 : 2);
  const int64_t floats = (C * (T * th + 2) * wpad + 15) / 16 * 16 + panels * E * 16 * (C + CO);
  /* 64-byte aligned like the arena's scratch: the transforms use aligned stores */
  float *scratch = aligned_alloc(64, (size_t)(floats + 15) / 16 * 16 * sizeof(float));
  use_threads(threads);
  mlrt_conv2d_winograd_f32((intptr_t)x, (intptr_t)u, (intptr_t)y, (intptr_t)scratch, N, C, H, W, CO, OH, OW, pt, pl,
                           T, overwrite, (intptr_t)b, (intptr_t)res, lo, hi, (intptr_t)y);
  int bad = 0;
  const float tol = T == 4 ? 1e-3f : 1e-4f; /* F(4x4)'s larger transform entries (supported-ops.md) */
  for (int64_t i = 0; i < out_n && !bad; ++i)
    if (fabsf(y[i] - want[i]) > tol * (1.0f + fabsf(want[i]))) {
      printf("mismatch at %lld: %g vs %g; winograd F%lld N%lld C%lld CO%lld %lldx%lld pad %lld,%lld,%lld,%lld e%d "
             "threads %d\n", (long long)i, y[i], want[i], (long long)T, (long long)N, (long long)C, (long long)CO,
             (long long)H, (long long)W, (long long)pt, (long long)pl, (long long)pb, (long long)pr, e, threads);
      bad = 1;
    }
  free(x), free(w), free(b), free(res), free(y), free(want), free(u), free(scratch);
  return bad ? -1 : 1;
}

/* Pooling: every tap in bounds of the unpadded input, NaN inputs propagating through max. */
static int run_pool(int64_t P, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t s, int64_t d, int64_t pt, int64_t pl,
                    int64_t extra, int is_max, int overwrite, int threads) {
  const int64_t OH = out_size(H, 2 * pt + extra, KH, d, s), OW = out_size(W, 2 * pl + extra, KW, d, s);
  if (OH <= 0 || OW <= 0) return 0;
  float *x = fresh(P * H * W), *y = fresh(P * OH * OW), *want = malloc((size_t)(P * OH * OW) * sizeof(float));
  if (is_max) x[(P * H * W) / 2] = NAN;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t oy = 0; oy < OH; ++oy)
      for (int64_t ox = 0; ox < OW; ++ox) {
        const int64_t o = (p * OH + oy) * OW + ox;
        float a = overwrite ? (is_max ? -INFINITY : 0.0f) : y[o];
        for (int64_t ky = 0; ky < KH; ++ky)
          for (int64_t kx = 0; kx < KW; ++kx) {
            const int64_t iy = oy * s + ky * d - pt, ix = ox * s + kx * d - pl;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            const float v = x[(p * H + iy) * W + ix];
            a = is_max ? (v > a || v != v ? v : a) : a + v;
          }
        want[o] = a;
      }
  use_threads(threads);
  mlrt_pool2d_f32((intptr_t)x, (intptr_t)y, P, H, W, OH, OW, KH, KW, s, s, d, d, pt, pl, is_max, overwrite);
  int bad = 0;
  for (int64_t i = 0; i < P * OH * OW && !bad; ++i) {
    const int same = isnan(want[i]) ? isnan(y[i]) : y[i] == want[i] || fabsf(y[i] - want[i]) <= 1e-5f * (1.0f + fabsf(want[i]));
    if (!same) {
      printf("mismatch at %lld: %g vs %g; pool %s P%lld %lldx%lld k%lldx%lld s%lld d%lld pad %lld,%lld+%lld "
             "overwrite %d threads %d\n", (long long)i, y[i], want[i], is_max ? "max" : "sum", (long long)P,
             (long long)H, (long long)W, (long long)KH, (long long)KW, (long long)s, (long long)d, (long long)pt,
             (long long)pl, (long long)extra, overwrite, threads);
      bad = 1;
    }
  }
  free(x), free(y), free(want);
  return bad ? -1 : 1;
}

int main(void) {
  int cases = 0;
  /* Pooling: rows of 1-40 outputs (vector chunks, masked tails, border columns), strides 1-3,
   * dilation, symmetric and ceil-mode padding. */
  for (int64_t s = 1; s <= 3; ++s)
    for (int64_t k = 1; k <= 3; ++k)
      for (int64_t W = 1; W <= 41; W += 4)
        for (int e = 0; e < 8; ++e) {
          const int64_t d = 1 + (e == 5), pad = (e & 2) && k > 1 ? (k * d - d) / 2 : 0;
          const int r = run_pool(1 + 2 * (e & 1), 3 + e, W, k, k + (e == 6), s, d, pad, pad, (e & 4) ? s - 1 : 0,
                                 e & 1 ? 0 : 1, e != 3, 1 + 2 * (e & 1));
          if (r < 0) return 1;
          cases += r;
        }
  /* many planes of short rows (the tap table; 8 planes in the lanes, then the rest one by one):
   * 8 and 19 planes, maps 1x1-7x9, ceil-mode overhang, NaNs, both ops, accumulate, 1 and 3 threads */
  for (int64_t P = 8; P <= 19; P += 11)
    for (int64_t H = 1; H <= 7; H += 2)
      for (int e = 0; e < 16; ++e) {
        const int64_t k = 1 + e % 3, s = 1 + (e & 1), pad = (e & 4) && k > 1 ? 1 : 0;
        const int r = run_pool(P, H, H + (e & 2), k, k, s, 1, pad, pad, (e & 8) ? s - 1 : 0, e < 12, e % 5 != 3,
                               1 + 2 * (e & 1));
        if (r < 0) return 1;
        cases += r;
      }
  /* larger planes, and rows longer than the row buffer (output columns in blocks; strides 1 and 2) */
  for (int e = 0; e < 6; ++e) {
    const int64_t W = e < 4 ? 101 : 4093 * (e - 3) + 7;
    const int r = run_pool(2, e < 4 ? 97 + e : 4, W, 3, 3, 1 + (e & 1), 1, 1, 1, e >> 1 & 1, e & 1, e != 5, 1 + 2 * (e & 1));
    if (r < 0) return 1;
    cases += r;
  }
  /* Winograd: maps from 1 to 37 wide (tile rows of 1-3 runs of 8 tiles, ragged right and bottom
   * edges, dummy tiles), both tile sizes, every epilogue kind, few and many panels. */
  for (int64_t T = 2; T <= 4; T += 2)
    for (int64_t H = 1; H <= 19; H += 3)
      for (int64_t W = 1; W <= 37; W += 4)
        for (int e = 0; e < 4; ++e) {
          const int64_t pad = (W + e) % 3 == 0 ? 0 : 1;
          const int r = run_winograd(1 + (e == 3), 4 + 7 * e, 5 + 6 * e, H + 2, W + 2 - 2 * pad, pad, pad,
                                     pad + (e == 2), pad, T, e, 1 + 2 * (e & 1));
          if (r < 0) return 1;
          cases += r;
        }
  /* 3-D: depth taps 1-3, depth padding (with pd = 2 and KD = 1 some outputs see no tap), dilation
   * in depth, strides, every epilogue kind, 1x1x1 (B read in place), panels spanning depths. */
  for (int64_t KD = 1; KD <= 3; ++KD)
    for (int64_t s = 1; s <= 2; ++s)
      for (int64_t pd = 0; pd <= 2; ++pd)
        for (int e = 0; e < 8; ++e) {
          const int r = run_case3d(1 + (e >> 2), 3 + KD * 5, 6 + e * 3, 2 + e % 4, 5 + s, 6, KD, 1 + 2 * (e & 1),
                                   e == 2 || e == 4 ? 1 : 3, s,
                                   1 + (KD == 2 && (e & 2)), pd, e & 1, e, 1 + 2 * (e & 1));
          if (r < 0) return 1;
          cases += r;
        }
  const int64_t ks[][2] = {{3, 3}, {1, 1}, {5, 3}};
  for (int small = 0; small <= 1; ++small)
    for (int ki = 0; ki < 3; ++ki)
      for (int64_t G = 1; G <= 4; G += small ? 2 : 1)
        for (int64_t s = 1; s <= 2; ++s)
          for (int64_t H = 1; H <= (small ? 5 : 13); H += small ? 2 : 6)
            for (int e = 0; e < 8; ++e) {
              const int64_t KH = ks[ki][0], KW = ks[ki][1], d = 1 + (e & 4 ? 1 : 0);
              const int64_t C = G * (3 + (e % 3) * 37), CO = G * (5 + ki * 11 + (e & 1) * 16); /* K past a K block */
              const conv_case k = {1 + (e & 2 ? 1 : 0) + (G == 3), G, C, CO, H, H + e % 3, KH, KW, s, s, d, d,
                                   (KH - 1) * d / 2, (KW - 1) * d / 2, KH / 2, 0, e & 1, (e & 3) != 2, (e & 3) == 3,
                                   small};
              for (int threads = 1; threads <= 3; threads += 2) {
                const int r = run_case(&k, threads);
                if (r < 0) return 1;
                cases += r;
              }
            }
  /* small maps with one group and enough B panels that each task takes a run of them and transposes
   * its own output channels (mlrt_conv2d_small_f32's fused path): 1x1 at stride 1 (the input's
   * transpose is the rows) and 3x3, batches 1 and 2, channels off the panels */
  for (int64_t CO = 97; CO <= 130; CO += 33)
    for (int e = 0; e < 8; ++e) {
      const int64_t KK = e & 4 ? 3 : 1, H = 2 + (e & 1);
      const conv_case k = {1 + (e >> 1 & 1), 1, 40 + 9 * (e & 3), CO, H, H, KK, KK, 1, 1, 1, 1, KK / 2, KK / 2, KK / 2,
                           KK / 2, e & 1, (e & 3) != 2, (e & 3) == 3, 1};
      for (int threads = 1; threads <= 3; threads += 2) {
        const int r = run_case(&k, threads);
        if (r < 0) return 1;
        cases += r;
      }
    }
  /* im2col panels: inside one output row (rows of 16+ positions) with interior taps and border
   * taps whose lanes in bounds are a range (stem-like 7x7 / stride 2 / padding 3), and spanning
   * several rows (5 and 11 wide: a run per row, masked loads); dilation, stride 3 */
  const int64_t widths[] = {5, 11, 17, 47, 77};
  for (int64_t kk = 3; kk <= 7; kk += 4)
    for (int64_t s = 1; s <= 3; ++s)
      for (int64_t wi = 0; wi < 5; ++wi)
        for (int e = 0; e < 4; ++e) {
          const int64_t W = widths[wi];
          const int64_t d = 1 + (e & 1), pad = (e & 2) ? (kk - 1) * d / 2 : 1;
          const conv_case k = {1, 1, 3 + e, 8, 5 + 2 * e, W * s, kk, kk, s, s, d, d, pad, pad, pad, pad, 1, 1, e == 3, 0};
          for (int threads = 1; threads <= 3; threads += 2) {
            const int r = run_case(&k, threads);
            if (r < 0) return 1;
            cases += r;
          }
        }
  /* 1x1 convs with 64+ output channels: maps whose rows are not whole panels (7x7, 5x6) pack every
   * B panel, 4x4 reads its one panel in place; batches 1 and 2, every epilogue kind */
  for (int64_t CO = 64; CO <= 70; CO += 6)
    for (int e = 0; e < 12; ++e) {
      const int64_t H = (int64_t[]){7, 5, 4}[e % 3], W = H == 5 ? 6 : H;
      const conv_case k = {1 + (e & 1), 1, 19 + e, CO, H, W, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, e >> 1 & 1, (e >> 2) != 1,
                           e % 5 == 0, 0};
      for (int threads = 1; threads <= 3; threads += 2) {
        const int r = run_case(&k, threads);
        if (r < 0) return 1;
        cases += r;
      }
    }
  printf("ok %d\n", cases);
  return 0;
}
