/* 3x3 stride-1 convolution by Winograd F(2x2, 3x3), NCHW fp32 (Lavin & Gray, 2015).
 * Each 2x2 block of outputs ("tile") comes from a 4x4 input patch. In the transformed domain the
 * 3x3 conv becomes 16 independent GEMMs (one per transform element e):
 *   M[e][co][tile] = sum_c U[e][co][c] * V[e][c][tile]
 * with U = G g G^T (the weights, transformed at build time: kernel_calls.winograd_weights) and
 * V = B^T d B (each input patch d). Y = A^T M A then gives the 2x2 outputs. That is 16 multiplies
 * per tile and (co, c) pair instead of 36: 2.25x fewer FLOPs than the direct/im2col conv, and no
 * 9x im2col copy of the input. Float32 error grows only slightly (transform entries are 0, +-1,
 * +-1/2).
 *
 * Tiles are grouped 16 at a time into panels (the GEMM's MLRT_NR columns):
 *   V: [16 e][panels][C][16 lanes]  -- per e, exactly the packed-B layout mlrt_gemm_panels reads
 *   M: [16 e][CO][panels * 16]      -- the GEMMs' output
 * and the output transform applies the fused epilogue (bias or prior contents, residual, clamp).
 * Tasks take a group of panels x a chunk of output channels. Many panels (large feature maps):
 * each task owns whole panels and transforms their input itself, so its V stays in cache and the
 * weights of each e are reused across its panels. Few panels: the input transform runs first and
 * tasks split the output channels, so each weight is read once. */
#include <math.h>
#include <string.h>

#include "mlrt_kernels.h"


enum { NR = MLRT_NR, MR = MLRT_MR };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

typedef struct {
  const float *x, *u;
  float *y, *xp, *v, *m;
  int64_t C, H, W, CO, OH, OW, pt, pl, tw, tiles, panels, hp, wp;
  int64_t T, E; /* output tile T x T (2 or 4), E = (T + 2)^2 transform elements */
  int64_t twp;  /* tiles per tile row as laid out: rounded up to 8 (F(2x2): where that adds no
                 * panel), so that every 8 lanes of a panel are neighbors in one tile row and the
                 * input transform loads rows instead of gathering (dummy tiles' outputs dropped) */
  int64_t groups, co_chunk, co_chunks; /* task grid: even shares of the panels x output-channel chunks */
  mlrt_epilogue ep;
} winograd_job;

/* The input with the conv's zero padding made explicit, and enough extra zeros on the bottom/right
 * that every tile's 4x4 patch lies inside: [C][2*th + 2][2*tw + 2]. One copy of the input buys a
 * transform without bounds checks. */
static void pad_channel(void *ctx, int64_t c) {
  const winograd_job *j = (const winograd_job *)ctx;
  float *dst = j->xp + c * j->hp * j->wp;
  const float *src = j->x + c * j->H * j->W;
  memset(dst, 0, (size_t)(j->hp * j->wp) * sizeof(float));
  const int64_t cols = min64(j->W, j->wp - j->pl); /* input columns that land inside */
  for (int64_t yy = 0; yy < j->hp; ++yy) {
    const int64_t iy = yy - j->pt;
    if (iy < 0 || iy >= j->H || cols <= 0) continue;
    memcpy(dst + yy * j->wp + j->pl, src + iy * j->W, (size_t)cols * sizeof(float));
  }
}

#ifdef MLRT_HAVE_AVX2
/* Epilogue and store of the first n (1..8) of 8 consecutive outputs at `at` of the channel's
 * planes: whole vectors where all 8 lie inside, masked ones at the right edge. */
static inline void store8(const winograd_job *j, int64_t at, int64_t n, __m256 v, __m256 bias, __m256 lo, __m256 hi) {
  const mlrt_epilogue *ep = &j->ep;
  if (n >= 8) {
    v = _mm256_add_ps(v, ep->overwrite ? bias : _mm256_loadu_ps(j->y + at));
    if (ep->residual) v = _mm256_add_ps(v, _mm256_loadu_ps(ep->residual + at));
    _mm256_storeu_ps(ep->dst + at, mlrt_clamp8(v, lo, hi));
    return;
  }
  const __m256i m = mlrt_lanes_below(n);
  v = _mm256_add_ps(v, ep->overwrite ? bias : _mm256_maskload_ps(j->y + at, m));
  if (ep->residual) v = _mm256_add_ps(v, _mm256_maskload_ps(ep->residual + at, m));
  _mm256_maskstore_ps(ep->dst + at, m, mlrt_clamp8(v, lo, hi));
}

