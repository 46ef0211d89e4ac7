/* The bundle side of the host API: mlrt_entry records the runtime's thread pool for the kernels. */
#include "mlrt_kernels.h"

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

/* Exported next to mlrt_entry: the runtime reads it once at load (Model::kernel_isa). The aarch64
 * kernels have one path: NEON (Advanced SIMD, in every ARMv8-A Linux CPU). */
__attribute__((visibility("default"))) const char *mlrt_kernel_isa(void) { return "neon"; }
