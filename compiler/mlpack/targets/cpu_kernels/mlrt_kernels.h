/* Microkernels linked into every bundle's code (the "ukernels" of IREE, in spirit): the compiler
 * replaces matmul / conv / depthwise-conv linalg ops with calls to these, and they split their
 * work over the runtime's thread pool through the host API the runtime passes to mlrt_entry.
 * All are C += op(A, B): the caller initializes C (zero or bias). Pointers are passed as int64
 * (the generated code has no pointer type at the call site); ABI: docs/bundle-format.md.
 *
 * One set of sources for both CPU targets (targets/x86_64 and targets/aarch64 link them): the
 * vector code sits in preprocessor blocks, MLRT_HAVE_AVX2 (x86-64-v3 and up; the AVX-512F tiles
 * within it, picked at run time) or MLRT_HAVE_NEON (aarch64), and the portable C is the last
 * fallback (x86-64 baseline bundles, and whatever a block does not cover). */
#ifndef MLRT_KERNELS_H_
#define MLRT_KERNELS_H_

#include <stdint.h>
#include <string.h>

typedef void (*mlrt_task_fn)(void *ctx, int64_t index);

/* Passed by the runtime to mlrt_entry; must match runtime/src/host_api.h (abi_version 1). */
typedef struct mlrt_host_api {
  uint32_t abi_version;
  uint32_t num_threads;
  void *pool;
  /* Runs task(ctx, i) for i in [0, n) on the pool and the calling thread; returns when all are done. */
  void (*parallel_for)(void *pool, int64_t n, mlrt_task_fn task, void *ctx);
} mlrt_host_api;

/* Whether the AVX-512F kernels run (host.c): the CPU and OS support zmm state and
 * MLRT_KERNEL_ISA is not "avx2". Decided once per process; 0 off x86. */
int mlrt_avx512(void);
/* The kernel instruction set in use, for the runtime to report: "avx512f", "avx2" (x86-64),
 * "neon" (aarch64) or "c" (the portable loops). */
const char *mlrt_kernel_isa(void);

/* Thread count and dispatch for the current run (set by mlrt_entry). */
int64_t mlrt_threads(void);
void mlrt_parallel_for(int64_t n, mlrt_task_fn task, void *ctx);
/* task(ctx, i) for i in [0, n) as at most 4 tasks per thread, each a run of consecutive i: for
 * many small, even items (rows or panels to copy), where claiming each item as a task of its own
 * costs more than the item (two threads contend for the pool's counters item by item). */
void mlrt_parallel_runs(int64_t n, mlrt_task_fn task, void *ctx);

/* Below this many multiply-adds a kernel runs on the calling thread: waking a worker costs more
 * than it saves, and other runtimes' spinning threads make that cost erratic. 1 << 20 left the
 * second core idle through most of a small CNN at 64x64 (the worker spinning 42% of the run);
 * 1 << 16 ran mobilenet_v3_small 0.68x and lcnet 0.72x as long (Zen 4, 2 threads). */
#define MLRT_MIN_PARALLEL_MACS (1 << 16)
/* How many tasks to split `macs` multiply-adds into on `threads` threads: up to 4 per thread,
 * each of at least MLRT_MIN_TASK_MACS (~10 us). Threads take tasks in turn, so where one is
 * slowed (a busy SMT sibling, another process on its core) the others take its share: with one
 * task per thread a run waits for the slowest (MobileNetV2's median 5-8% longer, Zen 3 VM). */
#define MLRT_MIN_TASK_MACS (1 << 18)
static inline int64_t mlrt_tasks_for(int64_t macs, int64_t threads) {
  const int64_t sized = macs / MLRT_MIN_TASK_MACS;
  return threads <= 1 ? 1 : sized < threads ? threads : sized > 4 * threads ? 4 * threads : sized;
}
static inline int64_t mlrt_threads_for(int64_t macs) { return macs < MLRT_MIN_PARALLEL_MACS ? 1 : mlrt_threads(); }

#define MLRT_NR 16 /* columns per packed B panel */
#define MLRT_MR 6  /* rows per GEMM register tile: work splits go in multiples of it */

/* The activation clamp of every epilogue. A NaN fails both comparisons and passes through, as in
 * PyTorch (relu(nan) = nan). */