/* Output transform and epilogue for 8 neighboring tiles of one tile row: o[a][b] holds output
 * (oy + a, ox + 2l + b) for lane l; rows and columns past the bottom/right edge are dropped. */
static inline void store_run(const winograd_job *j, int64_t co, int64_t oy, int64_t ox, __m256 o[2][2]) {
  const mlrt_epilogue *ep = &j->ep;
  const int64_t plane = j->OH * j->OW, rows = min64(2, j->OH - oy), cols = min64(16, j->OW - ox);
  const __m256 lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi);
  const __m256 bias = _mm256_set1_ps(ep->overwrite && ep->bias ? ep->bias[co] : 0.0f);
  for (int a = 0; a < rows; ++a) {
    const __m256 l = _mm256_unpacklo_ps(o[a][0], o[a][1]), h = _mm256_unpackhi_ps(o[a][0], o[a][1]);
    const __m256 v[2] = {_mm256_permute2f128_ps(l, h, 0x20), _mm256_permute2f128_ps(l, h, 0x31)};
    const int64_t at = co * plane + (oy + a) * j->OW + ox;
    for (int q = 0; q < 2 && 8 * q < cols; ++q) store8(j, at + 8 * q, cols - 8 * q, v[q], bias, lo, hi);
  }
}
#endif

/* The lanes of panel p: each one's patch origin in a padded channel (lanes past the last tile:
 * tile 0), and run[h]: lanes 8h..8h+7 are neighbors in one tile row (their patches are loaded as
 * rows rather than gathered). */
static void patch_origins(const winograd_job *j, int64_t p, int32_t off[NR], int run[2]) {
  for (int l = 0; l < NR; ++l) {
    const int64_t t = p * NR + l < j->tiles ? p * NR + l : 0;
    off[l] = (int32_t)(j->T * (t / j->twp) * j->wp + j->T * (t % j->twp));
  }
  for (int h = 0; h < 2; ++h) {
    run[h] = 1;
    for (int l = 8 * h + 1; l < 8 * h + 8; ++l) run[h] &= off[l] == off[l - 1] + j->T;
  }
}

/* The lanes' first outputs (oy = OH: none, past the last tile or a dummy tile), and run[h]: lanes
 * 8h..8h+7 are 8 neighbors in one tile row with outputs inside, stored as vectors (the part past
 * the bottom/right edge masked off; always 0 without AVX2). */
static void tile_origins(const winograd_job *j, int64_t p, int64_t oy[NR], int64_t ox[NR], int run[2]) {
  const int64_t T = j->T;
  for (int l = 0; l < NR; ++l) {
    const int64_t t = p * NR + l, valid = t < j->tiles && t % j->twp < j->tw;
    oy[l] = valid ? T * (t / j->twp) : j->OH;
    ox[l] = valid ? T * (t % j->twp) : j->OW;
  }
  for (int h = 0; h < 2; ++h) {
#ifdef MLRT_HAVE_AVX2
    /* by tile number, dummy tiles included: their outputs fall past the right edge */
    const int64_t t0 = p * NR + 8 * h;
    run[h] = oy[8 * h] < j->OH && t0 / j->twp == (t0 + 7) / j->twp;
#else
    run[h] = 0;
#endif
  }
}

