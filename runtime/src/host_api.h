// The host API the runtime passes to a bundle's code (mlrt_entry's second argument). It must stay
// layout-compatible with `mlrt_host_api` in compiler/mlpack/targets/cpu_kernels/mlrt_kernels.h; bump
// kHostAbiVersion (and the manifest's host_abi) on any change. See docs/bundle-format.md.
#pragma once

#include <cstdint>

namespace mlrt {

inline constexpr uint32_t kHostAbiVersion = 1;

using TaskFn = void (*)(void* ctx, int64_t index);

struct HostApi {
  uint32_t abi_version;
  uint32_t num_threads;
  void* pool;
  void (*parallel_for)(void* pool, int64_t n, TaskFn task, void* ctx);
};

using EntryFn = void (*)(void** args, const HostApi* host);

}  // namespace mlrt