static inline float mlrt_clamp(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MLRT_HAVE_AVX2 1
/* Elements 0, 2, .., 14 (even) / 1, 3, .., 15 (odd) of the 16 floats in a, b: stride-2 reads. */
static inline __m256 mlrt_even_lanes(__m256 a, __m256 b) {
  const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* a0 a2 b0 b2 | a4 a6 b4 b6 */
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}
static inline __m256 mlrt_odd_lanes(__m256 a, __m256 b) {
  const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}
/* mlrt_clamp on 8 lanes: max/min return their second operand when one is NaN, so v goes second. */
static inline __m256 mlrt_clamp8(__m256 v, __m256 lo, __m256 hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }
/* r[i][l] -> r[l][i] for 8 vectors of 8 floats. */
static inline void mlrt_transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20), r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20), r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31), r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31), r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
/* Mask of the first n of 8 lanes (n <= 0: none, n >= 8: all), for maskload / maskstore. */
static inline __m256i mlrt_lanes_below(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define MLRT_HAVE_NEON 1
/* mlrt_clamp on 4 lanes: fmin/fmax would drop a NaN, so compare and select (a NaN fails both
 * comparisons and passes through). */
static inline float32x4_t mlrt_clamp4(float32x4_t v, float32x4_t lo, float32x4_t hi) {
  v = vbslq_f32(vcltq_f32(v, lo), lo, v);
  return vbslq_f32(vcgtq_f32(v, hi), hi, v);
}
#endif

/* dst[c][r] = src[r][c] for an R x Cn block (src rows lds apart, dst rows ldd apart), 8x8 blocks
 * through registers: element by element, a plane's transpose cost a fifth of a 3x3 conv on 7x7. */
static inline void mlrt_transpose_block(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t R, int64_t Cn) {
  int64_t c0 = 0;
#ifdef MLRT_HAVE_AVX2
  for (; c0 + 8 <= Cn; c0 += 8) {
    int64_t r0 = 0;
    for (; r0 + 8 <= R; r0 += 8) {
      __m256 v[8];
      for (int l = 0; l < 8; ++l) v[l] = _mm256_loadu_ps(src + (r0 + l) * lds + c0);
      mlrt_transpose8(v);
      for (int l = 0; l < 8; ++l) _mm256_storeu_ps(dst + (c0 + l) * ldd + r0, v[l]);
    }
    for (; r0 < R; ++r0)
      for (int64_t c = c0; c < c0 + 8; ++c) dst[c * ldd + r0] = src[r0 * lds + c];
  }
#endif
  for (; c0 < Cn; ++c0)
    for (int64_t r = 0; r < R; ++r) dst[c0 * ldd + r] = src[r * lds + c0];
}

/* Bytes of scratch mlrt_conv2d_f32 / mlrt_matmul_f32 need for their packed B operand. */
static inline int64_t mlrt_packed_b_floats(int64_t K, int64_t N) { return ((N + MLRT_NR - 1) / MLRT_NR) * K * MLRT_NR; }

/* What happens around the product, fused so the output is written once:
 *   acc   = (overwrite ? bias : C) + A * B        (bias: per row, per column, or none -> 0)
 *   D     = clamp(acc + residual, lo, hi)         (residual optional; D may be C)
 * C holds partial sums while K is split into blocks; D receives the final values. */
typedef struct {
  int overwrite;      /* 1: ignore C's contents (the caller's zero/bias fill was fused here) */
  const float *bias;  /* NULL, or one value per row (bias_per_col = 0) or per column (= 1) */
  int bias_per_col;
  const float *residual; /* NULL, or a tensor shaped like C */
  float lo, hi;          /* clamp bounds: -inf/+inf when there is no activation */
  float *dst;            /* final output (== C when not fused into another buffer) */
} mlrt_epilogue;

/* Entry points called by generated code. Pointers travel as int64; `act_lo/act_hi` clamp. */
/* b_packed: B is already in packed panels (a weight packed at build time); scratch is unused.
 * A and B may be views: A[bi][m][k] at A + bi * a_batch + m * lda + k (unit column stride),
 * B[bi][k][n] at B + bi * b_batch + k * ldb_k + n * ldb_n (any strides: a transposed B is
 * gathered into the packed panels). Without scratch (few rows: B read in place) ldb_n is 1.
 * C is dense, [batch][M][N]. */
void mlrt_matmul_f32(int64_t a, int64_t b, int64_t c, int64_t scratch, int64_t batch, int64_t M, int64_t N,
                     int64_t K, int64_t overwrite, int64_t bias, int64_t bias_per_col, int64_t b_packed,
                     int64_t residual, float act_lo, float act_hi, int64_t dst, int64_t a_batch, int64_t lda,
                     int64_t b_batch, int64_t ldb_k, int64_t ldb_n);
void mlrt_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                     int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw,
                     int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias,
                     int64_t residual, float act_lo, float act_hi, int64_t dst);
/* The same with w packed at build time in A panels of MLRT_MR output channels,
 * [ceil(CO/MR)][C*KH*KW][MR] (kernel_calls.pack_a_panels). */