/* V[p] = B^T d B for the 16 tiles of panel p, every channel, with
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] applied to the patch's rows, then its columns. */
static void input_transform2(const winograd_job *j, int64_t p) {
  float *vp = j->v + p * j->C * NR;
  const int64_t plane = j->hp * j->wp, estride = j->panels * j->C * NR;
  int32_t off[NR];
  int run[2];
  patch_origins(j, p, off, run);
#ifdef MLRT_HAVE_AVX2
  const __m256i idx[2] = {_mm256_loadu_si256((const __m256i *)off), _mm256_loadu_si256((const __m256i *)(off + 8))};
  for (int64_t c = 0; c < j->C; ++c) {
    const float *in = j->xp + c * plane;
    for (int h = 0; h < 2; ++h) {
      __m256 d[4][4], r[4][4];
      if (run[h]) { /* 8 neighbors in one tile row: patch columns 2l+k are 4 contiguous loads, deinterleaved */
        for (int i = 0; i < 4; ++i) {
          const float *row = in + off[8 * h] + i * j->wp;
          d[i][0] = mlrt_even_lanes(_mm256_loadu_ps(row), _mm256_loadu_ps(row + 8));
          d[i][1] = mlrt_odd_lanes(_mm256_loadu_ps(row), _mm256_loadu_ps(row + 8));
          d[i][2] = mlrt_even_lanes(_mm256_loadu_ps(row + 2), _mm256_loadu_ps(row + 10));
          d[i][3] = mlrt_odd_lanes(_mm256_loadu_ps(row + 2), _mm256_loadu_ps(row + 10));
        }
      } else {
        for (int i = 0; i < 4; ++i)
          for (int k = 0; k < 4; ++k) d[i][k] = _mm256_i32gather_ps(in + i * j->wp + k, idx[h], 4);
      }
      for (int k = 0; k < 4; ++k) {
        r[0][k] = _mm256_sub_ps(d[0][k], d[2][k]);
        r[1][k] = _mm256_add_ps(d[1][k], d[2][k]);
        r[2][k] = _mm256_sub_ps(d[2][k], d[1][k]);
        r[3][k] = _mm256_sub_ps(d[1][k], d[3][k]);
      }
      float *dst = vp + c * NR + h * 8;
      for (int i = 0; i < 4; ++i) {
        _mm256_store_ps(dst + (i * 4 + 0) * estride, _mm256_sub_ps(r[i][0], r[i][2]));
        _mm256_store_ps(dst + (i * 4 + 1) * estride, _mm256_add_ps(r[i][1], r[i][2]));
        _mm256_store_ps(dst + (i * 4 + 2) * estride, _mm256_sub_ps(r[i][2], r[i][1]));
        _mm256_store_ps(dst + (i * 4 + 3) * estride, _mm256_sub_ps(r[i][1], r[i][3]));
      }
    }
  }
#else
  for (int64_t c = 0; c < j->C; ++c) {
    const float *in = j->xp + c * plane;
    float *dst = vp + c * NR;
    for (int l = 0; l < NR; ++l) {
      float d[4][4], r[4][4];
      for (int i = 0; i < 4; ++i)
        for (int k = 0; k < 4; ++k) d[i][k] = in[off[l] + i * j->wp + k];
      for (int k = 0; k < 4; ++k) {
        r[0][k] = d[0][k] - d[2][k];
        r[1][k] = d[1][k] + d[2][k];
        r[2][k] = d[2][k] - d[1][k];
        r[3][k] = d[1][k] - d[3][k];
      }
      for (int i = 0; i < 4; ++i) {
        dst[(i * 4 + 0) * estride + l] = r[i][0] - r[i][2];
        dst[(i * 4 + 1) * estride + l] = r[i][1] + r[i][2];
        dst[(i * 4 + 2) * estride + l] = r[i][2] - r[i][1];
        dst[(i * 4 + 3) * estride + l] = r[i][1] - r[i][3];
      }
    }
  }
#endif
}

/* M[e] rows [co0, co1) x panels [p0, p1) = U[e] * V[e], for every e. U[e] is in A panels of MR
 * output channels ([ceil(CO/MR)][C][MR]); co0 is a multiple of MR. */
static void multiply(const winograd_job *j, int64_t p0, int64_t p1, int64_t co0, int64_t co1) {
  const int64_t C = j->C, CO = j->CO, ldm = j->panels * NR, co_rows = (CO + MR - 1) / MR * MR;
  for (int e = 0; e < j->E; ++e) {
    float *out = j->m + (e * CO + co0) * ldm;
    const mlrt_epilogue plain = {1, NULL, 0, NULL, -INFINITY, INFINITY, out};
    mlrt_gemm_panels(co1 - co0, ldm, C, j->u + (e * co_rows + co0) * C, MLRT_A_PANELS,
                     j->v + e * j->panels * C * NR, out, ldm, &plain, p0, p1);
  }
}

