/* Convolutions, NCHW fp32. Zero padding is applied here (pad_top/pad_left; the bottom/right
 * padding follows from OH/OW), so the compiler can drop torch-mlir's padded copy of the input.
 * conv2d: im2col written straight into the packed-panel layout of the GEMM's B operand, then
 *   Y[CO x OH*OW] = epilogue(W[CO x C*KH*KW] * cols), the weights read in place as A.
 * conv2d on small maps: the output channels in the lanes, the weights pre-packed as B panels.
 * grouped conv2d: the same per (image, group), the pairs shared out between the threads.
 * conv3d: the same im2col GEMM, its columns every output position of all depths at once.
 * depthwise: per channel, input rows staged in a zero-padded ring; AVX2 / NEON taps along the output row. */
#include <string.h>

#include "mlrt_kernels.h"

enum { NR = MLRT_NR };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* A conv's geometry; a 2-D conv is a 3-D one of depth 1 (D = KD = OD = 1, no depth padding). */
typedef struct {
  int64_t C, D, H, W, CO, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw, pf, pt, pl;
} conv_geom;

static inline conv_geom geom2d(int64_t C, int64_t H, int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH,
                               int64_t OW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl) {
  return (conv_geom){C, 1, H, W, CO, 1, KH, KW, 1, OH, OW, 1, sh, sw, 1, dh, dw, 0, pt, pl};
}

typedef struct {
  const float *x;
  float *bp;
  const conv_geom *g;
  int64_t N;       /* output positions, OD*OH*OW */
  int64_t p0;      /* panel p of the job is the conv's panel p0 + p */
  int64_t cstride; /* floats from one input channel's plane to the next (D*H*W, or more for a slice) */
} im2col_job;

/* A tap's lanes in one panel, as runs: lanes [l0, l1) read src[org + l * step] (org may lie before
 * the plane: only the run's lanes are read); lanes in no run are padding (zero). */
typedef struct {
  int64_t org;
  int l0, l1, step;
} lane_run;

/* Every channel's 16 floats of one tap from its runs, one channel plane apart (d: taps*NR apart). */
static void copy_runs(float *d, const float *src, int64_t C, int64_t dstride, int64_t plane, const lane_run *r, int n) {
  for (int64_t c = 0; c < C; ++c, d += dstride, src += plane) {
    memset(d, 0, NR * sizeof(float));
    for (int i = 0; i < n; ++i)
      for (int l = r[i].l0; l < r[i].l1; ++l) d[l] = src[r[i].org + l * r[i].step];
  }
}

#ifdef MLRT_HAVE_AVX2
/* copy_runs with masked vector loads, runs of step 1 or 2 (maps narrower than a panel, whose
 * panels span output rows, and border taps): scalar copies there were a quarter of a 3x3 conv on
 * 15x15. Masked-off lanes are never read, so a run's origin may lie outside the plane. */
__attribute__((target("avx512f"))) static void copy_runs_avx512(float *d, const float *src, int64_t C, int64_t dstride,
                                                                int64_t plane, const lane_run *r, int n) {
  __mmask16 m[NR], lo[NR], hi[NR];
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int i = 0; i < n; ++i) {
    const uint32_t lanes = ((1u << r[i].l1) - 1) & ~((1u << r[i].l0) - 1);
    /* step 2: the run's elements are the even ones of the 32 read from its origin */
    const uint32_t evens = (uint32_t)(0x55555555ull & ((1ull << 2 * r[i].l1) - 1) & ~((1ull << 2 * r[i].l0) - 1));
    m[i] = (__mmask16)lanes, lo[i] = (__mmask16)evens, hi[i] = (__mmask16)(evens >> 16);
  }
  for (int64_t c = 0; c < C; ++c, d += dstride, src += plane) {
    __m512 v = _mm512_setzero_ps();
    for (int i = 0; i < n; ++i) {
      const float *s = src + r[i].org;
      if (r[i].step == 1) {
        v = _mm512_mask_loadu_ps(v, m[i], s);
      } else {
        const __m512 e = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(lo[i], s), even, _mm512_maskz_loadu_ps(hi[i], s + 16));
        v = _mm512_mask_mov_ps(v, m[i], e);
      }
    }
    _mm512_storeu_ps(d, v);
  }
}

static void copy_runs_avx2(float *d, const float *src, int64_t C, int64_t dstride, int64_t plane, const lane_run *r,
                           int n) {
  __m256i m[NR][2], e[NR][4]; /* per run: its lanes in each half; step 2: the 32 elements' masks */
  const __m256i even = _mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0);
  for (int i = 0; i < n; ++i) {
    for (int h = 0; h < 2; ++h) /* lanes [l0, l1) of lanes 8h .. 8h + 7 */
      m[i][h] = _mm256_andnot_si256(mlrt_lanes_below(r[i].l0 - 8 * h), mlrt_lanes_below(r[i].l1 - 8 * h));
    for (int q = 0; q < 4; ++q) /* element k = 8q + lane is read when k = 2l, l in [l0, l1) */
      e[i][q] = _mm256_and_si256(even, _mm256_andnot_si256(mlrt_lanes_below(2 * r[i].l0 - 8 * q),
                                                           mlrt_lanes_below(2 * r[i].l1 - 8 * q)));
  }
  for (int64_t c = 0; c < C; ++c, d += dstride, src += plane) {
    __m256 v0 = _mm256_setzero_ps(), v1 = _mm256_setzero_ps();
    for (int i = 0; i < n; ++i) {
      const float *s = src + r[i].org;
      __m256 a, b;
      if (r[i].step == 1) {
        a = _mm256_maskload_ps(s, m[i][0]), b = _mm256_maskload_ps(s + 8, m[i][1]);
      } else {
        a = mlrt_even_lanes(_mm256_maskload_ps(s, e[i][0]), _mm256_maskload_ps(s + 8, e[i][1]));
        b = mlrt_even_lanes(_mm256_maskload_ps(s + 16, e[i][2]), _mm256_maskload_ps(s + 24, e[i][3]));
      }
      v0 = _mm256_blendv_ps(v0, a, _mm256_castsi256_ps(m[i][0]));
      v1 = _mm256_blendv_ps(v1, b, _mm256_castsi256_ps(m[i][1]));
    }
    _mm256_storeu_ps(d, v0);
    _mm256_storeu_ps(d + 8, v1);
  }
}
#endif

/* Packs panel p: for each tap, the 16 output positions' inputs as runs of lanes, one per output
 * row the panel holds (maps narrower than a panel span several), each clipped to the image
 * without a per-lane division or test: the C=3 stem conv spent half its time on those. */
static void im2col_panel(void *ctx, int64_t p) {
  const im2col_job *j = (const im2col_job *)ctx;
  const conv_geom g = *j->g; /* a local copy: the copies below cannot alias it */
  const int64_t taps = g.KD * g.KH * g.KW, K = g.C * taps, plane = j->cstride;
  float *dst = j->bp + p * K * NR;
  /* lanes [la, lb): one output row from one column, whose first tap reads input (id, iy, ix) */
  struct { int64_t id, iy, ix; int la, lb; } piece[NR];
  int pieces = 0;
  const int64_t p_abs = p + j->p0, end = min64(j->N, (p_abs + 1) * NR);
  for (int64_t pos = p_abs * NR; pos < end; ++pieces) {
    const int64_t row = pos / g.OW, ox = pos % g.OW, n = min64(g.OW - ox, end - pos);
    piece[pieces].id = row / g.OH * g.sd - g.pf, piece[pieces].iy = row % g.OH * g.sh - g.pt;
    piece[pieces].ix = ox * g.sw - g.pl;
    piece[pieces].la = (int)(pos - p_abs * NR), piece[pieces].lb = (int)(pos - p_abs * NR + n);
    pos += n;
  }
  const int64_t sw = g.sw, W = g.W;
  /* one output row segment whose every tap column lies inside the image (most panels of a
   * wide map): a tap is one full run, or none where its row is in the padding */
  const int inner = pieces == 1 && piece[0].lb - piece[0].la == NR && piece[0].ix >= 0 &&
                    piece[0].ix + (NR - 1) * sw + (g.KW - 1) * g.dw < W;
  for (int64_t t = 0, kd = 0, ky = 0, kx = 0; t < taps; ++t) { /* tap t = (kd*KH + ky)*KW + kx */
    lane_run r[NR];
    int n = 0;
    if (inner) {
      const int64_t id = piece[0].id + kd * g.dd, iy = piece[0].iy + ky * g.dh;
      if ((uint64_t)id < (uint64_t)g.D && (uint64_t)iy < (uint64_t)g.H)
        r[n++] = (lane_run){(id * g.H + iy) * W + piece[0].ix + kx * g.dw, 0, NR, (int)sw};
    }
    for (int i = 0; i < pieces && !inner; ++i) {
      const int64_t id = piece[i].id + kd * g.dd, iy = piece[i].iy + ky * g.dh, ix0 = piece[i].ix + kx * g.dw;
      if ((uint64_t)id >= (uint64_t)g.D || (uint64_t)iy >= (uint64_t)g.H) continue;
      const int64_t la = piece[i].la, last = ix0 + (piece[i].lb - 1 - la) * sw;
      const int64_t l0 = ix0 >= 0 ? la : la + (-ix0 + sw - 1) / sw;
      const int64_t l1 = last < W ? piece[i].lb : (W - 1 - ix0 >= 0 ? la + (W - 1 - ix0) / sw + 1 : la);
      if (l0 < l1) r[n++] = (lane_run){(id * g.H + iy) * W + ix0 - la * sw, (int)l0, (int)l1, (int)sw};
    }
    float *d = dst + t * NR;
    const float *src = j->x;
    const int64_t C = g.C;
    const int full = n == 1 && r[0].l0 == 0 && r[0].l1 == NR;
    if (full && r[0].step == 1) {
      for (int64_t c = 0; c < C; ++c, d += taps * NR, src += plane) memcpy(d, src + r[0].org, NR * sizeof(float));
#ifdef MLRT_HAVE_AVX2
    } else if (full && r[0].step == 2) { /* stride-2 convs: deinterleave; reads end at the last element used */
      for (int64_t c = 0; c < C; ++c, d += taps * NR, src += plane) {
        const float *s = src + r[0].org;
        _mm256_storeu_ps(d, mlrt_even_lanes(_mm256_loadu_ps(s), _mm256_loadu_ps(s + 8)));
        _mm256_storeu_ps(d + 8, mlrt_odd_lanes(_mm256_loadu_ps(s + 15), _mm256_loadu_ps(s + 23)));
      }
    } else if (g.sw <= 2 && mlrt_avx512()) {
      copy_runs_avx512(d, src, C, taps * NR, plane, r, n);
    } else if (g.sw <= 2) {
      copy_runs_avx2(d, src, C, taps * NR, plane, r, n);
#endif
    } else {
      copy_runs(d, src, C, taps * NR, plane, r, n);
    }
    if (++kx == g.KW) kx = 0, ky = ky + 1 == g.KH ? (++kd, 0) : ky + 1;
  }
}

/* im2col and GEMM fused per task: each task packs its own panels and multiplies them while they
 * are still in its cache, and a conv costs one fork-join instead of two. */
typedef struct {
  im2col_job im2col;
  const float *w;
  float *y;
  const mlrt_epilogue *ep;
  int64_t CO, K, N, ldc, tasks, panels, lda;
} conv_job;

