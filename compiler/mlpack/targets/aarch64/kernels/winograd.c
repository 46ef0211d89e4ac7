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
    run[h] = 0;
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

static void input_transform4(const winograd_job *j, int64_t p) {
  float *vp = j->v + p * j->C * NR;
  const int64_t plane = j->hp * j->wp, estride = j->panels * j->C * NR;
  int32_t off[NR];
  int run[2];
  patch_origins(j, p, off, run);
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
}


static void output_transform4(const winograd_job *j, int64_t p, int64_t co0, int64_t co1) {
  const int64_t CO = j->CO, ldm = j->panels * NR, es = CO * ldm;
  const float *mp = j->m + p * NR;
  int64_t oy[NR], ox[NR];
  int run[2];
  tile_origins(j, p, oy, ox, run);
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
      mlrt_parallel_for(C, pad_channel, &j);
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
      mlrt_parallel_for(panels, transform_panel, &j); /* threads > 1 here */
    }
    const int64_t tasks = j.groups * j.co_chunks;
    if (threads == 1)
      for (int64_t t = 0; t < tasks; ++t) winograd_task(&j, t);
    else
      mlrt_parallel_for(tasks, winograd_task, &j);
  }
}