/* Stores one tile's T x T outputs o[a][b] at (oy + a, ox + b), cut by the bottom/right edge, with
 * the epilogue. */
static void store_tile(const winograd_job *j, int64_t co, int64_t oy, int64_t ox, float o[4][4]) {
  const mlrt_epilogue *ep = &j->ep;
  const int64_t plane = j->OH * j->OW, rows = min64(j->T, j->OH - oy), cols = min64(j->T, j->OW - ox);
  const float bias = ep->overwrite && ep->bias ? ep->bias[co] : 0.0f;
  const float *yc = j->y + co * plane, *rc = ep->residual ? ep->residual + co * plane : NULL;
  float *dc = ep->dst + co * plane;
  for (int64_t a = 0; a < rows; ++a)
    for (int64_t b = 0; b < cols; ++b) {
      const int64_t at = (oy + a) * j->OW + ox + b;
      float v = o[a][b] + (ep->overwrite ? bias : yc[at]);
      if (rc) v += rc[at];
      dc[at] = mlrt_clamp(v, ep->lo, ep->hi);
    }
}

/* Y = A^T M A for the tiles of panel p, output channels [co0, co1), with the epilogue. */
static void output_transform2(const winograd_job *j, int64_t p, int64_t co0, int64_t co1) {
  const int64_t CO = j->CO, ldm = j->panels * NR;
  const float *mp = j->m + p * NR;
  /* A^T = [1 1 1 0; 0 1 -1 -1] */
  int64_t oy[NR], ox[NR];
  int run[2];
  tile_origins(j, p, oy, ox, run);
  for (int64_t co = co0; co < co1; ++co) {
    float s[2][4][NR], o[2][2][NR];
    const float *mc = mp + co * ldm;
    const int64_t es = CO * ldm;
    for (int k = 0; k < 4; ++k) {
      const float *restrict m0 = mc + (0 * 4 + k) * es, *restrict m1 = mc + (1 * 4 + k) * es;
      const float *restrict m2 = mc + (2 * 4 + k) * es, *restrict m3 = mc + (3 * 4 + k) * es;
      for (int l = 0; l < NR; ++l) {
        s[0][k][l] = m0[l] + m1[l] + m2[l];
        s[1][k][l] = m1[l] - m2[l] - m3[l];
      }
    }
    for (int a = 0; a < 2; ++a)
      for (int l = 0; l < NR; ++l) {
        o[a][0][l] = s[a][0][l] + s[a][1][l] + s[a][2][l];
        o[a][1][l] = s[a][1][l] - s[a][2][l] - s[a][3][l];
      }
#ifdef MLRT_HAVE_AVX2
    for (int h = 0; h < 2; ++h) {
      if (!run[h]) continue;
      __m256 v[2][2];
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) v[a][b] = _mm256_loadu_ps(&o[a][b][8 * h]);
      store_run(j, co, oy[8 * h], ox[8 * h], v);
    }
#endif
    for (int l = 0; l < NR; ++l) {
      if (oy[l] >= j->OH || run[l / 8]) continue;
      float tile[4][4] = {{o[0][0][l], o[0][1][l]}, {o[1][0][l], o[1][1][l]}};
      store_tile(j, co, oy[l], ox[l], tile);
    }
  }
}

/* F(4x4, 3x3): 6x6 patches, 36 GEMMs, 4x4 outputs per tile (points 0, +-1, +-2):
 *   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
 *   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * 2.25 multiplies per output instead of 4, for a float32 error ~5e-6 of the output's scale per
 * conv instead of ~3e-7 (larger transform entries); kernel_calls picks it only on maps with
 * enough tiles. AVX2: intrinsics over 8 lanes at a time; without, loops over 16-lane arrays. */
