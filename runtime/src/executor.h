// The executor interface: what runs a loaded bundle's programs on one device. model.cc keeps
// everything device-independent (map and verify the bundle, validate the inputs, pick a dynamic
// bundle's program, allocate outputs) and hands an executor a validated call; the executor owns
// the code, where the weights live and the memory of each run. Two implementations, chosen by the
// device string (CreateExecutor): CpuExecutor (cpu_executor.h) and CudaExecutor (cuda_executor.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bundle_reader.h"
#include "mlrt/mlrt.h"

namespace mlrt {

// A parsed device string (LoadOptions::device).
struct Device {
  int ordinal = -1;          // -1: the CPU; N: GPU N
  std::string name = "cpu";  // "cpu" or "cuda:N": Model::device(), and the name in messages
  bool is_cuda() const { return ordinal >= 0; }
};

// "cpu"; "cuda" (= "cuda:0"); "cuda:N". Anything else: INVALID_ARGUMENT naming the string.
Result<Device> ParseDevice(const std::string& device);

// What every executor needs of one static program: a static bundle's only program (index 0), or
// manifest.programs[p] of a dynamic bundle (index p): its call list and its inputs' and outputs'
// shapes at its buckets.
struct ProgramLayout {
  std::vector<CallArg> call;
  std::vector<std::vector<int64_t>> input_shapes, output_shapes;
};
std::vector<ProgramLayout> ProgramLayouts(const Manifest& manifest);

class DeviceExecutor;

// Runs the programs of one loaded bundle. Immutable after creation; Run is thread-safe (each call
// takes its own per-run memory from a pool of the executor's, reused afterwards).
// Lifetime: it may point into the mapped bundle (weights used in place), which must outlive it.
class Executor {
 public:
  virtual ~Executor() = default;
  Executor() = default;
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs program `program` (ProgramLayouts' index) on host buffers. The inputs and outputs are
  // already validated against the manifest (count, dtype, data, no overlap), at shapes no larger
  // than the program's: a smaller input is zero-padded to the program's shape, a smaller output
  // gets the leading block of the program's (block_copy.h; docs/bundle-format.md's padding rules).
  virtual Status Run(size_t program, const std::vector<ConstTensorView>& inputs,
                     const std::vector<TensorView>& outputs) const = 0;
  virtual int num_threads() const = 0;      // threads one Run uses
  virtual size_t device_bytes() const = 0;  // device memory held; 0 for an executor on the host
  // The CPU code variant this executor loaded, "<cpu level> (<arch>)"; empty for a device executor.
  virtual std::string cpu_variant() const { return {}; }
  // The instruction set its microkernels run ("avx512f", "avx2", "c", ...); empty where unknown.
  virtual std::string kernel_isa() const { return {}; }
  // The executor's device-pointer side (Model::RunDevice), or null for one that runs on host
  // memory only.
  virtual const DeviceExecutor* device_executor() const { return nullptr; }
};

// What an executor on a GPU adds: runs on device buffers, and device allocations for outputs.
// Thread-safe, like Executor.
class DeviceExecutor {
 public:
  // Like Executor::Run, but every data pointer is a device pointer valid in the device's primary
  // context; the input copies start after the work queued so far on `wait_stream` (a CUstream).
  virtual Status RunDevice(size_t program, const std::vector<ConstTensorView>& inputs,
                           const std::vector<TensorView>& outputs, uintptr_t wait_stream) const = 0;
  // A device allocation of `bytes` (> 0); `what` names it in errors ("output 0").
  // RESOURCE_EXHAUSTED when the device is out of memory.
  struct Allocation {
    std::shared_ptr<internal::DeviceBuffer> owner;  // frees it; keeps the device's context alive till then
    void* data = nullptr;                           // its device address
  };
  virtual Result<Allocation> Allocate(size_t bytes, const std::string& what) const = 0;
  virtual int ordinal() const = 0;  // N of "cuda:N"

 protected:
  ~DeviceExecutor() = default;  // owned through the Executor it belongs to, never through this
};

// The executor for `device`: checks that the bundle has code for it and that this machine can run
// it, and loads that code. `manifest` and `bundle` are verified; the executor copies what it keeps
// of the manifest. `num_threads`: threads per Run on the CPU.
Result<std::unique_ptr<Executor>> CreateExecutor(const Device& device, const Manifest& manifest,
                                                 const BundleView& bundle, int num_threads);

// Small shape helpers shared by model.cc and the executors.
int64_t NumElements(const std::vector<int64_t>& shape);
std::string ShapeString(const std::vector<int64_t>& shape);  // "[1,3,224,224]"

}  // namespace mlrt