static void conv_task(void *ctx, int64_t t) {
  const conv_job *j = (const conv_job *)ctx;
  const int64_t p0 = mlrt_part(j->panels, j->tasks, t), p1 = mlrt_part(j->panels, j->tasks, t + 1);
  for (int64_t p = p0; p < p1; ++p) im2col_panel((void *)&j->im2col, p);
  mlrt_gemm_panels(j->CO, j->N, j->K, j->w, j->lda, j->im2col.bp, j->y, j->ldc, j->ep, p0, p1);
}

/* One image's conv: X [C][D][H][W] (channel planes cstride apart) -> Y [CO][OD*OH*OW] (rows ldc
 * apart), with `ep` set for this image. Weights [CO][K] row-major (lda = K, K = C*KD*KH*KW), or
 * packed in A panels (lda = MLRT_A_PANELS). */
static void conv_image(const float *X, int64_t cstride, const float *Wt, int64_t lda, float *Y, int64_t ldc, float *Bp,
                       const mlrt_epilogue *ep, const conv_geom *g) {
  const int64_t C = g->C, CO = g->CO, K = C * g->KD * g->KH * g->KW, N = g->OD * g->OH * g->OW;
  if (K == C && g->sd == 1 && g->sh == 1 && g->sw == 1 && !g->pf && !g->pt && !g->pl && N == g->D * g->H * g->W) {
    /* 1x1: B is X itself, [C][D*H*W] with rows cstride apart. Its whole panels are read in place
     * (packing them cost a fifth of a small pointwise conv) and the partial last one is packed;
     * except where a panel's 16-float rows span two cache lines each (cstride not a multiple of
     * 16) and enough output channels reuse them: then every panel is packed. MobileNetV2's 1x1
     * convs on 7x7 maps ran 7-14% faster packed, 576->96 on 14x14 5%, 384->64 2% (Zen 3, 1
     * thread); with 24 or 32 output channels packing was 5-10% slower. */
    if (cstride % NR && CO >= 4 * NR) {
      mlrt_pack_b(X, cstride, 1, C, N, Bp, mlrt_threads_for(CO * N * K) > 1);
      mlrt_gemm_packed(CO, N, K, Wt, lda, Bp, Y, ldc, ep);
      return;
    }
    const int64_t n0 = N / NR * NR;
#ifdef MLRT_HAVE_AVX2
    /* masked loads: element by element (a branch each) it took 2% of SqueezeNet, on one thread */
    const __m256i m0 = mlrt_lanes_below(N - n0), m1 = mlrt_lanes_below(N - n0 - 8);
    for (int64_t c = 0; c < C && n0 < N; ++c) {
      _mm256_storeu_ps(Bp + c * NR, _mm256_maskload_ps(X + c * cstride + n0, m0));
      _mm256_storeu_ps(Bp + c * NR + 8, _mm256_maskload_ps(X + c * cstride + n0 + 8, m1));
    }
#else
    if (n0 < N)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t l = 0; l < NR; ++l) Bp[c * NR + l] = n0 + l < N ? X[c * cstride + n0 + l] : 0.0f;
#endif
    mlrt_gemm_rows(CO, N, K, Wt, lda, X, cstride, Bp, Y, ldc, ep);
    return;
  }
  im2col_job j = {X, Bp, g, N, 0, cstride};
  const int64_t threads = mlrt_threads_for(CO * N * K), panels = (N + NR - 1) / NR;
  /* im2col fused into the GEMM per task: tasks take even shares of the panels, small enough
   * that a task's packed columns stay in L2 (~256 KiB), and as many as mlrt_tasks_for allows, as
   * long as the threads stay within 3% of the best balance a rows x columns split would give.
   * Else im2col first, then the GEMM. */
  int64_t tasks = 0;
  if (threads > 1) {
    /* the same convs every run: the answer is kept per thread (see mlrt_gemm_split) */
    static _Thread_local mlrt_memo_entry memo[MLRT_MEMO_SLOTS];
    const int64_t key[5] = {CO, N, K, 0, threads};
    int hit;
    mlrt_memo_entry *e = mlrt_memo_find(memo, key, &hit);
    if (hit) {
      tasks = e->value[0];
    } else {
      int64_t tm, tn;
      const int64_t best = mlrt_gemm_split(CO, N, K, threads, 1, &tm, &tn);
      const int64_t blocks = (CO + MLRT_MR - 1) / MLRT_MR, fit = (panels * K * NR * 4 + (256 << 10) - 1) / (256 << 10);
      /* the most tasks up to mlrt_tasks_for, or the fewest that fit */
      const int64_t sized = max64(fit, mlrt_tasks_for(CO * N * K, threads));
      for (int64_t n = fit > threads ? fit : threads; n <= panels && n <= 16 * threads; ++n)
        if (mlrt_gemm_makespan(blocks, N, 1, n, threads) * 100 <= best * 103 && (!tasks || n <= sized)) tasks = n;
      *e = (mlrt_memo_entry){{CO, N, K, 0, threads}, {tasks, 0, 0}};
    }
  }
  if (tasks > 1) {
    conv_job cj = {j, Wt, Y, ep, CO, K, N, ldc, tasks, panels, lda};
    mlrt_parallel_for(tasks, conv_task, &cj);
    return;
  }
  if (threads > 1) {
    mlrt_parallel_runs(panels, im2col_panel, &j);
    mlrt_gemm_packed(CO, N, K, Wt, lda, Bp, Y, ldc, ep);
    return;
  }
  /* one thread: chunks of panels that fit in L2, each packed and multiplied in turn into the
   * scratch's first panels (packing all of a 224x224 stem's 7.4 MB first, then multiplying, ran
   * the product from memory) */
  const int64_t chunk = max64(1, (256 << 10) / (K * NR * (int64_t)sizeof(float)));
  for (int64_t q0 = 0; q0 < panels; q0 += chunk) {
    const int64_t q1 = min64(panels, q0 + chunk), n0 = q0 * NR, cols = min64(N, q1 * NR) - n0;
    j.p0 = q0;
    for (int64_t p = 0; p < q1 - q0; ++p) im2col_panel(&j, p);
    mlrt_epilogue e = *ep;
    e.residual = e.residual ? e.residual + n0 : NULL, e.dst += n0;
    if (e.bias && e.bias_per_col) e.bias += n0;
    mlrt_gemm_packed(CO, cols, K, Wt, lda, Bp, Y + n0, ldc, &e);
  }
}

static void conv2d(int64_t lda, int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C,
                   int64_t H, int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
                   int64_t sw, int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite,
                   int64_t bias, int64_t residual, float act_lo, float act_hi, int64_t dst) {
  const float *X = (const float *)(intptr_t)x, *Wt = (const float *)(intptr_t)w;
  float *Y = (float *)(intptr_t)y, *Bp = (float *)(intptr_t)scratch;
  const int64_t N = OH * OW;
  const conv_geom g = geom2d(C, H, W, CO, KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left);
  for (int64_t n = 0; n < batch; ++n) {
    const int64_t y_off = n * CO * N;
    mlrt_epilogue ep = {(int)overwrite, (const float *)(intptr_t)bias, 0,
                        residual ? (const float *)(intptr_t)residual + y_off : NULL, act_lo, act_hi,
                        (float *)(intptr_t)dst + y_off};
    conv_image(X + n * C * H * W, H * W, Wt, lda, Y + y_off, N, Bp, &ep, &g);
  }
}

void mlrt_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                     int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw,
                     int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias,
                     int64_t residual, float act_lo, float act_hi, int64_t dst) {
  conv2d(C * KH * KW, x, w, y, scratch, batch, C, H, W, CO, KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left,
         overwrite, bias, residual, act_lo, act_hi, dst);
}

void mlrt_conv2d_packed_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                            int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
                            int64_t sw, int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite,
                            int64_t bias, int64_t residual, float act_lo, float act_hi, int64_t dst) {
  conv2d(MLRT_A_PANELS, x, w, y, scratch, batch, C, H, W, CO, KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left,
         overwrite, bias, residual, act_lo, act_hi, dst);
}

/* ------------------------------------------------------------------------- grouped
 * Each (image, group) pair is a conv of C/groups channels into CO/groups. With at least as many
 * pairs as threads, each thread takes a share of the pairs and runs them serially (nested
 * parallel loops run serially on the pool), using its own slice of the scratch; else the pairs
 * run one after another, each on all threads. */
typedef struct {
  const float *x, *w, *bias, *residual;
  float *y, *dst, *scratch;
  int64_t batch, groups, C, H, W, CO, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl, overwrite, slice, tasks;
  float lo, hi;
} grouped_job;

static void grouped_pairs(const grouped_job *j, int64_t u0, int64_t u1, float *bp) {
  const int64_t cg = j->C / j->groups, fg = j->CO / j->groups, N = j->OH * j->OW;
  const conv_geom geom = geom2d(cg, j->H, j->W, fg, j->KH, j->KW, j->OH, j->OW, j->sh, j->sw, j->dh, j->dw, j->pt, j->pl);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t n = u / j->groups, g = u % j->groups, y_off = n * j->CO * N + g * fg * N;
    mlrt_epilogue ep = {(int)j->overwrite, j->bias ? j->bias + g * fg : NULL, 0,
                        j->residual ? j->residual + y_off : NULL, j->lo, j->hi, j->dst + y_off};
    conv_image(j->x + (n * j->C + g * cg) * j->H * j->W, j->H * j->W, j->w + g * fg * cg * j->KH * j->KW,
               cg * j->KH * j->KW, j->y + y_off, N, bp, &ep, &geom);
  }
}

static void grouped_task(void *ctx, int64_t t) {
  const grouped_job *j = (const grouped_job *)ctx;
  const int64_t units = j->batch * j->groups;
  grouped_pairs(j, mlrt_part(units, j->tasks, t), mlrt_part(units, j->tasks, t + 1), j->scratch + t * j->slice);
}

void mlrt_conv2d_grouped_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t groups,
                             int64_t slices, int64_t C, int64_t H, int64_t W, int64_t CO, int64_t KH, int64_t KW,
                             int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pad_top,
                             int64_t pad_left, int64_t overwrite, int64_t bias, int64_t residual, float act_lo,
                             float act_hi, int64_t dst) {
  const int64_t units = batch * groups, threads = mlrt_threads_for(CO * OH * OW * (C / groups) * KH * KW);
  grouped_job j = {(const float *)(intptr_t)x, (const float *)(intptr_t)w, (const float *)(intptr_t)bias,
                   (const float *)(intptr_t)residual, (float *)(intptr_t)y, (float *)(intptr_t)dst,
                   (float *)(intptr_t)scratch, batch, groups, C, H, W, CO, KH, KW, OH, OW, sh, sw, dh, dw,
                   pad_top, pad_left, overwrite, mlrt_packed_b_floats((C / groups) * KH * KW, OH * OW), 1,
                   act_lo, act_hi};
  j.tasks = min64(min64(threads, slices), units);
  if (j.tasks > 1 && units >= threads)
    mlrt_parallel_for(j.tasks, grouped_task, &j);
  else
    grouped_pairs(&j, 0, units, j.scratch);
}

/* ------------------------------------------------------------------------- 3-D
 * One GEMM per image: Y [CO][OD*OH*OW] = W [CO][C*KD*KH*KW] * cols, im2col over every output
 * position of all depths (taps in the depth padding read as zeros), the weights packed in A
 * panels at build time. Summing per-depth 2-D GEMMs instead read the weights OD*KD times, and
 * on late-stage maps (2x2, 4x4) filled a quarter of each 16-position panel. */