#ifdef MLRT_HAVE_AVX2
/* B^T of F(4x4) on six vectors (in place). */
static inline void bt6(__m256 *v, int stride) {
  const __m256 d0 = v[0], d1 = v[stride], d2 = v[2 * stride], d3 = v[3 * stride], d4 = v[4 * stride], d5 = v[5 * stride];
  const __m256 four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f), two = _mm256_set1_ps(2.0f);
  const __m256 s14 = _mm256_add_ps(d4, _mm256_fnmadd_ps(four, d2, d3)); /* d4 + d3 - 4 d2 */
  const __m256 t = _mm256_sub_ps(d4, d2);
  v[0] = _mm256_add_ps(_mm256_fnmadd_ps(five, d2, d4), _mm256_mul_ps(four, d0));
  v[stride] = _mm256_fnmadd_ps(four, d1, s14);
  v[2 * stride] = _mm256_fmadd_ps(four, d1, _mm256_sub_ps(_mm256_fnmadd_ps(four, d2, d4), d3));
  v[3 * stride] = _mm256_fmadd_ps(two, _mm256_sub_ps(d3, d1), t);
  v[4 * stride] = _mm256_fmadd_ps(two, _mm256_sub_ps(d1, d3), t);
  v[5 * stride] = _mm256_add_ps(_mm256_fnmadd_ps(five, d3, d5), _mm256_mul_ps(four, d1));
}

/* Transposes the 4-float chunks of a..d within each 128-bit half: out[k] lane (half h, i) holds
 * element k of the i-th input's half h. */
static inline void transpose_halves(__m256 a, __m256 b, __m256 c, __m256 d, __m256 *out) {
  const __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b);
  const __m256 t2 = _mm256_unpacklo_ps(c, d), t3 = _mm256_unpackhi_ps(c, d);
  out[0] = _mm256_shuffle_ps(t0, t2, 0x44);
  out[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
  out[2] = _mm256_shuffle_ps(t1, t3, 0x44);
  out[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}
#endif

static void input_transform4(const winograd_job *j, int64_t p) {
  float *vp = j->v + p * j->C * NR;
  const int64_t plane = j->hp * j->wp, estride = j->panels * j->C * NR;
  int32_t off[NR];
  int run[2];
  patch_origins(j, p, off, run);
#ifdef MLRT_HAVE_AVX2
  const __m256i idx[2] = {_mm256_loadu_si256((const __m256i *)off), _mm256_loadu_si256((const __m256i *)(off + 8))};
  /* a run's transposed loads hold tiles 0 2 4 6 1 3 5 7: back to 0..7 */
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t c = 0; c < j->C; ++c) {
    const float *in = j->xp + c * plane;
    for (int h = 0; h < 2; ++h) {
      __m256 d[6][6]; /* d[row][col] of the 8 lanes' patches */
      for (int i = 0; i < 6; ++i) {
        if (run[h]) { /* tile q's columns 0-3 are the 4 floats at 4q, columns 4-5 the next tile's first two */
          const float *row = in + off[8 * h] + i * j->wp;
          __m256 k[4], k2[4];
          transpose_halves(_mm256_loadu_ps(row), _mm256_loadu_ps(row + 8), _mm256_loadu_ps(row + 16),
                           _mm256_loadu_ps(row + 24), k);
          transpose_halves(_mm256_loadu_ps(row + 4), _mm256_loadu_ps(row + 12), _mm256_loadu_ps(row + 20),
                           _mm256_loadu_ps(row + 28), k2);
          for (int q = 0; q < 4; ++q) d[i][q] = _mm256_permutevar8x32_ps(k[q], order);
          for (int q = 0; q < 2; ++q) d[i][4 + q] = _mm256_permutevar8x32_ps(k2[q], order);
        } else {
          for (int q = 0; q < 6; ++q) d[i][q] = _mm256_i32gather_ps(in + i * j->wp + q, idx[h], 4);
        }
        bt6(d[i], 1); /* along the row */
      }
      float *dst = vp + c * NR + h * 8;
      for (int q = 0; q < 6; ++q) {
        bt6(&d[0][q], 6); /* down the column */
        for (int i = 0; i < 6; ++i) _mm256_store_ps(dst + (i * 6 + q) * estride, d[i][q]);
      }
    }
  }
#else
  for (int64_t c = 0; c < j->C; ++c) {
    const float *in = j->xp + c * plane;
    float d[6][6][NR], r[6][6][NR];
    for (int i = 0; i < 6; ++i)
      for (int l = 0; l < NR; ++l)
        for (int k = 0; k < 6; ++k) d[i][k][l] = in[off[l] + i * j->wp + k];
    for (int i = 0; i < 6; ++i) /* along each patch row: r[i][.] = B^T d[i][.] */
      for (int l = 0; l < NR; ++l) {
        const float d0 = d[i][0][l], d1 = d[i][1][l], d2 = d[i][2][l], d3 = d[i][3][l], d4 = d[i][4][l], d5 = d[i][5][l];
        r[i][0][l] = 4 * d0 - 5 * d2 + d4;
        r[i][1][l] = -4 * (d1 + d2) + d3 + d4;
        r[i][2][l] = 4 * (d1 - d2) - d3 + d4;
        r[i][3][l] = 2 * (d3 - d1) - d2 + d4;
        r[i][4][l] = 2 * (d1 - d3) - d2 + d4;
        r[i][5][l] = 4 * d1 - 5 * d3 + d5;
      }
    float *dst = vp + c * NR;
    for (int k = 0; k < 6; ++k) /* down each column: V[.][k] = B^T r[.][k] */
      for (int l = 0; l < NR; ++l) {
        const float r0 = r[0][k][l], r1 = r[1][k][l], r2 = r[2][k][l], r3 = r[3][k][l], r4 = r[4][k][l], r5 = r[5][k][l];
        dst[(0 * 6 + k) * estride + l] = 4 * r0 - 5 * r2 + r4;
        dst[(1 * 6 + k) * estride + l] = -4 * (r1 + r2) + r3 + r4;
        dst[(2 * 6 + k) * estride + l] = 4 * (r1 - r2) - r3 + r4;
        dst[(3 * 6 + k) * estride + l] = 2 * (r3 - r1) - r2 + r4;
        dst[(4 * 6 + k) * estride + l] = 2 * (r1 - r3) - r2 + r4;
        dst[(5 * 6 + k) * estride + l] = 4 * r1 - 5 * r3 + r5;
      }
  }
#endif
}

