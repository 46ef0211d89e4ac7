/* What the kernel checks in this folder share (each built with ASan + UBSan by
 * tests/test_kernels.py): a fake pool that runs tasks in reverse order, so a task that depends on
 * another's writes (or clobbers them) gives a wrong result, and random buffers allocated to their
 * exact size, so a read or write past one is reported. Define CHECK_SEED before including to pick
 * the random sequence. */
#ifndef MLRT_CHECK_HARNESS_H
#define MLRT_CHECK_HARNESS_H

#include <stdint.h>
#include <stdlib.h>

#include "mlrt_kernels.h"

#ifndef CHECK_SEED
#define CHECK_SEED 12345u
#endif

void mlrt_set_host(const mlrt_host_api *host);

static void reverse_parallel_for(void *pool, int64_t n, mlrt_task_fn task, void *ctx) {
  (void)pool;
  for (int64_t i = n - 1; i >= 0; --i) task(ctx, i);
}

/* Kernels called after this see `threads` workers (tasks run in reverse order) or, for 1, none. */
static void use_threads(int threads) {
  static mlrt_host_api host = {1, 1, NULL, reverse_parallel_for};
  host.num_threads = (uint32_t)threads;
  mlrt_set_host(threads > 1 ? &host : NULL);
}

/* Output size of a conv / pool along one dimension: `pads` = both sides' padding together. */
static inline int64_t out_size(int64_t in, int64_t pads, int64_t k, int64_t dilation, int64_t stride) {
  return (in + pads - (k - 1) * dilation - 1) / stride + 1;
}

static uint32_t rng = CHECK_SEED;
static float frand(void) {
  rng = rng * 1664525u + 1013904223u;
  return (float)((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static float *fresh(int64_t n) {
  float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  for (int64_t i = 0; i < n; ++i) p[i] = frand();
  return p;
}

#endif