void mlrt_conv3d_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t D,
                     int64_t H, int64_t W, int64_t CO, int64_t KD, int64_t KH, int64_t KW, int64_t OD, int64_t OH,
                     int64_t OW, int64_t sd, int64_t sh, int64_t sw, int64_t dd, int64_t dh, int64_t dw, int64_t pad_front,
                     int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias, int64_t residual, float act_lo,
                     float act_hi, int64_t dst) {
  const float *X = (const float *)(intptr_t)x, *Wt = (const float *)(intptr_t)w;
  float *Y = (float *)(intptr_t)y, *Bp = (float *)(intptr_t)scratch;
  const conv_geom g = {C, D, H, W, CO, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw, pad_front, pad_top, pad_left};
  const int64_t N = OD * OH * OW;
  for (int64_t n = 0; n < batch; ++n) {
    const int64_t y_off = n * CO * N;
    mlrt_epilogue ep = {(int)overwrite, (const float *)(intptr_t)bias, 0,
                        residual ? (const float *)(intptr_t)residual + y_off : NULL, act_lo, act_hi,
                        (float *)(intptr_t)dst + y_off};
    conv_image(X + n * C * D * H * W, D * H * W, Wt, MLRT_A_PANELS, Y + y_off, N, Bp, &ep, &g);
  }
}

/* ------------------------------------------------------------------------- small maps
 * Few output positions (late stages of a CNN on a small image: 2x2, 4x4 maps) leave most lanes
 * of im2col's 16-position panels empty, and the weights, the large operand, stream in one
 * broadcast at a time. Here the output channels take the lanes instead:
 *   Yt[batch*OH*OW x CO] = rows[batch*OH*OW x K] * Wp,
 * with Wp the weights packed at build time as B panels of W^T [K x CO], K ordered (tap, channel),
 * and the epilogue applied while Yt is transposed into NCHW. The input is first transposed to
 * channels-last (Xt [batch*H*W x C]), so each row is one copy of C floats per tap; a 1x1 conv at
 * stride 1 reads Xt as its rows. Grouped convs order K (group, tap, channel) and store each
 * group's W_g^T [K/G x CO/G] in its own panels, one after the other. Both transposes go 8x8
 * blocks at a time: element by element they cost a fifth of a 3x3 conv on 7x7. */
typedef struct {
  const float *x;
  float *xt, *rows;
  int64_t C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl, N, groups, chunks;
} rows_job;

enum { XT_CHANNELS = 64 }; /* channels per task of the input transpose */

static void channels_last(void *ctx, int64_t t) { /* task: (image, run of XT_CHANNELS channels) */
  const rows_job *j = (const rows_job *)ctx;
  const int64_t n = t / j->chunks, c0 = t % j->chunks * XT_CHANNELS, hw = j->H * j->W;
  /* Xt[n][q][c] = X[n][c][q]: the transpose of the [C x HW] plane block */
  mlrt_transpose_block(j->x + (n * j->C + c0) * hw, hw, j->xt + n * hw * j->C + c0, j->C, min64(XT_CHANNELS, j->C - c0), hw);
}

static void im2col_rows(void *ctx, int64_t r) {
  const rows_job *j = (const rows_job *)ctx;
  const int64_t n = r / j->N, pos = r % j->N, oy = pos / j->OW, ox = pos % j->OW, taps = j->KH * j->KW;
  const int64_t cg = j->C / j->groups;
  const float *src = j->xt + n * j->H * j->W * j->C;
  float *dst = j->rows + r * j->C * taps;
  for (int64_t ky = 0; ky < j->KH; ++ky)
    for (int64_t kx = 0; kx < j->KW; ++kx) {
      const int64_t iy = oy * j->sh + ky * j->dh - j->pt, ix = ox * j->sw + kx * j->dw - j->pl;
      const int in = iy >= 0 && iy < j->H && ix >= 0 && ix < j->W;
      for (int64_t g = 0; g < j->groups; ++g) {
        float *d = dst + (g * taps + ky * j->KW + kx) * cg;
        if (in)
          memcpy(d, src + (iy * j->W + ix) * j->C + g * cg, (size_t)cg * sizeof(float));
        else
          memset(d, 0, (size_t)cg * sizeof(float));
      }
    }
}

/* With AVX-512, 7 to SMALL_PANEL_ROWS rows (3x3 maps at batch 1), or up to SMALL_PANEL_ROWS_TAPS
 * for wider taps: the rows go straight from the NCHW input into the GEMM's packed A panels,
 * [group][row panel][K/G][MR] with zero rows past M, one gather per element. As row-major rows,
 * every task of the product packed them again for the 12-row zmm tile (SqueezeNet: 0.97x), and
 * from 13 rows the AVX2 tile took them (3x3 32->128 on 7x7: 0.85x, 64->256 on 4x4: 0.93x). Up to
 * 6 rows the tile reads row-major rows as they are and the gather was the slower copy (RegNet's
 * 2x2 maps: 1.04x); so it was for a 1x1 on 5x5, whose rows are the transposed input (1.07-1.17x). */
enum { SMALL_PANEL_ROWS = 2 * MLRT_MR, SMALL_PANEL_ROWS_TAPS = 64, SMALL_COPY_FLOATS = 16384 };
typedef struct {
  const float *x;
  float *ap;
  int64_t C, H, W, KH, KW, OW, sh, sw, dh, dw, pt, pl, N, M, groups, panels, tasks;
} panel_job;

static void gather_panels(void *ctx, int64_t t) { /* task: a run of (group, tap) pairs */
  const panel_job *j = (const panel_job *)ctx;
  const int64_t taps = j->KH * j->KW, cg = j->C / j->groups, kg = taps * cg, hw = j->H * j->W;
  const int64_t q1 = mlrt_part(j->groups * taps, j->tasks, t + 1);
  for (int64_t q = mlrt_part(j->groups * taps, j->tasks, t); q < q1; ++q) {
    const int64_t g = q / taps, tap = q % taps, ky = tap / j->KW, kx = tap % j->KW;
    for (int64_t p = 0; p < j->panels; ++p) {
      int64_t o[MLRT_MR]; /* per row of the panel: its tap's input offset in the group's first plane, or -1 */
      for (int64_t r = 0; r < MLRT_MR; ++r) {
        const int64_t m = p * MLRT_MR + r, n = m / j->N, oy = m % j->N / j->OW, ox = m % j->OW;
        const int64_t iy = oy * j->sh + ky * j->dh - j->pt, ix = ox * j->sw + kx * j->dw - j->pl;
        o[r] = m < j->M && iy >= 0 && iy < j->H && ix >= 0 && ix < j->W ? (n * j->C + g * cg) * hw + iy * j->W + ix : -1;
      }
      float *d = j->ap + ((g * j->panels + p) * kg + tap * cg) * MLRT_MR;
      for (int64_t c = 0; c < cg; ++c, d += MLRT_MR)
        for (int r = 0; r < MLRT_MR; ++r) d[r] = o[r] >= 0 ? j->x[o[r] + c * hw] : 0.0f;
    }
  }
}

/* Yt [batch*N x CO] into NCHW with the rest of the epilogue. */
typedef struct {
  const float *yt, *Y, *R;
  float *D;
  int64_t CO, N, overwrite;
  float lo, hi;
} small_out_job;

static inline float small_out_value(const small_out_job *j, float v, int64_t o) {
  v += j->overwrite ? 0.0f : j->Y[o];
  if (j->R) v += j->R[o];
  return mlrt_clamp(v, j->lo, j->hi);
}

/* Output channels [c0, c1) of image n. */
static void small_out_range(const small_out_job *j, int64_t n, int64_t co, int64_t c1) {
  const float *yt = j->yt + n * j->N * j->CO;
#ifdef MLRT_HAVE_AVX2
  const __m256 lo = _mm256_set1_ps(j->lo), hi = _mm256_set1_ps(j->hi);
  for (; co + 8 <= c1; co += 8) {
    int64_t pos = 0;
    for (; pos + 8 <= j->N; pos += 8) { /* 8 positions x 8 channels: transposed, then the epilogue */
      __m256 v[8];
      for (int l = 0; l < 8; ++l) v[l] = _mm256_loadu_ps(yt + (pos + l) * j->CO + co);
      mlrt_transpose8(v);
      for (int l = 0; l < 8; ++l) {
        const int64_t o = (n * j->CO + co + l) * j->N + pos;
        __m256 a = v[l];
        if (!j->overwrite) a = _mm256_add_ps(a, _mm256_loadu_ps(j->Y + o));
        if (j->R) a = _mm256_add_ps(a, _mm256_loadu_ps(j->R + o));
        _mm256_storeu_ps(j->D + o, mlrt_clamp8(a, lo, hi));
      }
    }
    for (int64_t l = 0; l < 8; ++l)
      for (int64_t p = pos; p < j->N; ++p) {
        const int64_t o = (n * j->CO + co + l) * j->N + p;
        j->D[o] = small_out_value(j, yt[p * j->CO + co + l], o);
      }
  }
#endif
  for (; co < c1; ++co)
    for (int64_t pos = 0; pos < j->N; ++pos) {
      const int64_t o = (n * j->CO + co) * j->N + pos;
      j->D[o] = small_out_value(j, yt[pos * j->CO + co], o);
    }
}

/* The output pass alone, a run of channels of one image per task (run serially it cost a fifth of a
 * 7x7 conv on 2 threads). */
enum { SMALL_OUT_CHANNELS = 32 };

static void small_out_task(void *ctx, int64_t t) {
  const small_out_job *j = (const small_out_job *)ctx;
  const int64_t chunks = (j->CO + SMALL_OUT_CHANNELS - 1) / SMALL_OUT_CHANNELS, c0 = t % chunks * SMALL_OUT_CHANNELS;
  small_out_range(j, t / chunks, c0, min64(j->CO, c0 + SMALL_OUT_CHANNELS));
}

/* The product Yt = rows * Wp and the output, in tasks that each take a run of units: whole groups
 * (group g's GEMM reads its channels' columns of the rows, lda = K, and its panels of Wp), or B
 * panels of the one group. Each task transposes the output channels it computed, while they are
 * in its cache: on a 2x2 map, a separate pass of tiny tasks for the transpose cost as much as a
 * third of the product. */
typedef struct {
  const float *rows, *Wp, *bias;
  float *yt;
  int64_t M, K, CO, groups, kg, fg, units, tasks, batch;
  int64_t lda, group_a; /* the rows: row-major (lda = K; a group's columns g * kg on) or A panels
                         * (lda = MLRT_A_PANELS; a group's panels g * group_a floats on) */
  small_out_job out;
} small_gemm_job;