void mlrt_conv2d_packed_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                            int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
                            int64_t sw, int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite,
                            int64_t bias, int64_t residual, float act_lo, float act_hi, int64_t dst);
/* Grouped conv (1 < groups < C): X [batch][C][H][W], W [CO][C/groups][KH][KW]; scratch: `slices`
 * packed B operands of (C/groups)*KH*KW x OH*OW, one per thread working on its own (image, group). */
void mlrt_conv2d_grouped_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t groups,
                             int64_t slices, int64_t C, int64_t H, int64_t W, int64_t CO, int64_t KH, int64_t KW,
                             int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pad_top,
                             int64_t pad_left, int64_t overwrite, int64_t bias, int64_t residual, float act_lo,
                             float act_hi, int64_t dst);
/* 3-D conv, NCDHW: w [CO][C*KD*KH*KW] packed in A panels (kernel_calls.pack_a_panels); scratch: the
 * packed B operand of one image, mlrt_packed_b_floats(C*KD*KH*KW, OD*OH*OW) floats. */
void mlrt_conv3d_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t D,
                     int64_t H, int64_t W, int64_t CO, int64_t KD, int64_t KH, int64_t KW, int64_t OD, int64_t OH,
                     int64_t OW, int64_t sd, int64_t sh, int64_t sw, int64_t dd, int64_t dh, int64_t dw, int64_t pad_front,
                     int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias, int64_t residual, float act_lo,
                     float act_hi, int64_t dst);
/* The same conv for maps of few positions: w is W^T [C*KH*KW x CO] packed in B panels at build
 * time, K ordered (ky, kx, c) (kernel_calls.pack_conv_panels; grouped: each group's W_g^T
 * [KH*KW*C/G x CO/G] in its own panels, group after group); scratch: mlrt_conv_small_scratch_floats. */
static inline int64_t mlrt_conv_small_scratch_floats(int64_t batch, int64_t C, int64_t H, int64_t W, int64_t KH,
                                                     int64_t KW, int64_t CO, int64_t OH, int64_t OW) {
  const int64_t M = batch * OH * OW, K = C * KH * KW;
  /* the channels-last input, the rows, Yt; or, where conv.c gathers the rows into A panels
   * (AVX-512, 7 to 64 rows), those panels of whole MLRT_MR rows, Yt */
  const int64_t rows = batch * H * W * C + M * (K + CO), panels = (M + MLRT_MR - 1) / MLRT_MR * MLRT_MR * K + M * CO;
  return rows > panels ? rows : panels;
}
void mlrt_conv2d_small_f32(int64_t x, int64_t w, int64_t y, int64_t scratch, int64_t batch, int64_t groups, int64_t C,
                           int64_t H, int64_t W, int64_t CO, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
                           int64_t sw, int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite,
                           int64_t bias, int64_t residual, float act_lo, float act_hi, int64_t dst);
/* Depthwise: with AVX2, eight channels interleaved in the lanes, staged on the stack in bands of
 * rows (up to MLRT_DW_RING_FLOATS floats); rows too wide for that (and without AVX2), each task
 * stages input rows in a ring of (KH-1)*dh + 1 + (MLRT_DW_ROWS-1)*sh padded rows plus a zero row,
 * on its stack; rows wider than MLRT_DW_RING_FLOATS allows, or more than MLRT_DW_MAX_KH kernel
 * rows, take a direct loop that cannot run in place. Both staged paths may run in place wherever
 * the ring fits: mirrored by kernel_calls.depthwise_ring_fits. */
#define MLRT_DW_RING_FLOATS 16384
#define MLRT_DW_ROWS 4 /* output rows per step */
#define MLRT_DW_MAX_KH 16
void mlrt_depthwise_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W,
                               int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw, int64_t dh,
                               int64_t dw, int64_t pad_top, int64_t pad_left, int64_t overwrite, int64_t bias,
                               int64_t residual, float act_lo, float act_hi, int64_t dst);
/* The same with a channel multiplier (groups = input channels, `mult` outputs each; C = output
 * channels = mult * input channels, w [C][KH][KW]); never in place. */
void mlrt_depthwise_mult_conv2d_f32(int64_t x, int64_t w, int64_t y, int64_t batch, int64_t C, int64_t H, int64_t W,
                                    int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh, int64_t sw,
                                    int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left, int64_t mult,
                                    int64_t overwrite, int64_t bias, int64_t residual, float act_lo, float act_hi,
                                    int64_t dst);
/* 3x3, stride 1, dilation 1 conv by Winograd F(TxT,3x3), tile T = 2 or 4; u: weights transformed
 * at build time, [(T+2)^2][CO][C]; scratch: kernel_calls.winograd_scratch_floats floats. */