#ifdef MLRT_HAVE_AVX2
/* A^T of F(4x4) on six vectors m[0], m[stride], .. -> four. */
static inline void at6(const __m256 *m, int stride, __m256 *o, int ostride) {
  const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f), eight = _mm256_set1_ps(8.0f);
  const __m256 a = _mm256_add_ps(m[stride], m[2 * stride]), b = _mm256_sub_ps(m[stride], m[2 * stride]);
  const __m256 c = _mm256_add_ps(m[3 * stride], m[4 * stride]), d = _mm256_sub_ps(m[3 * stride], m[4 * stride]);
  o[0] = _mm256_add_ps(_mm256_add_ps(m[0], a), c);
  o[ostride] = _mm256_fmadd_ps(two, d, b);
  o[2 * ostride] = _mm256_fmadd_ps(four, c, a);
  o[3 * ostride] = _mm256_add_ps(_mm256_fmadd_ps(eight, d, b), m[5 * stride]);
}

/* Output rows oy..oy+3 of 8 neighboring tiles of one tile row: o[a][b] holds output
 * (oy + a, ox + 4l + b) for lane l; rows and columns past the bottom/right edge are dropped. */
static inline void store_run4(const winograd_job *j, int64_t co, int64_t oy, int64_t ox, __m256 o[4][4]) {
  const mlrt_epilogue *ep = &j->ep;
  const int64_t plane = j->OH * j->OW, rows = min64(4, j->OH - oy), cols = min64(32, j->OW - ox);
  const __m256 lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi);
  const __m256 bias = _mm256_set1_ps(ep->overwrite && ep->bias ? ep->bias[co] : 0.0f);
  for (int a = 0; a < rows; ++a) {
    __m256 k[4], v[4];
    transpose_halves(o[a][0], o[a][1], o[a][2], o[a][3], k); /* k[q]: tiles q | 4 + q */
    v[0] = _mm256_permute2f128_ps(k[0], k[1], 0x20);
    v[1] = _mm256_permute2f128_ps(k[2], k[3], 0x20);
    v[2] = _mm256_permute2f128_ps(k[0], k[1], 0x31);
    v[3] = _mm256_permute2f128_ps(k[2], k[3], 0x31);
    const int64_t at = co * plane + (oy + a) * j->OW + ox;
    for (int q = 0; q < 4 && 8 * q < cols; ++q) store8(j, at + 8 * q, cols - 8 * q, v[q], bias, lo, hi);
  }
}
#endif