static void small_gemm_task(void *ctx, int64_t t) {
  const small_gemm_job *j = (const small_gemm_job *)ctx;
  const int64_t u0 = mlrt_part(j->units, j->tasks, t), u1 = mlrt_part(j->units, j->tasks, t + 1);
  int64_t c0, c1;
  if (j->groups <= 1) {
    mlrt_epilogue ep = {1, j->bias, 1, NULL, -__builtin_inff(), __builtin_inff(), j->yt};
    mlrt_gemm_panels(j->M, j->CO, j->K, j->rows, j->lda, j->Wp, j->yt, j->CO, &ep, u0, u1);
    c0 = u0 * NR, c1 = min64(j->CO, u1 * NR);
  } else {
    const int64_t panels = (j->fg + NR - 1) / NR;
    for (int64_t g = u0; g < u1; ++g) {
      mlrt_epilogue ep = {1, j->bias ? j->bias + g * j->fg : NULL, 1, NULL, -__builtin_inff(), __builtin_inff(),
                          j->yt + g * j->fg};
      mlrt_gemm_panels(j->M, j->fg, j->kg, j->rows + g * j->group_a, j->lda, j->Wp + g * panels * j->kg * NR,
                       j->yt + g * j->fg, j->CO, &ep, 0, panels);
    }
    c0 = u0 * j->fg, c1 = u1 * j->fg;
  }
  for (int64_t n = 0; n < j->batch; ++n) small_out_range(&j->out, n, c0, c1);
}

void mlrt_conv2d_small_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t groups, int64_t C,
                           int64_t H, int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
                           int64_t sw, int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite,
                           int64_t bias, int64_t residual, float act_lo, float act_hi, int64_t dst) {
  const float *X = (const float *)(intptr_t)x, *Wp = (const float *)(intptr_t)w;
  const float *B = (const float *)(intptr_t)bias, *R = (const float *)(intptr_t)residual;
  float *Y = (float *)(intptr_t)y, *D = (float *)(intptr_t)dst, *xt = (float *)(intptr_t)scratch;
  const int64_t K = C * KH * KW, N = OH * OW, M = batch * N;
  if (M <= 0 || CO <= 0) return;
  const int64_t kg = K / (groups > 1 ? groups : 1), fg = CO / (groups > 1 ? groups : 1);
  /* The copies (the transposes, im2col, the panel gather) are shared out from SMALL_COPY_FLOATS:
   * below, a fork-join costs more than the copy (SqueezeNet's 3x3 maps move 0.6-5K floats each). */
  const int parallel = mlrt_threads() > 1 && M * K >= SMALL_COPY_FLOATS;
  float *rows, *yt;
  int64_t lda = K, group_a = kg;
  if (M > MLRT_MR && (M <= SMALL_PANEL_ROWS || (KH * KW > 1 && M <= SMALL_PANEL_ROWS_TAPS)) && mlrt_avx512()) {
    /* scratch: the A panels, Yt */
    const int64_t panels = (M + MLRT_MR - 1) / MLRT_MR;
    panel_job p = {X, xt, C, H, W, KH, KW, OW, sh, sw, dh, dw, pad_top, pad_left, N, M, groups, panels,
                   parallel ? min64(groups * KH * KW, 4 * mlrt_threads()) : 1};
    if (p.tasks > 1)
      mlrt_parallel_for(p.tasks, gather_panels, &p);
    else
      gather_panels(&p, 0);
    rows = xt, yt = xt + panels * MLRT_MR * K, lda = MLRT_A_PANELS, group_a = panels * kg * MLRT_MR;
  } else {
    /* scratch (mlrt_conv_small_scratch_floats): Xt, the rows (unless Xt is them), Yt */
    const int direct = KH == 1 && KW == 1 && sh == 1 && sw == 1 && pad_top == 0 && pad_left == 0 && OH == H && OW == W;
    rows = direct ? xt : xt + batch * H * W * C, yt = rows + M * K;
    rows_job j = {X, xt, rows, C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left, N, groups,
                  (C + XT_CHANNELS - 1) / XT_CHANNELS};
    if (parallel)
      mlrt_parallel_for(batch * j.chunks, channels_last, &j);
    else
      for (int64_t t = 0; t < batch * j.chunks; ++t) channels_last(&j, t);
    if (!direct) {
      if (parallel)
        mlrt_parallel_runs(M, im2col_rows, &j);
      else
        for (int64_t r = 0; r < M; ++r) im2col_rows(&j, r);
    }
  }
  /* bias per output channel = per column of Yt; the rest of the epilogue follows the transpose */
  const int64_t units = groups > 1 ? groups : (CO + NR - 1) / NR, threads = mlrt_threads_for(M * kg * CO);
  small_gemm_job g = {rows, Wp, overwrite ? B : NULL, yt, M, K, CO, groups, kg, fg, units, min64(units, 4 * threads),
                      batch, lda, group_a, {yt, Y, R, D, CO, N, overwrite, act_lo, act_hi}};
  if (groups <= 1 && (threads == 1 || units < 2 * threads || M > 2 * MLRT_MR)) {
    /* many rows or few panels: the GEMM splits its own work (rows too), then one pass transposes */
    mlrt_epilogue ep = {1, overwrite ? B : NULL, 1, NULL, -__builtin_inff(), __builtin_inff(), yt};
    mlrt_gemm_packed(M, CO, K, rows, lda, Wp, yt, CO, &ep);
    const int64_t chunks = batch * ((CO + SMALL_OUT_CHANNELS - 1) / SMALL_OUT_CHANNELS);
    if (threads > 1 && M * CO >= SMALL_COPY_FLOATS)
      mlrt_parallel_for(chunks, small_out_task, &g.out);
    else
      for (int64_t t = 0; t < chunks; ++t) small_out_task(&g.out, t);
  } else if (threads == 1) {
    g.tasks = 1;
    small_gemm_task(&g, 0);
  } else {
    mlrt_parallel_for(g.tasks, small_gemm_task, &g);
  }
}

/* ------------------------------------------------------------------------- depthwise
 * With AVX2, channels in the lanes (dw_lanes_*, below) wherever a band of their staged rows fits
 * the stack buffer; this ring takes the rest (and every map without AVX2), rows in the lanes.
 * Each task takes a run of channels. A channel's input rows pass through a ring of zero-padded
 * rows on the stack (each input row staged once), so padding costs no branches and every tap is
 * a unit-stride vector load: stride-2 rows are staged as their even columns, then their odd
 * columns. MLRT_DW_ROWS output rows are computed per step (independent FMA chains even on 7x7
 * maps). The output may overwrite the input in place: with a pad smaller than the kernel, output
 * row oy is written only after input row oy (and every row a later output reads) is staged. The
 * compiler relies on that when it drops the padded copy of an input whose buffer is reused as the
 * output (kernel_calls.py). */

/* Whole-channel staging: both buffers in half of L1 (28x28 maps and smaller). At 56x56 the buffers
 * and the output rows no longer fit in L1 together and it is slower than the ring. */
enum { DW_ROWS = MLRT_DW_ROWS, DW_IMAGE_FLOATS = 4096, DW_LANES_MAX_TAPS = 81, DW_LANES_BAND_FLOATS = 8192 };

/* Floats of one ring row: every column a vector tap can read, in whole vectors. Padded column j
 * is input column j - pad_left; stride 2 stores column j at j / 2 (even j) or rw / 2 + j / 2. */
static inline int64_t dw_row_floats(int64_t OW, int64_t KW, int64_t sw, int64_t dw) {
  return (sw * ((OW + 7) / 8 * 8) + (KW - 1) * dw + 7) / 8 * 8;
}

/* A channel multiplier m (groups = input channels, m outputs each: FastViT's patch embedding):
 * output plane t (= n * C + c, C = m * input channels) reads input plane n * C/m + c/m = t / m. */
static inline int64_t dw_in_plane(int64_t t, int64_t mult) { return t / mult; }

typedef struct {
  const float *x, *w;
  float *y;
  int64_t batch, C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl, tasks, mult;
  int64_t ring_rows, rw; /* the ring: ring_rows rows of rw floats, then a zero row */
  int64_t image_rows;    /* > 0: each buffer holds a whole padded channel of this many rows instead */
  mlrt_epilogue ep;
} depthwise_job;

/* Stages input row `src` (W floats) into ring row `dst`: padded column j = pl + ix. A row's last
 * columns go in one more vector, not one by one (a quarter of a 14x14 map's time went there):
 * rewriting the last 8 columns, or a masked load whose zero lanes land in the right padding. */
static inline void dw_stage_row(const depthwise_job *j, float *dst, const float *src) {
  const int64_t n = min64(j->W, max64(0, j->rw - j->pl)); /* input columns a tap can reach */
  int64_t i = 0;
  if (j->sw != 2) {
#ifdef MLRT_HAVE_AVX2
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + j->pl + i, _mm256_loadu_ps(src + i));
    if (i < n && n >= 8) {
      _mm256_storeu_ps(dst + j->pl + n - 8, _mm256_loadu_ps(src + n - 8));
      return;
    }
    if (i < n && j->pl + 8 <= j->rw) {
      _mm256_storeu_ps(dst + j->pl, _mm256_maskload_ps(src, mlrt_lanes_below(n)));
      return;
    }
#endif
    for (; i < n; ++i) dst[j->pl + i] = src[i];
    return;
  }
  float *even = dst, *odd = dst + j->rw / 2;
#ifdef MLRT_HAVE_AVX2
  /* 16 columns at a time: even ix go where j = pl + ix has pl's parity, odd ix to the other half */
  const int64_t ev_off = j->pl / 2, od_off = (j->pl + 1) / 2;
  float *ev = (j->pl % 2 ? odd : even) + ev_off, *od = (j->pl % 2 ? even : odd) + od_off;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(src + i), b = _mm256_loadu_ps(src + i + 8);
    _mm256_storeu_ps(ev + i / 2, mlrt_even_lanes(a, b));
    _mm256_storeu_ps(od + i / 2, mlrt_odd_lanes(a, b));
  }
  if (i < n && max64(ev_off, od_off) + i / 2 + 8 <= j->rw / 2) {
    const __m256 a = _mm256_maskload_ps(src + i, mlrt_lanes_below(n - i));
    const __m256 b = _mm256_maskload_ps(src + i + 8, mlrt_lanes_below(n - i - 8));
    _mm256_storeu_ps(ev + i / 2, mlrt_even_lanes(a, b));
    _mm256_storeu_ps(od + i / 2, mlrt_odd_lanes(a, b));
    return;
  }
#endif
  for (; i < n; ++i) {
    const int64_t c = j->pl + i;
    (c % 2 ? odd : even)[c / 2] = src[i];
  }
}

/* A ring of staged input rows: row iy lives in ring row iy mod ring_rows, and a zero row follows
 * the last. `next`: the first input row not yet staged. */
typedef struct {
  float *rows;
  int64_t next;
} dw_ring;

static inline int64_t dw_slot(const depthwise_job *j, int64_t iy) { return iy % j->ring_rows; }

/* Stages the input rows the step of output rows [oy, oy + DW_ROWS) reads, each input row once per
 * channel. The ring holds two steps: the caller stages one step ahead (and the next channel's first
 * step into the other ring), so the vector loads never wait on these stores. */
static inline void dw_stage(const depthwise_job *j, dw_ring *ring, const float *in, int64_t oy) {
  const int64_t end = min64(j->H, (oy + DW_ROWS - 1) * j->sh - j->pt + (j->KH - 1) * j->dh + 1);
  for (int64_t iy = max64(ring->next, max64(oy * j->sh - j->pt, 0)); iy < end; ++iy)
    dw_stage_row(j, ring->rows + dw_slot(j, iy) * j->rw, in + iy * j->W);
  ring->next = max64(ring->next, end);
}

/* Points rows[r * KH + ky] at the ring rows of the step at oy: the zero row for input rows outside
 * the input and for the rows r >= n a short last step computes but does not store. */
