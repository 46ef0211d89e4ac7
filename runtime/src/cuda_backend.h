// The CUDA backend: runs a bundle's `cuda.ptx` target (docs/bundle-format.md, "The CUDA target").
// Load: driver and GPU checks, PTX module (JIT), kernels, one device copy of the weights.
// Run: an execution context from a pool (device arena + input/output buffers + argument table +
// stream, one allocation), inputs copied in, the launches replayed as a CUDA graph captured on the
// context's first run, outputs copied out. Needs no CUDA headers or libraries at build time.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bundle_reader.h"
#include "cuda_driver.h"
#include "mlrt/mlrt.h"

namespace mlrt {

// "cpu" -> -1; "cuda" -> 0; "cuda:N" -> N. Anything else: INVALID_ARGUMENT naming the string.
Result<int> ParseDevice(const std::string& device);

class CudaModel final {
 public:
  // `ordinal` is the GPU; `device` its name for messages ("cuda:0"). The manifest must have
  // a CUDA target; `bundle` is the verified container it came from.
  static Result<std::unique_ptr<CudaModel>> Create(int ordinal, const std::string& device, const Manifest& manifest,
                                                   const BundleView& bundle);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // Inputs and outputs are already validated against the manifest. `device_pointers`: their data
  // are device pointers in this model's context (RunDevice), else host pointers. Thread-safe.
  Status Run(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs,
             bool device_pointers) const;

  // Device memory this model holds: the weights plus every execution context allocated so far.
  size_t device_bytes() const { return weight_bytes_ + context_bytes_.load(std::memory_order_relaxed); }

 private:
  struct Context;  // one execution context
  struct Launch {
    cuda::CUfunction function = nullptr;
    unsigned grid[3] = {1, 1, 1};
    unsigned block[3] = {1, 1, 1};
    unsigned shared_bytes = 0;
  };
  CudaModel() = default;
  Status Check(cuda::CUresult r, const char* call) const;
  Result<std::unique_ptr<Context>> NewContext() const;
  void DestroyContext(std::unique_ptr<Context> c) const;  // the primary context must be current
  Status Execute(Context& c, const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs,
                 bool device_pointers) const;
  Status LaunchAll(cuda::CUstream stream, cuda::CUdeviceptr argtable) const;

  const cuda::Driver* d_ = nullptr;
  std::string device_;
  cuda::CUdevice dev_ = 0;
  cuda::CUcontext ctx_ = nullptr;  // the device's primary context, retained
  cuda::CUmodule module_ = nullptr;
  cuda::CUdeviceptr weights_ = 0;
  size_t weight_bytes_ = 0;
  bool use_graphs_ = true;  // MLRT_CUDA_GRAPHS=0 turns capture off

  std::vector<Launch> launches_;
  std::vector<CallArg> call_;
  std::vector<uint64_t> weight_offsets_;
  std::vector<size_t> input_bytes_, output_bytes_;
  uint64_t arena_bytes_ = 0;

  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<Context>> idle_;  // a Run takes one and gives it back
  mutable std::atomic<size_t> context_bytes_{0};
};

}  // namespace mlrt