static void output_transform4(const winograd_job *j, int64_t p, int64_t co0, int64_t co1) {
  const int64_t CO = j->CO, ldm = j->panels * NR, es = CO * ldm;
  const float *mp = j->m + p * NR;
  int64_t oy[NR], ox[NR];
  int run[2];
  tile_origins(j, p, oy, ox, run);
#ifdef MLRT_HAVE_AVX2
  int outputs[2] = {0, 0}; /* halves with any output */
  for (int l = 0; l < NR; ++l) outputs[l / 8] |= oy[l] < j->OH;
  for (int64_t co = co0; co < co1; ++co) {
    const float *mc = mp + co * ldm;
    for (int h = 0; h < 2; ++h) {
      if (!outputs[h]) continue;
      __m256 m[6][6], s[4][6], o[4][4];
      for (int e = 0; e < 36; ++e) m[e / 6][e % 6] = _mm256_loadu_ps(mc + e * es + 8 * h);
      for (int q = 0; q < 6; ++q) at6(&m[0][q], 6, &s[0][q], 6); /* s[.][q] = A^T M[.][q] */
      for (int a = 0; a < 4; ++a) at6(s[a], 1, o[a], 1);          /* o[a][.] = s[a][.] A */
      if (run[h]) {
        store_run4(j, co, oy[8 * h], ox[8 * h], o);
        continue;
      }
      float lanes[4][4][8], tile[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) _mm256_storeu_ps(lanes[a][b], o[a][b]);
      for (int l = 0; l < 8; ++l) {
        if (oy[8 * h + l] >= j->OH) continue;
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) tile[a][b] = lanes[a][b][l];
        store_tile(j, co, oy[8 * h + l], ox[8 * h + l], tile);
      }
    }
  }
#else
  for (int64_t co = co0; co < co1; ++co) {
    const float *mc = mp + co * ldm;
    float s[4][6][NR], o[4][4][NR];
    for (int k = 0; k < 6; ++k) { /* s[.][k] = A^T M[.][k] */
      const float *restrict m0 = mc + (0 * 6 + k) * es, *restrict m1 = mc + (1 * 6 + k) * es;
      const float *restrict m2 = mc + (2 * 6 + k) * es, *restrict m3 = mc + (3 * 6 + k) * es;
      const float *restrict m4 = mc + (4 * 6 + k) * es, *restrict m5 = mc + (5 * 6 + k) * es;
      for (int l = 0; l < NR; ++l) {
        const float a = m1[l] + m2[l], b = m1[l] - m2[l], c = m3[l] + m4[l], d = m3[l] - m4[l];
        s[0][k][l] = m0[l] + a + c;
        s[1][k][l] = b + 2 * d;
        s[2][k][l] = a + 4 * c;
        s[3][k][l] = b + 8 * d + m5[l];
      }
    }
    for (int i = 0; i < 4; ++i) /* o[i][.] = s[i][.] A */
      for (int l = 0; l < NR; ++l) {
        const float a = s[i][1][l] + s[i][2][l], b = s[i][1][l] - s[i][2][l];
        const float c = s[i][3][l] + s[i][4][l], d = s[i][3][l] - s[i][4][l];
        o[i][0][l] = s[i][0][l] + a + c;
        o[i][1][l] = b + 2 * d;
        o[i][2][l] = a + 4 * c;
        o[i][3][l] = b + 8 * d + s[i][5][l];
      }
    for (int l = 0; l < NR; ++l) {
      if (oy[l] >= j->OH) continue;
      float tile[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) tile[a][b] = o[a][b][l];
      store_tile(j, co, oy[l], ox[l], tile);
    }
  }
#endif
}