static inline __attribute__((always_inline)) void dw_row_ptrs(const depthwise_job *j, const float *ring, int64_t oy,
                                                              int64_t n, const float **rows, const int64_t KH) {
  const int64_t ring_rows = j->ring_rows, rw = j->rw, iy0 = oy * j->sh - j->pt;
  int64_t slot0 = iy0 % ring_rows; /* one division per step; the rows after it wrap at most once */
  slot0 += slot0 < 0 ? ring_rows : 0;
  for (int64_t r = 0; r < DW_ROWS; ++r)
    for (int64_t ky = 0; ky < KH; ++ky) {
      const int64_t k = r * j->sh + ky * j->dh, iy = iy0 + k, slot = slot0 + k < ring_rows ? slot0 + k : slot0 + k - ring_rows;
      rows[r * KH + ky] = iy >= 0 && iy < j->H && r < n ? ring + slot * rw : ring + ring_rows * rw;
    }
}

/* Small maps: the whole channel, padding rows included, sits in one buffer (padded row pr = input
 * row pr - pt), so row pointers need no wrap or bounds test. The next channel is staged into the
 * other buffer before this one is computed: in place is still safe (a channel's output overwrites
 * only its own, already staged, input plane). Rows outside the input stay zero from the memset. */
static inline void dw_stage_image(const depthwise_job *j, float *img, const float *in) {
  const int64_t end = min64(j->H, j->image_rows - j->pt);
  for (int64_t iy = 0; iy < end; ++iy) dw_stage_row(j, img + (iy + j->pt) * j->rw, in + iy * j->W);
}

/* The epilogue, copied to locals: stores through float pointers could alias the job's fields. */
typedef struct {
  int overwrite;
  float base, lo, hi; /* base: the channel's bias (or 0) when overwriting */
} dw_epilogue;

static inline float dw_finish(const dw_epilogue *e, float acc, const float *yrow, const float *res, int64_t i) {
  return mlrt_clamp((e->overwrite ? e->base : yrow[i]) + acc + (res ? res[i] : 0.0f), e->lo, e->hi);
}

#ifdef MLRT_HAVE_AVX2
/* Where tap kx of 8 outputs from ox reads in a ring row: unit stride, or the even / odd half. */
static inline __attribute__((always_inline)) const float *dw_tap(const float *row, int64_t ox, int64_t kx,
                                                                 int64_t dw, int64_t half, const int64_t SW) {
  if (SW == 1) return row + ox + kx * dw;
  const int64_t c = kx * dw; /* padded column 2 * ox + c */
  return c % 2 ? row + half + ox + c / 2 : row + ox + c / 2;
}

/* 3x3 with unit dilation and the same stride (1 or 2) down as across: 16 outputs of each of the
 * DW_ROWS rows a step, whole vectors only (each returns the first column left to dw_rows_avx2).
 * The rows' windows overlap: each input row of the step is loaded once per shift and feeds every
 * output row that reads it (stride 1: 18 vector loads per 36 FMAs instead of 36; stride 2: 27
 * per 36), and the eight accumulators are eight independent FMA chains. The weights are memory
 * operands: nine of them and eight accumulators would not fit in 16 registers. One function per
 * stride: sharing one body between the two strides cost the stride-1 code 10-20%. */
#define DW3_BEGIN                                                                                     \
  _Static_assert(DW_ROWS == 4, "the straight-line code computes four rows");                          \
  const __m256 lo = _mm256_set1_ps(e->lo), hi = _mm256_set1_ps(e->hi), base = _mm256_set1_ps(e->base); \
  const float *w = (const float *)wv;                                                                 \
  int64_t ox = x0;                                                                                    \
  for (; ox + 16 <= OW; ox += 16) {                                                                   \
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
#define DW3_TAP(R, KY)                                                             \
  a##R##0 = _mm256_fmadd_ps(_mm256_load_ps(w + ((KY) * 3 + kx) * 8), v0, a##R##0); \
  a##R##1 = _mm256_fmadd_ps(_mm256_load_ps(w + ((KY) * 3 + kx) * 8), v1, a##R##1);
#define DW3_ROW(ROW, ...)                                                              \
  for (int64_t kx = 0; kx < 3; ++kx) {                                                  \
    const __m256 v0 = _mm256_loadu_ps(DW3_AT((ROW), ox, kx)), v1 = _mm256_loadu_ps(DW3_AT((ROW), ox + 8, kx)); \
    __VA_ARGS__                                                                         \
  }
#define DW3_STORE(R)                                                                                           \
  if (R < n) {                                                                                                 \
    const int64_t o = R * OW + ox;                                                                             \
    __m256 y0 = _mm256_add_ps(a##R##0, e->overwrite ? base : _mm256_loadu_ps(yrow + o));                       \
    __m256 y1 = _mm256_add_ps(a##R##1, e->overwrite ? base : _mm256_loadu_ps(yrow + o + 8));                   \
    if (res) y0 = _mm256_add_ps(y0, _mm256_loadu_ps(res + o)), y1 = _mm256_add_ps(y1, _mm256_loadu_ps(res + o + 8)); \
    _mm256_storeu_ps(d + o, mlrt_clamp8(y0, lo, hi));                                                          \
    _mm256_storeu_ps(d + o + 8, mlrt_clamp8(y1, lo, hi));                                                      \
  }
#define DW3_END                                        \
  DW3_STORE(0) DW3_STORE(1) DW3_STORE(2) DW3_STORE(3) \
  }                                                    \
  return ox;

/* stride 1: input row i of the step is output row r's row i - r */
static inline __attribute__((always_inline)) int64_t dw3_s1_rows(const float *const *rows, const __m256 *wv,
                                                                 const dw_epilogue *e, const float *yrow,
                                                                 const float *res, float *d, int64_t OW, int64_t n,
                                                                 int64_t x0) {
#define DW3_AT(ROW, X, KX) ((ROW) + (X) + (KX))
  DW3_BEGIN
    DW3_ROW(rows[0], DW3_TAP(0, 0))
    DW3_ROW(rows[1], DW3_TAP(0, 1) DW3_TAP(1, 0))
    DW3_ROW(rows[2], DW3_TAP(0, 2) DW3_TAP(1, 1) DW3_TAP(2, 0))
    DW3_ROW(rows[5], DW3_TAP(1, 2) DW3_TAP(2, 1) DW3_TAP(3, 0))
    DW3_ROW(rows[8], DW3_TAP(2, 2) DW3_TAP(3, 1))
    DW3_ROW(rows[11], DW3_TAP(3, 2))
  DW3_END
#undef DW3_AT
}

/* stride 2: output row r reads rows 2r .. 2r + 2, even and odd columns apart (dw_tap) */
static inline __attribute__((always_inline)) int64_t dw3_s2_rows(const float *const *rows, const __m256 *wv,
                                                                 const dw_epilogue *e, const float *yrow,
                                                                 const float *res, float *d, int64_t OW, int64_t n,
                                                                 int64_t half, int64_t x0) {
#define DW3_AT(ROW, X, KX) dw_tap((ROW), (X), (KX), 1, half, 2)
  DW3_BEGIN
    DW3_ROW(rows[0], DW3_TAP(0, 0))
    DW3_ROW(rows[1], DW3_TAP(0, 1))
    DW3_ROW(rows[2], DW3_TAP(0, 2) DW3_TAP(1, 0))
    DW3_ROW(rows[4], DW3_TAP(1, 1))
    DW3_ROW(rows[5], DW3_TAP(1, 2) DW3_TAP(2, 0))
    DW3_ROW(rows[7], DW3_TAP(2, 1))
    DW3_ROW(rows[8], DW3_TAP(2, 2) DW3_TAP(3, 0))
    DW3_ROW(rows[10], DW3_TAP(3, 1))
    DW3_ROW(rows[11], DW3_TAP(3, 2))
  DW3_END
#undef DW3_AT
}
#undef DW3_BEGIN
#undef DW3_TAP
#undef DW3_ROW
#undef DW3_STORE
#undef DW3_END

/* DW_ROWS output rows, of which the first n are stored (rows[r * KH + ky] their input rows; yrow,
 * res, d their first output row, the others OW apart): 8 outputs per row per step, one
 * accumulator per row. KH, KW and SW are constants at the call sites, so the taps unroll and the
 * weights stay in registers. A row's last, partial vector is merged into the 8 floats in place
 * (`tail` masks the valid lanes; AMD cores run masked stores microcoded and slowly): the extra
 * lanes are the next row's first values, rewritten unchanged by this thread. Not past the
 * channel's last row (`last`: its index here, or -1), nor for rows shorter than 4 (the extra
 * lanes would reach past the next row): there, lane by lane. */
/* One vector of output row r from column x0: the epilogue, then a whole store, a merge into the
 * 8 floats in place, or lane by lane (see dw_rows_avx2). */
static inline __attribute__((always_inline)) void dw_store(const dw_epilogue *e, __m256 acc, __m256i tail,
                                                           const float *yrow, const float *res, float *d, int64_t OW,
                                                           int64_t r, int64_t x0, int64_t last, __m256 lo, __m256 hi,
                                                           __m256 base) {
  const int64_t o = r * OW + x0;
  if (x0 + 8 <= OW) {
    __m256 v = _mm256_add_ps(acc, e->overwrite ? base : _mm256_loadu_ps(yrow + o));
    if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res + o));
    _mm256_storeu_ps(d + o, mlrt_clamp8(v, lo, hi));
  } else if (r != last && OW >= 4) {
    __m256 v = _mm256_add_ps(acc, e->overwrite ? base : _mm256_maskload_ps(yrow + o, tail));
    if (res) v = _mm256_add_ps(v, _mm256_maskload_ps(res + o, tail));
    v = mlrt_clamp8(v, lo, hi);
    _mm256_storeu_ps(d + o, _mm256_blendv_ps(_mm256_loadu_ps(d + o), v, _mm256_castsi256_ps(tail)));
  } else {
    float t[8];
    _mm256_storeu_ps(t, acc);
    for (int64_t i = 0; x0 + i < OW; ++i) d[o + i] = dw_finish(e, t[i], yrow, res, o + i);
  }
}

