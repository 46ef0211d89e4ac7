// The CUDA executor (device "cuda:N"): runs a bundle's `cuda.ptx` target (docs/bundle-format.md,
// "The CUDA target"), or a dynamic bundle's CUDA programs (one per bucket combination, sections
// cuda.pN), through the NVIDIA driver (cuda_driver.h: libcuda loaded with dlopen).
// Load: driver and GPU checks, one module per program (cubin or JIT-compiled PTX), kernels, one
// device copy of the weights shared by every program.
// Run: an execution context from a pool (device arena + input/output buffers + one argument table
// per program + stream, one allocation, sized for the largest program), inputs copied in (zero-padded
// to the program's bucket), the program's launches replayed as a CUDA graph captured on that
// context's first run of that program, outputs copied out (cut back to the call's shape). Host
// buffers (Executor::Run) and device buffers (DeviceExecutor::RunDevice) alike.
// Needs no CUDA headers or libraries at build time.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bundle_reader.h"
#include "cuda_driver.h"
#include "executor.h"
#include "mlrt/mlrt.h"

namespace mlrt {

// One GPU's primary context, retained for as long as anything on it lives: the model, and every
// DeviceTensor it returned (which may outlive the model).
struct CudaDevice {
  const cuda::Driver* d = nullptr;
  cuda::CUdevice dev = 0;
  cuda::CUcontext ctx = nullptr;
  std::string name;  // "cuda:0", for messages
  CudaDevice() = default;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;
  ~CudaDevice() {
    if (ctx) d->cuDevicePrimaryCtxRelease(dev);
  }
};

namespace internal {
// One cuMemAlloc allocation (the memory of a DeviceTensor), freed on destruction.
struct DeviceBuffer {
  std::shared_ptr<const CudaDevice> device;
  cuda::CUdeviceptr ptr = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
};
}  // namespace internal

class CudaExecutor final : public Executor, public DeviceExecutor {
 public:
  // The GPU `device` names. FAILED_PRECONDITION when the bundle has no CUDA target, or the driver,
  // the GPU or its architecture cannot run it (docs/runtime-api.md lists the checks in order);
  // `manifest` and `bundle` are verified.
  static Result<std::unique_ptr<Executor>> Create(const Device& device, const Manifest& manifest,
                                                  const BundleView& bundle);
  ~CudaExecutor() override;

  // Padding and cutting happen on the device (cuMemsetD8Async, row copies).
  Status Run(size_t program, const std::vector<ConstTensorView>& inputs,
             const std::vector<TensorView>& outputs) const override {
    return RunOn(program, inputs, outputs, /*device_pointers=*/false, 0);
  }
  int num_threads() const override { return 1; }  // the GPU does the work
  // The weights plus every execution context allocated so far (each sized for the largest program,
  // so it does not grow with the shapes a model sees).
  size_t device_bytes() const override {
    return weight_bytes_ + context_bytes_.load(std::memory_order_relaxed);
  }
  const DeviceExecutor* device_executor() const override { return this; }

  Status RunDevice(size_t program, const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs,
                   uintptr_t wait_stream) const override {
    return RunOn(program, inputs, outputs, /*device_pointers=*/true, wait_stream);
  }
  // The allocation keeps the primary context alive (DeviceTensors may outlive the model).
  Result<Allocation> Allocate(size_t bytes, const std::string& what) const override;
  int ordinal() const override { return ordinal_; }

 private:
  struct Context;  // one execution context
  struct Launch {
    cuda::CUfunction function = nullptr;
    unsigned grid[3] = {1, 1, 1};
    unsigned block[3] = {1, 1, 1};
    unsigned shared_bytes = 0;
  };
  // One static program: the static bundle itself, or one bucket combination of a dynamic bundle.
  struct ProgramCode {
    cuda::CUmodule module = nullptr;
    std::vector<Launch> launches;
    ProgramLayout layout;  // call list; shapes at this program's buckets
    uint64_t arena_bytes = 0;
    std::vector<size_t> input_bytes, output_bytes;
    size_t table_offset = 0;  // of its argument table in a context's table region
  };
  CudaExecutor() = default;
  // `device_pointers`: the data are device pointers in this model's context (RunDevice), else host
  // pointers; with device pointers the input copies wait for the work queued on `wait_stream` first.
  Status RunOn(size_t program, const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs,
               bool device_pointers, uintptr_t wait_stream) const;
  Status Check(cuda::CUresult r, const char* call) const;
  Status LoadProgram(const CudaCode& code, const std::string& what, int major, int minor, int shared_optin,
                     const std::string& gpu_name, const CudaTarget& target, const BundleView& bundle,
                     ProgramCode* out);
  Result<std::unique_ptr<Context>> NewContext() const;
  void DestroyContext(std::unique_ptr<Context> c) const;  // the primary context must be current
  Status Execute(Context& c, size_t program, const std::vector<ConstTensorView>& inputs,
                 const std::vector<TensorView>& outputs, bool device_pointers, uintptr_t wait_stream) const;
  Status LaunchAll(const ProgramCode& p, cuda::CUstream stream, cuda::CUdeviceptr argtable) const;

  const cuda::Driver* d_ = nullptr;
  std::string device_;
  int ordinal_ = 0;
  cuda::CUdevice dev_ = 0;
  cuda::CUcontext ctx_ = nullptr;                // the device's primary context, retained by device_handle_
  std::shared_ptr<const CudaDevice> device_handle_;  // released after everything else in the destructor
  cuda::CUdeviceptr weights_ = 0;
  size_t weight_bytes_ = 0;
  bool use_graphs_ = true;  // MLRT_CUDA_GRAPHS=0 turns capture off

  std::vector<ProgramCode> programs_;
  std::vector<uint64_t> weight_offsets_;
  // A context's layout, planned for the largest program: every program fits any context.
  uint64_t max_arena_bytes_ = 0;
  std::vector<size_t> max_input_bytes_, max_output_bytes_;
  size_t table_bytes_ = 0;  // all programs' argument tables

  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<Context>> idle_;  // a Run takes one and gives it back
  mutable std::atomic<size_t> context_bytes_{0};
};

}  // namespace mlrt
