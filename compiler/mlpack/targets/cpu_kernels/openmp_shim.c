/* The handful of OpenMP runtime entry points that MLIR's scf -> OpenMP lowering calls, implemented
 * on the mlrt thread pool (host API), so the generated elementwise / reduction / pooling loops run
 * on all threads without shipping libomp. Only what convert-scf-to-openmp emits is provided: one
 * worksharing loop per parallel region with the static schedule; the region's closing barrier is
 * implied by the fork-join of mlrt_parallel_for. */
#include <stdarg.h>
#include <stdint.h>

#include "mlrt_kernels.h"

typedef void (*kmpc_microtask)(int32_t *gtid, int32_t *btid, ...);

enum { MAX_SHARED_ARGS = 8 }; /* the compiler checks every fork passes at most this many */

static _Thread_local int32_t team_rank, team_size = 1;

typedef struct {
  kmpc_microtask fn;
  int32_t argc;
  void *args[MAX_SHARED_ARGS];
  int32_t size;
} fork_job;

static void fork_task(void *ctx, int64_t rank) {
  const fork_job *j = (const fork_job *)ctx;
  const int32_t saved_rank = team_rank, saved_size = team_size;
  int32_t gtid = (int32_t)rank, btid = 0;
  team_rank = (int32_t)rank;
  team_size = j->size;
  void *const *a = j->args;
  switch (j->argc) {
    case 0: j->fn(&gtid, &btid); break;
    case 1: j->fn(&gtid, &btid, a[0]); break;
    case 2: j->fn(&gtid, &btid, a[0], a[1]); break;
    case 3: j->fn(&gtid, &btid, a[0], a[1], a[2]); break;
    case 4: j->fn(&gtid, &btid, a[0], a[1], a[2], a[3]); break;
    case 5: j->fn(&gtid, &btid, a[0], a[1], a[2], a[3], a[4]); break;
    case 6: j->fn(&gtid, &btid, a[0], a[1], a[2], a[3], a[4], a[5]); break;
    case 7: j->fn(&gtid, &btid, a[0], a[1], a[2], a[3], a[4], a[5], a[6]); break;
    default: j->fn(&gtid, &btid, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]); break;
  }
  team_rank = saved_rank;
  team_size = saved_size;
}

void __kmpc_fork_call(void *loc, int32_t argc, kmpc_microtask fn, ...) {
  (void)loc;
  fork_job job = {fn, argc, {0}, (int32_t)mlrt_threads()};
  va_list ap;
  va_start(ap, fn);
  for (int32_t i = 0; i < argc && i < MAX_SHARED_ARGS; ++i) job.args[i] = va_arg(ap, void *);
  va_end(ap);
  /* One task per team member; when the pool is busy they run one after another on this thread,
   * and each still takes its own static share of the iterations. */
  mlrt_parallel_for(job.size, fork_task, &job);
}

int32_t __kmpc_global_thread_num(void *loc) {
  (void)loc;
  return team_rank;
}

/* Static schedule: member r gets the r-th of `size` near-equal contiguous blocks. An empty share
 * is returned as upper = lower - incr, which the generated code turns into zero iterations. */
#define STATIC_INIT(NAME, T, ST)                                                                 \
  void NAME(void *loc, int32_t gtid, int32_t schedtype, int32_t *plastiter, T *plower, T *pupper, \
            ST *pstride, ST incr, ST chunk) {                                                    \
    (void)loc, (void)gtid, (void)schedtype, (void)chunk;                                         \
    const T n = (T)((*pupper - *plower) / (T)incr + 1);                                          \
    const T size = (T)team_size, rank = (T)team_rank;                                            \
    const T per = n / size, rem = n % size;                                                      \
    const T first = rank * per + (rank < rem ? rank : rem), count = per + (rank < rem ? 1 : 0);  \
    const T lower = *plower;                                                                     \
    *plower = lower + first * (T)incr;                                                           \
    *pupper = *plower + count * (T)incr - (T)incr;                                               \
    *pstride = (ST)(n * (T)incr);                                                                \
    if (plastiter) *plastiter = count > 0 && first + count == n;                                 \
  }

STATIC_INIT(__kmpc_for_static_init_8u, uint64_t, int64_t)
STATIC_INIT(__kmpc_for_static_init_8, int64_t, int64_t)
STATIC_INIT(__kmpc_for_static_init_4u, uint32_t, int32_t)
STATIC_INIT(__kmpc_for_static_init_4, int32_t, int32_t)

void __kmpc_for_static_fini(void *loc, int32_t gtid) { (void)loc, (void)gtid; }

/* Only emitted as the implicit barrier closing a region's single worksharing loop; the join in
 * __kmpc_fork_call already waits for every member, and members may run sequentially, where a
 * real barrier would deadlock. */
void __kmpc_barrier(void *loc, int32_t gtid) { (void)loc, (void)gtid; }