static inline __attribute__((always_inline)) void dw_rows_avx2(const float *const *rows, const __m256 *wv,
                                                               const dw_epilogue *e, __m256i tail, const float *yrow,
                                                               const float *res, float *d, int64_t OW, int64_t n,
                                                               int64_t last, int64_t dw, int64_t half, int64_t ox0,
                                                               const int64_t KH, const int64_t KW, const int64_t SW) {
  const __m256 lo = _mm256_set1_ps(e->lo), hi = _mm256_set1_ps(e->hi), base = _mm256_set1_ps(e->base);
  if (KH * KW > 9) {
    /* Above 3x3, two vectors of each of the DW_ROWS rows, taps outermost: eight independent FMA
     * chains in flight (5x5 on 28x28 and 14x14 maps: 1.2x). A partial last vector goes alone. */
    for (int64_t ox = ox0, two; ox < OW; ox += 8 + 8 * two) {
      __m256 acc[DW_ROWS][2];
      two = ox + 8 < OW;
      for (int64_t r = 0; r < DW_ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      for (int64_t ky = 0; ky < KH; ++ky)
        for (int64_t kx = 0; kx < KW; ++kx)
          for (int64_t r = 0; r < DW_ROWS; ++r) {
            const float *row = rows[r * KH + ky];
            acc[r][0] = _mm256_fmadd_ps(wv[ky * KW + kx], _mm256_loadu_ps(dw_tap(row, ox, kx, dw, half, SW)), acc[r][0]);
            if (two)
              acc[r][1] =
                  _mm256_fmadd_ps(wv[ky * KW + kx], _mm256_loadu_ps(dw_tap(row, ox + 8, kx, dw, half, SW)), acc[r][1]);
          }
      for (int64_t v = 0; v <= two; ++v)
        for (int64_t r = 0; r < n; ++r) dw_store(e, acc[r][v], tail, yrow, res, d, OW, r, ox + 8 * v, last, lo, hi, base);
    }
    return;
  }
  /* 3x3 (whole vectors with equal strides went to dw3_s1_rows / dw3_s2_rows): one vector of each row,
   * row by row; nine weights and more accumulators would not fit in 16 registers */
  for (int64_t ox = ox0; ox < OW; ox += 8) {
    __m256 acc[DW_ROWS];
    for (int64_t r = 0; r < DW_ROWS; ++r) {
      acc[r] = _mm256_setzero_ps();
      for (int64_t ky = 0; ky < KH; ++ky)
        for (int64_t kx = 0; kx < KW; ++kx)
          acc[r] = _mm256_fmadd_ps(wv[ky * KW + kx], _mm256_loadu_ps(dw_tap(rows[r * KH + ky], ox, kx, dw, half, SW)),
                                   acc[r]);
    }
    for (int64_t r = 0; r < n; ++r) dw_store(e, acc[r], tail, yrow, res, d, OW, r, ox, last, lo, hi, base);
  }
}
#elif defined(MLRT_HAVE_NEON)
/* Outputs [0, OW / 4 * 4) of output row r (at d + at), 4 at a time: a tap's inputs for 4
 * consecutive outputs are consecutive in the staged row (stride 2 rows are staged as even half,
 * odd half), so each tap is one load and one FMA; every lane adds its taps in the scalar loop's
 * order. Returns the first output left to the scalar loop. */
static inline __attribute__((always_inline)) int64_t dw_row_neon(const float *const *rows, const float *f,
                                                                 const dw_epilogue *e, const float *yrow,
                                                                 const float *res, float *d, int64_t at, int64_t OW,
                                                                 int64_t dw, int64_t half, const int64_t KH,
                                                                 const int64_t KW, const int64_t SW) {
  int64_t ox = 0;
  for (; ox + 4 <= OW; ox += 4) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t ky = 0; ky < KH; ++ky) {
      const float *row = rows[ky];
      for (int64_t kx = 0; kx < KW; ++kx) {
        const int64_t m = kx * dw;
        const float *p = SW == 2 ? row + (m % 2 ? half : 0) + m / 2 + ox : row + ox + m;
        acc = vfmaq_n_f32(acc, vld1q_f32(p), f[ky * KW + kx]);
      }
    }
    float lanes[4];
    vst1q_f32(lanes, acc);
    for (int64_t l = 0; l < 4; ++l) d[at + ox + l] = dw_finish(e, lanes[l], yrow, res, at + ox + l);
  }
  return ox;
}
#endif

/* Up to 9x9 (ConvNeXt 7x7, MixNet 9x9): the scalar loop ran 7x7 taps at ~1.5 GFLOP/s. */
enum { DW_VECTOR_TAPS = 81 };

/* Channel t (= n * C + c) of the output, with its epilogue, DW_ROWS output rows per step (the rows
 * give the out-of-order core independent FMA chains even on 7x7 maps). Without AVX2, or for
 * strides above 2, more than DW_VECTOR_TAPS taps or rows of fewer than 4 outputs (most lanes
 * idle), a scalar loop; on aarch64, strides 1 and 2 take 4 outputs per NEON FMA (dw_row_neon) and
 * only each row's last OW % 4 outputs the scalar loop. */
static inline __attribute__((always_inline)) void dw_channel(const depthwise_job *j, int64_t t, int64_t t_end,
                                                             dw_ring *rings, const int64_t KH, const int64_t KW,
                                                             const int64_t SW) {
  const int64_t c = t % j->C, dw = j->dw, OW = j->OW, half = j->rw / 2;
  const float *in = j->x + dw_in_plane(t, j->mult) * j->H * j->W, *f = j->w + c * KH * KW;
  const float *next_in = j->x + dw_in_plane(t + 1, j->mult) * j->H * j->W, *res_all = j->ep.residual;
  const dw_epilogue e = {j->ep.overwrite, j->ep.bias ? j->ep.bias[c] : 0.0f, j->ep.lo, j->ep.hi};
  const float *rows[DW_ROWS * MLRT_DW_MAX_KH];
#ifdef MLRT_HAVE_AVX2
  const int vector = SW <= 2 && KH * KW <= DW_VECTOR_TAPS && OW >= 4;
  /* output row r + 1's window rows are row r's, sh rows down (dw3_shared_rows) */
  const int shared = j->sh == SW && j->dh == 1 && dw == 1;
  __m256 wv[DW_VECTOR_TAPS];
  for (int64_t k = 0; k < (vector ? KH * KW : 0); ++k) wv[k] = _mm256_broadcast_ss(f + k);
  const __m256i tail = mlrt_lanes_below(OW % 8);
  /* A row's columns past the last whole 16 are computed as the last 16, overlapping the block
   * before (dw3_*_rows), when storing an output twice gives the same value: the epilogue reads
   * neither the output it accumulates onto nor a residual in the output's buffer. */
  const int overlap = e.overwrite && (!res_all || res_all != j->ep.dst);
#endif
  dw_ring *ring = &rings[t % 2], *following = &rings[(t + 1) % 2];
  if (j->image_rows && t + 1 < t_end) dw_stage_image(j, following->rows, next_in);
  for (int64_t oy = 0; oy < j->OH; oy += DW_ROWS) {
    const int64_t n = min64(DW_ROWS, j->OH - oy), off = t * j->OH * OW + oy * OW;
    if (j->image_rows) {
      for (int64_t r = 0; r < DW_ROWS; ++r)
        for (int64_t ky = 0; ky < KH; ++ky) rows[r * KH + ky] = ring->rows + ((oy + r) * j->sh + ky * j->dh) * j->rw;
    } else {
      if (oy + DW_ROWS < j->OH) {
        dw_stage(j, ring, in, oy + DW_ROWS);
      } else if (t + 1 < t_end) {
        following->next = 0;
        dw_stage(j, following, next_in, 0);
      }
      dw_row_ptrs(j, ring->rows, oy, n, rows, KH);
    }
    const float *yrow = j->y + off, *res = res_all ? res_all + off : NULL;
    float *d = j->ep.dst + off;
#ifdef MLRT_HAVE_AVX2
    if (vector) {
      int64_t ox0 = 0;
      if (KH == 3 && KW == 3 && shared) {
        ox0 = SW == 1 ? dw3_s1_rows(rows, wv, &e, yrow, res, d, OW, n, 0)
                      : dw3_s2_rows(rows, wv, &e, yrow, res, d, OW, n, half, 0);
        if (ox0 < OW && OW >= 16 && overlap) /* the last 16 columns again, overlapping the block before */
          ox0 = SW == 1 ? dw3_s1_rows(rows, wv, &e, yrow, res, d, OW, n, OW - 16)
                        : dw3_s2_rows(rows, wv, &e, yrow, res, d, OW, n, half, OW - 16);
      }
      dw_rows_avx2(rows, wv, &e, tail, yrow, res, d, OW, n, oy + n == j->OH ? n - 1 : -1, dw, half, ox0, KH, KW, SW);
      continue;
    }
#endif
    for (int64_t r = 0; r < n; ++r) {
      int64_t ox = 0;
#ifdef MLRT_HAVE_NEON
      if (SW == 1 || SW == 2) ox = dw_row_neon(rows + r * KH, f, &e, yrow, res, d, r * OW, OW, dw, half, KH, KW, SW);
#endif
      for (; ox < OW; ++ox) {
        float acc = 0.0f;
        for (int64_t ky = 0; ky < KH; ++ky)
          for (int64_t kx = 0; kx < KW; ++kx) {
            const int64_t col = ox * SW + kx * dw;
            acc += f[ky * KW + kx] * rows[r * KH + ky][SW == 2 ? (col % 2 ? half : 0) + col / 2 : col];
          }
        d[r * OW + ox] = dw_finish(&e, acc, yrow, res, r * OW + ox);
      }
    }
  }
}

static void depthwise_task(void *ctx, int64_t task) {
  const depthwise_job *j = (const depthwise_job *)ctx;
  const int64_t total = j->batch * j->C, t0 = mlrt_part(total, j->tasks, task), t1 = mlrt_part(total, j->tasks, task + 1);
  const int64_t ring_floats = (j->image_rows ? j->image_rows : j->ring_rows + 1) * j->rw;
  float buf[MLRT_DW_RING_FLOATS];
  memset(buf, 0, (size_t)(2 * ring_floats) * sizeof(float)); /* padding stays zero: staging skips it */
  dw_ring rings[2] = {{buf, 0}, {buf + ring_floats, 0}};
  const float *first = j->x + dw_in_plane(t0, j->mult) * j->H * j->W;
  if (t0 < t1 && j->image_rows)
    dw_stage_image(j, rings[t0 % 2].rows, first);
  else if (t0 < t1)
    dw_stage(j, &rings[t0 % 2], first, 0);
  for (int64_t t = t0; t < t1; ++t) {
    /* the common shapes with constant taps, so the tap loops unroll */
    if (j->KH == 3 && j->KW == 3 && j->sw == 1)
      dw_channel(j, t, t1, rings, 3, 3, 1);
    else if (j->KH == 3 && j->KW == 3 && j->sw == 2)
      dw_channel(j, t, t1, rings, 3, 3, 2);
    else if (j->KH == 5 && j->KW == 5 && j->sw == 1)
      dw_channel(j, t, t1, rings, 5, 5, 1);
    else if (j->KH == 5 && j->KW == 5 && j->sw == 2)
      dw_channel(j, t, t1, rings, 5, 5, 2);
    else if (j->KH == 7 && j->KW == 7 && j->sw == 1)
      dw_channel(j, t, t1, rings, 7, 7, 1);
    else if (j->KH == 9 && j->KW == 9 && j->sw == 1)
      dw_channel(j, t, t1, rings, 9, 9, 1);
    else
      dw_channel(j, t, t1, rings, j->KH, j->KW, j->sw);
  }
}

typedef struct {
  const float *x, *w;
  float *y;
  int64_t C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl, mult;
  mlrt_epilogue ep;
} direct_dw_job;

