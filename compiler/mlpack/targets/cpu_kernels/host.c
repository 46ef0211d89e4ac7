/* The bundle side of the host API: mlrt_entry records the runtime's thread pool for the kernels. */
#include "mlrt_kernels.h"

#include <stdlib.h>
#include <string.h>
#ifdef MLRT_HAVE_AVX2
#include <cpuid.h>
#endif

static _Thread_local const mlrt_host_api *current_host;

void mlrt_set_host(const mlrt_host_api *host) { current_host = host; }

int64_t mlrt_threads(void) {
  const mlrt_host_api *h = current_host;
  return (h && h->parallel_for && h->num_threads > 1) ? (int64_t)h->num_threads : 1;
}

void mlrt_parallel_for(int64_t n, mlrt_task_fn task, void *ctx) {
  const mlrt_host_api *h = current_host;
  if (n <= 0) return;
  if (n == 1 || !h || !h->parallel_for || h->num_threads <= 1) {
    for (int64_t i = 0; i < n; ++i) task(ctx, i);
    return;
  }
  h->parallel_for(h->pool, n, task, ctx);
}

typedef struct {
  mlrt_task_fn task;
  void *ctx;
  int64_t n, runs;
} runs_job;

static void run_of_items(void *ctx, int64_t t) {
  const runs_job *j = (const runs_job *)ctx;
  const int64_t end = mlrt_part(j->n, j->runs, t + 1);
  for (int64_t i = mlrt_part(j->n, j->runs, t); i < end; ++i) j->task(j->ctx, i);
}

void mlrt_parallel_runs(int64_t n, mlrt_task_fn task, void *ctx) {
  const int64_t most = 4 * mlrt_threads();
  runs_job j = {task, ctx, n, n < most ? n : most};
  mlrt_parallel_for(j.runs, run_of_items, &j);
}

#ifdef MLRT_HAVE_AVX2
/* AVX-512F in CPUID leaf 7, and XCR0 saying the OS saves the opmask and zmm state (bits 5-7)
 * besides xmm/ymm (bits 1-2). */
static int detect_avx512(void) {
  const char *isa = getenv("MLRT_KERNEL_ISA");
  if (isa && strcmp(isa, "avx2") == 0) return 0;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 16))) return 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE */
  unsigned lo, hi;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xe6u) == 0xe6u;
}
#endif

int mlrt_avx512(void) {
#ifdef MLRT_HAVE_AVX2
  static int known = -1; /* -1: not yet asked; a race only repeats the same answer */
  int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
  if (v < 0) {
    v = detect_avx512();
    __atomic_store_n(&known, v, __ATOMIC_RELAXED);
  }
  return v;
#else
  return 0;
#endif
}

/* Exported next to mlrt_entry: the runtime reads it once at load (Model::kernel_isa). aarch64
 * has one vector path: NEON (Advanced SIMD, in every ARMv8-A Linux CPU). */
__attribute__((visibility("default"))) const char *mlrt_kernel_isa(void) {
#ifdef MLRT_HAVE_AVX2
  return mlrt_avx512() ? "avx512f" : "avx2";
#elif defined(MLRT_HAVE_NEON)
  return "neon";
#else
  return "c";
#endif
}
