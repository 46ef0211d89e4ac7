// The CPU executor (device "cpu"): runs a bundle's x86-64 code in this process.
// Load: the CPU's ISA features checked against the bundle's; each program's verified shared object
// (cpu.so, or a dynamic bundle's cpu.pN) loaded from memory (code_loader); weight pointers resolved
// into the mapped weights section, used in place.
// Run: an arena from a pool (one per concurrent Run, reused), the program's entry called with the
// pointers its call list names and the host API over this executor's thread pool. Between buckets,
// inputs are zero-padded and outputs cut through host temporaries that belong to the call.
#pragma once

#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "code_loader.h"
#include "executor.h"
#include "host_api.h"
#include "thread_pool.h"

namespace mlrt {

class CpuExecutor final : public Executor {
 public:
  // `manifest` and `bundle` are verified; the bundle's mapping must outlive the executor.
  // FAILED_PRECONDITION when the bundle has no CPU code or this CPU lacks a feature it needs.
  static Result<std::unique_ptr<Executor>> Create(const Manifest& manifest, const BundleView& bundle,
                                                  int num_threads);

  Status Run(size_t program, const std::vector<ConstTensorView>& inputs,
             const std::vector<TensorView>& outputs) const override;
  int num_threads() const override { return pool_->num_threads(); }
  size_t device_bytes() const override { return 0; }
  std::string cpu_variant() const override { return variant_; }
  std::string kernel_isa() const override { return kernel_isa_; }

 private:
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<uint8_t, FreeDeleter>;  // an arena or a padding temporary
  struct ProgramCode {
    LoadedCode code;
    ProgramLayout layout;
  };

  CpuExecutor() = default;
  // `bytes` of zeros, 64-byte aligned; `what` names the buffer in the RESOURCE_EXHAUSTED message.
  static Result<Buffer> AllocateZeroed(size_t bytes, const std::string& what);
  Result<Buffer> TakeArena() const;
  void ReturnArena(Buffer arena) const;
  // Calls the program's entry with the pointers its call list names, on an arena from the pool.
  Status Call(const ProgramCode& program, const std::vector<const void*>& inputs,
              const std::vector<void*>& outputs) const;

  std::string variant_;                // "<cpu level> (<arch>)" of the code variant loaded
  std::string kernel_isa_;  // what the code's mlrt_kernel_isa() said at load, if it has one
  std::vector<ProgramCode> programs_;  // ProgramLayouts' order
  std::vector<const void*> weights_;   // resolved pointers into the mapped weights section
  size_t arena_size_ = 64;             // bytes allocated per arena (>= 64, a multiple of 64)
  std::unique_ptr<ThreadPool> pool_;
  HostApi host_{};

  mutable std::mutex arena_mutex_;
  mutable std::vector<Buffer> idle_arenas_;  // a Run takes one and gives it back
};

}  // namespace mlrt