static void direct_dw_channel(void *ctx, int64_t t) {
  const direct_dw_job *j = (const direct_dw_job *)ctx;
  const mlrt_epilogue *ep = &j->ep;
  const int64_t c = t % j->C, plane_out = j->OH * j->OW;
  const float *in = j->x + dw_in_plane(t, j->mult) * j->H * j->W; /* t = n * C + c */
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

/* Rows too wide for the ring: a direct loop per channel, partial sums kept in y (never in place). */
static void depthwise_direct(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W,
                             int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh,
                             int64_t dw, int64_t pad_top, int64_t pad_left, int64_t mult, int64_t overwrite,
                             int64_t bias, int64_t residual, float act_lo, float act_hi, int64_t dst) {
  direct_dw_job j = {(const float *)(intptr_t)x, (const float *)(intptr_t)w, (float *)(intptr_t)y, C, H, W, KH, KW,
                     OH, OW, sh, sw, dh, dw, pad_top, pad_left, mult,
                     {(int)overwrite, (const float *)(intptr_t)bias, 0, (const float *)(intptr_t)residual, act_lo,
                      act_hi, (float *)(intptr_t)dst}};
  if (mlrt_threads_for(batch * C * OH * OW * KH * KW) == 1)
    for (int64_t t = 0; t < batch * C; ++t) direct_dw_channel(&j, t);
  else
    mlrt_parallel_runs(batch * C, direct_dw_channel, &j);
}

#ifdef MLRT_HAVE_AVX2
/* Channels in the lanes: a task stages eight channel planes zero-padded and interleaved
 * ([rows][PW][8], on the stack) through 8x8 transposes, then every output position is KH * KW
 * vector FMAs on unit-stride loads, and its 8 channels go back out through one more transpose.
 * It replaced the rows-in-lanes ring (below) wherever it applies. Measured against it (Zen 3,
 * 1 thread, this kernel's first version: whole planes, maps under 32 columns): 384ch 14x14 3x3
 * 92 -> 64 us, 960ch 7x7 63 -> 48 us, 128ch 10x10 5x5 37 -> 18 us. Rows of 8 positions at fixed
 * offsets, staged row by row, and bands of rows (wide maps) made it 1.5-1.6x faster again on
 * 14x14 and 28x28, and let it take 56x56 and 112x112 maps too (see benchmarks/RESULTS.md).
 * A plane taller than one band is staged a band of output rows at a time, so the band stays in L1;
 * rows two bands share are kept in the buffer, not staged again. */
typedef struct {
  const float *x, *w, *y;
  int64_t C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl, mult, PW;
  int64_t blocks;     /* batch * ceil(C / 8) blocks of eight channels */
  int64_t band;       /* output rows per band */
  int64_t bands;      /* per plane */
  int64_t per_task;   /* (block, band) units per task */
  int64_t buf_floats; /* of the stack buffer a task uses (zeroed once) */
  mlrt_epilogue ep;
} dw_lanes_job;

/* Floats a band of `rows` output rows stages, plus the slack a row's partial last block of
 * positions may read past the last staged row (8 positions, SW apart). Maps under 8 columns are
 * staged whole, every input row (also those below the last one an output reads). */
static inline int64_t dw_lanes_band_floats(const dw_lanes_job *j, int64_t rows) {
  int64_t staged = (rows - 1) * j->sh + (j->KH - 1) * j->dh + 1;
  if (j->OW < 8) staged = max64(staged, j->H + j->pt);
  return (staged * j->PW + 8 * j->sw) * 8;
}

/* Output rows [oy0, oy1) of one staged block of eight channels (buf: the band's first input row),
 * 8 positions of a row at a time (maps of at least 8 columns): position i reads the buffer i * SW
 * cells after position 0, so each tap is 8 FMAs on loads at fixed offsets from one pointer. A
 * row's partial last block starts at OW - 8 instead, overlapping the one before, where writing an
 * output twice gives the same value (`overlap`); otherwise its extra lanes read on into the next
 * row (or the slack) and are not stored. KH, KW and SW are constants at the call sites, so the
 * taps unroll. */
static inline __attribute__((always_inline)) void dw_lanes_rows(const dw_lanes_job *j, const float *buf,
                                                                const __m256 *wv, const float *bias, int64_t o0,
                                                                int64_t nc, int64_t oy0, int64_t oy1, const int64_t KH,
                                                                const int64_t KW, const int64_t SW) {
  /* the job's fields in locals: the stores below may alias anything, so fields read through j
   * would be loaded again after every store */
  const mlrt_epilogue *ep = &j->ep;
  float *const dst = ep->dst;
  const float *const y = j->y, *const res = ep->residual;
  const int overwrite = ep->overwrite;
  const int plain = nc == 8 && overwrite && !res; /* the common case, unrolled below */
  const int64_t PW = j->PW, OW = j->OW, oplane = j->OH * OW, row_step = j->dh * PW * 8, col_step = j->dw * 8;
  const int64_t in_row = j->sh * PW * 8;
  const int overlap = overwrite && (!res || res != dst);
  const __m256 lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi), zero = _mm256_setzero_ps();
  for (int64_t oy = oy0; oy < oy1; ++oy)
    for (int64_t ox = 0; ox < OW; ox += 8) {
      const int64_t x = ox + 8 <= OW || !overlap ? ox : OW - 8, n = min64(8, OW - x);
      const float *b = buf + (oy - oy0) * in_row + x * SW * 8;
      __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero;
      for (int64_t ky = 0; ky < KH; ++ky)
        for (int64_t kx = 0; kx < KW; ++kx) {
          const __m256 wk = wv[ky * KW + kx];
          const float *t = b + ky * row_step + kx * col_step;
          a0 = _mm256_fmadd_ps(wk, _mm256_load_ps(t), a0);
          a1 = _mm256_fmadd_ps(wk, _mm256_load_ps(t + 1 * SW * 8), a1);
          a2 = _mm256_fmadd_ps(wk, _mm256_load_ps(t + 2 * SW * 8), a2);
          a3 = _mm256_fmadd_ps(wk, _mm256_load_ps(t + 3 * SW * 8), a3);
          a4 = _mm256_fmadd_ps(wk, _mm256_load_ps(t + 4 * SW * 8), a4);
          a5 = _mm256_fmadd_ps(wk, _mm256_load_ps(t + 5 * SW * 8), a5);
          a6 = _mm256_fmadd_ps(wk, _mm256_load_ps(t + 6 * SW * 8), a6);
          a7 = _mm256_fmadd_ps(wk, _mm256_load_ps(t + 7 * SW * 8), a7);
        }
      __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
      mlrt_transpose8(acc); /* acc[l]: channel l of the block at positions x..x+7 of row oy */
      if (n == 8 && plain) {
        float *d = dst + o0 + oy * OW + x;
        for (int l = 0; l < 8; ++l)
          _mm256_storeu_ps(d + l * oplane, mlrt_clamp8(_mm256_add_ps(acc[l], _mm256_broadcast_ss(bias + l)), lo, hi));
        continue;
      }
      const __m256i m = mlrt_lanes_below(n);
      for (int64_t l = 0; l < nc; ++l) {
        const int64_t o = o0 + l * oplane + oy * OW + x;
        __m256 v = acc[l];
        if (n == 8) {
          v = _mm256_add_ps(v, overwrite ? _mm256_set1_ps(bias[l]) : _mm256_loadu_ps(y + o));
          if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res + o));
          _mm256_storeu_ps(dst + o, mlrt_clamp8(v, lo, hi));
        } else { /* masked stores are slow on AMD cores: only where the row cannot overlap */
          v = _mm256_add_ps(v, overwrite ? _mm256_set1_ps(bias[l]) : _mm256_maskload_ps(y + o, m));
          if (res) v = _mm256_add_ps(v, _mm256_maskload_ps(res + o, m));
          _mm256_maskstore_ps(dst + o, m, mlrt_clamp8(v, lo, hi));
        }
      }
    }
}

/* Maps under 8 columns (7x7 and smaller): one band, positions in plane order, eight at a time
 * whatever row they are on (eight pointers), so only a plane's last vector is partial. KH and KW
 * are constants at the call sites, so the taps unroll. */
static inline __attribute__((always_inline)) void dw_lanes_plane(const dw_lanes_job *j, const float *buf,
                                                                 const __m256 *wv, const float *bias, int64_t o0,
                                                                 int64_t nc, const int64_t KH, const int64_t KW) {
  const mlrt_epilogue *ep = &j->ep; /* fields in locals, as in dw_lanes_rows */
  float *const dst = ep->dst;
  const float *const y = j->y, *const res = ep->residual;
  const int overwrite = ep->overwrite;
  const int64_t OW = j->OW, oplane = j->OH * OW, in_row = j->sh * j->PW * 8, in_col = j->sw * 8;
  const int64_t row_step = j->dh * j->PW * 8, col_step = j->dw * 8;
  const __m256 lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi), zero = _mm256_setzero_ps();
  for (int64_t p = 0, oy = 0, ox = 0; p < oplane; p += 8) {
    /* eight positions side by side: one position's taps are a chain of dependent FMAs, which
     * ran at a quarter of the FMA throughput (25 taps x 4 cycles of latency per output) */
    const float *base[8];
    for (int64_t i = 0; i < 8; ++i) {
      base[i] = p + i < oplane ? buf + oy * in_row + ox * in_col : base[0];
      if (p + i < oplane && ++ox == OW) ox = 0, ++oy;
    }
    __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero;
    for (int64_t ky = 0; ky < KH; ++ky)
      for (int64_t kx = 0; kx < KW; ++kx) {
        const __m256 wk = wv[ky * KW + kx];
        const int64_t off = ky * row_step + kx * col_step;
        a0 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[0] + off), a0);
        a1 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[1] + off), a1);
        a2 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[2] + off), a2);
        a3 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[3] + off), a3);
        a4 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[4] + off), a4);
        a5 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[5] + off), a5);
        a6 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[6] + off), a6);
        a7 = _mm256_fmadd_ps(wk, _mm256_load_ps(base[7] + off), a7);
      }
    __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    mlrt_transpose8(acc); /* acc[l]: channel c0 + l at positions p..p+7 */
    const __m256i m = mlrt_lanes_below(oplane - p);
    for (int64_t l = 0; l < nc; ++l) {
      const int64_t o = o0 + l * oplane + p;
      __m256 v = _mm256_add_ps(acc[l], overwrite ? _mm256_set1_ps(bias[l]) : _mm256_maskload_ps(y + o, m));
      if (res) v = _mm256_add_ps(v, _mm256_maskload_ps(res + o, m));
      if (p + 8 <= oplane) /* masked stores are slow on AMD cores: only the last vector */
        _mm256_storeu_ps(dst + o, mlrt_clamp8(v, lo, hi));
      else
        _mm256_maskstore_ps(dst + o, m, mlrt_clamp8(v, lo, hi));
    }
  }
}

/* Stages the eight planes at src[] whole (maps under 8 columns), positions in plane order, eight at
 * a time whatever row they are on; (iy, ix) counted, not divided: a division per position cost
 * more than the taps on 14x14 maps. */
static void dw_lanes_stage_plane(const dw_lanes_job *j, float *buf, const float *const *src) {
  const int64_t plane = j->H * j->W;
  for (int64_t q = 0, iy = 0, ix = 0; q < plane; q += 8) {
    __m256 v[8];
    if (q + 8 <= plane) /* masked loads ran several times slower than plain ones (Zen 3) */
      for (int l = 0; l < 8; ++l) v[l] = _mm256_loadu_ps(src[l] + q);
    else
      for (int l = 0; l < 8; ++l) v[l] = _mm256_maskload_ps(src[l] + q, mlrt_lanes_below(plane - q));
    mlrt_transpose8(v);
    for (int64_t i = 0; i < 8 && q + i < plane; ++i) {
      _mm256_store_ps(buf + ((iy + j->pt) * j->PW + ix + j->pl) * 8, v[i]);
      if (++ix == j->W) ix = 0, ++iy;
    }
  }
}

/* Stages input rows [iy0, iy0 + rows) of the eight planes at src[] into buf's rows 0.. (columns
 * from pl), zero for rows outside the plane (padding; a band's rows held another band's data). */