static void input_transform(const winograd_job *j, int64_t p) {
  if (j->T == 4)
    input_transform4(j, p);
  else
    input_transform2(j, p);
}

static void output_transform(const winograd_job *j, int64_t p, int64_t co0, int64_t co1) {
  if (j->T == 4)
    output_transform4(j, p, co0, co1);
  else
    output_transform2(j, p, co0, co1);
}

static void transform_panel(void *ctx, int64_t p) { input_transform((const winograd_job *)ctx, p); }

static void winograd_task(void *ctx, int64_t t) {
  const winograd_job *j = (const winograd_job *)ctx;
  const int64_t g = t / j->co_chunks;
  const int64_t p0 = mlrt_part(j->panels, j->groups, g), p1 = mlrt_part(j->panels, j->groups, g + 1);
  const int64_t co0 = t % j->co_chunks * j->co_chunk, co1 = min64(j->CO, co0 + j->co_chunk);
  if (j->co_chunks == 1)
    for (int64_t p = p0; p < p1; ++p) input_transform(j, p);
  multiply(j, p0, p1, co0, co1);
  for (int64_t p = p0; p < p1; ++p) output_transform(j, p, co0, co1);
}

void mlrt_conv2d_winograd_f32(int64_t x, int64_t u, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                              int64_t W, int64_t CO, int64_t OH, int64_t OW, int64_t pad_top, int64_t pad_left,
                              int64_t tile, int64_t overwrite, int64_t bias, int64_t residual, float act_lo,
                              float act_hi, int64_t dst) {
  const int64_t T = tile == 4 ? 4 : 2, E = (T + 2) * (T + 2);
  const int64_t th = (OH + T - 1) / T, tw = (OW + T - 1) / T, tw8 = (tw + 7) / 8 * 8;
  const int64_t twp = T == 4 || (th * tw8 + NR - 1) / NR == (th * tw + NR - 1) / NR ? tw8 : tw;
  const int64_t tiles = th * twp, panels = (tiles + NR - 1) / NR;
  const int64_t hp = T * th + 2, wp = T * twp + (T == 4 ? 4 : 2); /* F(4x4) run loads read 2 past a patch */
  float *xp = (float *)(intptr_t)scratch, *v = xp + (C * hp * wp + NR - 1) / NR * NR, *m = v + panels * E * C * NR;
  const int64_t threads = mlrt_threads_for(E * CO * C * tiles);
  for (int64_t n = 0; n < batch; ++n) {
    const int64_t off = n * CO * OH * OW;
    winograd_job j = {(const float *)(intptr_t)x + n * C * H * W, (const float *)(intptr_t)u,
                      (float *)(intptr_t)y + off, xp, v, m, C, H, W, CO, OH, OW, pad_top, pad_left, tw, tiles,
                      panels, hp, wp, T, E, twp, 0, 0, 0,
                      {(int)overwrite, (const float *)(intptr_t)bias, 0,
                       residual ? (const float *)(intptr_t)residual + off : NULL, act_lo, act_hi,
                       (float *)(intptr_t)dst + off}};
    if (threads == 1)
      for (int64_t c = 0; c < C; ++c) pad_channel(&j, c);
    else
      mlrt_parallel_runs(C, pad_channel, &j);
    /* About 4 tasks per thread. Enough panels: tasks own even shares of whole panels
     * (co_chunks = 1), each share reusing every weight block across its panels. Otherwise the channels are split, in multiples of the GEMM's
     * 6-row tile. */
    const int64_t want = threads == 1 ? 1 : 4 * threads;
    if (panels >= want) {
      j.groups = want;
      j.co_chunk = CO;
      j.co_chunks = 1;
    } else {
      j.groups = 1;
      j.co_chunk = ((CO + want - 1) / want + MR - 1) / MR * MR;
      j.co_chunks = (CO + j.co_chunk - 1) / j.co_chunk;
      mlrt_parallel_runs(panels, transform_panel, &j); /* threads > 1 here */
    }
    const int64_t tasks = j.groups * j.co_chunks;
    if (threads == 1)
      for (int64_t t = 0; t < tasks; ++t) winograd_task(&j, t);
    else
      mlrt_parallel_for(tasks, winograd_task, &j);
  }
}