void mlrt_conv2d_winograd_f32(int64_t x, int64_t u, int64_t y, int64_t scratch, int64_t batch, int64_t C, int64_t H,
                              int64_t W, int64_t CO, int64_t OH, int64_t OW, int64_t pad_top, int64_t pad_left,
                              int64_t tile, int64_t overwrite, int64_t bias, int64_t residual, float act_lo,
                              float act_hi, int64_t dst);
/* 2-D max (is_max) or sum pooling over `planes` = N*C channel planes, NCHW; taps in the padding
 * (pad_top / pad_left, and past the bottom / right edge) are skipped. No scratch, no epilogue. */
void mlrt_pool2d_f32(int64_t x, int64_t y, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t KH,
                     int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pad_top, int64_t pad_left,
                     int64_t is_max, int64_t overwrite);

/* Internal: A's row stride (`lda`) saying A is not row-major but packed at build time in panels of
 * MLRT_MR rows, [ceil(M/MR)][K][MR] with zero rows at the end: one stream in the order the GEMM
 * reads it (a conv's weights that stream from memory: 1.3x faster than MR rows read side by side). */
#define MLRT_A_PANELS 0
/* Internal: C[M x N] (op)= A[M x K] (row stride lda, or MLRT_A_PANELS) * Bp (packed panels of
 * B[K x N]), with `ep` applied (bias/residual/dst offsets already set for this C). */
void mlrt_gemm_packed(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *Bp, float *C,
                      int64_t ldc, const mlrt_epilogue *ep);
/* Internal: the same with B [K x N] read in place (rows ldb apart) for its whole 16-column
 * panels; the last, partial one (N % 16 columns) packed by the caller in Btail. */
void mlrt_gemm_rows(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                    const float *Btail, float *C, int64_t ldc, const mlrt_epilogue *ep);
/* Internal: B[k][n] (at B + k * ldb_k + n * ldb_n) packed into the panels mlrt_gemm_packed reads,
 * zero-padded past N; panels split among the threads if `parallel`. */
void mlrt_pack_b(const float *B, int64_t ldb_k, int64_t ldb_n, int64_t K, int64_t N, float *Bp, int parallel);
/* Internal: the same, all rows but only panels [p0, p1), on the calling thread. */
void mlrt_gemm_panels(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *Bp, float *C,
                      int64_t ldc, const mlrt_epilogue *ep, int64_t p0, int64_t p1);
/* Internal: a per-thread memo of shape questions (5 numbers) and their answers (3): the GEMM split
 * searches cost microseconds and a model asks the same ones every run. Open addressing over
 * MLRT_MEMO_PROBES slots from a hash keeps a model's tens of questions apart (64 direct-mapped
 * slots had two pairs of SqueezeNet's 18 GEMM shapes evict each other every run). */
typedef struct {
  int64_t key[5], value[3];
} mlrt_memo_entry;
enum { MLRT_MEMO_SLOTS = 256, MLRT_MEMO_PROBES = 8 };
/* The entry holding `key`'s answer (*hit = 1), else the one to store it in (an empty slot, or the
 * first probed). A key's last number must not be 0: a zero there marks an empty slot. */
static inline mlrt_memo_entry *mlrt_memo_find(mlrt_memo_entry *memo, const int64_t key[5], int *hit) {
  uint64_t h = 0;
  for (int i = 0; i < 5; ++i) h = (h ^ (uint64_t)key[i]) * 0x9e3779b97f4a7c15ull;
  const unsigned s0 = (unsigned)(h >> 40);
  for (unsigned i = 0; i < MLRT_MEMO_PROBES; ++i) {
    mlrt_memo_entry *e = &memo[(s0 + i) % MLRT_MEMO_SLOTS];
    if (e->key[4] == 0 || !memcmp(e->key, key, sizeof e->key)) {
      *hit = e->key[4] != 0;
      return e;
    }
  }
  *hit = 0;
  return &memo[s0 % MLRT_MEMO_SLOTS];
}
/* Internal: start of part i of n when `total` units are split as evenly as possible. */
static inline int64_t mlrt_part(int64_t total, int64_t n, int64_t i) { return total * i / n; }
/* Internal: a tm x tn grid of row chunks x panel chunks (tm = 1 unless split_rows) over M x N
 * (depth K) that keeps `threads` evenly busy; returns its finish time in units of 6 rows x half a
 * panel. */
int64_t mlrt_gemm_split(int64_t M, int64_t N, int64_t K, int64_t threads, int split_rows, int64_t *tm, int64_t *tn);
/* Internal: when `threads` workers finish a tm x tn grid over rows (6-row blocks) x N columns. */
int64_t mlrt_gemm_makespan(int64_t rows, int64_t N, int64_t tm, int64_t tn, int64_t threads);

#endif