static void dw_lanes_stage(const dw_lanes_job *j, float *buf, const float *const *src, int64_t iy0, int64_t rows) {
  const int64_t W = j->W, plane = j->H * W;
  for (int64_t r = 0; r < rows; ++r) {
    float *d = buf + (r * j->PW + j->pl) * 8;
    const int64_t iy = iy0 + r;
    if (iy < 0 || iy >= j->H) {
      memset(d, 0, (size_t)(W * 8) * sizeof(float));
      continue;
    }
    /* 8 columns at a time: a row's last vector reads on into the next row, masked only in the
     * plane's last row (masked loads ran several times slower than plain ones on Zen 3) */
    for (int64_t ix = 0; ix < W; ix += 8) {
      const int64_t q = iy * W + ix, cnt = min64(8, W - ix);
      __m256 v[8];
      if (q + 8 <= plane)
        for (int l = 0; l < 8; ++l) v[l] = _mm256_loadu_ps(src[l] + q);
      else
        for (int l = 0; l < 8; ++l) v[l] = _mm256_maskload_ps(src[l] + q, mlrt_lanes_below(cnt));
      mlrt_transpose8(v);
      if (cnt == 8)
        for (int i = 0; i < 8; ++i) _mm256_store_ps(d + (ix + i) * 8, v[i]);
      else
        for (int64_t i = 0; i < cnt; ++i) _mm256_store_ps(d + (ix + i) * 8, v[i]);
    }
  }
}

static void dw_lanes_task(void *ctx, int64_t task) {
  const dw_lanes_job *j = (const dw_lanes_job *)ctx;
  const mlrt_epilogue *ep = &j->ep;
  const int64_t per_image = (j->C + 7) / 8, taps = j->KH * j->KW, oplane = j->OH * j->OW;
  const int64_t u0 = task * j->per_task, u1 = min64(j->blocks * j->bands, u0 + j->per_task);
  float buf[MLRT_DW_RING_FLOATS] __attribute__((aligned(32)));
  memset(buf, 0, (size_t)j->buf_floats * sizeof(float)); /* pad columns stay zero */
  __m256 wv[DW_LANES_MAX_TAPS];
  float bias[8] = {0};
  int64_t staged_block = -1, staged_unit = -1;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t b = u / j->bands, oy0 = u % j->bands * j->band, oy1 = min64(j->OH, oy0 + j->band);
    const int64_t n = b / per_image, c0 = (b % per_image) * 8, nc = min64(8, j->C - c0);
    const float *src[8]; /* lanes past the last channel read the last channel again: never stored */
    for (int64_t l = 0; l < 8; ++l)
      src[l] = j->x + dw_in_plane(n * j->C + c0 + min64(l, nc - 1), j->mult) * j->H * j->W;
    if (b != staged_block) {
      staged_block = b;
      for (int64_t t0 = 0; t0 < taps; t0 += 8) { /* weights [C][taps] -> [taps][8 channels] */
        const __m256i m = mlrt_lanes_below(taps - t0);
        __m256 v[8];
        for (int l = 0; l < 8; ++l) v[l] = l < nc ? _mm256_maskload_ps(j->w + (c0 + l) * taps + t0, m) : _mm256_setzero_ps();
        mlrt_transpose8(v);
        for (int64_t i = 0; i < 8 && t0 + i < taps; ++i) wv[t0 + i] = v[i];
      }
      for (int64_t l = 0; l < 8; ++l) bias[l] = l < nc && ep->bias ? ep->bias[c0 + l] : 0.0f;
    }
    const int64_t o0 = (n * j->C + c0) * oplane; /* channel c0, position 0 */
    if (j->OW < 8) {
      dw_lanes_stage_plane(j, buf, src);
      if (j->KH == 3 && j->KW == 3)
        dw_lanes_plane(j, buf, wv, bias, o0, nc, 3, 3);
      else if (j->KH == 5 && j->KW == 5)
        dw_lanes_plane(j, buf, wv, bias, o0, nc, 5, 5);
      else
        dw_lanes_plane(j, buf, wv, bias, o0, nc, j->KH, j->KW);
      continue;
    }
    /* The band after the one staged last starts band * sh rows lower: the rows both read move up
     * in the buffer instead of being staged again (in place, those rows of the input may already
     * hold outputs). */
    const int64_t rows = (oy1 - 1 - oy0) * j->sh + (j->KH - 1) * j->dh + 1, shift = j->band * j->sh;
    const int64_t kept = staged_unit == u - 1 && oy0 > 0 ? max64(0, (j->KH - 1) * j->dh + 1 - j->sh) : 0;
    if (kept) memmove(buf, buf + shift * j->PW * 8, (size_t)(kept * j->PW * 8) * sizeof(float));
    dw_lanes_stage(j, buf + kept * j->PW * 8, src, oy0 * j->sh - j->pt + kept, rows - kept);
    staged_unit = u;
    if (j->KH == 3 && j->KW == 3 && j->sw == 1)
      dw_lanes_rows(j, buf, wv, bias, o0, nc, oy0, oy1, 3, 3, 1);
    else if (j->KH == 3 && j->KW == 3 && j->sw == 2)
      dw_lanes_rows(j, buf, wv, bias, o0, nc, oy0, oy1, 3, 3, 2);
    else if (j->KH == 5 && j->KW == 5 && j->sw == 1)
      dw_lanes_rows(j, buf, wv, bias, o0, nc, oy0, oy1, 5, 5, 1);
    else if (j->KH == 5 && j->KW == 5 && j->sw == 2)
      dw_lanes_rows(j, buf, wv, bias, o0, nc, oy0, oy1, 5, 5, 2);
    else if (j->KH == 7 && j->KW == 7 && j->sw == 1)
      dw_lanes_rows(j, buf, wv, bias, o0, nc, oy0, oy1, 7, 7, 1);
    else
      dw_lanes_rows(j, buf, wv, bias, o0, nc, oy0, oy1, j->KH, j->KW, j->sw);
  }
}

/* Output rows per band: as many as keep the staged band within DW_LANES_BAND_FLOATS (L1), at least
 * one (maps under 8 columns: all); 0 where that does not fit the stack buffer. */
static int64_t dw_lanes_band(const dw_lanes_job *j) {
  if (dw_lanes_band_floats(j, j->OH) <= DW_LANES_BAND_FLOATS || j->OW < 8)
    return dw_lanes_band_floats(j, j->OH) <= MLRT_DW_RING_FLOATS ? j->OH : 0;
  int64_t rows = 1;
  while (rows < j->OH && dw_lanes_band_floats(j, rows + 1) <= DW_LANES_BAND_FLOATS) ++rows;
  return dw_lanes_band_floats(j, rows) <= MLRT_DW_RING_FLOATS ? rows : 0;
}

/* True when it ran the conv with channels in the lanes. */
static int depthwise_lanes(const dw_lanes_job *proto, int64_t batch) {
  dw_lanes_job j = *proto;
  j.PW = max64((j.OW - 1) * j.sw + (j.KW - 1) * j.dw + 1, j.W + j.pl);
  if (j.KH * j.KW > DW_LANES_MAX_TAPS) return 0;
  j.band = dw_lanes_band(&j);
  if (j.band == 0) return 0;
  j.bands = (j.OH + j.band - 1) / j.band;
  j.buf_floats = dw_lanes_band_floats(&j, j.band);
  j.blocks = batch * ((j.C + 7) / 8);
  const int64_t units = j.blocks * j.bands;
  const int64_t threads = mlrt_threads_for(batch * j.C * j.OH * j.OW * j.KH * j.KW);
  const int64_t tasks = threads == 1 ? 1 : min64(units, 4 * threads);
  j.per_task = (units + tasks - 1) / tasks;
  /* In place, a plane's bands run in order in one task: a band's first rows come from the buffer,
   * where the band before left them; staged from memory they could be outputs already. */
  if ((const float *)j.ep.dst == j.x) j.per_task = (j.per_task + j.bands - 1) / j.bands * j.bands;
  if (tasks == 1)
    dw_lanes_task(&j, 0);
  else
    mlrt_parallel_for((units + j.per_task - 1) / j.per_task, dw_lanes_task, &j);
  return 1;
}
#endif

static void depthwise(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W, int64_t KH,
                      int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                      int64_t pad_top, int64_t pad_left, int64_t mult, int64_t overwrite, int64_t bias,
                      int64_t residual, float act_lo, float act_hi, int64_t dst) {
  const int64_t ring_rows = (KH - 1) * dh + 1 + (2 * DW_ROWS - 1) * sh, rw = dw_row_floats(OW, KW, sw, dw);
  if (batch * C <= 0 || OH <= 0 || OW <= 0) return;
  if (KH > MLRT_DW_MAX_KH || 2 * (ring_rows + 1) * rw > MLRT_DW_RING_FLOATS) {
    depthwise_direct(x, w, y, batch, C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left, mult, overwrite,
                     bias, residual, act_lo, act_hi, dst);
    return;
  }
#ifdef MLRT_HAVE_AVX2
  const dw_lanes_job lanes = {(const float *)(intptr_t)x, (const float *)(intptr_t)w, (float *)(intptr_t)y, C, H, W,
                              KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left, mult, 0, 0, 0, 0, 0, 0,
                              {(int)overwrite, (const float *)(intptr_t)bias, 0, (const float *)(intptr_t)residual,
                               act_lo, act_hi, (float *)(intptr_t)dst}};
  if (depthwise_lanes(&lanes, batch)) return;
#endif
  depthwise_job j = {(const float *)(intptr_t)x, (const float *)(intptr_t)w, (float *)(intptr_t)y, batch, C, H, W,
                     KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left, 1, mult, ring_rows, rw, 0,
                     {(int)overwrite, (const float *)(intptr_t)bias, 0, (const float *)(intptr_t)residual, act_lo,
                      act_hi, (float *)(intptr_t)dst}};
  /* every row a step reads, the short last step's included */
  const int64_t image_rows = ((OH + DW_ROWS - 1) / DW_ROWS * DW_ROWS - 1) * sh + (KH - 1) * dh + 1;
  if (2 * image_rows * rw <= DW_IMAGE_FLOATS) j.image_rows = image_rows;
  /* Channels cost the same: a few even runs per thread balance them with little dispatch. A tap
   * costs several times a GEMM multiply-add (a load per FMA, short rows), hence the weight 8. */
  const int64_t threads = mlrt_threads_for(8 * batch * C * OH * OW * KH * KW);
  j.tasks = threads == 1 ? 1 : min64(batch * C, 4 * threads);
  if (j.tasks == 1)
    depthwise_task(&j, 0);
  else
    mlrt_parallel_for(j.tasks, depthwise_task, &j);
}

void mlrt_depthwise_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W,
                               int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh,
                               int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias,
                               int64_t residual, float act_lo, float act_hi, int64_t dst) {
  depthwise(x, w, y, batch, C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left, 1, overwrite, bias, residual,
            act_lo, act_hi, dst);
}

void mlrt_depthwise_mult_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W,
                                    int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw,
                                    int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t mult,
                                    int64_t overwrite, int64_t bias, int64_t residual, float act_lo, float act_hi,
                                    int64_t dst) {
  depthwise(x, w, y, batch, C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pad_top, pad_left, mult, overwrite, bias,
            residual, act_lo, act_hi, dst);
}
